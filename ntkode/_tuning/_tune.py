r"""Grid placement by adjoints: tune the nodes of a scheduled-NTK surrogate.

The objective is the squared trajectory discrepancy against a reference (true-flow) solution,

$$J = \sum_j \|u_{sur}(t_j) - u_{ref}(t_j)\|^2 \quad(\text{plus test outputs with `test=True`}),$$

over the reference's saved times, differentiated through the surrogate solve with a diffrax
adjoint and moved by an optax or optimistix optimiser. Two kinds of node:

- `nodes="schedule"`: the kernels stay, their positions $s_g$ on the scheduling variable move.
- `nodes="time"`: the node *times* $t_g$ move on the reference run; each kernel is recomputed
  as $\Theta_g = \mathrm{NTK}(\theta_{ref}(t_g))$ from the reference weights interpolated
  linearly in time, and its scheduling value is $\sigma(t_g, u_{ref}(t_g))$, so the gradient
  also flows through the NTK. $\partial\Theta_g/\partial t_g$ is a forward-mode derivative of
  the NTK along the weight path (a custom JVP), so reverse mode never stores Jacobians.

Order is kept by construction: the end nodes stay where they are (they are where the grid must
reach) and the interior nodes are $s_1 + (s_G - s_1)\,\mathrm{cumsum}(\mathrm{softmax}(z))$,
positive increments with one free logit per interior node. Nothing is ever clipped.
"""

import time
import warnings
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, Float

from .._core._model import partition
from .._core._options import SolveOptions
from .._core._solution import Solution
from .._scheduled._problem import ScheduledKernelProblem
from ._objective import (
    _kernels_at,
    _Objective,
    _PathKernels,
    _value,
    logits_to_nodes,
    nodes_to_logits,
    objective_and_gradient,
)

# ---------------------------------------------------------------- result


class TuneResult(eqx.Module):
    """The outcome of [`ntkode.tune_grid`][].

    **Fields:**

    - `problem`: the surrogate with the best nodes found (the tuned
      [`ntkode.ScheduledKernelProblem`][]).
    - `nodes`, `initial_nodes`: scheduling values of the grid nodes, tuned and initial.
    - `times`, `initial_times`: node times on the reference run (`nodes="time"`; else `None`).
    - `objective`, `initial_objective`: $J$ at the best and at the initial nodes. The best
      iterate is returned, so `objective <= initial_objective` always.
    - `history`: $J$ at each iterate evaluated (index 0: the initial nodes).
    - `best_step`: the iterate returned; `num_steps`: optimiser steps taken.
    - `success`, `message`: whether tuning ran to the end (or converged) and a sentence.
    - `seconds`: wall time of the whole tuning run (compilation included).
    """

    problem: ScheduledKernelProblem
    nodes: Array
    initial_nodes: Array
    times: Array | None
    initial_times: Array | None
    objective: float
    initial_objective: float
    history: np.ndarray
    best_step: int
    num_steps: int
    success: bool
    message: str
    seconds: float

    @property
    def reduction(self) -> float:
        """`initial_objective / objective` (how many times smaller $J$ became)."""
        return self.initial_objective / max(self.objective, np.finfo(float).tiny)


# ---------------------------------------------------------------- validation


def _check_reference(problem, reference: Solution, test: bool) -> None:
    if not isinstance(reference, Solution):
        raise TypeError(f"`reference` must be an ntkode.Solution, got {type(reference).__name__}.")
    if reference.t.ndim != 1:
        raise ValueError("`reference` must be a single trajectory (index ensembles: `sol[i]`).")
    data = problem.data
    same = reference.y_train.shape == data.y_train.shape and bool(
        jnp.allclose(reference.y_train, data.y_train)
    )
    if test:
        same = same and (
            reference.y_test.shape == data.y_test.shape
            and bool(jnp.allclose(reference.y_test, data.y_test))
        )
    if not same:
        raise ValueError(
            "`reference` was solved on different data than `problem` (its targets "
            f"{'y_train and y_test' if test else 'y_train'} differ, shapes "
            f"{tuple(reference.y_train.shape)} vs {tuple(data.y_train.shape)}); solve the true "
            "flow on the surrogate's Dataset."
        )
    if not bool(reference.success):
        raise ValueError(f"`reference` did not solve successfully: {reference.message}")
    if not np.all(np.isfinite(np.asarray(reference.train))):
        raise ValueError("`reference` has non-finite train outputs; re-solve the true flow.")
    t0, t1 = float(problem.t0), float(problem.t1)
    rt = np.asarray(reference.t)
    span = t1 - t0
    if rt[0] < t0 - 1e-9 * span or rt[-1] > t1 + 1e-9 * span:
        raise ValueError(
            f"`reference` saved times [{rt[0]}, {rt[-1]}] leave the problem's tspan "
            f"({t0}, {t1}); use the same time span."
        )


