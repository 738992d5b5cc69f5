r"""`ScheduledKernelProblem`: the linear-parameter-varying NTK surrogate.

$du/dt = -\eta\,\Theta(s)\,\nabla_u L$, $du_*/dt = -\eta\,\Theta_*(s)\,\nabla_u L$ with
$\Theta(s) = \sum_g w_g(s)\Theta_g$ and $s = \sigma(t, u)$.

Solving (`solver=None`):

- MSE, a time schedule and [`ntkode.schedules.PiecewiseConstant`][] weights: the system is
  linear time-invariant between switching times, so it is solved *exactly* by one
  eigendecomposition per piece and matrix exponentials per piece (no steps, so no stiffness
  limit however large $\eta\lambda_{\max}/n$ grows). `PiecewiseConstant("average", M)` cuts
  each node interval into `M` pieces carrying the linear interpolant's midpoint kernel: the
  exact-exponential route to [`ntkode.schedules.Linear`][] (second order in `1/M`).
- MSE, the loss level or residual norm as schedule, and `PiecewiseConstant` weights: also
  exact. $\|u - Y\|$ never grows under a PSD kernel, so pieces are crossed once each, from
  the top down; the time a piece is left (when $\|r\|^2$ reaches its boundary level) is
  found by bisection on the closed form, with an implicit-function gradient.
- anything else: an adaptive diffrax solve (`Tsit5` with `solve`'s controller). The vector
  field touches only the `support` active kernels. Training stiffens as it goes;
  if the step budget runs out the solution's `retcode` says `max_steps_reached` with advice
  (pass `throw=True` to raise), never silently. Pass a stiff solver such as
  `diffrax.Kvaerno5()` for very stiff grids.

Everything in the solve path is `jnp` code without Python branching on values, so the
solution is differentiable with respect to node positions and kernel entries.
"""

