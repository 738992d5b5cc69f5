"""Scheduled-kernel rows of the comparison study: grids of G ∈ {2, 4, 8, 16} NTKs on the true path.

Kernels are computed once per snapshot time and shared by every grid that uses it; time- and
loss-scheduled grids use the same snapshots (so they differ only in the scheduling variable).
"""

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..._core._compare import Comparison
from ..._core._solve import timed_solve
from ..._plot import pyplot, save
from ..._scheduled._certify import certify
from ..._scheduled._dense import KernelGrid
from ..._scheduled._interp import Linear, PiecewiseConstant, Smoothstep
from ..._scheduled._problem import ScheduledKernelProblem
from ..._scheduled._schedule import LossLevel, Time

SCHEDULES = {"time": Time(), "loss": LossLevel()}
INTERPOLATIONS = {"linear": Linear(), "smooth": Smoothstep(), "constant": PiecewiseConstant()}


def node_times(t_end: float, grid_sizes: Sequence[int]) -> dict[int, np.ndarray]:
    """Uniform snapshot times `linspace(0, t_end, G)` for each grid size."""
    return {int(G): np.linspace(0.0, t_end, int(G)) if G > 1 else np.zeros(1) for G in grid_sizes}


def saveat_with_nodes(ts, t_end: float, grid_sizes: Sequence[int]) -> jax.Array:
    """The study's output times plus every snapshot time (weights are saved there)."""
    extra = np.concatenate(list(node_times(t_end, grid_sizes).values()))
    t = np.unique(np.concatenate([np.asarray(ts, dtype=float), extra]))
    # Merge times closer than float32 can tell apart (snapshots are then taken at the
    # nearest saved time, 1e-6·t_end away at most).
    t = t[np.concatenate([[True], np.diff(t) > 1e-6 * max(t_end, 1.0)])]
    return jnp.asarray(t, dtype=jnp.asarray(ts).dtype)


class KernelCache:
    """Train/test kernels of a true-flow solution at its saved times, computed once each."""

    def __init__(self, sol, model, data):
        self.sol, self.model, self.data = sol, model, data
        self.kernels: dict[int, tuple[Any, Any]] = {}
        self.seconds: dict[int, float] = {}

    def index(self, t: float) -> int:
        return int(np.abs(np.asarray(self.sol.t) - t).argmin())

    def get(self, t: float):
        i = self.index(t)
        if i not in self.kernels:
            start = time.perf_counter()
            params = jax.tree.map(lambda a: a[i : i + 1], self.sol.weights)
            g = KernelGrid.from_params(params, self.model, self.data, jnp.zeros(1))
            kt, ks = jax.block_until_ready((g.dense_train()[0], g.dense_test()[0]))
            self.kernels[i] = (kt, ks)
            self.seconds[i] = time.perf_counter() - start
        return self.kernels[i]

    def grid(self, times, schedule) -> tuple[KernelGrid, float]:
        """A grid at `times` keyed by `schedule`; returns it and its kernels' build seconds."""
        idx = [self.index(t) for t in times]
        ks = [self.get(t) for t in times]
        sol = self.sol
        nodes = np.asarray(
            [float(schedule(sol.t[i], sol.train[i], sol.y_train, sol.loss)) for i in idx]
        )
        order = np.argsort(nodes, kind="stable")
        grid = KernelGrid(
            nodes[order],
            jnp.stack([ks[j][0] for j in order]),
            jnp.stack([ks[j][1] for j in order]),
            n_outputs=self.data.n_outputs,
            times=np.asarray(sol.t)[np.asarray(idx)[order]],
            u0_train=sol.train[0],
            u0_test=sol.test[0],
        )
        return grid, float(sum(self.seconds[i] for i in idx))


