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
$\eta\lambda_{\max}/n$ grows. Where the basis comes from is a strategy
(`ntkode/_scheduled/_basis.py`): every eigenpair ([`ntkode.EigenBasis`][]) or a Lanczos
basis grown from the residual entering the piece ([`ntkode.KrylovBasis`][], no
factorisation, for large training sets). Kernels shared by the `k` outputs
($\Theta \otimes I_k$) have `n`-row bases: the residual is then read as an `(n, k)` matrix,
one column per output. Pieces are entered:

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
from .._core._results import RESULTS
from ._basis import AbstractPieceBasis, EigenBasis, PieceBasis
from ._grid import AbstractKernelGrid
from ._interp import AbstractPiecewiseConstant
from ._schedule import AbstractNormSchedule, AbstractSchedule, Time


def is_exact(schedule: AbstractSchedule, interpolation) -> bool:
    """Whether [`exact_outputs`][] can solve this schedule and interpolation (with MSE)."""
    return isinstance(interpolation, AbstractPiecewiseConstant) and isinstance(
        schedule, Time | AbstractNormSchedule
    )


def active_nodes(interpolation: AbstractPiecewiseConstant, weights):
    """`(idx, w)` `(P, support)`: the nodes each piece combines (`None, None`: node `p`)."""
    if weights is None:
        return None, None
    # A piece combines at most `support` kernels (what `local` returns): the largest weights.
    w, idx = jax.lax.top_k(weights, interpolation.support)
    return idx, w


def _as_dtype(dtype):
    return lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.inexact) else a


def _columns(b: PieceBasis, r, us):
    """The residual and test outputs as matrices with the basis' row counts."""
    return r.reshape(b.rows, -1), us.reshape(b.test_basis.shape[0], -1)


def _exit_time(c, b: PieceBasis, r, level, horizon):
    """Smallest τ in [0, horizon] with ‖r(τ)‖² = level (horizon if never reached)."""
    R, _ = _columns(b, r, jnp.zeros((b.test_basis.shape[0],), r.dtype))
    lam = b.eigvals[:, None]
    coef = b.project(R)
    perp = jnp.maximum(jnp.sum(R * R) - jnp.sum(coef * coef), 0.0)

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


def _propagate(c, b: PieceBasis, r, us, tau):
    """Train residual and test outputs after time `tau` in one piece."""
    R, U = _columns(b, r, us)
    coef = b.project(R)
    phi = decay_integral(c * b.eigvals, tau)[:, None]
    R = R + b.expand(jnp.expm1(-c * b.eigvals * tau)[:, None] * coef)
    return R.reshape(-1), (U - c * b.test_basis @ (phi * coef)).reshape(-1)


def _at_times(c, b: PieceBasis, r, us, tau):
    r"""`(r, u*, du/dt, du*/dt)` at elapsed times `tau` `(T,)` in one piece, all at once.

    In the piece's eigenbasis $V^\top r(\tau) = e^{-c\lambda\tau} \odot V^\top r$, so the
    velocities ($\Theta r = V(\lambda \odot V^\top r)$, $\Theta_* r = (\Theta_* V) V^\top r$)
    need no new projections, and each output is one matrix product with $V$ or $\Theta_* V$.

    With node bases (`b.frame`), the train rows' change is left as coordinates on the node
    bases `(a, rank, 2T, columns)` (second return value; `None` otherwise) and the rows
    returned are the entry residual and zero velocities: the caller sums the coordinates of
    every piece per node and expands them once, after the last piece, instead of one
    `(rows × a·rank)` product per piece at every save time.
    """
    R, U = _columns(b, r, us)
    lam = b.eigvals
    coef = b.project(R)  # (rank, columns)
    x = c * lam[None, :] * tau[:, None]
    phi = decay_integral(c * lam[None, :], tau[:, None])
    cur = c * jnp.exp(-x)
    T = tau.shape[0]
    scale = jnp.concatenate([jnp.expm1(-x), -lam * cur])  # (2T, rank)
    change = scale.T[:, :, None] * coef[:, None, :]  # (rank, 2T, columns)
    if b.frame is None:
        both = jnp.moveaxis(b.expand(change), 1, 0)
        rt, dut, nodal = R + both[:T], both[T:], None
    else:
        rt = jnp.broadcast_to(R, (T,) + R.shape)
        dut, nodal = jnp.zeros_like(rt), b.coordinates(change)
    both = jnp.einsum(
        "ir,trc->tic", b.test_basis, jnp.concatenate([-c * phi, -cur])[:, :, None] * coef
    )
    flat = lambda a: a.reshape(a.shape[0], -1)
    return (flat(rt), flat(U + both[:T]), flat(dut), flat(both[T:])), nodal


