"""The optimiser loops of [`ntkode.tune_grid`][]: optax transformations and optimistix solvers.

Both keep every iterate's objective, return the best iterate (never worse than the initial
nodes), and stop at the first non-finite objective or gradient with the matching result code
of [`ntkode.RESULTS`][] and a detail sentence naming the step and the last good nodes.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import diffrax
import equinox as eqx
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array

from .._core._results import RESULTS, is_successful, promote
from ._objective import _Objective, _value, objective_and_gradient


class Run(NamedTuple):
    """How an optimiser loop ended."""

    best_z: Array
    history: list[float]
    best_step: int
    num_steps: int
    result: RESULTS
    detail: str


def _stopped(step: int, last_good) -> str:
    return (
        f"Tuning stopped at step {step}. Last good nodes: {np.asarray(last_good).tolist()}; "
        "the best iterate before it is returned."
    )


def run_optax(
    obj: _Objective,
    z0: Array,
    optimiser: optax.GradientTransformation,
    adjoint: diffrax.AbstractAdjoint,
    steps: int,
    log: Callable[[str], Any],
) -> Run:
    """`steps` optax updates of the logits (and one last evaluation)."""
    z = z0
    state = optimiser.init(z)
    history: list[float] = []
    iterates: list[Array] = []
    result, detail = RESULTS.successful, f"Completed {steps} optax steps."
    for step in range(steps + 1):
        if step < steps:
            value, grad = objective_and_gradient(obj, z, adjoint)
        else:  # the last iterate: its value only
            value, grad = _value(obj, z), None
        value = float(value)
        last_good = obj.positions(iterates[-1] if iterates else z0)
        if not np.isfinite(value) or not np.all(np.isfinite(np.asarray(z))):
            result, detail = RESULTS.nonfinite_objective, _stopped(step, last_good)
            break
        history.append(value)
        iterates.append(z)
        log(f"  step {step}: J = {value:.6g}")
        if grad is None:
            break
        if not np.all(np.isfinite(np.asarray(grad))):
            result, detail = RESULTS.nonfinite_gradient, _stopped(step, obj.positions(z))
            break
        updates, state = optimiser.update(grad, state, z)
        z = optax.apply_updates(z, updates)
    if not history:  # non-finite at the initial nodes already
        return Run(z0, [np.inf], 0, 0, result, detail)
    best = int(np.argmin(history))
    return Run(iterates[best], history, best, len(history) - 1, result, detail)


def run_optimistix(
    obj: _Objective,
    z0: Array,
    solver: optx.AbstractMinimiser | optx.AbstractLeastSquaresSolver,
    adjoint: diffrax.AbstractAdjoint,
    steps: int,
    log: Callable[[str], Any],
) -> Run:
    """Up to `steps` steps of an optimistix minimiser (on $J$) or least-squares solver (on the
    residuals), stopping when it terminates."""
    least_squares = isinstance(solver, optx.AbstractLeastSquaresSolver)
    fwd = isinstance(adjoint, diffrax.ForwardMode)
    j0 = float(_value(obj, z0))
    if not np.isfinite(j0):
        return Run(z0, [np.inf], 0, 0, RESULTS.nonfinite_objective, _stopped(0, obj.positions(z0)))
    # BFGS starts from an identity Hessian, so its first step is -∇J: measure J in units of
    # its initial value, making the start independent of the data's scale.
    scale = 1.0 / j0 if np.isfinite(j0) and j0 > 0 else 1.0
    if least_squares:
        fn = lambda z, args: (obj.residuals(z) * np.sqrt(scale), None)
        options = {"jac": "fwd" if fwd else "bwd"}
    else:
        fn = lambda z, args: (obj.value(z) * scale, None)
        options = {"autodiff_mode": "fwd" if fwd else "bwd"}
    fn = eqx.filter_closure_convert(fn, z0, None)
    f_struct, aux_struct = fn.out_struct
    state = solver.init(fn, z0, None, options, f_struct, aux_struct, frozenset())
    step_fn = eqx.filter_jit(lambda z, s: solver.step(fn, z, None, options, s, frozenset())[:2])
    done_fn = eqx.filter_jit(lambda z, s: solver.terminate(fn, z, None, options, s, frozenset()))
    z = z0
    history, iterates = [j0], [z0]
    log(f"  step 0: J = {j0:.6g}")
    name = type(solver).__name__
    result, detail = RESULTS.successful, f"Completed {steps} {name} steps."
    step = 0
    for step in range(1, steps + 1):
        z, state = step_fn(z, state)
        if not np.all(np.isfinite(np.asarray(z))):
            # The solver's own update went non-finite: its gradient (or curvature) did.
            result = RESULTS.nonfinite_gradient
            detail = _stopped(step, obj.positions(iterates[-1]))
            break
        if not np.array_equal(np.asarray(z), np.asarray(iterates[-1])):
            value = float(_value(obj, z))
            if not np.isfinite(value):
                result = RESULTS.nonfinite_objective
                detail = _stopped(step, obj.positions(iterates[-1]))
                break
            history.append(value)
            iterates.append(z)
            log(f"  step {step}: J = {value:.6g}")
        done, code = done_fn(z, state)
        if bool(done):
            result = promote(code)
            verb = "converged" if is_successful(result) else "stopped"
            detail = f"{name} {verb} after {step} steps."
            break
    best = int(np.argmin(history))
    return Run(iterates[best], history, best, step, result, detail)


__all__ = ["Run", "run_optax", "run_optimistix"]
