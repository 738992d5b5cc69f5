r"""Elementwise activations and their Gaussian expectations, for infinite-width kernels.

An infinite-width layer maps the covariance of its pre-activations $(u, v) \sim
\mathcal N(0, [[q_1, s], [s, q_2]])$ to two expectations: $\mathbb E[\phi(u)\phi(v)]$ (the next
NNGP) and $\mathbb E[\phi'(u)\phi'(v)]$ (the factor the NTK picks up). ReLU (arc-cosine kernel,
Cho & Saul 2009) and erf (Williams 1997) have closed forms; any other elementwise function is
integrated by bivariate Gauss–Hermite quadrature (as neural-tangents' `ElementwiseNumerical`).
"""

import abc
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


class AbstractActivation(eqx.Module):
    """An elementwise activation $\\phi$ with its Gaussian expectations.

    `__call__(x)` applies $\\phi$ (used by finite networks); `dual(q1, s, q2, same)` returns
    $(\\mathbb E[\\phi(u)\\phi(v)], \\mathbb E[\\phi'(u)\\phi'(v)])$ for pre-activation
    variances `q1`, `q2` and covariance `s` (broadcast together), where the boolean `same`
    (or `None`) marks pairs known to be the same input (correlation exactly 1, which rounding
    alone would miss, a problem where the kernel is not smooth); `dual_diagonal(q)` returns
    $\\mathbb E[\\phi(u)^2]$ for $u \\sim \\mathcal N(0, q)$.
    """

    name: eqx.AbstractVar[str]

    @abc.abstractmethod
    def __call__(self, x: Array) -> Array: ...

    @abc.abstractmethod
    def dual(self, q1: Array, s: Array, q2: Array, same=None) -> tuple[Array, Array]: ...

    @abc.abstractmethod
    def dual_diagonal(self, q: Array) -> Array: ...


class Relu(AbstractActivation):
    r"""$\phi(x) = \max(x, 0)$, with the arc-cosine kernel in closed form.

    With $\rho = s/\sqrt{q_1 q_2} = \cos\vartheta$:
    $\mathbb E[\phi\phi] = \frac{\sqrt{q_1q_2}}{2\pi}
    (\sin\vartheta + (\pi-\vartheta)\cos\vartheta)$,
    $\mathbb E[\phi'\phi'] = \frac{\pi - \vartheta}{2\pi}$ (Cho & Saul 2009; Arora et al. 2019).
    """

    name: str = eqx.field(static=True, default="relu")

    def __call__(self, x):
        return jax.nn.relu(x)

    def dual(self, q1, s, q2, same=None):
        # Square roots on the (n1, 1) and (1, n2) variance vectors, not on the n1×n2 grid.
        r1, r2 = jnp.sqrt(q1), jnp.sqrt(q2)
        # Zero-variance inputs (e.g. x = 0 without biases) have s = 0 too: call them orthogonal.
        i1 = jnp.where(r1 > 0, 1.0 / jnp.where(r1 > 0, r1, 1.0), 0.0)
        i2 = jnp.where(r2 > 0, 1.0 / jnp.where(r2 > 0, r2, 1.0), 0.0)
        rho = jnp.clip(s * i1 * i2, -1.0, 1.0)
        # arccos has infinite slope at 1: a rounding error ε in ρ costs √(2ε) in the angle.
        rho = rho if same is None else jnp.where(same, 1.0, rho)
        sin = jnp.sqrt(1.0 - rho * rho)
        angle = jnp.pi - jnp.arctan2(sin, rho)  # π − arccos ρ, sharing the square root
        inv2pi = 1.0 / (2.0 * math.pi)
        nngp = (r1 * r2) * (sin + angle * rho) * inv2pi
        return nngp, angle * inv2pi

    def dual_diagonal(self, q):
        return 0.5 * q


class Erf(AbstractActivation):
    r"""$\phi(x) = \operatorname{erf}(x)$, with Williams' (1997) closed form.

    $\mathbb E[\phi\phi] = \frac2\pi\arcsin\frac{2s}{\sqrt{(1+2q_1)(1+2q_2)}}$,
    $\mathbb E[\phi'\phi'] = \frac4\pi\big((1+2q_1)(1+2q_2) - 4s^2\big)^{-1/2}$.
    """

    name: str = eqx.field(static=True, default="erf")

    def __call__(self, x):
        return jax.scipy.special.erf(x)

    def dual(self, q1, s, q2, same=None):
        # With g = (1 + 2q)^(-1/2) on the vectors and r = 2 s g1 g2:
        # (1+2q1)(1+2q2) - 4s² = (1 - r²)/(g1 g2)², so one square root serves both kernels.
        g1, g2 = jax.lax.rsqrt(1.0 + 2.0 * q1), jax.lax.rsqrt(1.0 + 2.0 * q2)
        g = g1 * g2
        # |r| < 1 analytically (|s| <= sqrt(q1 q2)); clip rounding only.
        r = jnp.clip(2.0 * s * g, -1.0, 1.0)
        c = jnp.sqrt(jnp.maximum(1.0 - r * r, jnp.finfo(r.dtype).tiny))
        nngp = (2.0 / math.pi) * jnp.arctan2(r, c)  # arcsin r
        dot = (4.0 / math.pi) * g / c
        return nngp, dot

    def dual_diagonal(self, q):
        return (2.0 / math.pi) * jnp.arcsin(2.0 * q / (1.0 + 2.0 * q))


