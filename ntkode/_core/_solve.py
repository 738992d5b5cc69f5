"""`solve`: one entry point for every problem, and ensembles of problems solved with `vmap`."""

import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import check_positive
from ._problems import AbstractProblem, SolveOptions
from ._solution import Solution


class EnsembleProblem(eqx.Module):
    """Many variants of one problem (seeds, learning rates, data), solved together with `vmap`.

    **Arguments:**

    - `problem`: the base problem.
    - `prob_func`: `prob_func(problem, i) -> problem`, the `i`-th variant (often via
      [`ntkode.remake`][]). Variants must differ only in array *values*, not in shapes or
      structure, so that they can be stacked and solved in one vectorised call.
    - `trajectories`: how many variants.

    `solve(ensemble, ...)` returns one [`ntkode.Solution`][] with a leading trajectory axis
    and one result code per trajectory; `sol[i]` is trajectory `i`.
    """

    problem: AbstractProblem
    prob_func: Callable[[Any, int], Any] = eqx.field(static=True)
    trajectories: int = eqx.field(static=True)

    def __check_init__(self):
        if int(self.trajectories) < 1:
            raise ValueError(f"`trajectories` must be at least 1, got {self.trajectories}.")

    def stacked(self) -> AbstractProblem:
        """All variants stacked along a new leading axis of every array."""
        variants = [self.prob_func(self.problem, i) for i in range(self.trajectories)]
        dyn, static = zip(*(eqx.partition(v, eqx.is_array) for v in variants), strict=True)
        shapes = [jax.tree.map(jnp.shape, d) for d in dyn]
        if any(
            jax.tree.structure(s) != jax.tree.structure(shapes[0]) or s != shapes[0] for s in shapes
        ) or any(not eqx.tree_equal(s, static[0]) for s in static):
            raise ValueError(
                "EnsembleProblem: the variants made by `prob_func` differ in structure or array "
                "shapes; vectorised solves need variants that differ only in array values."
            )
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *dyn)
        return eqx.combine(stacked, static[0])


def _times(saveat, t0: float, t1: float, dtype) -> jax.Array:
    if saveat is None:
        saveat = 101
    if isinstance(saveat, int | np.integer):
        if saveat < 2:
            raise ValueError(f"`saveat` as a count must be at least 2, got {saveat}.")
        return jnp.linspace(t0, t1, int(saveat), dtype=dtype)
    if isinstance(saveat, diffrax.SaveAt):
        raise TypeError(
            "`saveat` takes the times to save at (an array, or a count), not a diffrax.SaveAt: "
            "ntkode decides *what* is saved (function-space outputs, optionally weights)."
        )
    ts = np.asarray(saveat, dtype=float)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"`saveat` must be a 1-D array of times, got shape {ts.shape}.")
    if not np.all(np.isfinite(ts)):
        raise ValueError("`saveat` contains non-finite times.")
    if ts.size > 1 and np.any(np.diff(ts) <= 0):
        raise ValueError("`saveat` times must be strictly increasing.")
    span = t1 - t0
    if ts[0] < t0 - 1e-12 * span or ts[-1] > t1 + 1e-12 * span:
        raise ValueError(
            f"`saveat` times must lie inside tspan = ({t0}, {t1}); got [{ts[0]}, {ts[-1]}]."
        )
    return jnp.asarray(np.clip(ts, t0, t1), dtype=dtype)


def _progress(progress) -> diffrax.AbstractProgressMeter:
    if isinstance(progress, diffrax.AbstractProgressMeter):
        return progress
    if progress:
        return diffrax.TqdmProgressMeter(refresh_steps=20)
    return diffrax.NoProgressMeter()


@eqx.filter_jit
def _solve_jit(problem, solver, options):
    return problem._solve(solver, options)


@eqx.filter_jit
def _solve_vmap_jit(problem, solver, options):
    return eqx.filter_vmap(lambda p: p._solve(solver, options))(problem)


