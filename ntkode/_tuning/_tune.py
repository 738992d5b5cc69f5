r"""Grid placement by adjoints: tune the nodes of a scheduled-NTK surrogate.

The objective is the squared trajectory discrepancy against a reference (true-flow) solution,

$$J = \sum_j \|u_{sur}(t_j) - u_{ref}(t_j)\|^2 \quad(\text{plus test outputs with `test=True`}),$$

over the reference's saved times, differentiated through the surrogate solve with a diffrax
adjoint (discretise-then-optimise by default: a dissipative flow integrated backwards, as
`diffrax.BacksolveAdjoint` does, amplifies errors) and moved by an optax or optimistix
optimiser. What a node position is (a scheduling value with its kernel fixed, or a time on
the reference run with its kernel recomputed there) is a node kind of
`ntkode/_tuning/_nodes.py`; the order-keeping parameterisation is in
`ntkode/_tuning/_objective.py`.
"""

import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
import optimistix as optx
from jaxtyping import Array, Float

from .._core._options import SolveOptions
from .._core._results import RESULTS, is_successful, message as result_message
from .._core._solution import Solution
from .._scheduled._problem import ScheduledKernelProblem
from ._nodes import AbstractNodes, ScheduleNodes
from ._objective import _Objective
from ._run import run_optax, run_optimistix
from ._spectrum import check_spectrum, leading_directions


class TuneResult(eqx.Module):
    """The outcome of [`ntkode.tune_grid`][].

    **Fields:**

    - `problem`: the surrogate with the best nodes found (the tuned
      [`ntkode.ScheduledKernelProblem`][]).
    - `nodes`, `initial_nodes`: scheduling values of the grid nodes, tuned and initial.
    - `times`, `initial_times`: node times on the reference run (time nodes; else `None`).
    - `spectrum_scales`: with `spectrum=k > 0`, the `(G, k)` factors each node kernel's `k`
      leading eigenvalues were scaled by ($e^{2b}$; 1 = unchanged); else `None`.
    - `objective`, `initial_objective`: $J$ at the best and at the initial nodes. The best
      iterate is returned, so `objective <= initial_objective` always.
    - `history`: $J$ at each iterate evaluated (index 0: the initial nodes).
    - `best_step`: the iterate returned; `num_steps`: optimiser steps taken.
    - `result`: a [`ntkode.RESULTS`][] item: `successful` (the step budget was used, or
      the optimiser converged), `nonfinite_objective`, `nonfinite_gradient`, or the code
      an optimistix solver stopped with; `detail`: what happened, in a sentence (the step
      and the last good nodes when tuning stopped early).
    - `seconds`: wall time of the whole tuning run (compilation included).

    `success` and `message` are derived from `result` (and `detail`).
    """

    problem: ScheduledKernelProblem
    nodes: Float[Array, " G"]
    initial_nodes: Float[Array, " G"]
    times: Float[Array, " G"] | None
    initial_times: Float[Array, " G"] | None
    spectrum_scales: Float[Array, "G k"] | None
    objective: float
    initial_objective: float
    history: np.ndarray
    best_step: int
    num_steps: int
    result: RESULTS
    detail: str
    seconds: float

    @property
    def success(self) -> bool:
        """Whether `result` is `RESULTS.successful`."""
        return bool(is_successful(self.result))

    @property
    def message(self) -> str:
        """The result's sentence followed by `detail`."""
        return f"{result_message(self.result)} {self.detail}"

    @property
    def reduction(self) -> float:
        """`initial_objective / objective` (how many times smaller $J$ became)."""
        return self.initial_objective / max(self.objective, np.finfo(float).tiny)


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
    span = t1 - t0
    rt = np.asarray(reference.t)
    if rt[0] < t0 - 1e-9 * span or rt[-1] > t1 + 1e-9 * span:
        raise ValueError(
            f"`reference` saved times [{rt[0]}, {rt[-1]}] leave the problem's tspan "
            f"({t0}, {t1}); use the same time span."
        )


def _check_nodes_argument(nodes: Any) -> None:
    if isinstance(nodes, str):
        hint = {
            "schedule": "nodes=ntkode.tuning.ScheduleNodes()",
            "time": "nodes=ntkode.tuning.TimeNodes(model) with the reference run's network",
        }.get(nodes, "ntkode.tuning.ScheduleNodes() or ntkode.tuning.TimeNodes(model)")
        raise TypeError(f"`nodes` takes a node kind, not the string {nodes!r}: pass {hint}.")
    if not isinstance(nodes, AbstractNodes):
        raise TypeError(
            "`nodes` must be a node kind from ntkode.tuning (ScheduleNodes() or "
            f"TimeNodes(model)), got {type(nodes).__name__}."
        )


