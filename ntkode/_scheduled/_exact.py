r"""The exact solver of piecewise-constant scheduled MSE surrogates: exponentials per piece.

With mean MSE the scheduled flow is $\dot r = -c\,\Theta(s)\,r$, $\dot u_* = -c\,\Theta_*(s)\,r$
for the train residual $r = u - Y$ and $c = \eta/n$. When the interpolation weights are
constant on pieces of the schedule axis ([`ntkode.schedules.AbstractPiecewiseConstant`][]),
each piece is a linear time-invariant system with the closed form of a frozen kernel (Lee et
al. 2019, eq. 9–10): in the piece's eigenbasis $\Theta = V \Lambda V^\top$,

$$V^\top r(\tau) = e^{-c\Lambda\tau} V^\top r, \qquad
u_*(\tau) = u_* - c\,(\Theta_* V)\,\varphi(\tau)\,V^\top r, \quad
\varphi(\tau) = \int_0^\tau e^{-c\Lambda\sigma}\,d\sigma$$

(`decay_integral` of `ntkode/_core/_regression.py`). The part of $r$ outside a low-rank basis
stays put. No ODE steps are taken, so there is no stiffness limit however large
$\eta\lambda_{\max}/n$ grows. Pieces are entered:

- for the time schedule, at the switching times themselves;
- for a norm schedule ([`ntkode.schedules.AbstractNormSchedule`][]: the loss level, the
  residual norm), when $\|r\|^2$ reaches the piece's boundary level. Under a PSD kernel
  $\|r\|$ never grows, so pieces are crossed once each, from the top down; each exit time is
  found by bisection on the closed form, with an implicit-function gradient.

Everything is `jnp` code without Python branching on values, so the outputs are
differentiable with respect to node positions and kernel entries.
"""

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core._regression import decay_integral
from ._grid import AbstractKernelGrid
from ._interp import AbstractPiecewiseConstant
from ._schedule import AbstractNormSchedule, AbstractSchedule, Time


def is_exact(schedule: AbstractSchedule, interpolation) -> bool:
    """Whether [`exact_outputs`][] can solve this schedule and interpolation (with MSE)."""
    return isinstance(interpolation, AbstractPiecewiseConstant) and isinstance(
        schedule, Time | AbstractNormSchedule
    )


def piece_spectra(
    grid: AbstractKernelGrid, weights: Float[Array, "P G"] | None
) -> tuple[Float[Array, "P r"], Float[Array, "P nk r"], Float[Array, "P mk r"]]:
    """Eigenpairs and projected test kernels of each piece's kernel.

    `weights=None`: piece `p` carries node `p`'s kernel, whose spectrum the grid knows (a
    low-rank grid stores it). Otherwise pieces carry convex combinations of node kernels,
    diagonalised here.
    """
    if weights is None:
        return grid.spectral()
    kt = jnp.einsum("pg,gij->pij", weights, grid.dense_train())
    lam, vec = jax.vmap(jnp.linalg.eigh)(kt)
    basis = jnp.einsum("pg,gij,pjr->pir", weights, grid.dense_test(), vec)
    return lam, vec, basis