import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._data import Dataset
from .._core._errors import check_finite
from .._core._losses import MSE, AbstractLoss, mse
from .._core._options import ResolvedOptions
from .._core._problem import (
    AbstractProblem,
    init_common,
    initial_outputs,
    make_solution,
    solve_function_space,
)
from .._core._regression import decay_integral
from .._core._solution import Solution
from ._grid import KernelGrid
from ._interp import AbstractInterpolation, Linear, PiecewiseConstant
from ._schedule import AbstractSchedule, Time


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

    grid: KernelGrid
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

    - `grid`: a [`ntkode.KernelGrid`][] whose kernels match `data`.
    - `data`: a [`ntkode.Dataset`][].
    - `schedule`: a scheduling variable from [`ntkode.schedules`][] (default `Time()`).
    - `interpolation`: convex weights from [`ntkode.schedules`][] (default `Linear()`).
    - `loss`, `tspan`, `learning_rate`: as in [`ntkode.KernelFlowProblem`][].
    - `u0_train`, `u0_test`: outputs at `t0`; default the grid's remembered initial outputs
      (those of the reference run), else zeros.

    Solve it with [`ntkode.solve`][]; see the module notes for the solvers used.
    """

    grid: KernelGrid
    schedule: AbstractSchedule
    interpolation: AbstractInterpolation
    u0_train: Float[Array, "n k"]
    u0_test: Float[Array, "m k"]
    data: Dataset
    loss: AbstractLoss
    tspan: tuple[Array, Array]
    learning_rate: Array

    def __init__(
        self,
        grid: KernelGrid,
        data,
        schedule: AbstractSchedule = Time(),
        interpolation: AbstractInterpolation = Linear(),
        loss=mse,
        tspan=(0.0, 1.0),
        learning_rate=1.0,
        u0_train=None,
        u0_test=None,
    ):
        init_common(self, data, loss, tspan, learning_rate)
        if not isinstance(grid, KernelGrid):
            raise TypeError(f"`grid` must be an ntkode.KernelGrid, got {type(grid).__name__}.")
        if not isinstance(schedule, AbstractSchedule):
            raise TypeError(
                "`schedule` must be a scheduling variable from ntkode.schedules "
                f"(e.g. schedules.Time()), got {type(schedule).__name__}."
            )
        if not isinstance(interpolation, AbstractInterpolation):
            raise TypeError(
                "`interpolation` must come from ntkode.schedules (Linear, Smoothstep, "
                f"PiecewiseConstant), got {type(interpolation).__name__}."
            )
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
            grid = _with_zero_test(grid, m * k)
        if u0_train is None and grid.u0_train is not None:
            u0_train = grid.u0_train
        if u0_test is None and grid.u0_test is not None and grid.u0_test.shape == (m, k):
            u0_test = grid.u0_test
        self.grid = grid
        self.schedule = schedule
        self.interpolation = interpolation
        self.u0_train = initial_outputs("u0_train", u0_train, (n, k), dtype)
        self.u0_test = initial_outputs("u0_test", u0_test, (m, k), dtype)
        check_finite("u0_train", self.u0_train)

    @property
    def vector_field(self) -> ScheduledKernelField:
        return ScheduledKernelField(
            self.grid, self.schedule, self.interpolation, self.data.y_train, self.loss
        )

    @property
    def exact(self) -> bool:
        """True when `solve` with no solver uses exact exponentials (see the module notes)."""
        return (
            isinstance(self.loss, MSE)
            and isinstance(self.interpolation, PiecewiseConstant)
            and (not self.schedule.depends_on_state or self._norm_schedule)
        )

    @property
    def _norm_schedule(self) -> bool:
        # Loss level and residual norm are monotone in ‖u - Y‖ for MSE, which never grows
        # under a PSD kernel: pieces are then crossed once each, at computable times.
        return isinstance(self.loss, MSE) and hasattr(self.schedule, "residual_sq")

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
        s = jax.vmap(lambda t, u: field.schedule(t, u, field.y, field.loss))(sol.t, sol.train)
        if not self.schedule.depends_on_state:
            s = jnp.concatenate([s, jnp.stack([self.t0, self.t1]).astype(s.dtype)])
        s = jnp.where(jnp.isfinite(s), s, self.grid.nodes[0])
        jax.debug.callback(
            _warn_outside, jnp.min(s), jnp.max(s), self.grid.nodes[0], self.grid.nodes[-1]
        )

    def _solve_exact(self, options: ResolvedOptions) -> Solution:
        """Piecewise-constant-in-time MSE flow: exact exponentials on each segment."""
        grid = self.grid
        dtype = self.u0_train.dtype
        # One dtype throughout (float32 data with float64 times would break the scan carry).
        ts = options.ts.astype(dtype)
        bounds, weights = self.interpolation.pieces(grid.nodes.astype(dtype))
        if self.interpolation.mode == "average" and grid.size > 1:
            # Pieces carry convex combinations of node kernels: diagonalise each piece.
            kt = jnp.einsum("pg,gij->pij", weights, grid.dense_train())
            lam, vec = jax.vmap(jnp.linalg.eigh)(kt)
            if grid.low_rank:
                ks = jnp.einsum("gir,gjr->gij", grid.test_basis, grid.eigvecs)
            else:
                ks = grid.kernel_test
            basis = jnp.einsum("pg,gij,pjr->pir", weights, ks, vec)
        else:
            lam, vec, basis = grid.spectral()
        lam, vec, basis = (a.astype(dtype) for a in (lam, vec, basis))
        c = (self.learning_rate / self.data.n_train).astype(dtype)
        y = self.data.y_train.reshape(-1)
        t0, t1 = self.t0.astype(dtype), self.t1.astype(dtype)
        r0 = self.u0_train.reshape(-1) - y
        us0 = self.u0_test.reshape(-1)
        state = self.schedule.depends_on_state
        if state:
            # ‖r‖ falls, so the schedule value falls: pieces are crossed from the top down,
            # piece p until ‖r‖² reaches the level of its lower boundary.
            order = jnp.arange(bounds.shape[0] - 2, -1, -1)
            levels = self.schedule.residual_sq(bounds[:-1], self.data.n_train)[order]
            lam, vec, basis = lam[order], vec[order], basis[order]
            seg_inputs = (lam, vec, basis, levels)
        else:
            start = jnp.clip(bounds[:-1], t0, t1)
            end = jnp.clip(bounds[1:], t0, t1)
            member = (ts[None, :] >= bounds[:-1, None]) & (ts[None, :] < bounds[1:, None])
            seg_inputs = (lam, vec, basis, start, end, member)

        def propagate(lam_g, vec_g, basis_g, r, us, tau):
            # r(τ) = r + V (e^{-cλτ} - 1) Vᵀ r (the part outside a low-rank basis stays put);
            # u*(τ) = u* - c Θ* V φ(τ) Vᵀ r with φ(τ) = ∫_0^τ e^{-cλσ} dσ.
            coef = vec_g.T @ r
            x = c * lam_g * tau
            phi = decay_integral(c * lam_g, tau)
            r_new = r + vec_g @ (jnp.expm1(-x) * coef)
            us_new = us - c * basis_g @ (phi * coef)
            return r_new, us_new

        def exit_time(lam_g, vec_g, r, level, horizon):
            # Smallest τ in [0, horizon] with ‖r(τ)‖² = level (horizon if never reached).
            coef = vec_g.T @ r
            perp = jnp.maximum(r @ r - coef @ coef, 0.0)

            def f(tau):
                return jnp.sum(coef**2 * jnp.exp(-2 * c * lam_g * tau)) + perp - level

            def bisect(_, lohi):
                lo, hi = lohi
                mid = 0.5 * (lo + hi)
                above = f(mid) > 0
                return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

            h = jax.lax.stop_gradient(horizon)
            lo, hi = jax.lax.fori_loop(0, 60, bisect, (jnp.zeros_like(h), h))
            tau = jax.lax.stop_gradient(hi)
            # One Newton step with frozen slope: value unchanged at the root, and first-order
            # gradients by the implicit-function theorem.
            slope = jax.lax.stop_gradient(
                jnp.sum(-2 * c * lam_g * coef**2 * jnp.exp(-2 * c * lam_g * tau))
            )
            newton = tau - f(tau) / jnp.where(slope < 0, slope, -1.0)
            tau = jnp.where((f(h) > 0) | (slope >= 0), horizon, newton)
            return jnp.where(f(jnp.zeros_like(h)) <= 0, 0.0, jnp.clip(tau, 0.0, horizon))

        def segment(carry, inputs):
            if state:
                r, us, now, out = carry
                lam_g, vec_g, basis_g, level = inputs
                a = now
                b = now + exit_time(lam_g, vec_g, r, level, t1 - now)
                # A non-empty piece ending at t1 also owns t1.
                mask = (ts >= a) & ((ts < b) | ((ts >= t1) & (b >= t1) & (b > a)))
            else:
                r, us, out = carry
                lam_g, vec_g, basis_g, a, b, mask = inputs
            tau = jnp.clip(ts - a, 0.0, b - a)
            # All saved times at once, in the piece's eigenbasis: Vᵀ r(τ) = e^{-cλτ} ⊙ Vᵀ r,
            # so the velocities (Θ r = V(λ ⊙ Vᵀ r), Θ* r = (Θ* V) Vᵀ r) need no new
            # projections, and each output is one matrix product with V or Θ* V.
            coef = vec_g.T @ r
            x = c * lam_g[None, :] * tau[:, None]
            phi = decay_integral(c * lam_g[None, :], tau[:, None])
            cur = c * jnp.exp(-x) * coef
            T_ = ts.shape[0]
            both = jnp.concatenate([jnp.expm1(-x) * coef, -lam_g * cur]) @ vec_g.T
            rt, dut = r + both[:T_], both[T_:]
            both = jnp.concatenate([-c * phi * coef, -cur]) @ basis_g.T
            ust, dust = us + both[:T_], both[T_:]
            new = (rt, ust, dut, dust)
            out = tuple(jnp.where(mask[:, None], v, o) for v, o in zip(new, out, strict=True))
            r, us = propagate(lam_g, vec_g, basis_g, r, us, b - a)
            if state:
                return (r, us, b, out), None
            return (r, us, out), None

        T = ts.shape[0]
        zr, zs = jnp.zeros((T,) + r0.shape, dtype), jnp.zeros((T,) + us0.shape, dtype)
        init = (r0, us0, t0, (zr, zs, zr, zs)) if state else (r0, us0, (zr, zs, zr, zs))
        carry, _ = jax.lax.scan(segment, init, seg_inputs)
        rs, uss, du, dus = carry[-1]
        n, k = self.u0_train.shape
        m = self.u0_test.shape[0]
        return make_solution(
            self,
            ts,
            (rs + y).reshape(T, n, k),
            uss.reshape(T, m, k),
            du.reshape(T, n, k),
            dus.reshape(T, m, k),
            kind="scheduled",
        )


def _with_zero_test(grid: KernelGrid, rows: int) -> KernelGrid:
    G, nk = grid.size, grid.dim
    if grid.low_rank:
        zero = jnp.zeros((G, rows, grid.rank), grid.eigvals.dtype)
        return eqx.tree_at(lambda g: g.test_basis, grid, zero)
    zero = jnp.zeros((G, rows, nk), grid.kernel_train.dtype)
    return eqx.tree_at(lambda g: g.kernel_test, grid, zero)


__all__ = ["ScheduleRangeWarning", "ScheduledKernelField", "ScheduledKernelProblem"]