def build_objective(
    problem: ScheduledKernelProblem,
    reference: Solution,
    *,
    nodes: AbstractNodes = ScheduleNodes(),
    test: bool = False,
    power: float = 2.0,
    spectrum: int = 0,
    solver: diffrax.AbstractSolver | None = None,
    options: SolveOptions | None = None,
    **solve_kwargs: Any,
) -> tuple[_Objective, Float[Array, " P"]]:
    """Validate the inputs of [`tune_grid`][] and build `(objective, z0)`.

    `objective.value(z)` is $J$ at parameters `z` (`G - 2` node logits, then `G·spectrum`
    log-scales; `z0`: the grid as given), `objective.residuals` the residual vector;
    [`objective_and_gradient`][] differentiates it with the adjoint.
    """
    if not isinstance(problem, ScheduledKernelProblem):
        raise TypeError(
            f"`problem` must be an ntkode.ScheduledKernelProblem, got {type(problem).__name__}."
        )
    _check_nodes_argument(nodes)
    if (
        isinstance(power, bool)
        or not isinstance(power, int | float)
        or not (power == 2 or 4 <= power < np.inf)
    ):
        raise ValueError(
            f"`power` must be 2 (least squares) or a finite number >= 4 (the worst times "
            f"weighted more; smooth at zero error), got {power!r}."
        )
    moved = sorted({"model", "times", "implementation"} & set(solve_kwargs))
    if moved:
        raise TypeError(
            f"`{'=`, `'.join(moved)}=` {'belongs' if len(moved) == 1 else 'belong'} to the "
            "node kind now: pass nodes=ntkode.tuning.TimeNodes(model, times=..., "
            "implementation=...)."
        )
    spectrum = check_spectrum(spectrum, problem)
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
    x0, state = nodes.init(problem, reference)
    x0 = jnp.asarray(x0, dtype)
    obj = _Objective(
        problem=problem,
        nodes=nodes,
        state=state,
        x0=x0,
        solver=solver,
        options=opts.resolve(problem),
        u_ref=reference.train.astype(dtype),
        us_ref=reference.test.astype(dtype) if test else None,
        power=float(power),
    )
    if spectrum:
        u = leading_directions(obj.initial_problem().grid, spectrum)
        obj = eqx.tree_at(lambda o: o.directions, obj, u, is_leaf=lambda a: a is None)
    obj = obj.with_unit()
    return obj, obj.z0()