def add_scheduled_rows(
    cmp: Comparison,
    problem,
    true,
    *,
    grid_sizes: Sequence[int] = (2, 4, 8, 16),
    schedules: Sequence[str] = ("time", "loss"),
    interpolation: str = "linear",
    exact_substeps: int = 2,
    saveat=None,
    log: Callable[[str], Any] = print,
    checkpoint: Callable[[str], None] = lambda label: None,
    repeats: int = 5,
) -> None:
    """Add rows `scheduled_<schedule>_G<G>` to `cmp` (errors against `true`).

    With `exact_substeps`, also rows `scheduled_time_exact_G<G>` / `scheduled_loss_exact_G<G>`:
    `PiecewiseConstant("average", exact_substeps)`, solved by exact exponentials (no steps).
    Rows already in `cmp` (resumed) are skipped; `checkpoint(label)` is called after each new
    row. Solve seconds are the median of `repeats` runs.
    """
    cache = KernelCache(true, problem.model, problem.data)
    truth_err = cmp.rows.get("true_loose", {}).get("max_rel_train_error", float("nan"))
    true_seconds = cmp.rows["true"]["seconds"]
    times = node_times(float(problem.t1), grid_sizes)
    variants = [(name, name, INTERPOLATIONS[interpolation]) for name in schedules]
    if exact_substeps and "time" in schedules:
        # The exact path: midpoint-rule pieces of the linear interpolant, no ODE steps.
        variants.append(("time_exact", "time", PiecewiseConstant("average", exact_substeps)))
    if exact_substeps and "loss" in schedules:
        variants.append(("loss_exact", "loss", PiecewiseConstant("average", exact_substeps)))
    for G in grid_sizes:
        for label_name, name, interp in variants:
            label = f"scheduled_{label_name}_G{G}"
            if label in cmp.rows:
                continue
            grid, grid_seconds = cache.grid(times[G], SCHEDULES[name])
            p = ScheduledKernelProblem(
                grid,
                problem.data,
                SCHEDULES[name],
                interp,
                problem.loss,
                problem.tspan,
                problem.learning_rate,
            )
            sol, sec, csec = timed_solve(
                p, saveat=true.t if saveat is None else saveat, repeats=repeats
            )
            cert = certify(grid, problem.learning_rate, interp)
            r = np.linalg.norm(
                np.asarray(sol.train - sol.y_train).reshape(sol.t.shape[0], -1), axis=1
            )
            holds = bool(np.all(r <= np.asarray(cert.bound(sol.t - sol.t[0], r[0])) * (1 + 1e-4)))
            row = cmp.add(
                label,
                sol,
                true,
                seconds=sec,
                compile_seconds=csec,
                grid_seconds=grid_seconds,
                speedup=true_seconds / max(sec, 1e-9),
                truth_uncertainty=truth_err,
                grid_size=int(G),
                certified_rate=float(cert.rate),
                stiffness=float(cert.stiffness),
                certificate_holds=holds,
                schedule=label_name,
                interpolation=type(interp).__name__,
                timing=f"median of {repeats}",
            )
            log(
                f"  {label}: train err {row['max_rel_train_error']:.2%} (truth ±{truth_err:.2%}), "
                f"test err {row['max_rel_test_error']:.2%}, solve {sec:.3f}s "
                f"({row['speedup']:.0f}x), kernels {grid_seconds:.1f}s"
            )
            checkpoint(label)


def plot_error_vs_grid(cmp: Comparison, path: str) -> None:
    """Max relative train error against G per schedule, with the frozen kernel and the truth's
    own uncertainty as horizontal lines."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    by = {}
    for row in cmp.rows.values():
        if "grid_size" in row:
            by.setdefault(row["schedule"], []).append(
                (row["grid_size"], row["max_rel_train_error"], row["max_rel_test_error"])
            )
    sizes = sorted({g for pts in by.values() for g, _, _ in pts})
    for i, (name, pts) in enumerate(sorted(by.items())):
        pts.sort()
        G, e, et = zip(*pts, strict=True)
        label = name.replace("_", " ")
        ax.loglog(G, e, "o-", color=f"C{i}", label=f"{label} schedule, train")
        ax.loglog(G, et, "s--", color=f"C{i}", lw=1, mfc="none", label=f"{label} schedule, test")
    if "frozen" in cmp.rows:
        ax.axhline(cmp.rows["frozen"]["max_rel_train_error"], color="k", ls=":", label="frozen NTK")
    if "true_loose" in cmp.rows:
        ax.axhline(
            cmp.rows["true_loose"]["max_rel_train_error"],
            color="r",
            ls="-.",
            label="truth's own uncertainty\n(rtol ×10 vs reference)",
        )
    if sizes:
        ax.set_xticks(sizes, [str(g) for g in sizes])
        ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set(
        xlabel="grid size G (kernels in the grid)",
        ylabel="max over t of ‖u − u_true‖ / ‖u_true(0) − Y‖",
        title="Scheduled-NTK surrogates against the true flow: error vs grid size",
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_comparison(cmp: Comparison, schedules: Sequence[str], title: str, path: str) -> None:
    """The figure `compare.png`: the reference, the frozen kernel and the G = 8 grids."""
    shown = Comparison(cmp.reference_name)
    shown.rows = cmp.rows
    keep = (cmp.reference_name, "frozen") + tuple(f"scheduled_{s}_G8" for s in schedules)
    shown.solutions = {k: v for k, v in cmp.solutions.items() if k in keep}
    fig, _ = shown.plot()
    fig.suptitle(title)
    fig.tight_layout()  # again, now with the suptitle
    save(fig, path)


__all__ = [
    "KernelCache",
    "add_scheduled_rows",
    "node_times",
    "plot_comparison",
    "plot_error_vs_grid",
]
