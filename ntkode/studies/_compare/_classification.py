"""Classification rows of the comparison study: `ntkode compare --problem digits`.

The same study as for **sine** (`ntkode/studies/_compare/_study.py`): the true flow at
`rtol` (reference) and at `10·rtol` (the truth's own uncertainty), the frozen NTK, scheduled
grids of `G` kernels at uniform snapshot times of the reference run, on time and on the loss
level, and with `tune` their adjoint-tuned node positions. Cross-entropy has no closed form,
so every surrogate is a diffrax solve of the function-space flow
$\\dot u = -\\eta\\,\\Theta(s)\\nabla_u L(u)$.

With `k = 10` outputs a full NTK is `(n·k)²`: 1.65 GB per node in float64 at `n = 1,437`.
The surrogates therefore use the output-traced kernel $\\bar\\Theta\\otimes I_k$,
$\\bar\\Theta = \\operatorname{tr}_k\\Theta/k$ ([`ntkode.SharedKernelGrid`][], `(n, n)` per
node); whether the full blocks are needed is measured by rows `*_full` with them, the frozen
kernel always and the largest grid `G ≤ 8` while `G·(n·k)²` floats fit in `full_max_floats`.

Every row adds the classification metrics of `ntkode/_core/_metrics.py`
(`final_test_accuracy`, `max_accuracy_gap`, `final_class_agreement`, `final_train_accuracy`)
against the reference; the figure `accuracy.png` draws test accuracy over time per method.
"""

import os
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..._core._compare import Comparison
from ..._core._kernel_flow import KernelFlowProblem
from ..._core._metrics import accuracy, classification_metrics
from ..._core._records import solution_arrays, solution_from_arrays
from ..._core._solve import timed_solve
from ..._plot import pyplot
from ..._scheduled._dense import KernelGrid
from ..._scheduled._interp import PiecewiseConstant
from ..._scheduled._problem import ScheduledKernelProblem, ScheduleRangeWarning
from ..._scheduled._shared import SharedKernelGrid
from .._problems import digits_problem
from .._run import StudyRecord, machine_line
from ._scheduled_rows import (
    INTERPOLATIONS,
    SCHEDULES,
    node_times,
    plot_comparison,
    plot_error_vs_grid,
    saveat_with_nodes,
)
from ._study import _scatter_weights, _snapshot_indices

#: `--quick`: a subset and a smaller CNN (its time is mostly compilation, see the docstring).
QUICK = dict(n_train=64, channels=4, t_end=10.0)


class TracedKernelCache:
    """Output-traced kernels of a true-flow solution at its saved times, computed once each."""

    def __init__(self, sol, model, data, full: bool = False):
        self.sol, self.model, self.data, self.full = sol, model, data, full
        self.kernels: dict[int, tuple[Any, Any]] = {}
        self.seconds: dict[int, float] = {}

    def index(self, t: float) -> int:
        return int(np.abs(np.asarray(self.sol.t) - t).argmin())

    def get(self, t: float):
        i = self.index(t)
        if i not in self.kernels:
            start = time.perf_counter()
            params = jax.tree.map(lambda a: a[i : i + 1], self.sol.weights)
            g = KernelGrid.from_params(
                params, self.model, self.data, jnp.zeros(1), trace=not self.full
            )
            self.kernels[i] = jax.block_until_ready((g.kernel_train[0], g.kernel_test[0]))
            self.seconds[i] = time.perf_counter() - start
        return self.kernels[i]

    def grid(self, times, schedule):
        """A grid at `times` keyed by `schedule`; returns it and its kernels' build seconds."""
        idx = [self.index(t) for t in times]
        ks = [self.get(t) for t in times]
        sol = self.sol
        nodes = np.asarray(
            [float(schedule(sol.t[i], sol.train[i], sol.y_train, sol.loss)) for i in idx]
        )
        order = np.argsort(nodes, kind="stable")
        cls = KernelGrid if self.full else SharedKernelGrid
        grid = cls(
            nodes[order],
            jnp.stack([ks[j][0] for j in order]),
            jnp.stack([ks[j][1] for j in order]),
            n_outputs=self.data.n_outputs,
            times=np.asarray(sol.t)[np.asarray(idx)[order]],
            u0_train=sol.train[0],
            u0_test=sol.test[0],
        )
        return grid, float(sum(self.seconds[i] for i in idx))


