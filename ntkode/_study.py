"""The comparison study behind `ntkode compare`: true flow vs kernel surrogates on **sine**."""

import os
import time
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp

from ._compare import Comparison
from ._problems import KernelFlowProblem
from ._reference_problems import sine_problem
from ._solve import timed_solve

#: `--quick`: a problem small enough for smoke tests (well under a minute on 2 cores).
QUICK = dict(width=64, depth=2, n_train=64, n_test=64, dim=4, t_end=10.0)


def compare_study(
    *,
    width: int = 512,
    depth: int = 2,
    n_train: int = 256,
    n_test: int = 256,
    dim: int = 8,
    t_end: float = 50.0,
    seed: int = 0,
    activation: str = "relu",
    rtol: float = 1e-5,
    n_save: int = 201,
    out: str | None = "ntkode-out",
    quick: bool = False,
    progress: bool = True,
    log: Callable[[str], Any] = print,
) -> Comparison:
    """True flow vs frozen-NTK flow on the **sine** problem (DESIGN §4).

    The reference is the true flow at `rtol`; the truth's own uncertainty is reported as the
    row `true_loose`, the true flow at `10·rtol`, measured against the reference (on ReLU
    networks activation patterns chatter and the true flow is itself uncertain at the 1% level,
    DESIGN §5). Each row records wall seconds of the compiled solve (compile time separately)
    and solver steps. With `out`, writes `results.json` after every method (an interrupted
    run keeps what it finished) and `compare.png`.

    **Returns:** a [`ntkode.Comparison`][].
    """
    if quick:
        width, depth, n_train, n_test, dim = (
            int(QUICK[k]) for k in ("width", "depth", "n_train", "n_test", "dim")
        )
        t_end = float(QUICK["t_end"])
    problem = sine_problem(
        width=width,
        depth=depth,
        n_train=n_train,
        n_test=n_test,
        dim=dim,
        t_end=t_end,
        activation=activation,
        seed=seed,
    )
    if out:
        os.makedirs(out, exist_ok=True)
    json_path = os.path.join(out, "results.json") if out else None
    ts = jnp.linspace(0.0, t_end, n_save)
    cmp = Comparison("true")

    def checkpoint():
        if json_path:
            cmp.save_json(json_path)

    log(
        f"sine: MLP {dim}->{width}x{depth}->1 ({activation}), n_train={n_train}, "
        f"n_test={n_test}, t in [0, {t_end}]"
    )
    log(f"[1/3] true flow, Tsit5, rtol={rtol:g} (reference)")
    true, sec, csec = timed_solve(
        problem, saveat=ts, rtol=rtol, atol=1e-2 * rtol, progress=progress
    )
    if not true.success:
        log(f"  warning: {true.message}")
    cmp.add("true", true, true, seconds=sec, compile_seconds=csec, rtol=rtol)
    checkpoint()

    loose = 10 * rtol
    log(f"[2/3] true flow, rtol={loose:g} (the truth's own uncertainty)")
    sol, sec, csec = timed_solve(
        problem, saveat=ts, rtol=loose, atol=1e-2 * loose, progress=progress
    )
    cmp.add("true_loose", sol, true, seconds=sec, compile_seconds=csec, rtol=loose)
    checkpoint()

    log("[3/3] frozen NTK at initialisation (closed form)")
    start = time.perf_counter()
    frozen = KernelFlowProblem.from_model(
        problem.model, problem.data, problem.loss, problem.tspan, problem.learning_rate
    )
    frozen.kernel_train.block_until_ready()
    kernel_seconds = time.perf_counter() - start
    sol, sec, csec = timed_solve(frozen, saveat=ts)
    cmp.add(
        "frozen",
        sol,
        true,
        seconds=sec,
        compile_seconds=csec,
        grid_seconds=kernel_seconds,
        speedup=cmp.rows["true"]["seconds"] / max(sec, 1e-9),
    )
    checkpoint()

    if out:
        cmp.plot(os.path.join(out, "compare.png"))
    return cmp
