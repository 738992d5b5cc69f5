r"""`ScheduledKernelProblem`: the linear-parameter-varying NTK surrogate.

$du/dt = -\eta\,\Theta(s)\,\nabla_u L$, $du_*/dt = -\eta\,\Theta_*(s)\,\nabla_u L$ with
$\Theta(s) = \sum_g w_g(s)\Theta_g$ and $s = \sigma(t, u)$.

Solving (`solver=None`):

- MSE with piecewise-constant weights ([`ntkode.schedules.PiecewiseConstant`][]) and the time
  schedule, the loss level or the residual norm: *exactly*, by one eigendecomposition and
  matrix exponentials per piece (no steps, so no stiffness limit however large
  $\eta\lambda_{\max}/n$ grows; see `ntkode/_scheduled/_exact.py`).
  `PiecewiseConstant("average", M)` cuts each node interval into `M` pieces carrying the
  linear interpolant's midpoint kernel: the exact-exponential route to
  [`ntkode.schedules.Linear`][] (second order in `1/M`).
- anything else: an adaptive diffrax solve (`Tsit5` with `solve`'s controller). The vector
  field touches only the `support` active kernels. Training stiffens as it goes;
  if the step budget runs out the solution's `retcode` says `max_steps_reached` with advice
  (pass `throw=True` to raise), never silently. Pass a stiff solver such as
  `diffrax.Kvaerno5()` for very stiff grids.

Everything in the solve path is `jnp` code without Python branching on values, so the
solution is differentiable with respect to node positions and kernel entries.

[`ntkode.transfer.surrogate_for`][] builds the surrogate of another true-flow problem (another
learning rate, other targets) on a grid taken from one run.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._core._data import Dataset
from .._core._errors import check_finite
from .._core._exact import exact_solution
from .._core._gradient_flow import GradientFlowProblem
from .._core._losses import MSE, AbstractLoss, mse
from .._core._model import apply
from .._core._options import ResolvedOptions
from .._core._problem import (
    AbstractProblem,
    init_common,
    initial_outputs,
    make_solution,
    solve_function_space,
)
from .._core._solution import Solution
from ._basis import AbstractPieceBasis, EigenBasis, check_piece_basis
from ._exact import exact_outputs, is_exact
from ._grid import AbstractKernelGrid, check_grid
from ._interp import (
    AbstractInterpolation,
    AbstractPiecewiseConstant,
    Linear,
    check_interpolation,
)
from ._schedule import AbstractNormSchedule, AbstractSchedule, Time


class ScheduleRangeWarning(UserWarning):
    """The scheduling variable left the grid's node range; the kernel was clamped."""


_WARNED: set[tuple[float, float]] = set()


def _warn_outside(lo, hi, first, last) -> None:
    lo, hi = float(np.min(lo)), float(np.max(hi))
    first, last = float(np.min(first)), float(np.max(last))
    span = max(last - first, 1e-300)
    if lo < first - 1e-9 * span or hi > last + 1e-9 * span:
        key = (first, last)
        if key in _WARNED:
            return
        _WARNED.add(key)
        warnings.warn(
            f"The scheduling variable ranged over [{lo:.6g}, {hi:.6g}] but the grid's nodes "
            f"span [{first:.6g}, {last:.6g}]; outside them the end kernels were used "
            "(clamped). Extend the grid to cover the run for a faithful surrogate. "
            "(Warned once per grid range.)",
            ScheduleRangeWarning,
            stacklevel=2,
        )


class ScheduledKernelField(eqx.Module):
    r"""$(du/dt, du_*/dt)$ of the scheduled kernel flow; `args` is the learning rate."""

    grid: AbstractKernelGrid
    schedule: AbstractSchedule
    interpolation: AbstractInterpolation
    y: Array
    loss: AbstractLoss

    def kernel_weights(self, t, u):
        s = self.schedule(t, u, self.y, self.loss)
        return self.interpolation.local(s, self.grid.nodes)

    def __call__(self, t, state, learning_rate):
        u, us = state
        idx, w = self.kernel_weights(t, u)
        g = self.loss.grad(u, self.y).reshape(-1)
        du = -learning_rate * self.grid.train_matvec(idx, w, g).reshape(u.shape)
        dus = -learning_rate * self.grid.test_matvec(idx, w, g).reshape(us.shape)
        return du, dus


