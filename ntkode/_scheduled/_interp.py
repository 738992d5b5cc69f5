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

Every concrete interpolation declares `support` and `convex` (whether its weights are a
convex combination, which the certificate needs). Piecewise-constant ones derive from
[`ntkode.schedules.AbstractPiecewiseConstant`][] and list their pieces, which is what lets an
MSE surrogate be solved exactly, piece by piece (`ntkode/_scheduled/_exact.py`).
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
    """Interpolation weights over grid nodes.

    Subclasses implement `local(s, nodes) -> (indices, weights)` for the `support` active
    kernels, and set the class variables `support` and `convex` (`True` when the weights
    are non-negative and sum to one); `weights(s, nodes)` expands them to all `G` nodes.
    """

    support: eqx.AbstractClassVar[int]
    convex: eqx.AbstractClassVar[bool]

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
    convex: ClassVar[bool] = True

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
    convex: ClassVar[bool] = True

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


class AbstractPiecewiseConstant(AbstractInterpolation):
    """Weights that are constant on pieces of the schedule axis.

    Subclasses implement `pieces(nodes) -> (bounds, weights)`: switching points
    `bounds` `(P + 1,)` with `bounds[0] = -∞` and `bounds[P] = +∞`, and each piece's node
    weights `(P, G)`, or `None` when piece `p` carries node `p`'s own kernel (`P = G`).
    `local` must agree with them.
    """

    @abc.abstractmethod
    def pieces(
        self, nodes: Float[Array, " G"]
    ) -> tuple[Float[Array, " P+1"], Float[Array, "P G"] | None]:
        """Switching points and the node weights of each piece (`None`: one node each)."""


class PiecewiseConstant(AbstractPiecewiseConstant):
    r"""One fixed kernel per piece of the schedule axis.

    - `mode="nearest"`: the nearest node's kernel.
    - `mode="left"`: the last node passed (a zero-order hold).
    - `mode="average"`: each interval $[s_i, s_{i+1}]$ is cut into `substeps` equal pieces,
      each carrying the linearly interpolated kernel at its midpoint; with `substeps=1` that
      is $\tfrac12(\Theta_i + \Theta_{i+1})$. This is the midpoint rule for
      [`ntkode.schedules.Linear`][] and converges to it (second order) as `substeps` grows.

    With a time schedule and MSE, the surrogate is then piecewise linear-time-invariant and
    `solve` uses exact matrix exponentials per piece (no ODE steps): one eigendecomposition per
    piece (`G` for nearest/left, `(G-1)·substeps + 2` for average).
    """

    mode: str = eqx.field(static=True, default="nearest")
    substeps: int = eqx.field(static=True, default=1)
    support: ClassVar[int] = 2
    convex: ClassVar[bool] = True

    def __check_init__(self):
        if self.mode not in ("nearest", "left", "average"):
            raise ValueError(f"`mode` must be 'nearest', 'left' or 'average', got {self.mode!r}.")
        if int(self.substeps) < 1:
            raise ValueError(f"`substeps` must be a positive integer, got {self.substeps!r}.")

    def local(self, s, nodes):
        i, a = _segment(s, nodes)
        one = jnp.ones((1,), nodes.dtype)
        if nodes.shape[0] == 1:
            return i[None], one
        if self.mode == "nearest":
            return (i + (a >= 0.5).astype(i.dtype))[None], one
        if self.mode == "left":
            return (i + (a >= 1.0).astype(i.dtype))[None], one
        M = self.substeps
        j = jnp.clip(jnp.floor(a * M), 0, M - 1)
        mid = (j + 0.5) / M
        # Outside the grid: the end kernels exactly (clamping), as for every interpolation.
        mid = jnp.where(s < nodes[0], 0.0, jnp.where(s >= nodes[-1], 1.0, mid))
        return _pair(i, 1.0 - mid, mid, nodes)

    def pieces(self, nodes):
        G = nodes.shape[0]
        inf = jnp.full((1,), jnp.inf, nodes.dtype)
        if G == 1:
            return jnp.concatenate([-inf, inf]), None
        if self.mode != "average":
            inner = 0.5 * (nodes[1:] + nodes[:-1]) if self.mode == "nearest" else nodes[1:]
            return jnp.concatenate([-inf, inner, inf]), None
        eye = jnp.eye(G, dtype=nodes.dtype)
        M = self.substeps
        frac = jnp.arange(M, dtype=nodes.dtype) / M
        starts = (nodes[:-1, None] + frac[None, :] * jnp.diff(nodes)[:, None]).reshape(-1)
        bounds = jnp.concatenate([-inf, starts, nodes[-1:], inf])
        mid = (jnp.arange(M, dtype=nodes.dtype) + 0.5) / M
        w = jnp.zeros((G - 1, M, G), nodes.dtype)
        rows = jnp.arange(G - 1)
        w = w.at[rows, :, rows].set(1.0 - mid).at[rows, :, rows + 1].set(mid)
        return bounds, jnp.concatenate([eye[:1], w.reshape(-1, G), eye[-1:]])


def check_interpolation(interpolation) -> None:
    if not isinstance(interpolation, AbstractInterpolation):
        raise TypeError(
            "`interpolation` must be an interpolation from ntkode.schedules (Linear, "
            f"Smoothstep, PiecewiseConstant), got {type(interpolation).__name__}."
        )


def _pair(i, w0, w1, nodes):
    if nodes.shape[0] == 1:
        return jnp.zeros((1,), jnp.int32), jnp.ones((1,), nodes.dtype)
    return jnp.stack([i, i + 1]), jnp.stack([w0, w1]).astype(nodes.dtype)


__all__ = [
    "AbstractInterpolation",
    "AbstractPiecewiseConstant",
    "Linear",
    "PiecewiseConstant",
    "Smoothstep",
    "check_interpolation",
]
