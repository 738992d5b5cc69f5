r"""A convergence certificate for scheduled MSE surrogates.

For mean MSE the train residual $r = u - Y$ of the scheduled flow obeys
$\tfrac{d}{dt}\tfrac12\|r\|^2 = -\tfrac{\eta}{n} r^\top \Theta(s) r$. With convex weights,
$\Theta(s) = \sum_g w_g \Theta_g$ and $r^\top\Theta(s) r \ge \min_g\lambda_{\min}(\Theta_g)
\|r\|^2$, whatever the schedule does (time, loss level, any state dependence). Hence
$\|r(t)\| \le e^{-\eta\lambda_* (t - t_0)/n}\|r(t_0)\|$ with
$\lambda_* = \min_g \lambda_{\min}(\Theta_g)$: a guaranteed decay rate for the whole
linear-parameter-varying system (a common quadratic Lyapunov function $\|r\|^2$).
"""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._grid import AbstractKernelGrid, check_grid
from ._interp import AbstractInterpolation, Linear, check_interpolation


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


__all__ = ["Certificate", "certify"]
