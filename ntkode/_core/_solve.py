"""`solve`: one entry point for every problem, and ensembles of problems solved with `vmap`."""

import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._options import SolveOptions
from ._problem import AbstractProblem
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


@eqx.filter_jit
def _solve_jit(problem, solver, options):
    return problem._solve(solver, options)


@eqx.filter_jit
def _solve_vmap_jit(problem, solver, options):
    return eqx.filter_vmap(lambda p: p._solve(solver, options))(problem)


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
    if options.throw and not np.all(sol.success):
        raise RuntimeError(sol.message)
    return sol


def _prepare(problem, solver, options: SolveOptions):
    """Validate arguments; return the jitted solve function and its arguments."""
    ensemble = isinstance(problem, EnsembleProblem)
    base = problem.problem if ensemble else problem
    if not isinstance(base, AbstractProblem):
        raise TypeError(f"solve: expected an ntkode problem, got {type(problem).__name__}.")
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
    **kwargs: Any,
) -> tuple[Solution, float, float]:
    """`solve`, compiled ahead of time: returns `(solution, solve_seconds, compile_seconds)`.

    `solve_seconds` is the wall time of the compiled solve alone (what a user pays on every
    call after the first); takes the same arguments as [`ntkode.solve`][]. The first call of
    a freshly compiled executable also pays one-off costs (measured on XLA:CPU, two loaded
    cores: 0.4–1.2 s even for a solve whose later calls take milliseconds), so a solve whose
    first call takes under ten seconds is run once more: the second call is reported, and
    the one-off part is counted in `compile_seconds`.
    """
    options = SolveOptions.build(options, **kwargs)
    fn, args = _prepare(problem, solver, options)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sol = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - start
    if seconds < _RETIME_BELOW:
        start = time.perf_counter()
        sol = jax.block_until_ready(compiled(*args))
        again = time.perf_counter() - start
        compile_seconds += max(seconds - again, 0.0)
        seconds = min(seconds, again)
    if options.throw and not np.all(sol.success):
        raise RuntimeError(sol.message)
    return sol, seconds, compile_seconds
