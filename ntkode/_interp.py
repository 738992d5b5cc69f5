r"""Interpolation weights between the kernels of a grid: convex partitions of unity.

An interpolation maps a scheduling value $s$ and the grid nodes $s_1 < \dots < s_G$ to
weights $w_g(s) \ge 0$ with $\sum_g w_g = 1$; the scheduled kernel is
$\Theta(s) = \sum_g w_g(s)\,\Theta_g$. Because the weights are convex, $\Theta(s)$ stays
positive semi-definite and $\lambda_{\min}(\Theta(s)) \ge \min_g \lambda_{\min}(\Theta_g)$
(the certificate of [`ntkode.certify`][]). Outside $[s_1, s_G]$ the value is clamped to the
nearest end (the solver warns once).

All interpolations are local: at most `support` neighbouring kernels are active, so a vector
field costs `support` kernel products rather than `G`. Everything is written with `jnp`
operations only (no Python branching on values), so weights are differentiable in `s` and in
the node positions, as grid tuning needs.
"""

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def _segment(s, nodes):
    """Left node index `i` of the interval holding `s` (clamped) and the local coordinate `a`."""
    G = nodes.shape[0]
    if G == 1:
        return jnp.zeros((), jnp.int32), jnp.zeros((), nodes.dtype)
    s = jnp.clip(s, nodes[0], nodes[-1])
    i = jnp.clip(jnp.searchsorted(nodes, s, side="right") - 1, 0, G - 2)
    a = (s - nodes[i]) / (nodes[i + 1] - nodes[i])
    return i, jnp.clip(a, 0.0, 1.0)


class AbstractInterpolation(eqx.Module):
    """Convex interpolation weights over grid nodes.

    Subclasses implement `local(s, nodes) -> (indices, weights)` for the `support` active
    kernels; `weights(s, nodes)` expands them to all `G` nodes.
    """

    support: eqx.AbstractClassVar[int]
    # True when the weights are non-negative and sum to one (the certificate needs this).
    convex: ClassVar[bool] = True

    @abc.abstractmethod
    def local(
        self, s: Float[Array, ""], nodes: Float[Array, " G"]
    ) -> tuple[Int[Array, " support"], Float[Array, " support"]]:
        """Indices of the active nodes and their weights."""

    def weights(self, s: Float[Array, ""], nodes: Float[Array, " G"]) -> Float[Array, " G"]:
        """All `G` weights at scheduling value `s` (zeros except at active nodes)."""
        idx, w = self.local(s, nodes)
        return jnp.zeros(nodes.shape, w.dtype).at[idx].add(w)


class Linear(AbstractInterpolation):
    r"""Piecewise-linear (hat-function) weights: $w_i = 1 - a$, $w_{i+1} = a$ on $[s_i, s_{i+1}]$.

    Continuous in $s$, with kinks at the nodes.
    """

    support: ClassVar[int] = 2

    def local(self, s, nodes):
        i, a = _segment(s, nodes)
        return _pair(i, 1.0 - a, a, nodes)


class Smoothstep(AbstractInterpolation):
    r"""A smooth partition of unity: hat functions with the local coordinate smoothed.

    $w_{i+1} = h(a)$, $w_i = 1 - h(a)$ with $h(a) = 3a^2 - 2a^3$ (`order=1`, weights $C^1$)
    or $h(a) = 10a^3 - 15a^4 + 6a^5$ (`order=2`, $C^2$). Weights are $1$ exactly at their own
    node, so the grid kernels are reproduced there, and their derivatives vanish at nodes.
    """

    order: int = eqx.field(static=True, default=1)
    support: ClassVar[int] = 2

    def __check_init__(self):
        if self.order not in (1, 2):
            raise ValueError(f"`order` must be 1 (C¹) or 2 (C²), got {self.order!r}.")

    def local(self, s, nodes):
        i, a = _segment(s, nodes)
        if self.order == 1:
            h = a * a * (3.0 - 2.0 * a)
        else:
            h = a**3 * (10.0 + a * (-15.0 + 6.0 * a))
        # Round-off can push h a few ulps outside [0, 1]; weights must stay non-negative.
        h = jnp.clip(h, 0.0, 1.0)
        return _pair(i, 1.0 - h, h, nodes)


class PiecewiseConstant(AbstractInterpolation):
    """One kernel at a time: the nearest node (`mode="nearest"`) or the last node passed
    (`mode="left"`, a zero-order hold).

    With a time schedule and MSE, this makes the surrogate piecewise linear-time-invariant, and
    `solve` uses exact matrix exponentials per segment (no ODE steps).
    """

    mode: str = eqx.field(static=True, default="nearest")
    support: ClassVar[int] = 1

    def __check_init__(self):
        if self.mode not in ("nearest", "left"):
            raise ValueError(f"`mode` must be 'nearest' or 'left', got {self.mode!r}.")

    def local(self, s, nodes):
        i, a = _segment(s, nodes)
        if nodes.shape[0] > 1:
            if self.mode == "nearest":
                i = i + (a >= 0.5).astype(i.dtype)
            else:
                i = i + (a >= 1.0).astype(i.dtype)
        return i[None], jnp.ones((1,), nodes.dtype)

    def boundaries(self, nodes: Float[Array, " G"]) -> Float[Array, " G+1"]:
        """Switching points: kernel `g` is active on `[b_g, b_{g+1})`, `b_0 = -∞`, `b_G = +∞`."""
        inf = jnp.full((1,), jnp.inf, nodes.dtype)
        inner = 0.5 * (nodes[1:] + nodes[:-1]) if self.mode == "nearest" else nodes[1:]
        return jnp.concatenate([-inf, inner, inf])


def _pair(i, w0, w1, nodes):
    if nodes.shape[0] == 1:
        return jnp.zeros((1,), jnp.int32), jnp.ones((1,), nodes.dtype)
    return jnp.stack([i, i + 1]), jnp.stack([w0, w1]).astype(nodes.dtype)


__all__ = ["AbstractInterpolation", "Linear", "PiecewiseConstant", "Smoothstep"]