def _add(cmp: Comparison, label: str, sol, true, log, **extra) -> dict[str, Any]:
    row = cmp.add(label, sol, true, **extra)
    row.update(classification_metrics(sol, true))
    truth = cmp.rows.get("true_loose", {}).get("max_rel_train_error", float("nan"))
    log(
        f"  {label}: train err {row['max_rel_train_error']:.2%} (truth ±{truth:.2%}), "
        f"test acc {row['final_test_accuracy']:.2%} (gap ≤ {row['max_accuracy_gap']:.2%}), "
        f"agreement {row['final_class_agreement']:.2%}, solve {row['seconds']:.2f}s"
    )
    return row


def classification_study(
    *,
    problem: str = "digits",
    model: str = "cnn",
    n_train: int = 1437,
    channels: int = 8,
    width: int = 256,
    t_end: float = 20.0,
    seed: int = 0,
    rtol: float = 1e-5,
    n_save: int = 101,
    out: str | None = "ntkode-out",
    quick: bool = False,
    progress: bool = True,
    log: Callable[[str], Any] = print,
    grid_sizes: tuple[int, ...] | None = None,
    schedules: Sequence[str] = ("time", "loss"),
    interpolation: str = "linear",
    tune: bool = False,
    tune_steps: int | None = None,
    tune_sizes: tuple[int, ...] = (4, 8),
    full_max_floats: float = 2e8,
    resume: bool | None = None,
) -> Comparison:
    """True flow vs kernel surrogates on a classification problem (**digits**).

    Rows as in [`ntkode.studies.compare_study`][] (`true`, `true_loose`, `frozen`,
    `scheduled_<schedule>_G<G>`, with `tune` also `tuned_<schedule>_G<G>`: node positions on
    the schedule tuned by [`ntkode.tune_grid`][]), on output-traced kernels, plus `frozen_full`
    (and `scheduled_time_full_G<G>`, the largest `G ≤ 8` whose `G·(n·k)²` floats fit in
    `full_max_floats`) on full `(n·k)²` blocks. `quick` uses `n_train = 64`, 4 channels,
    `t_end = 10`, `G ∈ {2, 8}` and no full-block grid (`frozen_full` still compares the full
    blocks with the traced kernel): a smoke test whose time is mostly compilation, one
    compile per solve shape and per kernel function.

    With `out`, `results.json` there records the settings and every finished row with its
    solution beside it (`parts/`, the reference's weights at the grids' snapshot times
    included), through the shared [`ntkode.studies._run.StudyRecord`][]: a rerun with the
    same settings reads the finished rows back instead of recomputing them (`resume=None`;
    `True`: other settings are an error; `False`: always recompute), and Ctrl-C on the
    command line keeps every finished row.

    **Returns:** a [`ntkode.Comparison`][] whose rows carry the classification metrics.
    """
    if problem != "digits":
        raise ValueError(f"Unknown classification `problem` {problem!r}; the one here is 'digits'.")
    if grid_sizes is None:
        grid_sizes = (2, 8) if quick else (2, 4, 8, 16)
    if quick:
        n_train, channels, t_end = int(QUICK["n_train"]), int(QUICK["channels"]), QUICK["t_end"]
        n_save = min(n_save, 51)
    tuned = [G for G in grid_sizes if G in tune_sizes and G >= 3] if tune else []
    tune_steps = tune_steps if tune_steps is not None else (5 if quick else 25)
    prob = digits_problem(
        model=model, n_train=n_train, channels=channels, width=width, t_end=t_end, seed=seed
    )
    data, k = prob.data, prob.data.n_outputs
    settings = dict(
        problem=problem, model=model, n_train=int(n_train), channels=int(channels),
        width=int(width), t_end=float(t_end), seed=int(seed), rtol=float(rtol),
        n_save=int(n_save), quick=bool(quick), grid_sizes=[int(G) for G in grid_sizes],
        schedules=list(schedules), interpolation=interpolation, tune_sizes=tuned,
        tune_steps=tune_steps if tuned else None, full_max_floats=float(full_max_floats),
        dtype=jnp.dtype(jnp.result_type(float)).name,
    )  # fmt: skip
    record = StudyRecord(out, "compare", settings, parts="rows", resume=resume, log=log)
    ts = jnp.linspace(0.0, t_end, n_save)
    if grid_sizes:
        ts = saveat_with_nodes(ts, t_end, grid_sizes)
    cmp = Comparison("true")
    # The reference's weights the surrogates need: t = 0 (frozen) and every grid's snapshots.
    snapshots = np.union1d(_snapshot_indices(ts, t_end, grid_sizes), [0]).astype(int)

    def checkpoint(name: str) -> None:
        arrays = solution_arrays(cmp.solutions[name])
        if name == "true":
            leaves = jax.tree.leaves(cmp.solutions["true"].weights)
            arrays.update({f"w{i}": np.asarray(w)[snapshots] for i, w in enumerate(leaves)})
        record.put(name, cmp.rows[name], arrays=arrays)

    def resumed(name: str) -> bool:
        """Whether row `name` is finished (read back from the record if it was saved)."""
        if name in cmp.rows or name not in record:
            return name in cmp.rows
        arrays = record.arrays(name)
        weights = None
        if name == "true":
            weights = _scatter_weights(prob.model, arrays, snapshots, ts.shape[0])
        cmp.rows[name] = record.get(name)
        cmp.solutions[name] = solution_from_arrays(arrays, weights)
        return True

    arch = f"CNN (1->{channels}->{channels}, 3x3)" if model == "cnn" else f"MLP 64->{width}"
    log(
        f"digits: {arch} -> 10, softmax cross-entropy, n_train={data.n_train}, "
        f"n_test={data.n_test}, t in [0, {t_end}]; {machine_line()}"
    )

    def true_flow(tol: float):
        # One program for both tolerances (arrays; the same outputs, weights included), so
        # the loose run reuses the reference's compiled solve.
        return timed_solve(
            prob, saveat=ts, rtol=tol, atol=1e-2 * tol, progress=progress, save_weights=True
        )

    log(f"[1/4] true flow, Tsit5, rtol={rtol:g} (reference)")
    if not resumed("true"):
        true, sec, csec = true_flow(rtol)
        if not true.success:
            log(f"  warning: {true.message}")
        _add(cmp, "true", true, true, log, seconds=sec, compile_seconds=csec, rtol=rtol)
        checkpoint("true")
    true = cmp.solutions["true"]
    true_seconds = cmp.rows["true"]["seconds"]

    loose = 10 * rtol
    log(f"[2/4] true flow, rtol={loose:g} (the truth's own uncertainty)")
    if not resumed("true_loose"):
        sol, sec, csec = true_flow(loose)
        sol = sol.without_weights()
        _add(cmp, "true_loose", sol, true, log, seconds=sec, compile_seconds=csec, rtol=loose)
        checkpoint("true_loose")
    truth_err = cmp.rows["true_loose"]["max_rel_train_error"]

    def solve(grid, schedule, interp):
        return timed_solve(
            ScheduledKernelProblem(
                grid, data, schedule, interp, prob.loss, prob.tspan, prob.learning_rate
            ),
            saveat=ts,
            rtol=rtol,
            atol=1e-2 * rtol,
        )

    log("[3/4] frozen NTK at initialisation (output-traced; full blocks as frozen_full)")
    traced = TracedKernelCache(true, prob.model, data)
    if not resumed("frozen"):
        grid, build = traced.grid([0.0], SCHEDULES["time"])
        with warnings.catch_warnings():  # one node: the kernel is frozen by design, not clamped
            warnings.simplefilter("ignore", ScheduleRangeWarning)
            sol, sec, csec = solve(grid, SCHEDULES["time"], PiecewiseConstant())
        _add(cmp, "frozen", sol, true, log, seconds=sec, compile_seconds=csec, grid_seconds=build,
             speedup=true_seconds / max(sec, 1e-9), kernel="traced")  # fmt: skip
        checkpoint("frozen")
    if not resumed("frozen_full"):
        start = time.perf_counter()
        frozen = KernelFlowProblem.from_model(
            prob.model, data, prob.loss, prob.tspan, prob.learning_rate
        )
        frozen.kernel_train.block_until_ready()
        build = time.perf_counter() - start
        sol, sec, csec = timed_solve(frozen, saveat=ts, rtol=rtol, atol=1e-2 * rtol)
        del frozen
        _add(cmp, "frozen_full", sol, true, log, seconds=sec, compile_seconds=csec,
             grid_seconds=build, speedup=true_seconds / max(sec, 1e-9),
             kernel="full")  # fmt: skip
        checkpoint("frozen_full")

    if grid_sizes:
        log(f"[4/4] scheduled NTK grids, G in {list(grid_sizes)}, {interpolation} weights")
        times = node_times(t_end, grid_sizes)
        interp = INTERPOLATIONS[interpolation]
        common = dict(truth_uncertainty=truth_err, interpolation=interpolation)
        for G in grid_sizes:
            for name in schedules:
                label = f"scheduled_{name}_G{G}"
                if resumed(label):
                    continue
                grid, build = traced.grid(times[G], SCHEDULES[name])
                sol, sec, csec = solve(grid, SCHEDULES[name], interp)
                _add(cmp, label, sol, true, log, seconds=sec, compile_seconds=csec,
                     grid_seconds=build, grid_size=int(G), schedule=name,
                     speedup=true_seconds / max(sec, 1e-9), kernel="traced", **common)  # fmt: skip
                checkpoint(label)
        fits = [G for G in grid_sizes if G <= 8 and G * (data.n_train * k) ** 2 <= full_max_floats]
        if fits and "time" in schedules and not quick:
            G = max(fits)
            label = f"scheduled_time_full_G{G}"
            if not resumed(label):
                full = TracedKernelCache(true, prob.model, data, full=True)
                grid, build = full.grid(times[G], SCHEDULES["time"])
                sol, sec, csec = solve(grid, SCHEDULES["time"], interp)
                del full, grid
                _add(cmp, label, sol, true, log, seconds=sec, compile_seconds=csec,
                     grid_seconds=build, grid_size=int(G), schedule="time_full",
                     speedup=true_seconds / max(sec, 1e-9), kernel="full", **common)  # fmt: skip
                checkpoint(label)
        if tuned:
            log(f"[tune] tuning schedule nodes of the uniform grids G in {tuned}")
            _add_tuned_rows(cmp, prob, true, traced, times, tuned, schedules, interp, ts,
                            steps=tune_steps, log=log, checkpoint=checkpoint,
                            resumed=resumed)  # fmt: skip
    cmp.solutions["true"] = true.without_weights()
    if out:
        plot_comparison(
            cmp,
            schedules,
            f"digits ({model}, n = {data.n_train}): the true gradient flow against the frozen "
            "NTK and the G = 8 scheduled grids (output-traced kernels)",
            os.path.join(out, "compare.png"),
        )
        plot_accuracy(cmp, os.path.join(out, "accuracy.png"))
        if grid_sizes:
            plot_error_vs_grid(cmp, os.path.join(out, "error_vs_G.png"))
    record.finish()
    return cmp


