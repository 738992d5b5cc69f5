"""The transfer study: a kernel grid built on one training run, used to predict other runs.

(a) the same run's test outputs, (b) a run with another learning rate, (c) a run on other
targets. Time schedules follow the reference run's clock; state schedules (the loss level)
follow the state, which is what should transfer across learning rates. Gradient flow with
learning rate $\\eta$ is the $\\eta = 1$ flow with time rescaled by $\\eta$, so in case (b) a
loss-scheduled grid sees exactly the states it was built on, while a time-scheduled one
applies them at the wrong times.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np

from .._core._compare import trajectory_errors
from .._core._data import Dataset
from .._core._gradient_flow import GradientFlowProblem
from .._core._kernel_flow import KernelFlowProblem
from .._core._problem import remake
from .._core._solve import solve
from .._scheduled._dense import KernelGrid
from .._scheduled._interp import AbstractInterpolation, Linear
from .._scheduled._problem import surrogate_for
from .._scheduled._schedule import LossLevel, Time


def _errors(sol, ref) -> dict[str, float]:
    e = trajectory_errors(sol, ref)
    e["final_train_loss"] = float(sol.train_loss[-1])
    return e


def transfer_study(
    problem: GradientFlowProblem,
    *,
    grid_size: int = 8,
    learning_rate_factor: float = 0.5,
    targets: Callable[[Any], Any] | None = None,
    interpolation: AbstractInterpolation = Linear(),
    rtol: float = 1e-6,
    n_save: int = 101,
    log: Callable[[str], Any] = print,
) -> dict[str, dict[str, dict[str, float]]]:
    """Build time- and loss-scheduled grids of `grid_size` kernels on `problem`'s true run and
    measure how well they predict (a) its test outputs, (b) the run with learning rate
    `learning_rate_factor·η`, (c) the run on targets `targets(x_train)` / `targets(x_test)`
    (default `cos(Σx)`), each against that run's own true flow; the frozen initial kernel is
    the baseline.

    **Returns:** `{case: {method: {max_rel_train_error, max_rel_test_error,
    final_train_loss}}}` with cases `"a_same_run"`, `"b_learning_rate"`, `"c_targets"` and
    methods `"time"`, `"loss"`, `"frozen"`.
    """
    targets = targets or (lambda x: jnp.cos(jnp.sum(x.reshape(x.shape[0], -1), axis=1)))
    t0, t1 = float(problem.t0), float(problem.t1)
    ts = np.linspace(t0, t1, n_save)
    times = np.linspace(t0, t1, grid_size) if grid_size > 1 else np.array([t0])
    saveat = np.unique(np.concatenate([ts, times]))
    kw = dict(saveat=saveat, rtol=rtol, atol=1e-2 * rtol)
    log(f"transfer: reference run (t in [{t0}, {t1}]), grids of {grid_size} kernels")
    ref = solve(problem, save_weights=True, **kw)
    grids = {
        name: KernelGrid.from_solution(ref, times, problem.model, problem.data, schedule=s)
        for name, s in (("time", Time()), ("loss", LossLevel()))
    }
    schedules = {"time": Time(), "loss": LossLevel()}
    data = problem.data
    other = Dataset(
        data.x_train, targets(data.x_train), data.x_test, targets(data.x_test), name="targets"
    )
    cases = {
        "a_same_run": problem,
        "b_learning_rate": remake(
            problem, learning_rate=problem.learning_rate * learning_rate_factor
        ),
        "c_targets": remake(problem, data=other),
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for case, prob in cases.items():
        truth = ref if case == "a_same_run" else solve(prob, **kw)
        rows = {}
        for name, grid in grids.items():
            sur = surrogate_for(grid, prob, schedules[name], interpolation)
            rows[name] = _errors(solve(sur, saveat=saveat, rtol=1e-8, atol=1e-10), truth)
        frozen = KernelFlowProblem.from_model(
            prob.model, prob.data, prob.loss, prob.tspan, prob.learning_rate
        )
        rows["frozen"] = _errors(solve(frozen, saveat=saveat), truth)
        out[case] = rows
        log(
            f"  {case}: "
            + ", ".join(
                f"{m} train {r['max_rel_train_error']:.2%} / test {r['max_rel_test_error']:.2%}"
                for m, r in rows.items()
            )
        )
    return out


__all__ = ["transfer_study"]