class ScheduledKernelProblem(AbstractProblem):
    r"""The scheduled-NTK surrogate: kernels interpolated along a scheduling variable.

    **Arguments:**

    - `grid`: a kernel grid ([`ntkode.KernelGrid`][] or [`ntkode.LowRankKernelGrid`][])
      whose kernels match `data`.
    - `data`: a [`ntkode.Dataset`][].
    - `schedule`: a scheduling variable from [`ntkode.schedules`][] (default `Time()`).
    - `interpolation`: convex weights from [`ntkode.schedules`][] (default `Linear()`).
    - `loss`, `tspan`, `learning_rate`: as in [`ntkode.KernelFlowProblem`][].
    - `u0_train`, `u0_test`: outputs at `t0`; default the grid's remembered initial outputs
      (those of the reference run), else zeros.
    - `piece_basis`: how the exact solver diagonalises each piece (used when `solve` takes
      the exact path): [`ntkode.EigenBasis`][] (default; one eigendecomposition per piece,
      $O((nk)^3)$) or [`ntkode.KrylovBasis`][] (Lanczos, $O(m\,(nk)^2)$ per piece; for
      training sets of thousands of examples).

    Solve it with [`ntkode.solve`][]; see the module notes for the solvers used.
    """

    grid: AbstractKernelGrid
    schedule: AbstractSchedule
    interpolation: AbstractInterpolation
    u0_train: Float[Array, "n k"]
    u0_test: Float[Array, "m k"]
    data: Dataset
    loss: AbstractLoss
    tspan: tuple[Float[Array, ""], Float[Array, ""]]
    learning_rate: Float[Array, ""]
    piece_basis: AbstractPieceBasis

    def __init__(
        self,
        grid: AbstractKernelGrid,
        data: Dataset,
        schedule: AbstractSchedule = Time(),
        interpolation: AbstractInterpolation = Linear(),
        loss: AbstractLoss | str = mse,
        tspan: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (0.0, 1.0),
        learning_rate: Float[ArrayLike, ""] = 1.0,
        u0_train: Float[ArrayLike, "n k"] | None = None,
        u0_test: Float[ArrayLike, "m k"] | None = None,
        *,
        piece_basis: AbstractPieceBasis = EigenBasis(),
    ):
        init_common(self, data, loss, tspan, learning_rate)
        check_grid(grid)
        check_piece_basis(piece_basis)
        if not isinstance(schedule, AbstractSchedule):
            raise TypeError(
                "`schedule` must be a scheduling variable from ntkode.schedules "
                f"(e.g. schedules.Time()), got {type(schedule).__name__}."
            )
        check_interpolation(interpolation)
        n, m, k = data.n_train, data.n_test, data.n_outputs
        if grid.n_outputs != k or grid.dim != n * k:
            raise ValueError(
                f"The grid's kernels are for {grid.n_train} train examples with "
                f"{grid.n_outputs} output(s) (size {grid.dim}) but `data` has {n} examples "
                f"with {k} output(s); build the grid on the same training set."
            )
        if grid.n_test_outputs not in (m * k, 0):
            raise ValueError(
                f"The grid's test kernels have {grid.n_test_outputs} rows but `data` has {m} "
                f"test examples with {k} output(s) ({m * k} rows)."
            )
        dtype = data.y_train.dtype
        if grid.n_test_outputs == 0 and m:
            # A grid without test kernels: test outputs stay where they start.
            grid = grid.with_zero_test(m * k)
        if u0_train is None and grid.u0_train is not None:
            u0_train = grid.u0_train
        if u0_test is None and grid.u0_test is not None and grid.u0_test.shape == (m, k):
            u0_test = grid.u0_test
        self.grid = grid
        self.schedule = schedule
        self.interpolation = interpolation
        self.u0_train = initial_outputs("u0_train", u0_train, (n, k), dtype)
        self.u0_test = initial_outputs("u0_test", u0_test, (m, k), dtype)
        self.piece_basis = piece_basis
        check_finite("u0_train", self.u0_train)

    @property
    def vector_field(self) -> ScheduledKernelField:
        return ScheduledKernelField(
            self.grid, self.schedule, self.interpolation, self.data.y_train, self.loss
        )

    @property
    def exact(self) -> bool:
        """True when `solve` with no solver uses exact exponentials (see the module notes)."""
        return isinstance(self.loss, MSE) and is_exact(self.schedule, self.interpolation)

    def _solve(self, solver, options: ResolvedOptions) -> Solution:
        if options.save_weights:
            raise ValueError("`save_weights=True` applies to GradientFlowProblem only.")
        if solver is None and self.exact:
            sol = self._solve_exact(options)
        else:
            sol = solve_function_space(self, self.vector_field, solver, options, kind="scheduled")
        self._range_check(sol)
        return sol

    def _range_check(self, sol: Solution) -> None:
        field = self.vector_field
        value = lambda t, u: field.schedule(t, u, field.y, field.loss)
        s = jax.vmap(value)(sol.t, sol.train)
        if not self.schedule.depends_on_state:
            # The whole time span is run through, saved or not.
            ends = jnp.stack([value(t, self.u0_train) for t in (self.t0, self.t1)])
            s = jnp.concatenate([s, ends.astype(s.dtype)])
        s = jnp.where(jnp.isfinite(s), s, self.grid.nodes[0])
        jax.debug.callback(
            _warn_outside, jnp.min(s), jnp.max(s), self.grid.nodes[0], self.grid.nodes[-1]
        )

    def _solve_exact(self, options: ResolvedOptions) -> Solution:
        """Piecewise-constant MSE flow: exact exponentials on each piece."""
        assert isinstance(self.schedule, Time | AbstractNormSchedule)
        assert isinstance(self.interpolation, AbstractPiecewiseConstant)
        if options.event is not None:
            # Outputs at any set of times are exact, so the event is located on them (each
            # bisection step re-runs the piece scan: correct, not cheap).
            def outputs_at(ts):
                return exact_outputs(
                    self.grid, self.schedule, self.interpolation, self.u0_train,
                    self.u0_test, self.data.y_train, self.learning_rate, self.tspan, ts,
                    self.piece_basis,
                )  # fmt: skip

            _, result = outputs_at(options.ts)
            return exact_solution(
                self, lambda ts: outputs_at(ts)[0], options, kind="scheduled", result=result
            )
        (u, us, du, dus), result = exact_outputs(
            self.grid,
            self.schedule,
            self.interpolation,
            self.u0_train,
            self.u0_test,
            self.data.y_train,
            self.learning_rate,
            self.tspan,
            options.ts,
            self.piece_basis,
        )
        ts = options.ts.astype(self.u0_train.dtype)
        return make_solution(self, ts, u, us, du, dus, kind="scheduled", result=result)