def _hermite_nodes(degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for $\\mathbb E f(z)$, $z \\sim \\mathcal N(0, 1)$ (weights sum to 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(degree)
    return z, w / w.sum()


class Elementwise(AbstractActivation):
    r"""Any elementwise $\phi$, its expectations by bivariate Gauss–Hermite quadrature.

    With $u = \sqrt{q_1} z_1$ and $v = \sqrt{q_2}(\rho z_1 + \sqrt{1-\rho^2} z_2)$ for
    independent standard normals, $\mathbb E[\phi(u)\phi(v)] \approx \sum_{ij} w_i w_j
    \phi(u_i)\phi(v_{ij})$ on a `degree`×`degree` product grid; $\phi'$ comes from
    `jax.jvp`. Exact for polynomials of degree < 2·`degree`; for smooth $\phi$ (tanh, erf,
    gelu, sigmoid) the error falls geometrically, for kinks (ReLU) only algebraically.

    **Arguments:**

    - `fn`: the elementwise function (must be differentiable by JAX for NTKs).
    - `degree`: quadrature points per dimension (cost grows with `degree`²).
    - `name`: a label.
    """

    fn: Callable[[Array], Array] = eqx.field(static=True)
    degree: int = eqx.field(static=True, default=32)
    name: str = eqx.field(static=True, default="elementwise")

    def __check_init__(self):
        if not callable(self.fn):
            raise TypeError(f"`fn` must be a callable elementwise function, got {self.fn!r}.")
        if int(self.degree) < 2:
            raise ValueError(f"`degree` must be at least 2, got {self.degree}.")

    def __call__(self, x):
        return self.fn(x)

    def _derivative(self, x):
        return jax.jvp(self.fn, (x,), (jnp.ones_like(x),))[1]

    def dual(self, q1, s, q2, same=None):
        dtype = jnp.result_type(q1, s, q2)
        z, w = (jnp.asarray(a, dtype) for a in _hermite_nodes(self.degree))
        r1, r2 = jnp.sqrt(q1), jnp.sqrt(q2)
        norm = r1 * r2
        rho = jnp.clip(s / jnp.where(norm > 0, norm, 1.0), -1.0, 1.0)
        c = jnp.sqrt(1.0 - rho * rho)
        r1, r2, rho, c = jnp.broadcast_arrays(r1, r2, rho, c)
        # Axes: (..., i, j) with i the node of z1 and j the node of z2.
        u = r1[..., None] * z  # (..., i)
        v = r2[..., None, None] * (rho[..., None, None] * z[:, None] + c[..., None, None] * z)
        fu, dfu = self.fn(u), self._derivative(u)
        fv, dfv = self.fn(v), self._derivative(v)
        inner_f = fv @ w  # sum over j: (..., i)
        inner_d = dfv @ w
        return (fu * inner_f) @ w, (dfu * inner_d) @ w

    def dual_diagonal(self, q):
        z, w = (jnp.asarray(a, jnp.result_type(q)) for a in _hermite_nodes(self.degree))
        return self.fn(jnp.sqrt(q)[..., None] * z) ** 2 @ w


def _gelu(x):
    return jax.nn.gelu(x, approximate=False)


# Names whose expectations have no closed form here go through quadrature.
_QUADRATURE = {
    "tanh": jnp.tanh,
    "gelu": _gelu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "silu": jax.nn.silu,
    "sin": jnp.sin,
    "identity": lambda x: x,
}
ACTIVATION_NAMES = ("relu", "erf", *_QUADRATURE)


def as_activation(activation, degree: int = 32) -> AbstractActivation:
    """Accept an [`ntkode.AbstractActivation`][], a name, or an elementwise callable.

    Names: `"relu"` and `"erf"` (closed forms) and `"tanh"`, `"gelu"`, `"sigmoid"`,
    `"softplus"`, `"silu"`, `"sin"`, `"identity"` (quadrature with `degree` points). A
    callable becomes [`ntkode.Elementwise`][]; `jax.nn.relu` is recognised as `"relu"`.
    """
    if isinstance(activation, AbstractActivation):
        return activation
    if isinstance(activation, str):
        key = activation.lower()
        if key == "relu":
            return Relu()
        if key == "erf":
            return Erf()
        if key in _QUADRATURE:
            return Elementwise(_QUADRATURE[key], degree=degree, name=key)
        raise ValueError(
            f"Unknown `activation` {activation!r}: choose one of {list(ACTIVATION_NAMES)}, "
            "pass an elementwise callable (integrated by Gauss–Hermite quadrature), or an "
            "ntkode.AbstractActivation."
        )
    if activation is jax.nn.relu:
        return Relu()
    if activation is jax.scipy.special.erf:
        return Erf()
    if callable(activation):
        name = getattr(activation, "__name__", "elementwise")
        return Elementwise(activation, degree=degree, name=name)
    raise TypeError(
        f"`activation` must be a name, a callable or an ntkode.AbstractActivation, got "
        f"{type(activation).__name__}."
    )