def _check_span(what: str, values, lo: float, hi: float) -> None:
    v = np.asarray(values, dtype=float)
    tol = 1e-9 * max(hi - lo, 1.0)
    bad = v[(v < lo - tol) | (v > hi + tol)]
    if bad.size:
        raise ValueError(
            f"{what} {bad.tolist()} lie outside the time span [{lo}, {hi}]; node times must "
            "lie inside the reference run (and the problem's tspan)."
        )


def _check_increasing(what: str, v) -> None:
    v = np.asarray(v, dtype=float)
    if v.ndim != 1 or not np.all(np.isfinite(v)) or np.any(np.diff(v) <= 0):
        raise ValueError(f"{what} must be finite and strictly increasing, got {v.tolist()}.")


# ---------------------------------------------------------------- the entry point


def build_objective(
    problem,
    reference,
    *,
    nodes="schedule",
    model=None,
    times=None,
    test=False,
    solver=None,
    options: SolveOptions | None = None,
    implementation="auto",
    **solve_kwargs: Any,
) -> tuple["_Objective", Array, Array | None]:
    """Validate the inputs of [`tune_grid`][] and build `(objective, z0, initial_times)`.

    `objective.value(z)` is $J$ at logits `z` (`z0`: the grid as given), `objective.residuals`
    the residual vector; [`objective_and_gradient`][] differentiates it with the adjoint.
    """
    if not isinstance(problem, ScheduledKernelProblem):
        raise TypeError(
            f"`problem` must be an ntkode.ScheduledKernelProblem, got {type(problem).__name__}."
        )
    if nodes not in ("schedule", "time"):
        raise ValueError(f"`nodes` must be 'schedule' or 'time', got {nodes!r}.")
    grid = problem.grid
    if grid.size < 3:
        raise ValueError(
            f"The grid has {grid.size} node(s); tuning moves interior nodes (the ends stay), so "
            "it needs at least 3."
        )
    _check_reference(problem, reference, test)
    opts = SolveOptions.build(options, **solve_kwargs)
    opts.refuse("tune_grid", "saveat", "event", "progress", "save_weights", "throw")
    # The objective compares at the reference's saved times.
    opts = SolveOptions.build(opts, saveat=np.asarray(reference.t))
    dtype = problem.u0_train.dtype
    resolved = opts.resolve(problem)
    span = (float(problem.t0), float(problem.t1))
    ref_span = (max(span[0], float(reference.t[0])), min(span[1], float(reference.t[-1])))
    fields: dict[str, Any] = dict(path=None, ref_t=None, ref_train=None, ref_train_dot=None)
    fields.update(end_kernels=None, flip=False)
    if nodes == "schedule":
        x0 = np.asarray(grid.nodes, dtype=float)
        _check_increasing("The grid's nodes", x0)
        if not problem.schedule.depends_on_state:
            _check_span("The grid's time nodes", x0, *ref_span)
        t_init = None if grid.times is None else jnp.asarray(grid.times)
    else:
        if grid.low_rank:
            raise ValueError(
                "`nodes='time'` recomputes dense kernels; pass a problem with a dense grid."
            )
        if reference.weights is None:
            raise ValueError(
                "`nodes='time'` needs the reference weights: solve the true flow with "
                "`save_weights=True`."
            )
        if model is None:
            raise ValueError("`nodes='time'` needs `model=` (the network of the reference run).")
        if times is None:
            if grid.times is not None:
                times = np.sort(np.asarray(grid.times, dtype=float))
            elif not problem.schedule.depends_on_state:
                times = np.asarray(grid.nodes, dtype=float)
            else:
                raise ValueError("The grid has no `times`; pass the node times as `times=`.")
        x0 = np.asarray(times, dtype=float)
        _check_span("Node `times`", x0, *ref_span)
        _check_increasing("Node `times`", x0)
        if x0.shape[0] != grid.size:
            raise ValueError(f"`times` has {x0.shape[0]} values but the grid has {grid.size}.")
        params, static = partition(model)
        path = _PathKernels(
            ts=reference.t.astype(dtype),
            weights=jax.tree.map(lambda w: w.astype(dtype), reference.weights),
            static=static,
            x_train=problem.data.x_train,
            x_test=problem.data.x_test,
            n_outputs=problem.data.n_outputs,
            implementation=implementation,
        )
        if jax.tree.structure(reference.weights) != jax.tree.structure(params):
            raise ValueError("`model` does not match the structure of the reference weights.")
        ends = tuple(_kernels_at(jnp.asarray(x0[i], dtype), path) for i in (0, -1))
        sched, y, loss = problem.schedule, problem.data.y_train, problem.loss
        u_ends = reference(jnp.asarray(x0, dtype)).train
        s0 = np.asarray(
            [float(sched(jnp.asarray(t, dtype), u, y, loss)) for t, u in zip(x0, u_ends)]
        )
        d = np.diff(s0)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError(
                "The schedule is not strictly monotone along the reference at the node times "
                f"(values {s0.tolist()}); time nodes need a schedule that moves one way."
            )
        fields.update(
            path=path,
            ref_t=reference.t.astype(dtype),
            ref_train=reference.train.astype(dtype),
            ref_train_dot=reference.train_dot.astype(dtype),
            end_kernels=ends,
            flip=bool(np.all(d < 0)),
        )
        t_init = jnp.asarray(x0, dtype)
    obj = _Objective(
        problem=problem,
        solver=solver,
        options=resolved,
        u_ref=reference.train.astype(dtype),
        us_ref=reference.test.astype(dtype) if test else None,
        lo=jnp.asarray(x0[0], dtype),
        hi=jnp.asarray(x0[-1], dtype),
        mode=nodes,
        **fields,
    )
    return obj, nodes_to_logits(jnp.asarray(x0, dtype)), t_init


