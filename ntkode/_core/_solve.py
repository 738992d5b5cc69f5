"""`solve`: one entry point for every problem, and ensembles of problems solved with `vmap`."""

import statistics
import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import is_concrete
from ._options import SolveOptions
from ._problem import AbstractProblem
from ._results import result_index, success_mask
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


def _solve_checked(problem, solver, options):
    sol = problem._solve(solver, options)
    if options.event is not None and not sol.watches_events:
        # Found while tracing, before anything runs: an event must never be ignored.
        raise ValueError(
            f"{type(problem).__name__}'s exact solver does not support events; pass a diffrax "
            "solver (e.g. solver=diffrax.Tsit5()) to solve with the event."
        )
    return sol


@eqx.filter_jit
def _solve_jit(problem, solver, options):
    return _solve_checked(problem, solver, options)


@eqx.filter_jit
def _solve_vmap_jit(problem, solver, options):
    return eqx.filter_vmap(lambda p: _solve_checked(p, solver, options))(problem)


def solve(
    problem: AbstractProblem | EnsembleProblem,
    solver: diffrax.AbstractSolver | None = None,
    options: SolveOptions | None = None,
    **kwargs: Any,
) -> Solution:
    """Solve a training-dynamics problem.

    **Arguments:**

    - `problem`: a [`ntkode.GradientFlowProblem`][], [`ntkode.KernelFlowProblem`][], a
      scheduled-kernel problem, or an [`ntkode.EnsembleProblem`][] of any of these.
    - `solver`: any diffrax solver. `None` picks the problem's own default: `Tsit5()` for
      ODE solves, the exact closed form for MSE kernel flows.
    - `options`: an [`ntkode.SolveOptions`][] (default: all defaults).
    - `**kwargs`: fields of [`ntkode.SolveOptions`][] given directly, overriding `options`:
      `saveat`, `rtol`, `atol`, `dt0`, `max_steps`, `stepsize_controller`, `adjoint`,
      `event`, `progress`, `throw`, `save_weights`.

    **Returns:** a [`ntkode.Solution`][].
    """
    options = SolveOptions.build(options, **kwargs)
    fn, args = _prepare(problem, solver, options)
    sol = fn(*args)
    if options.throw:
        sol = _throw(sol)
    return sol


def _throw(sol: Solution) -> Solution:
    """Raise the result's sentence if the solve did not succeed (at run time under `jit`)."""
    if is_concrete(sol.t):
        if not np.all(sol.success):
            raise RuntimeError(sol.message)
        return sol
    index, messages = result_index(sol.result)
    return eqx.branched_error_if(sol, ~success_mask(sol.result), index, messages)


def _prepare(problem, solver, options: SolveOptions):
    """Validate arguments; return the jitted solve function and its arguments."""
    ensemble = isinstance(problem, EnsembleProblem)
    base = problem.problem if ensemble else problem
    if not isinstance(base, AbstractProblem):
        raise TypeError(f"solve: expected an ntkode problem, got {type(problem).__name__}.")
    options.check_solver(solver)
    resolved = options.resolve(base, ensemble=ensemble)
    if ensemble:
        return _solve_vmap_jit, (problem.stacked(), solver, resolved)
    return _solve_jit, (problem, solver, resolved)


# First calls shorter than this are repeated once by `timed_solve` (see there).
_RETIME_BELOW = 10.0


def timed_solve(
    problem: AbstractProblem | EnsembleProblem,
    solver: diffrax.AbstractSolver | None = None,
    options: SolveOptions | None = None,
    *,
    repeats: int = 1,
    **kwargs: Any,
) -> tuple[Solution, float, float]:
    """`solve`, compiled ahead of time: returns `(solution, solve_seconds, compile_seconds)`.

    `solve_seconds` is the wall time of the compiled solve alone (what a user pays on every
    call after the first): the median of `repeats` runs (default 1: a single-shot timing,
    which on a shared machine can be off by several times; say which you report). Takes the
    same arguments as [`ntkode.solve`][]. The first call of a freshly compiled executable
    also pays one-off costs (measured on XLA:CPU, two loaded cores: 0.4–1.2 s even for a
    solve whose later calls take milliseconds), so when the first call takes under ten
    seconds it is not counted among the `repeats` runs, and its one-off part goes to
    `compile_seconds`.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be a positive integer, got {repeats!r}.")
    options = SolveOptions.build(options, **kwargs)
    fn, args = _prepare(problem, solver, options)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_seconds = time.perf_counter() - start

    def run():
        start = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        return out, time.perf_counter() - start

    sol, first = run()
    times = [] if first < _RETIME_BELOW else [first]
    while len(times) < repeats:
        sol, seconds = run()
        times.append(seconds)
    if first < _RETIME_BELOW:
        compile_seconds += max(first - min(times), 0.0)
    if options.throw:
        sol = _throw(sol)
    return sol, statistics.median(times), compile_seconds
