"""Tuned-grid rows of the comparison study (`ntkode compare --tune`): uniform vs tuned nodes.

For each grid size `G >= 3` and each schedule, the uniform grid of the scheduled rows is tuned
with [`ntkode.tune_grid`][] against the reference run; the row `tuned_<schedule>_G<G>` carries
the errors of the tuned surrogate, its node positions, and the error reduction factor over the
uniform row `scheduled_<schedule>_G<G>` (same G). A figure places the nodes on the loss curve.
"""

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optax

from ..._core._compare import Comparison
from ..._core._results import result_name
from ..._core._solve import timed_solve
from ..._plot import pyplot
from ..._scheduled._problem import ScheduledKernelProblem
from ..._tuning._nodes import ScheduleNodes, TimeNodes
from ..._tuning._tune import tune_grid
from ._scheduled_rows import INTERPOLATIONS, SCHEDULES, KernelCache, node_times


def add_tuned_rows(
    cmp: Comparison,
    problem,
    true,
    *,
    grid_sizes: Sequence[int] = (4, 8),
    schedules: Sequence[str] = ("time", "loss"),
    interpolation: str = "linear",
    nodes: str = "schedule",
    steps: int = 25,
    learning_rate: float = 0.1,
    log: Callable[[str], Any] = print,
    checkpoint: Callable[[str], None] = lambda label: None,
    repeats: int = 5,
) -> dict[str, Any]:
    """Add rows `tuned_<schedule>_G<G>` to `cmp`; returns the `TuneResult` of each row.

    `nodes`: `"schedule"` ([`ntkode.tuning.ScheduleNodes`][]) or `"time"`
    ([`ntkode.tuning.TimeNodes`][] on the study's network). `true` must carry weights
    (`save_weights=True`). Optimiser: Adam(`learning_rate`) for `steps` steps on the node
    logits; the best iterate is kept. Rows already in `cmp` (resumed) are skipped;
    `checkpoint(label)` is called after each new row. Solve seconds are the median of
    `repeats` runs.
    """
    kinds = {"schedule": ScheduleNodes(), "time": TimeNodes(problem.model)}
    if nodes not in kinds:
        raise ValueError(f"`nodes` must be 'schedule' or 'time', got {nodes!r}.")
    cache = KernelCache(true, problem.model, problem.data)
    times = node_times(float(problem.t1), grid_sizes)
    interp = INTERPOLATIONS[interpolation]
    truth_err = cmp.rows.get("true_loose", {}).get("max_rel_train_error", float("nan"))
    results = {}
    for G in grid_sizes:
        if G < 3:
            continue
        for name in schedules:
            label = f"tuned_{name}_G{G}"
            if label in cmp.rows:
                continue
            grid, _ = cache.grid(times[G], SCHEDULES[name])
            p = ScheduledKernelProblem(
                grid,
                problem.data,
                SCHEDULES[name],
                interp,
                problem.loss,
                problem.tspan,
                problem.learning_rate,
            )
            start = time.perf_counter()
            res = tune_grid(
                p,
                true,
                nodes=kinds[nodes],
                optimiser=optax.adam(learning_rate),
                steps=steps,
                log=lambda s, label=label: log(f"    {label}{s}"),
            )
            tune_seconds = time.perf_counter() - start
            sol, sec, csec = timed_solve(res.problem, saveat=true.t, repeats=repeats)
            uniform = cmp.rows.get(f"scheduled_{name}_G{G}", {})
            base = uniform.get("max_rel_train_error", float("nan"))
            row = cmp.add(
                label,
                sol,
                true,
                seconds=sec,
                compile_seconds=csec,
                tune_seconds=tune_seconds,
                speedup=cmp.rows["true"]["seconds"] / max(sec, 1e-9),
                truth_uncertainty=truth_err,
                grid_size=int(G),
                schedule=name,
                interpolation=interpolation,
                tuned_nodes=nodes,
                nodes=np.asarray(res.nodes).tolist(),
                initial_nodes=np.asarray(grid.nodes).tolist(),
                node_times=None if res.times is None else np.asarray(res.times).tolist(),
                objective=res.objective,
                initial_objective=res.initial_objective,
                tune_steps=res.num_steps,
                tune_result=result_name(res.result),
                tune_message=res.message,
                timing=f"median of {repeats}",
            )
            row["error_reduction"] = base / row["max_rel_train_error"]
            results[label] = res
            log(
                f"  {label}: train err {row['max_rel_train_error']:.2%} (uniform {base:.2%}, "
                f"{row['error_reduction']:.2f}x), J {res.initial_objective:.4g} -> "
                f"{res.objective:.4g}, {tune_seconds:.0f}s; nodes "
                + ", ".join(f"{v:.4g}" for v in row["nodes"])
            )
            checkpoint(label)
    return results


def _times_on_curve(values, name: str, t, loss) -> np.ndarray:
    """Reference times at which the scheduling variable takes `values`."""
    values = np.asarray(values, dtype=float)
    if name == "time":
        return values
    # Loss level: log L(t) decreases along the run; invert it on the saved curve.
    logl = np.log(np.maximum(np.asarray(loss, dtype=float), np.finfo(float).tiny))
    order = np.argsort(logl)
    return np.interp(values, logl[order], np.asarray(t)[order])


def plot_nodes_on_loss(cmp: Comparison, path: str) -> None:
    """The reference train-loss curve with uniform (open) and tuned (filled) nodes on it."""
    plt = pyplot()

    ref = cmp.solutions[cmp.reference_name]
    t, loss = np.asarray(ref.t), np.asarray(ref.train_loss)
    rows = {k: r for k, r in cmp.rows.items() if k.startswith("tuned_")}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.semilogy(t, loss, color="k", lw=1.5, label="true train loss")
    for i, (label, row) in enumerate(sorted(rows.items())):
        name, G = row["schedule"], row["grid_size"]
        tuned = (
            np.asarray(row["node_times"])
            if row.get("node_times") is not None
            else _times_on_curve(row["nodes"], name, t, loss)
        )
        init = _times_on_curve(row["initial_nodes"], name, t, loss)
        offset = 1.0 + 0.08 * i  # keep the marker rows apart
        color = f"C{i % 10}"
        ax.plot(
            init,
            np.interp(init, t, loss) * offset,
            "o",
            mfc="none",
            color=color,
            label=f"{name} G={G} uniform",
        )
        ax.plot(
            tuned,
            np.interp(tuned, t, loss) * offset,
            "o",
            color=color,
            ms=5,
            label=f"{name} G={G} tuned ({row['error_reduction']:.1f}x)",
        )
    ax.set(xlabel="t", ylabel="train loss", title="grid nodes on the loss curve")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["add_tuned_rows", "plot_nodes_on_loss"]