def tune_grid(
    problem: ScheduledKernelProblem,
    reference: Solution,
    *,
    nodes: str = "schedule",
    model: Any = None,
    times: Float[Array, " G"] | None = None,
    optimiser: optax.GradientTransformation | optx.AbstractMinimiser | Any = None,
    steps: int = 50,
    test: bool = False,
    solver: diffrax.AbstractSolver | None = None,
    options: SolveOptions | None = None,
    implementation: str = "auto",
    throw: bool = False,
    log: Callable[[str], Any] | None = None,
    **solve_kwargs: Any,
) -> TuneResult:
    r"""Move the grid nodes of a scheduled-NTK surrogate to fit a reference trajectory.

    Minimises $J = \sum_j \|u_{sur}(t_j) - u_{ref}(t_j)\|^2$ over the reference's saved times
    $t_j$ (train outputs; add test outputs with `test=True`). The end nodes stay fixed; interior
    nodes move with their order kept by construction (positive increments). See the module
    notes for the two kinds of node.

    **Arguments:**

    - `problem`: a [`ntkode.ScheduledKernelProblem`][] with a dense grid of `G ≥ 3` nodes.
    - `reference`: a true-flow [`ntkode.Solution`][] on the same data. For `nodes="time"` it
      must carry weights (`solve(..., save_weights=True)`).
    - `nodes`: `"schedule"` (kernels fixed, positions move) or `"time"` (node times move on
      the reference run and the kernels are recomputed there; needs `model`).
    - `model`: the network of the reference run (its non-float structure), for `"time"`.
    - `times`: initial node times for `"time"` (default: the grid's `times`, or its nodes for
      a time schedule).
    - `optimiser`: an `optax.GradientTransformation` (default `optax.adam(0.05)`), an
      `optimistix` minimiser (e.g. `optx.BFGS(rtol, atol)`) or least-squares solver (e.g.
      `optx.LevenbergMarquardt(rtol, atol)`, fed the residual vector).
    - `steps`: the most optimiser steps.
    - `solver`, `options`, `**solve_kwargs`: the surrogate solve, as in [`ntkode.solve`][]
      (`rtol`, `atol`, `dt0`, `max_steps`, `stepsize_controller`, and `adjoint`: a diffrax
      adjoint, `RecursiveCheckpointAdjoint()` by default, or `ForwardMode()` for gradients by
      forward mode). The saved times are the reference's.
    - `implementation`: NTK implementation for `"time"` (see [`ntkode.ntk`][]).
    - `throw`: raise `RuntimeError` instead of returning when tuning stops early on a
      non-finite objective or gradient.
    - `log`: optional `print`-like callable for progress lines.

    **Returns:** a [`ntkode.TuneResult`][] holding the best iterate (never worse than the
    initial grid). A non-finite objective or gradient stops tuning with a message naming the
    step and the last good nodes.
    """
    start = time.perf_counter()
    if not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    obj, z0, t_init = build_objective(
        problem,
        reference,
        nodes=nodes,
        model=model,
        times=times,
        test=test,
        solver=solver,
        options=options,
        implementation=implementation,
        **solve_kwargs,
    )
    adjoint = obj.options.adjoint
    optimiser = optax.adam(0.05) if optimiser is None else optimiser
    run = _run_optax if isinstance(optimiser, optax.GradientTransformation) else _run_optimistix
    if not isinstance(optimiser, optax.GradientTransformation | optx.AbstractMinimiser) and not (
        isinstance(optimiser, optx.AbstractLeastSquaresSolver)
    ):
        raise TypeError(
            "`optimiser` must be an optax.GradientTransformation, an optimistix minimiser "
            f"(e.g. optx.BFGS) or least-squares solver, got {type(optimiser).__name__}."
        )
    out = run(obj, z0, optimiser, adjoint, steps, log or (lambda s: None))
    best_z, history, best_step, num_steps, message, success = out
    if not success:
        if throw:
            raise RuntimeError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    tuned = obj.problem_at(best_z)
    best_x = obj.positions(best_z)
    return TuneResult(
        problem=tuned,
        nodes=tuned.grid.nodes,
        initial_nodes=problem.grid.nodes if nodes == "schedule" else _initial_nodes(obj, z0),
        times=best_x if nodes == "time" else None,
        initial_times=t_init if nodes == "time" else None,
        objective=float(history[best_step]),
        initial_objective=float(history[0]),
        history=np.asarray(history),
        best_step=int(best_step),
        num_steps=int(num_steps),
        success=bool(success),
        message=message,
        seconds=time.perf_counter() - start,
    )