def tune_grid(
    problem: ScheduledKernelProblem,
    reference: Solution,
    *,
    nodes: AbstractNodes = ScheduleNodes(),
    optimiser: optax.GradientTransformation
    | optx.AbstractMinimiser
    | optx.AbstractLeastSquaresSolver
    | None = None,
    steps: int = 50,
    test: bool = False,
    power: float = 2.0,
    spectrum: int = 0,
    solver: diffrax.AbstractSolver | None = None,
    options: SolveOptions | None = None,
    throw: bool = False,
    log: Callable[[str], Any] | None = None,
    **solve_kwargs: Any,
) -> TuneResult:
    r"""Move the grid nodes of a scheduled-NTK surrogate to fit a reference trajectory.

    Minimises $J = \sum_j \|u_{sur}(t_j) - u_{ref}(t_j)\|^2$ over the reference's saved times
    $t_j$ (train outputs; add test outputs with `test=True`). The end nodes stay fixed; interior
    nodes move with their order kept by construction (positive increments).

    **Arguments:**

    - `problem`: a [`ntkode.ScheduledKernelProblem`][] with a grid of `G ≥ 3` nodes.
    - `reference`: a true-flow [`ntkode.Solution`][] on the same data (with weights for
      time nodes: `solve(..., save_weights=True)`).
    - `nodes`: what moves, a node kind from [`ntkode.tuning`][]: `ScheduleNodes()` (default;
      kernels fixed, their positions on the schedule move) or `TimeNodes(model, times=None,
      implementation="auto")` (node times move on the reference run and the kernels are
      recomputed there).
    - `optimiser`: an `optax.GradientTransformation` (default `optax.adam(0.05)`), an
      `optimistix` minimiser (e.g. `optx.BFGS(rtol, atol)`) or least-squares solver (e.g.
      `optx.LevenbergMarquardt(rtol, atol)`, fed the residual vector).
    - `steps`: the most optimiser steps.
    - `power`: the exponent $p$ of the aggregation over saved times,
      $J = c\sum_j (e_j / c)^{p/2}$ with $e_j = \|u_{sur}(t_j) - u_{ref}(t_j)\|^2$ and $c$
      the largest $e_j$ at the initial nodes: `2` (default) is least squares; larger values
      (`>= 4`; e.g. `8`) weight the worst times more, towards the max error over time that
      [`ntkode.trajectory_errors`][] reports. Least-squares solvers get one residual per
      saved time (and output set) then.
    - `spectrum`: also tune the kernels: `k > 0` rescales each node kernel along its `k`
      leading eigenvectors (taken at the initial nodes), `G·k` log-scales moved jointly with
      the node positions ($\Theta_g \to S_g\Theta_g S_g$, test kernels $\Theta_{*,g} S_g$,
      $S_g = I + U_g(\mathrm{diag}(e^{b_g}) - I)U_g^\top$; see `ntkode/_tuning/_spectrum.py`).
      `0` (default) moves the nodes only. Needs a dense [`ntkode.KernelGrid`][]. A surrogate
      tuned on train outputs alone may fit them better without predicting test outputs better:
      compare its test error (or tune with `test=True`).
    - `solver`, `options`, `**solve_kwargs`: the surrogate solve, as in [`ntkode.solve`][]
      (an [`ntkode.SolveOptions`][] and/or its fields as keywords: `rtol`, `atol`, `dt0`,
      `max_steps`, `stepsize_controller`, and `adjoint`: a diffrax adjoint,
      `RecursiveCheckpointAdjoint()` by default, or `ForwardMode()` for gradients by forward
      mode, the default with a least-squares solver, whose Jacobian of many residuals in few
      node logits forward mode builds in one JVP per logit). The saved times are the reference's.
    - `throw`: as in [`ntkode.solve`][]: raise `RuntimeError` with the result's message if
      tuning did not succeed (instead of returning the result, which carries the code).
    - `log`: optional `print`-like callable for progress lines.

    **Returns:** a [`ntkode.TuneResult`][] holding the best iterate (never worse than the
    initial grid) and its result code.
    """
    start = time.perf_counter()
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"`steps` must be a non-negative integer, got {steps!r}.")
    optimiser = optax.adam(0.05) if optimiser is None else optimiser
    if not isinstance(
        optimiser,
        optax.GradientTransformation | optx.AbstractMinimiser | optx.AbstractLeastSquaresSolver,
    ):
        raise TypeError(
            "`optimiser` must be an optax.GradientTransformation, an optimistix minimiser "
            f"(e.g. optx.BFGS) or least-squares solver, got {type(optimiser).__name__}."
        )
    least_squares = isinstance(optimiser, optx.AbstractLeastSquaresSolver)
    given = "adjoint" in solve_kwargs or getattr(options, "adjoint", None) is not None
    if least_squares and not given:
        # Few parameters (G - 2 logits), many residuals: the Jacobian in G - 2 JVPs, where
        # reverse mode would need one VJP per residual.
        solve_kwargs["adjoint"] = diffrax.ForwardMode()
    obj, z0 = build_objective(
        problem,
        reference,
        nodes=nodes,
        test=test,
        power=power,
        spectrum=spectrum,
        solver=solver,
        options=options,
        **solve_kwargs,
    )
    run = run_optax if isinstance(optimiser, optax.GradientTransformation) else run_optimistix
    out = run(obj, z0, optimiser, obj.options.adjoint, int(steps), log or (lambda s: None))
    tuned = obj.problem_at(out.best_z)
    log_scales = obj.log_scales(out.best_z)
    res = TuneResult(
        problem=tuned,
        nodes=tuned.grid.nodes,
        initial_nodes=obj.initial_problem().grid.nodes,
        times=nodes.node_times(obj.positions(out.best_z)),
        initial_times=nodes.node_times(obj.x0),
        spectrum_scales=None if log_scales is None else jnp.exp(2 * log_scales),
        objective=float(out.history[out.best_step]),
        initial_objective=float(out.history[0]),
        history=np.asarray(out.history),
        best_step=int(out.best_step),
        num_steps=int(out.num_steps),
        result=out.result,
        detail=out.detail,
        seconds=time.perf_counter() - start,
    )
    if throw and not res.success:
        raise RuntimeError(res.message)
    return res


__all__ = ["TuneResult", "build_objective", "tune_grid"]