def _add_tuned_rows(
    cmp,
    prob,
    true,
    cache,
    times,
    grid_sizes,
    schedules,
    interp,
    ts,
    *,
    steps,
    log,
    checkpoint,
    resumed,
) -> None:
    """Rows `tuned_<schedule>_G<G>`: schedule-node positions tuned against the reference."""
    from ..._tuning._nodes import ScheduleNodes
    from ..._tuning._tune import tune_grid

    for G in grid_sizes:
        for name in schedules:
            label = f"tuned_{name}_G{G}"
            if resumed(label):
                continue
            grid, _ = cache.grid(times[G], SCHEDULES[name])
            p = ScheduledKernelProblem(
                grid,
                prob.data,
                SCHEDULES[name],
                interp,
                prob.loss,
                prob.tspan,
                prob.learning_rate,
            )
            start = time.perf_counter()
            res = tune_grid(
                p,
                true,
                nodes=ScheduleNodes(),
                optimiser=optax.adam(0.1),
                steps=steps,
                log=lambda s, label=label: log(f"    {label}{s}"),
            )
            tune_seconds = time.perf_counter() - start
            sol, sec, csec = timed_solve(res.problem, saveat=ts)
            base = cmp.rows.get(f"scheduled_{name}_G{G}", {}).get("max_rel_train_error")
            row = _add(
                cmp,
                label,
                sol,
                true,
                log,
                seconds=sec,
                compile_seconds=csec,
                tune_seconds=tune_seconds,
                grid_size=int(G),
                schedule=f"tuned_{name}",
                nodes=np.asarray(res.nodes).tolist(),
                objective=res.objective,
                initial_objective=res.initial_objective,
                kernel="traced",
            )
            if base is not None:
                row["error_reduction"] = base / row["max_rel_train_error"]
            checkpoint(label)


def plot_accuracy(cmp: Comparison, path: str) -> None:
    """Test accuracy over time of every method (train accuracy where there is no test set)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    ref = cmp.solutions[cmp.reference_name]
    colours = plt.get_cmap("tab20").colors
    on_test = True
    for i, (name, sol) in enumerate(cmp.solutions.items()):
        on_test = sol.y_test.shape[0] > 0
        acc = accuracy(sol.test if on_test else sol.train, sol.y_test if on_test else sol.y_train)
        style = (
            dict(lw=2.2, color="k", zorder=3)
            if sol is ref
            else dict(lw=1.1, color=colours[i % len(colours)], ls="--")
        )
        ax.plot(np.asarray(sol.t), np.asarray(acc), label=name, **style)
    split = "test" if on_test else "train"
    ax.set(
        xlabel="training time t (gradient-flow time)",
        ylabel=f"{split} accuracy (fraction correct)",
        title=f"{split.capitalize()} accuracy over training: the network ({cmp.reference_name}) "
        "and each surrogate",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


__all__ = ["TracedKernelCache", "classification_study", "plot_accuracy"]