def _initial_nodes(obj, z0):
    return obj.problem_at(z0).grid.nodes


def _stop_message(step: int, what: str, last_good) -> str:
    return (
        f"Tuning stopped at step {step}: the {what} became non-finite (NaN or infinity). "
        f"Last good nodes: {np.asarray(last_good).tolist()}. Returning the best iterate so far; "
        "try a smaller learning rate, tighter surrogate tolerances, or fewer steps."
    )


def _run_optax(obj, z0, optimiser, adjoint, steps, log):
    z = z0
    state = optimiser.init(z)
    history: list[float] = []
    iterates: list[Array] = []
    message, success = f"Completed {steps} optax steps.", True
    for step in range(steps + 1):
        if step < steps:
            value, grad = objective_and_gradient(obj, z, adjoint)
        else:  # the last iterate: its value only
            value, grad = _value(obj, z), None
        value = float(value)
        last_good = obj.positions(iterates[-1] if iterates else z0)
        if not np.isfinite(value) or not np.all(np.isfinite(np.asarray(z))):
            message, success = _stop_message(step, "objective", last_good), False
            break
        history.append(value)
        iterates.append(z)
        log(f"  step {step}: J = {value:.6g}")
        if grad is None:
            break
        if not np.all(np.isfinite(np.asarray(grad))):
            message, success = _stop_message(step, "gradient", obj.positions(z)), False
            break
        updates, state = optimiser.update(grad, state, z)
        z = optax.apply_updates(z, updates)
    if not history:  # non-finite at the initial nodes already
        return z0, [np.inf], 0, 0, message, success
    best = int(np.argmin(history))
    return iterates[best], history, best, len(history) - 1, message, success


def _run_optimistix(obj, z0, solver, adjoint, steps, log):
    least_squares = isinstance(solver, optx.AbstractLeastSquaresSolver)
    fwd = isinstance(adjoint, diffrax.ForwardMode)
    j0 = float(_value(obj, z0))
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
    history = [j0]
    iterates = [z0]
    if not np.isfinite(history[0]):
        return z0, [np.inf], 0, 0, _stop_message(0, "objective", obj.positions(z0)), False
    log(f"  step 0: J = {history[0]:.6g}")
    name = type(solver).__name__
    message, success = f"Completed {steps} {name} steps.", True
    for step in range(1, steps + 1):
        z, state = step_fn(z, state)
        if not np.all(np.isfinite(np.asarray(z))):
            message, success = _stop_message(step, "gradient", obj.positions(iterates[-1])), False
            break
        if not np.array_equal(np.asarray(z), np.asarray(iterates[-1])):
            value = float(_value(obj, z))
            if not np.isfinite(value):
                message = _stop_message(step, "objective", obj.positions(iterates[-1]))
                success = False
                break
            history.append(value)
            iterates.append(z)
            log(f"  step {step}: J = {value:.6g}")
        done, result = done_fn(z, state)
        if bool(done):
            message = f"{name} converged after {step} steps ({result})."
            if result != optx.RESULTS.successful:
                message = f"{name} stopped after {step} steps: {optx.RESULTS[result]}"
            break
    best = int(np.argmin(history))
    return iterates[best], history, best, step if steps else 0, message, success


__all__ = [
    "TuneResult",
    "build_objective",
    "logits_to_nodes",
    "nodes_to_logits",
    "objective_and_gradient",
    "tune_grid",
]
