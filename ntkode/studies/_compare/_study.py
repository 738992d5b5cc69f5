"""The comparison study behind `ntkode compare`: true flow vs kernel surrogates on **sine**."""

import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..._core._compare import Comparison
from ..._core._kernel_flow import KernelFlowProblem
from ..._core._model import partition
from ..._core._records import solution_arrays, solution_from_arrays
from ..._core._solve import timed_solve
from .._problems import sine_problem
from .._run import StudyRecord, machine_line
from ._scheduled_rows import (
    add_scheduled_rows,
    node_times,
    plot_comparison,
    plot_error_vs_grid,
    saveat_with_nodes,
)

#: The full study's problem (the **sine** reference problem).
FULL = dict(width=512, depth=2, n_train=256, n_test=256, dim=8, t_end=50.0)
#: `quick=True`: a problem small enough for smoke tests (well under a minute on 2 cores).
QUICK = dict(width=64, depth=2, n_train=64, n_test=64, dim=4, t_end=10.0)
#: Surrogate solves take milliseconds: their seconds are the median of this many runs. The
#: true flows take seconds to minutes and are timed once (single-shot, and labelled so).
REPEATS = 5


def compare_study(
    *,
    problem_name: str = "sine",
    model: str = "cnn",
    width: int | None = None,
    depth: int | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    dim: int | None = None,
    t_end: float | None = None,
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
    resume: bool | None = None,
) -> Comparison:
    """True flow vs frozen-NTK flow on the **sine** problem.

    The problem: an MLP `dim → width^depth → 1` on `n_train`/`n_test` points, trained over
    `[0, t_end]`; each left as `None` takes the full study's value (`FULL`: 512, 2, 256,
    256, 8, 50) or, with `quick=True`, the quick one (`QUICK`: 64, 2, 64, 64, 4, 10).
    Values given explicitly always win over `quick`.

    The reference is the true flow at `rtol`; the truth's own uncertainty is reported as the
    row `true_loose`, the true flow at `10·rtol`, measured against the reference (on ReLU
    networks activation patterns chatter and the true flow is itself uncertain at the 1% level,
    see the README). Then scheduled-NTK surrogates: for each `G` in `grid_sizes`
    (default 2, 4, 8, 16; with `quick` 2, 8; `()` for none) and
    each of `schedules` (`"time"`, `"loss"`), a grid of `G` kernels at uniform snapshot times
    of the reference run, interpolated (`interpolation`: `"linear"`, `"smooth"`,
    `"constant"`); their rows add `grid_seconds` (kernel computation), `speedup` (true-flow
    seconds over surrogate solve seconds) and `truth_uncertainty`. Each row records wall
    seconds of the compiled solve (compile time separately), how they were timed (`timing`:
    the true flows single-shot, surrogates the median of 5 runs) and solver steps.

    With `out`, `results.json` there records the settings and every finished method (see
    `ntkode/studies/_run.py`), with the solutions beside it (`parts/`), then `compare.png`
    and, with grids, `error_vs_G.png`. Rerun with the same settings and the finished methods
    are read back instead of recomputed (`resume=None`: when the settings match; `True`:
    refuse other settings; `False`: always recompute).

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

        given = dict(n_train=n_train, width=width, t_end=t_end)
        return classification_study(
            problem=problem_name, model=model, seed=seed, rtol=rtol, out=out, quick=quick,
            progress=progress, log=log, grid_sizes=grid_sizes, schedules=schedules,
            interpolation=interpolation, tune=tune, tune_steps=tune_steps,
            tune_sizes=tune_sizes, resume=resume,
            **{k: v for k, v in given.items() if v is not None},
        )  # fmt: skip
    # --- end of the classification hook ---
    base = QUICK if quick else FULL
    given = dict(width=width, depth=depth, n_train=n_train, n_test=n_test, dim=dim, t_end=t_end)
    size = {k: (base[k] if v is None else v) for k, v in given.items()}
    width, depth, n_train, n_test, dim = (
        int(size[k]) for k in ("width", "depth", "n_train", "n_test", "dim")
    )
    t_end = float(size["t_end"])
    if grid_sizes is None:
        grid_sizes = (2, 8) if quick else (2, 4, 8, 16)
    tuned = [G for G in grid_sizes if G in tune_sizes and G >= 3] if tune else []
    tune_steps = tune_steps if tune_steps is not None else (5 if quick else 25)
    settings = dict(
        width=width, depth=depth, n_train=n_train, n_test=n_test, dim=dim, t_end=t_end,
        seed=seed, activation=activation, rtol=rtol, n_save=n_save,
        grid_sizes=list(grid_sizes), schedules=list(schedules), interpolation=interpolation,
        tune=bool(tuned), tune_nodes=tune_nodes if tuned else None,
        tune_steps=tune_steps if tuned else None, tune_sizes=tuned,
        dtype=jnp.dtype(jnp.result_type(float)).name,
    )  # fmt: skip
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
    record = StudyRecord(out, "compare", settings, parts="rows", resume=resume, log=log)
    ts = jnp.linspace(0.0, t_end, n_save)
    if grid_sizes:
        ts = saveat_with_nodes(ts, t_end, grid_sizes)
    steps = 4 if grid_sizes else 3
    cmp = Comparison("true")
    snapshots = _snapshot_indices(ts, t_end, grid_sizes)

    def checkpoint(name: str) -> None:
        arrays = solution_arrays(cmp.solutions[name])
        if name == "true" and snapshots.size:
            # The weights the grids need (at the snapshot times only), for resuming.
            leaves = jax.tree.leaves(cmp.solutions["true"].weights)
            arrays.update({f"w{i}": np.asarray(w)[snapshots] for i, w in enumerate(leaves)})
        record.put(name, cmp.rows[name], arrays=arrays)

    def resumed(name: str) -> bool:
        if name not in record or name in cmp.rows:
            return name in cmp.rows
        arrays = record.arrays(name)
        weights = None
        if name == "true" and snapshots.size:
            weights = _scatter_weights(problem.model, arrays, snapshots, ts.shape[0])
        cmp.rows[name] = record.get(name)
        cmp.solutions[name] = solution_from_arrays(arrays, weights)
        return True

    log(
        f"sine: MLP {dim}->{width}x{depth}->1 ({activation}), n_train={n_train}, "
        f"n_test={n_test}, t in [0, {t_end}]; {machine_line()}"
    )

    def true_flow(tol: float):
        # One program for both tolerances (they are arrays; the outputs, weights included,
        # are the same), so the loose run reuses the reference's compiled solve.
        return timed_solve(
            problem,
            saveat=ts,
            rtol=tol,
            atol=1e-2 * tol,
            progress=progress,
            save_weights=bool(grid_sizes),
        )

    stage = time.perf_counter()
    log(f"[1/{steps}] true flow, Tsit5, rtol={rtol:g} (reference)")
    if not resumed("true"):
        true, sec, csec = true_flow(rtol)
        if not true.success:
            log(f"  warning: {true.message}")
        cmp.add("true", true, true, seconds=sec, compile_seconds=csec, rtol=rtol,
                timing="single-shot")  # fmt: skip
        checkpoint("true")
    true = cmp.solutions["true"]
    stage = _done(log, stage)

    loose = 10 * rtol
    log(f"[2/{steps}] true flow, rtol={loose:g} (the truth's own uncertainty)")
    if not resumed("true_loose"):
        sol, sec, csec = true_flow(loose)
        sol = sol.without_weights()
        cmp.add("true_loose", sol, true, seconds=sec, compile_seconds=csec, rtol=loose,
                timing="single-shot")  # fmt: skip
        checkpoint("true_loose")
    stage = _done(log, stage)

    log(f"[3/{steps}] frozen NTK at initialisation (closed form)")
    if not resumed("frozen"):
        start = time.perf_counter()
        frozen = KernelFlowProblem.from_model(
            problem.model, problem.data, problem.loss, problem.tspan, problem.learning_rate
        )
        frozen.kernel_train.block_until_ready()
        kernel_seconds = time.perf_counter() - start
        sol, sec, csec = timed_solve(frozen, saveat=ts, repeats=REPEATS)
        cmp.add(
            "frozen",
            sol,
            true,
            seconds=sec,
            compile_seconds=csec,
            grid_seconds=kernel_seconds,
            speedup=cmp.rows["true"]["seconds"] / max(sec, 1e-9),
            timing=f"median of {REPEATS}",
        )
        checkpoint("frozen")
    stage = _done(log, stage)

    if grid_sizes:
        log(f"[4/4] scheduled NTK grids, G in {list(grid_sizes)}, {interpolation} weights")
        for name in record.resumed:
            if name.startswith(("scheduled_", "tuned_")):
                resumed(name)
        add_scheduled_rows(
            cmp,
            problem,
            true,
            grid_sizes=grid_sizes,
            schedules=schedules,
            interpolation=interpolation,
            log=log,
            checkpoint=checkpoint,
            repeats=REPEATS,
        )
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
                steps=tune_steps,
                log=log,
                checkpoint=checkpoint,
                repeats=REPEATS,
            )
        # The weights were only needed for the grids; drop them before keeping the solution.
        cmp.solutions["true"] = true.without_weights()
        _done(log, stage)

    if out:
        plot_comparison(
            cmp,
            schedules,
            f"sine ({activation}, width {width}, n = {n_train}): the true gradient flow against "
            "the frozen NTK and the G = 8 scheduled grids",
            os.path.join(out, "compare.png"),
        )
        if grid_sizes:
            plot_error_vs_grid(cmp, os.path.join(out, "error_vs_G.png"))
        if any(k.startswith("tuned_") for k in cmp.rows):
            from ._tuned_rows import plot_nodes_on_loss

            plot_nodes_on_loss(cmp, os.path.join(out, "tuned_nodes.png"))
    record.finish()
    return cmp


def timing_note(cmp: Comparison) -> str:
    """How the table's seconds were measured, and on what machine."""
    once = [n for n, r in cmp.rows.items() if r.get("timing") == "single-shot"]
    median = [n for n, r in cmp.rows.items() if str(r.get("timing", "")).startswith("median")]
    parts = []
    if once:
        parts.append(f"{', '.join(once)}: single-shot")
    if median:
        parts.append(f"the other {len(median)} rows: median of {REPEATS} runs")
    return (
        f"seconds: wall time of the compiled solve ({'; '.join(parts)}); speed-up = "
        f"true-flow seconds / row seconds. Measured on {machine_line()}."
    )


def _done(log: Callable[[str], Any], start: float) -> float:
    now = time.perf_counter()
    log(f"  ({now - start:.1f} s)")
    return now


def _snapshot_indices(ts, t_end: float, grid_sizes) -> np.ndarray:
    """Indices of the saved times the grids take their kernels at (the weights to keep)."""
    if not grid_sizes:
        return np.zeros(0, int)
    t = np.asarray(ts)
    times = np.concatenate(list(node_times(t_end, grid_sizes).values()))
    return np.unique([int(np.abs(t - s).argmin()) for s in times])


def _scatter_weights(model, arrays, index: np.ndarray, T: int):
    """Saved snapshot weights back on the saved-time axis (zeros where none was kept)."""
    params, _ = partition(model)
    leaves, treedef = jax.tree.flatten(params)
    full = []
    for i, leaf in enumerate(leaves):
        w = np.zeros((T,) + leaf.shape, leaf.dtype)
        w[index] = arrays[f"w{i}"]
        full.append(jnp.asarray(w))
    return jax.tree.unflatten(treedef, full)
