"""The comparison study behind `ntkode compare`: true flow vs kernel surrogates on **sine**."""

import os
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp

from ..._core._compare import Comparison
from ..._core._kernel_flow import KernelFlowProblem
from ..._core._solve import timed_solve
from .._problems import sine_problem
from ._scheduled_rows import add_scheduled_rows, plot_error_vs_grid, saveat_with_nodes

#: `--quick`: a problem small enough for smoke tests (well under a minute on 2 cores).
QUICK = dict(width=64, depth=2, n_train=64, n_test=64, dim=4, t_end=10.0)


def compare_study(
    *,
    problem_name: str = "sine",
    model: str = "cnn",
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
    grid_sizes: tuple[int, ...] | None = None,
    schedules: tuple[str, ...] = ("time", "loss"),
    interpolation: str = "linear",
    tune: bool = False,
    tune_nodes: str = "schedule",
    tune_steps: int | None = None,
    tune_sizes: tuple[int, ...] = (4, 8),
) -> Comparison:
    """True flow vs frozen-NTK flow on the **sine** problem.

    The reference is the true flow at `rtol`; the truth's own uncertainty is reported as the
    row `true_loose`, the true flow at `10·rtol`, measured against the reference (on ReLU
    networks activation patterns chatter and the true flow is itself uncertain at the 1% level,
    see the README). Then scheduled-NTK surrogates: for each `G` in `grid_sizes`
    (default 2, 4, 8, 16; with `quick` 2, 8; `()` for none) and
    each of `schedules` (`"time"`, `"loss"`), a grid of `G` kernels at uniform snapshot times
    of the reference run, interpolated (`interpolation`: `"linear"`, `"smooth"`,
    `"constant"`); their rows add `grid_seconds` (kernel computation), `speedup` (true-flow
    seconds over surrogate solve seconds) and `truth_uncertainty`. Each row records wall
    seconds of the compiled solve (compile time separately) and solver steps. With `out`,
    writes `results.json` after every method (an interrupted run keeps what it finished),
    `compare.png` and, with grids, `error_vs_G.png`.

    With `tune=True`, the uniform grids of sizes `tune_sizes` (those also in
    `grid_sizes`) are tuned with [`ntkode.tune_grid`][] (`tune_nodes`: `"schedule"` or
    `"time"`; `tune_steps` Adam steps, default 25, 5 with `quick`), adding rows
    `tuned_<schedule>_G<G>` and the figure `tuned_nodes.png`.

    `problem_name="digits"` runs the same study on the classification problem
    [`ntkode.studies.digits_problem`][] (`model`: `"cnn"` or `"mlp"`; `width`, `n_train`,
    `t_end`, `seed`, `rtol` and the grid options apply; `depth`, `n_test`, `dim` and
    `activation` belong to sine), see `ntkode/studies/_compare/_classification.py`.

    **Returns:** a [`ntkode.Comparison`][].
    """
    # --- classification hook: digits rows live in _classification.py ---
    if problem_name not in ("sine", "digits"):
        raise ValueError(f"Unknown `problem_name` {problem_name!r}; choose 'sine' or 'digits'.")
    if problem_name == "sine" and model != "cnn":
        raise ValueError("`model` chooses the digits network; sine always uses its MLP.")
    if problem_name == "digits" and tune and tune_nodes != "schedule":
        raise ValueError(
            "On digits only `tune_nodes='schedule'` is available: tuning node times recomputes "
            "full kernels, which do not fit at this size."
        )
    if problem_name == "digits":
        from ._classification import classification_study

        return classification_study(
            problem=problem_name, model=model, n_train=n_train, width=width, t_end=t_end,
            seed=seed, rtol=rtol, out=out, quick=quick, progress=progress, log=log,
            grid_sizes=grid_sizes, schedules=schedules, interpolation=interpolation,
            tune=tune, tune_steps=tune_steps, tune_sizes=tune_sizes,
        )  # fmt: skip
    # --- end of the classification hook ---
    if grid_sizes is None:
        grid_sizes = (2, 8) if quick else (2, 4, 8, 16)
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
    if grid_sizes:
        ts = saveat_with_nodes(ts, t_end, grid_sizes)
    steps = 4 if grid_sizes else 3
    cmp = Comparison("true")

    def checkpoint():
        if json_path:
            cmp.save_json(json_path)

    log(
        f"sine: MLP {dim}->{width}x{depth}->1 ({activation}), n_train={n_train}, "
        f"n_test={n_test}, t in [0, {t_end}]"
    )
    log(f"[1/{steps}] true flow, Tsit5, rtol={rtol:g} (reference)")
    true, sec, csec = timed_solve(
        problem,
        saveat=ts,
        rtol=rtol,
        atol=1e-2 * rtol,
        progress=progress,
        save_weights=bool(grid_sizes),
    )
    if not true.success:
        log(f"  warning: {true.message}")
    cmp.add("true", true, true, seconds=sec, compile_seconds=csec, rtol=rtol)
    checkpoint()

    loose = 10 * rtol
    log(f"[2/{steps}] true flow, rtol={loose:g} (the truth's own uncertainty)")
    sol, sec, csec = timed_solve(
        problem, saveat=ts, rtol=loose, atol=1e-2 * loose, progress=progress
    )
    cmp.add("true_loose", sol, true, seconds=sec, compile_seconds=csec, rtol=loose)
    checkpoint()

    log(f"[3/{steps}] frozen NTK at initialisation (closed form)")
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

    if grid_sizes:
        log(f"[4/4] scheduled NTK grids, G in {list(grid_sizes)}, {interpolation} weights")
        add_scheduled_rows(
            cmp,
            problem,
            true,
            grid_sizes=grid_sizes,
            schedules=schedules,
            interpolation=interpolation,
            log=log,
            checkpoint=checkpoint,
        )
        tuned = [G for G in grid_sizes if G in tune_sizes and G >= 3] if tune else []
        if tuned:
            from ._tuned_rows import add_tuned_rows

            log(f"[tune] tuning {tune_nodes} nodes of the uniform grids G in {tuned}")
            add_tuned_rows(
                cmp,
                problem,
                true,
                grid_sizes=tuned,
                schedules=schedules,
                interpolation=interpolation,
                nodes=tune_nodes,
                steps=tune_steps if tune_steps is not None else (5 if quick else 25),
                log=log,
                checkpoint=checkpoint,
            )
        # The weights were only needed for the grids; drop them before keeping the solution.
        cmp.solutions["true"] = eqx.tree_at(
            lambda s: s.weights, true, None, is_leaf=lambda x: x is None
        )

    if out:
        shown = Comparison("true")
        shown.rows = cmp.rows
        keep = ("true", "frozen") + tuple(f"scheduled_{s}_G8" for s in schedules)
        shown.solutions = {k: v for k, v in cmp.solutions.items() if k in keep}
        shown.plot(os.path.join(out, "compare.png"))
        if grid_sizes:
            plot_error_vs_grid(cmp, os.path.join(out, "error_vs_G.png"))
        if any(k.startswith("tuned_") for k in cmp.rows):
            from ._tuned_rows import plot_nodes_on_loss

            plot_nodes_on_loss(cmp, os.path.join(out, "tuned_nodes.png"))
    return cmp