def surrogate_for(
    grid: AbstractKernelGrid,
    problem: GradientFlowProblem,
    schedule: AbstractSchedule = Time(),
    interpolation: AbstractInterpolation = Linear(),
) -> ScheduledKernelProblem:
    """The scheduled surrogate of a true-flow `problem` using `grid` (built on any run).

    This is how a grid *transfers*: built on one training run, it predicts another (the same
    run's test outputs, another learning rate, other targets). Time schedules follow the
    reference run's clock; state schedules (the loss level) follow the state. Gradient flow
    with learning rate $\\eta$ is the $\\eta = 1$ flow with time rescaled by $\\eta$, so a
    loss-scheduled grid sees exactly the states it was built on at another learning rate,
    while a time-scheduled one applies them at the wrong times.

    Data, loss, time span, learning rate and initial outputs come from `problem` (the
    initial outputs are its model's outputs), the kernels from `grid`.

    **Arguments:**

    - `grid`: a kernel grid ([`ntkode.KernelGrid`][] or [`ntkode.LowRankKernelGrid`][]) on
      the training inputs of `problem`.
    - `problem`: the [`ntkode.GradientFlowProblem`][] whose run the surrogate predicts.
    - `schedule`, `interpolation`: as in [`ntkode.ScheduledKernelProblem`][].

    **Returns:** a [`ntkode.ScheduledKernelProblem`][].
    """
    if not isinstance(problem, GradientFlowProblem):
        raise TypeError(
            f"`problem` must be an ntkode.GradientFlowProblem, got {type(problem).__name__}."
        )
    model, data = problem.model, problem.data
    return ScheduledKernelProblem(
        grid,
        data,
        schedule,
        interpolation,
        problem.loss,
        problem.tspan,
        problem.learning_rate,
        u0_train=apply(model, data.x_train),
        u0_test=apply(model, data.x_test),
    )


__all__ = [
    "ScheduleRangeWarning",
    "ScheduledKernelField",
    "ScheduledKernelProblem",
    "surrogate_for",
]