def _exit_time(c, lam, vec, r, level, horizon):
    """Smallest τ in [0, horizon] with ‖r(τ)‖² = level (horizon if never reached)."""
    coef = vec.T @ r
    perp = jnp.maximum(r @ r - coef @ coef, 0.0)

    def f(tau):
        return jnp.sum(coef**2 * jnp.exp(-2 * c * lam * tau)) + perp - level

    def bisect(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        above = f(mid) > 0
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    h = jax.lax.stop_gradient(horizon)
    _, hi = jax.lax.fori_loop(0, 60, bisect, (jnp.zeros_like(h), h))
    tau = jax.lax.stop_gradient(hi)
    # One Newton step with frozen slope: value unchanged at the root, and first-order
    # gradients by the implicit-function theorem.
    slope = jax.lax.stop_gradient(jnp.sum(-2 * c * lam * coef**2 * jnp.exp(-2 * c * lam * tau)))
    newton = tau - f(tau) / jnp.where(slope < 0, slope, -1.0)
    tau = jnp.where((f(h) > 0) | (slope >= 0), horizon, newton)
    return jnp.where(f(jnp.zeros_like(h)) <= 0, 0.0, jnp.clip(tau, 0.0, horizon))


def _propagate(c, lam, vec, basis, r, us, tau):
    """Train residual and test outputs after time `tau` in one piece."""
    coef = vec.T @ r
    phi = decay_integral(c * lam, tau)
    return r + vec @ (jnp.expm1(-c * lam * tau) * coef), us - c * basis @ (phi * coef)


def _at_times(c, lam, vec, basis, r, us, tau):
    r"""`(r, u*, du/dt, du*/dt)` at elapsed times `tau` `(T,)` in one piece, all at once.

    In the piece's eigenbasis $V^\top r(\tau) = e^{-c\lambda\tau} \odot V^\top r$, so the
    velocities ($\Theta r = V(\lambda \odot V^\top r)$, $\Theta_* r = (\Theta_* V) V^\top r$)
    need no new projections, and each output is one matrix product with $V$ or $\Theta_* V$.
    """
    coef = vec.T @ r
    x = c * lam[None, :] * tau[:, None]
    phi = decay_integral(c * lam[None, :], tau[:, None])
    cur = c * jnp.exp(-x) * coef
    T = tau.shape[0]
    both = jnp.concatenate([jnp.expm1(-x) * coef, -lam * cur]) @ vec.T
    rt, dut = r + both[:T], both[T:]
    both = jnp.concatenate([-c * phi * coef, -cur]) @ basis.T
    return rt, us + both[:T], dut, both[T:]


def exact_outputs(
    grid: AbstractKernelGrid,
    schedule: Time | AbstractNormSchedule,
    interpolation: AbstractPiecewiseConstant,
    u0_train: Float[Array, "n k"],
    u0_test: Float[Array, "m k"],
    y_train: Float[Array, "n k"],
    learning_rate: Float[Array, ""],
    tspan: tuple[Float[Array, ""], Float[Array, ""]],
    ts: Float[Array, " T"],
) -> tuple[
    Float[Array, "T n k"], Float[Array, "T m k"], Float[Array, "T n k"], Float[Array, "T m k"]
]:
    """Train and test outputs and their time derivatives at the save times `ts`, exactly."""
    dtype = u0_train.dtype
    # One dtype throughout (float32 data with float64 times would break the scan carry).
    ts = ts.astype(dtype)
    bounds, weights = interpolation.pieces(grid.nodes.astype(dtype))
    lam, vec, basis = (a.astype(dtype) for a in piece_spectra(grid, weights))
    n, k = u0_train.shape
    m = u0_test.shape[0]
    c = (learning_rate / n).astype(dtype)
    y = y_train.reshape(-1)
    t0, t1 = (t.astype(dtype) for t in tspan)
    r0, us0 = u0_train.reshape(-1) - y, u0_test.reshape(-1)
    by_norm = isinstance(schedule, AbstractNormSchedule)
    if by_norm:
        # ‖r‖ falls, so the schedule value falls: pieces are crossed from the top down,
        # piece p until ‖r‖² reaches the level of its lower boundary.
        order = jnp.arange(bounds.shape[0] - 2, -1, -1)
        levels = schedule.residual_sq(bounds[:-1], n)[order]
        pieces = (lam[order], vec[order], basis[order], levels)
    else:
        start, end = jnp.clip(bounds[:-1], t0, t1), jnp.clip(bounds[1:], t0, t1)
        member = (ts[None, :] >= bounds[:-1, None]) & (ts[None, :] < bounds[1:, None])
        pieces = (lam, vec, basis, start, end, member)

    def piece(carry, inputs):
        if by_norm:
            r, us, a, out = carry
            lam_p, vec_p, basis_p, level = inputs
            b = a + _exit_time(c, lam_p, vec_p, r, level, t1 - a)
            # A non-empty piece ending at t1 also owns t1.
            mask = (ts >= a) & ((ts < b) | ((ts >= t1) & (b >= t1) & (b > a)))
        else:
            r, us, out = carry
            lam_p, vec_p, basis_p, a, b, mask = inputs
        new = _at_times(c, lam_p, vec_p, basis_p, r, us, jnp.clip(ts - a, 0.0, b - a))
        out = tuple(jnp.where(mask[:, None], v, o) for v, o in zip(new, out, strict=True))
        r, us = _propagate(c, lam_p, vec_p, basis_p, r, us, b - a)
        return ((r, us, b, out) if by_norm else (r, us, out)), None

    T = ts.shape[0]
    zr, zs = jnp.zeros((T,) + r0.shape, dtype), jnp.zeros((T,) + us0.shape, dtype)
    out0 = (zr, zs, zr, zs)
    carry, _ = jax.lax.scan(piece, (r0, us0, t0, out0) if by_norm else (r0, us0, out0), pieces)
    rs, uss, du, dus = carry[-1]
    return (
        (rs + y).reshape(T, n, k),
        uss.reshape(T, m, k),
        du.reshape(T, n, k),
        dus.reshape(T, m, k),
    )


__all__ = ["exact_outputs", "is_exact", "piece_spectra"]