def solve(
    problem: AbstractProblem | EnsembleProblem,
    solver: diffrax.AbstractSolver | None = None,
    *,
    saveat: Any = None,
    rtol: float = 1e-4,
    atol: float = 1e-6,
    dt0: float | None = None,
    max_steps: int = 100_000,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    event: diffrax.Event | None = None,
    progress: bool | diffrax.AbstractProgressMeter = False,
    throw: bool = False,
    save_weights: bool = False,
) -> Solution:
    """Solve a training-dynamics problem.

    **Arguments:**

    - `problem`: a [`ntkode.GradientFlowProblem`][], [`ntkode.KernelFlowProblem`][], a
      scheduled-kernel problem, or an [`ntkode.EnsembleProblem`][] of any of these.
    - `solver`: any diffrax solver. `None` picks the problem's own default: `Tsit5()` for
      ODE solves, the exact closed form for MSE kernel flows.
    - `saveat`: times at which to save outputs (array), or a number of equally spaced times
      over `tspan` (default 101).
    - `rtol`, `atol`: tolerances of the default `diffrax.PIDController`. They are passed as
      arrays, so changing them does not recompile.
    - `dt0`: initial step (default: chosen by the controller).
    - `max_steps`: step budget; if it is hit the solution's `retcode` says so.
    - `stepsize_controller`: overrides the default adaptive controller.
    - `adjoint`: a diffrax adjoint (default `RecursiveCheckpointAdjoint()`).
    - `event`: a `diffrax.Event` that may stop the solve early.
    - `progress`: `True` for a progress bar (diffrax's `TqdmProgressMeter`) or a diffrax
      progress meter.
    - `throw`: raise `RuntimeError` with the result's sentence if the solve did not succeed.
    - `save_weights`: also keep the weights at the saved times (true flow only; never dense).

    **Returns:** a [`ntkode.Solution`][].
    """
    fn, args = _prepare(
        problem,
        solver,
        saveat=saveat,
        rtol=rtol,
        atol=atol,
        dt0=dt0,
        max_steps=max_steps,
        stepsize_controller=stepsize_controller,
        adjoint=adjoint,
        event=event,
        progress=progress,
        save_weights=save_weights,
    )
    sol = fn(*args)
    if throw and not np.all(sol.success):
        raise RuntimeError(sol.message)
    return sol


def _prepare(
    problem,
    solver,
    *,
    saveat,
    rtol,
    atol,
    dt0,
    max_steps,
    stepsize_controller,
    adjoint,
    event,
    progress,
    save_weights,
):
    """Validate arguments; return the jitted solve function and its arguments."""
    ensemble = isinstance(problem, EnsembleProblem)
    base = problem.problem if ensemble else problem
    if not isinstance(base, AbstractProblem):
        raise TypeError(f"solve: expected an ntkode problem, got {type(problem).__name__}.")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    if not isinstance(max_steps, int | np.integer) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer, got {max_steps!r}.")
    if dt0 is not None:
        check_positive("dt0", dt0)
    dtype = base.tspan[0].dtype
    t0, t1 = float(base.tspan[0]), float(base.tspan[1])
    if stepsize_controller is None:
        stepsize_controller = diffrax.PIDController(
            rtol=jnp.asarray(rtol, dtype), atol=jnp.asarray(atol, dtype)
        )
    options = SolveOptions(
        ts=_times(saveat, t0, t1, dtype),
        controller=stepsize_controller,
        dt0=None if dt0 is None else jnp.asarray(dt0, dtype),
        max_steps=int(max_steps),
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
        event=event,
        progress_meter=diffrax.NoProgressMeter() if ensemble else _progress(progress),
        save_weights=bool(save_weights),
    )
    if ensemble:
        return _solve_vmap_jit, (problem.stacked(), solver, options)
    return _solve_jit, (problem, solver, options)


def timed_solve(problem, solver=None, **kwargs) -> tuple[Solution, float, float]:
    """`solve`, compiled ahead of time: returns `(solution, solve_seconds, compile_seconds)`.

    `solve_seconds` is the wall time of the compiled solve alone (what a user pays on every
    call after the first); takes the same keyword arguments as [`ntkode.solve`][].
    """
    throw = kwargs.pop("throw", False)
    fn, args = _prepare(problem, solver, **{**_DEFAULTS, **kwargs})
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sol = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - start
    if throw and not np.all(sol.success):
        raise RuntimeError(sol.message)
    return sol, seconds, compile_seconds


_DEFAULTS = dict(
    saveat=None,
    rtol=1e-4,
    atol=1e-6,
    dt0=None,
    max_steps=100_000,
    stepsize_controller=None,
    adjoint=None,
    event=None,
    progress=False,
    save_weights=False,
)