def _estimate(c, b: PieceBasis, tau):
    """Relative residual error estimate of a Krylov basis at elapsed times `tau` (max)."""
    phi = decay_integral(c * b.eigvals[None, :], tau[:, None])
    return jnp.max(b.coupling * c * jnp.abs(phi @ b.tail))


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
    piece_basis: AbstractPieceBasis = EigenBasis(),
) -> tuple[
    tuple[
        Float[Array, "T n k"], Float[Array, "T m k"], Float[Array, "T n k"], Float[Array, "T m k"]
    ],
    RESULTS,
]:
    """Train and test outputs and their time derivatives at the save times `ts`, exactly.

    **Returns:** `((u, u*, du/dt, du*/dt), result)`: `result` is `RESULTS.not_converged`
    where an approximate basis ([`ntkode.KrylovBasis`][]) estimated its error above its
    tolerance, else `RESULTS.successful`.
    """
    dtype = u0_train.dtype
    # One dtype throughout (float32 data with float64 times would break the scan carry).
    ts = ts.astype(dtype)
    bounds, weights = interpolation.pieces(grid.nodes.astype(dtype))
    idx, w = active_nodes(interpolation, weights)
    prepared = piece_basis.prepare(grid, idx, None if w is None else w.astype(dtype))
    prepared = jax.tree.map(_as_dtype(dtype), prepared)
    n, k = u0_train.shape
    m = u0_test.shape[0]
    c = (learning_rate / n).astype(dtype)
    y = y_train.reshape(-1)
    t0, t1 = (t.astype(dtype) for t in tspan)
    r0, us0 = u0_train.reshape(-1) - y, u0_test.reshape(-1)
    by_norm = isinstance(schedule, AbstractNormSchedule)
    P = bounds.shape[0] - 1
    if by_norm:
        # ‖r‖ falls, so the schedule value falls: pieces are crossed from the top down,
        # piece p until ‖r‖² reaches the level of its lower boundary.
        order = jnp.arange(P - 1, -1, -1)
        levels = schedule.residual_sq(bounds[:-1], n)[order]
        pieces = (jax.tree.map(lambda a: a[order], prepared), levels)
    else:
        start, end = jnp.clip(bounds[:-1], t0, t1), jnp.clip(bounds[1:], t0, t1)
        member = (ts[None, :] >= bounds[:-1, None]) & (ts[None, :] < bounds[1:, None])
        pieces = (prepared, start, end, member)

    def piece(carry, inputs):
        if by_norm:
            r, us, err, a, out = carry
            data, level = inputs
            b = piece_basis.basis(grid, data, r)
            end = a + _exit_time(c, b, r, level, t1 - a)
            # A non-empty piece ending at t1 also owns t1.
            mask = (ts >= a) & ((ts < end) | ((ts >= t1) & (end >= t1) & (end > a)))
        else:
            r, us, err, out = carry
            data, a, end, mask = inputs
            b = piece_basis.basis(grid, data, r)
        tau = jnp.clip(ts - a, 0.0, end - a)
        new, nodal = _at_times(c, b, r, us, tau)
        rows = tuple(jnp.where(mask[:, None], v, o) for v, o in zip(new, out[:4], strict=True))
        if nodal is not None:
            twice = jnp.concatenate([mask, mask])[None, None, :, None]
            rows = rows + (out[4].at[b.nodes].add(jnp.where(twice, nodal, 0.0)),)
        out = rows
        used = jnp.concatenate([jnp.where(mask, tau, 0.0), (end - a)[None]])
        err = jnp.maximum(err, _estimate(c, b, used))
        r, us = _propagate(c, b, r, us, end - a)
        return ((r, us, err, end, out) if by_norm else (r, us, err, out)), None

    T = ts.shape[0]
    zr, zs = jnp.zeros((T,) + r0.shape, dtype), jnp.zeros((T,) + us0.shape, dtype)
    out0 = (zr, zs, zr, zs)
    framed = isinstance(prepared, PieceBasis) and prepared.nodes is not None
    bases = grid.frame_bases() if framed else None
    if bases is not None:
        # Train-row changes as coordinates on each node's basis, summed over the pieces.
        G, rows, rank = bases.shape
        out0 = out0 + (jnp.zeros((G, rank, 2 * T, r0.shape[0] // rows), dtype),)
    err0 = jnp.zeros((), dtype)
    init = (r0, us0, err0, t0, out0) if by_norm else (r0, us0, err0, out0)
    carry, _ = jax.lax.scan(piece, init, pieces)
    rs, uss, du, dus = carry[-1][:4]
    if bases is not None:
        change = jnp.einsum("gir,grtc->tic", bases.astype(dtype), carry[-1][4]).reshape(2 * T, -1)
        rs, du = rs + change[:T], du + change[T:]
    err = carry[2]
    converged = err <= piece_basis.tolerance(dtype)
    result = RESULTS.where(converged, RESULTS.successful, RESULTS.not_converged)
    outputs = (
        (rs + y).reshape(T, n, k),
        uss.reshape(T, m, k),
        du.reshape(T, n, k),
        dus.reshape(T, m, k),
    )
    return outputs, result


__all__ = ["active_nodes", "exact_outputs", "is_exact"]
