r"""A convergence certificate for scheduled MSE surrogates.

For mean MSE the train residual $r = u - Y$ of the scheduled flow obeys
$\tfrac{d}{dt}\tfrac12\|r\|^2 = -\tfrac{\eta}{n} r^\top \Theta(s) r$. With convex weights,
$\Theta(s) = \sum_g w_g \Theta_g$ and $r^\top\Theta(s) r \ge \min_g\lambda_{\min}(\Theta_g)
\|r\|^2$, whatever the schedule does (time, loss level, any state dependence). Hence
$\|r(t)\| \le e^{-\eta\lambda_* (t - t_0)/n}\|r(t_0)\|$ with
$\lambda_* = \min_g \lambda_{\min}(\Theta_g)$: a guaranteed decay rate for the whole
linear-parameter-varying system (a common quadratic Lyapunov function $\|r\|^2$).

That rate is the worst case over all schedules and all residual directions; on training data
$\lambda_*$ is tiny and the bound says little. `certify_residual` adds what the schedule and
the initial residual tell: for time schedules, the residual's projection on each piece's
kernel spectrum with a perturbation bound for the kernel's motion (a two-sided envelope); for
schedules that follow the residual norm, the decay rate certified level by level.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._core._errors import check_positive
from .._core._regression import decay_integral
from ._grid import AbstractKernelGrid, check_grid
from ._interp import AbstractInterpolation, Linear, check_interpolation
from ._schedule import AbstractNormSchedule, AbstractSchedule, Time


class Certificate(eqx.Module):
    r"""Per-node spectra of a grid and the guaranteed residual decay rate.

    **Fields:**

    - `nodes`: the grid nodes `(G,)`.
    - `eigenvalues`: train-kernel eigenvalues per node, ascending, `(G, n·k)` (a low-rank grid
      pads the unstored part with zeros).
    - `lambda_min`, `lambda_max`: per node, `(G,)`.
    - `rate`: $\eta\lambda_*/n$, the certified decay rate of $\|u - Y\|$ per unit time, or
      `nan` when the interpolation is not convex (no certificate).
    - `stiffness`: $\eta\max_g\lambda_{\max}(\Theta_g)/n$, the fastest mode's rate (what
      limits explicit step sizes).
    - `learning_rate`, `n_train`.
    """

    nodes: Float[Array, " G"]
    eigenvalues: Float[Array, "G nk"]
    lambda_min: Float[Array, " G"]
    lambda_max: Float[Array, " G"]
    rate: Float[Array, ""]
    stiffness: Float[Array, ""]
    learning_rate: Float[Array, ""]
    n_train: int = eqx.field(static=True)

    def bound(
        self,
        t: Float[ArrayLike, "*T"],
        r0_norm: Float[ArrayLike, ""],
        t0: Float[ArrayLike, ""] = 0.0,
    ) -> Float[Array, "*T"]:
        r"""Certified upper bound on $\|u(t) - Y\|$: $e^{-\text{rate}\,(t - t_0)}\|r_0\|$."""
        t = jnp.asarray(t)
        return jnp.asarray(r0_norm) * jnp.exp(-self.rate * (t - t0))

    def loss_bound(
        self, t: Float[ArrayLike, "*T"], loss0: Float[ArrayLike, ""], t0: Float[ArrayLike, ""] = 0.0
    ) -> Float[Array, "*T"]:
        """Certified upper bound on the mean-MSE train loss: $e^{-2\\,\\text{rate}(t-t_0)}L_0$."""
        t = jnp.asarray(t)
        return jnp.asarray(loss0) * jnp.exp(-2 * self.rate * (t - t0))

    def summary(self) -> dict[str, list[float] | float]:
        return {
            "nodes": np.asarray(self.nodes).tolist(),
            "lambda_min": np.asarray(self.lambda_min).tolist(),
            "lambda_max": np.asarray(self.lambda_max).tolist(),
            "rate": float(self.rate),
            "stiffness": float(self.stiffness),
        }


def certify(
    grid: AbstractKernelGrid,
    learning_rate: Float[ArrayLike, ""] = 1.0,
    interpolation: AbstractInterpolation = Linear(),
) -> Certificate:
    r"""Spectra of every grid kernel and a guaranteed decay rate of the MSE train residual.

    **Arguments:**

    - `grid`: a kernel grid ([`ntkode.KernelGrid`][] or [`ntkode.LowRankKernelGrid`][]; a
      low-rank kernel is zero outside its basis, so it certifies no decay unless its rank
      is full).
    - `learning_rate`: $\eta$ of the surrogate the certificate is for.
    - `interpolation`: the interpolation used (its weights must be convex for a certificate;
      all of [`ntkode.schedules`][] are).

    **Returns:** a [`ntkode.Certificate`][]: for MSE and any schedule,
    $\|u(t) - Y\| \le e^{-\text{rate}\,(t - t_0)}\|u(t_0) - Y\|$.
    """
    check_grid(grid)
    check_interpolation(interpolation)
    check_positive("learning_rate", learning_rate)
    lam = grid.eigenvalues()
    eta = jnp.asarray(learning_rate, lam.dtype)
    n = grid.n_train
    lam_min, lam_max = lam[:, 0], lam[:, -1]
    # Round-off can make λ_min of a singular kernel slightly negative: no decay is certified.
    rate = eta * jnp.maximum(jnp.min(lam_min), 0.0) / n
    if not interpolation.convex:
        rate = jnp.asarray(jnp.nan, lam.dtype)
    return Certificate(
        nodes=grid.nodes,
        eigenvalues=lam,
        lambda_min=lam_min,
        lambda_max=lam_max,
        rate=rate,
        stiffness=eta * jnp.max(lam_max) / n,
        learning_rate=eta,
        n_train=n,
    )


class ResidualEnvelope(eqx.Module):
    r"""Certified bounds on the MSE train-residual norm $\|u(t) - Y\|$ of one scheduled run.

    Built by [`ntkode.certify_residual`][] from the grid, the schedule, the interpolation and
    the initial residual $r_0$ alone (no solve of the surrogate).

    **Fields:**

    - `t`: the times `(T,)`.
    - `upper`, `lower`: $\text{lower}(t) \le \|u(t) - Y\| \le \text{upper}(t)$ for every
      trajectory of the surrogate that starts at $r_0$ (`lower` is 0 where nothing sharper
      is certified).
    - `uniform`: the schedule-blind bound of [`ntkode.certify`][],
      $e^{-\eta\lambda_*(t - t_0)/n}\|r_0\|$; `upper` is never above it.
    - `method`: which argument gave `upper`: `"time-envelope"` (a time schedule: the
      residual's projection on the spectra of the interpolated kernels, with a perturbation
      bound for the kernel's motion), `"norm-levels"` (a schedule that is a function of
      $\|u - Y\|$: the decay rate certified level by level) or `"uniform"` (any other
      schedule: the bound of [`ntkode.certify`][] only).
    """

    t: Float[Array, " T"]
    upper: Float[Array, " T"]
    lower: Float[Array, " T"]
    uniform: Float[Array, " T"]
    method: str = eqx.field(static=True)

    def summary(self) -> dict[str, list[float] | str]:
        return {
            "t": np.asarray(self.t).tolist(),
            "upper": np.asarray(self.upper).tolist(),
            "lower": np.asarray(self.lower).tolist(),
            "uniform": np.asarray(self.uniform).tolist(),
            "method": self.method,
        }


def certify_residual(
    grid: AbstractKernelGrid,
    r0: Float[ArrayLike, "n k"],
    t: Float[ArrayLike, " T"],
    schedule: AbstractSchedule = Time(),
    interpolation: AbstractInterpolation = Linear(),
    learning_rate: Float[ArrayLike, ""] = 1.0,
    *,
    substeps: int = 16,
) -> ResidualEnvelope:
    r"""Bounds on the train-residual norm of a scheduled MSE surrogate that use where the
    residual lives, not only the smallest eigenvalue of the grid.

    The flow is $\dot r = -c\,\Theta(s)\,r$ with $c = \eta/n$, $r = u - Y$, and
    $\Theta(s) = \sum_g w_g(s)\Theta_g$ convex. [`ntkode.certify`][] bounds $\|r(t)\|$ by
    $e^{-c\lambda_*(t - t_0)}\|r_0\|$, $\lambda_* = \min_g\lambda_{\min}(\Theta_g)$: on
    training data $\lambda_*$ is tiny (the first node's smallest eigenvalue) and the bound
    says little. Two sharper bounds, each rigorous under the stated assumptions:

    **Time schedules** (`schedule` is [`ntkode.schedules.Time`][]; the interpolation puts
    weight only on nodes $g, g+1$ for $s \in [s_g, s_{g+1}]$, the weight
    $\alpha(s)$ of node $g+1$ does not decrease in $s$, and the end kernels hold outside the
    grid; true of [`ntkode.schedules.Linear`][], [`ntkode.schedules.Smoothstep`][] and every
    mode of [`ntkode.schedules.PiecewiseConstant`][]). Cut each interval into `substeps`
    pieces $[a, b]$. On a piece $\alpha(t) \in [\alpha(a), \alpha(b)]$, so
    $\Theta(t) = K + (\alpha(t) - m)D$ with $K = (1-m)\Theta_g + m\Theta_{g+1}$,
    $D = \Theta_{g+1} - \Theta_g$, $m$ the midpoint and $\delta$ the half-width of that
    range, $|\alpha - m| \le \delta$. A reference $\rho(t) = e^{-cK(t-a)}\rho(a)$ is exact:
    with $K = V\Lambda V^\top$ and $q = V^\top\rho(a)$ (the residual's projection on the
    piece's spectrum), $\rho(t) = Ve^{-c\Lambda(t-a)}q$. The deviation $e = r - \rho$ obeys
    $\dot e = -c\Theta(t)e - c(\alpha - m)D\rho$; $\Theta(t) \succeq \mu I$ with
    $\mu = \min(\lambda_{\min}(\Theta_g), \lambda_{\min}(\Theta_{g+1}))$, so its propagator
    shrinks norms by $e^{-c\mu\tau}$ and, by Cauchy–Schwarz,
    $$\|e(a+\tau)\| \le e^{-c\mu\tau}\|e(a)\| + c\delta\sqrt{\tau\, q^\top\big(W \circ
    \Phi(\tau)\big)q}, \quad W = (DV)^\top DV,\;
    \Phi_{ij}(\tau) = \int_0^\tau e^{-c(\lambda_i+\lambda_j)\sigma}d\sigma.$$
    Hence $\|\rho\| - \|e\| \le \|r\| \le \|\rho\| + \|e\|$, with $e(t_0) = 0$. Piecewise-
    constant interpolation has $\delta = 0$ away from its switches, where the envelope is
    exact; for the others its width falls like $1/\text{substeps}$.

    **Norm schedules** ([`ntkode.schedules.AbstractNormSchedule`][]: the loss level, the
    residual norm). The node values are levels $\rho_g = \|r\|$ at which $s = s_g$
    (`schedule.residual_sq`). While $\rho_g \le \|r\| \le \rho_{g+1}$ the kernel lies in
    $\mathrm{conv}\{\Theta_g, \Theta_{g+1}\}$ (same interpolation assumption), so
    $\tfrac{d}{dt}\log\|r\| \le -c\lambda(\|r\|)$ with $\lambda$ the smaller
    $\lambda_{\min}$ of the two (above the top level: the top node's; below the bottom
    one: the bottom node's). With $\psi(x) = \int_x^{\|r_0\|} d\rho / (c\lambda(\rho)\rho)$,
    $\tfrac{d}{dt}\psi(\|r(t)\|) \ge 1$, so $\|r(t)\| \le \psi^{-1}(t - t_0)$: the rate
    grows as the residual falls through levels whose kernels are better conditioned. It
    needs $\|r_0\|$ only. `lower` is 0.

    Any other schedule gets the bound of [`ntkode.certify`][] (`method="uniform"`).

    **Arguments:**

    - `grid`: the kernel grid.
    - `r0`: the initial train residual $u(t_0) - Y$, `(n, k)`.
    - `t`: increasing times `(T,)`; `t[0]` is $t_0$.
    - `schedule`, `interpolation`, `learning_rate`: those of the surrogate.
    - `substeps`: pieces per grid interval for time schedules (cost: one eigendecomposition
      of an `n·k` kernel per piece).

    **Returns:** a [`ntkode.ResidualEnvelope`][].

    This is the linear-parameter-varying view of a scheduled NTK (the kernel as a parameter-
    varying system matrix): the uniform bound is its common quadratic Lyapunov function
    $\|r\|^2$; the envelopes add what that function ignores, the schedule's structure.
    """
    check_grid(grid)
    check_interpolation(interpolation)
    if not isinstance(schedule, AbstractSchedule):
        raise TypeError(
            f"`schedule` must be an ntkode.schedules schedule, got {type(schedule).__name__}."
        )
    if not interpolation.convex:
        raise ValueError(
            "`interpolation` declares non-convex weights: no residual bound holds; use one of "
            "ntkode.schedules' interpolations."
        )
    if int(substeps) < 1:
        raise ValueError(f"`substeps` must be a positive integer, got {substeps!r}.")
    kernels = np.asarray(grid.dense_train(), dtype=np.float64)
    N = kernels.shape[-1]
    r0 = np.asarray(r0, dtype=np.float64)
    if r0.size != N:
        raise ValueError(
            f"`r0` must be the initial train residual u0 - Y with n·k = {N} entries, got shape "
            f"{r0.shape}."
        )
    r0 = r0.reshape(-1)
    t = np.asarray(t, dtype=np.float64).reshape(-1)
    if t.size == 0 or np.any(np.diff(t) < 0):
        raise ValueError("`t` must be a non-empty increasing array of times; t[0] is t0.")
    c = float(learning_rate) / grid.n_train
    nodes = np.asarray(grid.nodes, dtype=np.float64)
    lam_min = np.maximum(np.linalg.eigvalsh(kernels)[:, 0], 0.0)
    uniform = np.linalg.norm(r0) * np.exp(-c * lam_min.min() * (t - t[0]))
    if isinstance(schedule, Time):
        upper, lower = _time_envelope(kernels, nodes, lam_min, r0, t, c, interpolation, substeps)
        method = "time-envelope"
    elif isinstance(schedule, AbstractNormSchedule):
        levels = np.sqrt(np.asarray(schedule.residual_sq(jnp.asarray(nodes), grid.n_train)))
        upper, lower = _norm_levels(levels, lam_min, np.linalg.norm(r0), t, c), np.zeros_like(t)
        method = "norm-levels"
    else:
        upper, lower, method = uniform, np.zeros_like(t), "uniform"
    dtype = lam_min.dtype
    return ResidualEnvelope(
        t=jnp.asarray(t, dtype),
        upper=jnp.asarray(np.minimum(upper, uniform), dtype),
        lower=jnp.asarray(np.clip(lower, 0.0, None), dtype),
        uniform=jnp.asarray(uniform, dtype),
        method=method,
    )


def _pieces(nodes, t0, t1, substeps):
    """Time pieces `(a, b, g)` covering `[t0, t1]`: clamped ends, `substeps` per interval."""
    edges = [-np.inf]
    for g in range(nodes.size - 1):
        edges += list(np.linspace(nodes[g], nodes[g + 1], substeps + 1)[:-1])
    edges += [nodes[-1], np.inf]
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        if b < t0 or a > t1 or b <= a:
            continue
        g = int(np.clip(np.searchsorted(nodes, a, side="right") - 1, 0, max(nodes.size - 2, 0)))
        out.append((max(a, t0), b, g))
    return out


def _time_envelope(kernels, nodes, lam_min, r0, t, c, interpolation, substeps):
    upper, lower = np.empty_like(t), np.empty_like(t)
    pieces = _pieces(nodes, t[0], t[-1], substeps)
    G = nodes.size
    # Each piece's weight range of node g+1, from the interpolation itself: at the left end
    # and approaching the right end from inside (one vectorised call for all pieces).
    ends = np.array([[a, np.nextafter(b, a)] if np.isfinite(b) else [a, a] for a, b, _ in pieces])
    weights = jax.vmap(interpolation.weights, (0, None))(
        jnp.asarray(ends.reshape(-1)), jnp.asarray(nodes)
    )
    weights = np.asarray(weights).reshape(len(pieces), 2, G)
    setup = []
    for (a, b, g), w in zip(pieces, weights, strict=True):
        if G == 1 or b <= nodes[0] or a >= nodes[-1]:
            # Outside the grid the end kernel holds exactly: no motion, no deviation.
            end = 0 if (G == 1 or b <= nodes[0]) else G - 1
            setup.append((kernels[end], None, 0.0, lam_min[end]))
        else:
            lo, hi = w[0, g + 1], w[1, g + 1]
            m, delta = 0.5 * (lo + hi), 0.5 * abs(hi - lo)
            D = kernels[g + 1] - kernels[g]
            K = (1 - m) * kernels[g] + m * kernels[g + 1]
            setup.append((K, D, delta, min(lam_min[g], lam_min[g + 1])))
    # One batched eigendecomposition for every piece's reference kernel.
    lams, Vs = map(np.asarray, jnp.linalg.eigh(jnp.asarray(np.stack([k for k, *_ in setup]))))
    rho, err = r0, 0.0
    for (a, b, _), (_, D, delta, mu), lam, V in zip(pieces, setup, lams, Vs, strict=True):
        q = V.T @ rho
        W = None
        if D is not None and delta > 0:
            DV = D @ V
            W = (DV.T @ DV) * np.outer(q, q)

        inside = np.flatnonzero((t >= a) & (t <= b))
        # The saved times in the piece and, for a finite piece, its right end (the next start).
        tau = np.concatenate([t[inside] - a, [b - a] if np.isfinite(b) else []])
        ref, dev = _piece_envelope(tau, c, lam, V, q, W, delta, mu, err)
        norm = np.linalg.norm(ref[: inside.size], axis=1)
        upper[inside], lower[inside] = norm + dev[: inside.size], norm - dev[: inside.size]
        if np.isfinite(b):
            rho, err = ref[-1], float(dev[-1])
    return upper, lower


def _piece_envelope(tau, c, lam, V, q, W, delta, mu, err):
    """Reference residuals `(P, N)` and deviation bounds `(P,)` at elapsed times `tau`."""
    ref = (np.exp(-c * lam[None, :] * tau[:, None]) * q) @ V.T
    dev = np.exp(-c * mu * tau) * err
    if W is not None:
        rates = jnp.asarray(c * (lam[:, None] + lam[None, :]))[None]
        phi = np.asarray(decay_integral(rates, jnp.asarray(tau)[:, None, None]))
        quad = np.einsum("ij,pij->p", W, phi)
        dev = dev + c * delta * np.sqrt(np.maximum(tau * quad, 0.0))
    return ref, dev


def _norm_levels(levels, lam_min, r0_norm, t, c):
    r"""$\psi^{-1}(t - t_0)$ for the piecewise-constant rate $c\lambda(\|r\|)$ over levels."""
    # Bands of ‖r‖ between consecutive levels, top to bottom, and the rate in each.
    bounds = np.concatenate([[np.inf], levels[::-1], [0.0]])
    rates = np.concatenate(
        [[lam_min[-1]], np.minimum(lam_min[1:], lam_min[:-1])[::-1], [lam_min[0]]]
    )
    out = np.empty_like(t)
    for i, tau in enumerate(t - t[0]):
        x, left = r0_norm, tau
        for top, bottom, lam in zip(bounds[:-1], bounds[1:], rates, strict=True):
            if x <= bottom:
                continue
            x = min(x, top)
            need = np.inf if lam <= 0 else np.log(x / bottom) / (c * lam) if bottom > 0 else np.inf
            if left < need:
                x = x * np.exp(-c * lam * left)
                break
            x, left = bottom, left - need
        out[i] = x
    return out


__all__ = ["Certificate", "ResidualEnvelope", "certify", "certify_residual"]
