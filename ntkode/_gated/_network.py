r"""Gated-ReLU networks: a ReLU network whose activation pattern is frozen by fixed gates.

A gated-ReLU network with $m$ neurons, fixed gate vectors $g_j$, trainable input weights $u_j$
and output weights $v_j$ computes

$$f(x) = \frac{1}{\sqrt m} \sum_{j=1}^m \mathbb 1[g_j^\top x \ge 0]\,(u_j^\top x)\, v_j .$$

Because the gates never move, the network is linear in each $u_j$ and its NTK is a weighted sum
of *masked linear kernels* $D_j X X^\top D_j$ (Dwaraknath, Ergen & Pilanci 2023, "Fixing the
NTK"): see [`ntkode.MaskedKernels`][]. The infinite-width limit has the closed form
"linear kernel × degree-0 arc-cosine kernel", [`ntkode.gated_relu_ntk_infinite`][].
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core._errors import check_finite


def _check_gates(gates: Array, dim: int, name: str = "gates") -> Array:
    gates = jnp.asarray(gates)
    if gates.ndim != 2 or gates.shape[1] != dim:
        raise ValueError(
            f"`{name}` must have shape (m, {dim}) (one gate vector per neuron, of the input "
            f"dimension {dim}), got shape {gates.shape}. Sample gates with the data's feature "
            "dimension, e.g. `jax.random.normal(key, (m, x.shape[1]))`."
        )
    if gates.shape[0] < 1:
        raise ValueError(f"`{name}` must hold at least one gate vector, got shape {gates.shape}.")
    check_finite(name, gates)
    return gates


class GatedReLU(eqx.Module):
    r"""A one-hidden-layer gated-ReLU network with fixed gates (Dwaraknath et al. 2023).

    $f(x) = m^{-1/2} \sum_j \mathbb 1[g_j^\top x \ge 0] (u_j^\top x) v_j$ (NTK parameterisation).
    The gates are stored as an array but never trained: the indicator has zero derivative and
    `jax.lax.stop_gradient` makes that explicit, so [`ntkode.ntk`][] and gradient flows see the
    gates as constants.

    **Arguments:**

    - `in_size`: input dimension `d`.
    - `out_size`: number of outputs `k`.
    - `width`: number of neurons `m` (ignored when `gates` is given).
    - `key`: a `jax.random.key` for the gates (if not given), `u` and `v`.
    - `gates`: optional fixed gate vectors, shape `(m, d)`; default `N(0, I_d)` samples.
    - `u_scale`: standard deviation of the initial input weights `u_j ~ N(0, u_scale² I)`;
      `0.0` starts the network at the zero function.
    - `readout`: `"sign"` (`v_j` uniform on `{-1, +1}`, so `v_j² = 1`) or `"normal"`.
    - `train_readout`: if `False`, the output weights are frozen (`stop_gradient`), and the
      empirical NTK is exactly the masked-kernel mixture $K_{\hat\eta}$ (pattern frequencies).
    """

    gates: Float[Array, "m d"]
    u: Float[Array, "m d"]
    v: Float[Array, "m k"]
    train_readout: bool = eqx.field(static=True, default=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int = 256,
        *,
        key: jax.Array,
        gates: Float[Array, "m d"] | None = None,
        u_scale: float = 1.0,
        readout: str = "sign",
        train_readout: bool = True,
        dtype=None,
    ):
        if int(in_size) < 1 or int(out_size) < 1:
            raise ValueError(
                f"`in_size` and `out_size` must be at least 1, got {in_size}, {out_size}."
            )
        if readout not in ("sign", "normal"):
            raise ValueError(f"`readout` must be 'sign' or 'normal', got {readout!r}.")
        if u_scale < 0:
            raise ValueError(f"`u_scale` must be non-negative, got {u_scale}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        kg, ku, kv = jax.random.split(key, 3)
        if gates is None:
            if int(width) < 1:
                raise ValueError(f"`width` must be at least 1, got {width}.")
            gates = jax.random.normal(kg, (int(width), int(in_size)), dtype)
        gates = _check_gates(gates, int(in_size)).astype(dtype)
        m = gates.shape[0]
        self.gates = gates
        self.u = u_scale * jax.random.normal(ku, (m, int(in_size)), dtype)
        if readout == "sign":
            self.v = jnp.where(jax.random.bernoulli(kv, 0.5, (m, int(out_size))), 1.0, -1.0)
            self.v = self.v.astype(dtype)
        else:
            self.v = jax.random.normal(kv, (m, int(out_size)), dtype)
        self.train_readout = bool(train_readout)

    @property
    def width(self) -> int:
        return self.gates.shape[0]

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, " k"]:
        gate = (jax.lax.stop_gradient(self.gates) @ x >= 0).astype(x.dtype)
        v = self.v if self.train_readout else jax.lax.stop_gradient(self.v)
        return ((self.u @ x) * gate) @ v / math.sqrt(self.width)


def gated_relu_ntk_infinite(
    x1: Float[Array, "n1 d"],
    x2: Float[Array, "n2 d"] | None = None,
    *,
    train_readout: bool = False,
) -> Float[Array, "n1 n2"]:
    r"""Infinite-width NTK of a gated-ReLU network with Gaussian gates (per output).

    With $g \sim N(0, I)$, $P(g^\top x \ge 0, g^\top x' \ge 0) = (\pi - \theta)/(2\pi)$ where
    $\theta$ is the angle between $x$ and $x'$: half the degree-0 arc-cosine kernel
    $k_0 = 1 - \theta/\pi$ (Cho & Saul 2009). The input-weight part of the NTK is therefore
    $K(x, x') = x^\top x' \,(\pi - \theta)/(2\pi)$, which is $K_\eta$ with $\eta$ the
    arrangement-pattern probabilities. Training the read-out too (with $u \sim N(0, I)$
    independent of the gates, $E[v^2] = 1$) adds the same kernel again: the total is $2K$.

    **Arguments:**

    - `x1`, `x2`: inputs `(n1, d)`, `(n2, d)`; `x2` defaults to `x1`.
    - `train_readout`: include the read-out weights' contribution (factor 2).

    **Returns:** the kernel `(n1, n2)` (the same for every output; outputs are independent).
    """
    x1 = jnp.asarray(x1)
    x2 = x1 if x2 is None else jnp.asarray(x2)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"`x1` and `x2` must be matrices (n, d) with the same d, got {x1.shape}, {x2.shape}."
        )
    gram = x1 @ x2.T
    unit = lambda a: a / jnp.where(n := jnp.linalg.norm(a, axis=1, keepdims=True), n, 1.0)
    u1, u2 = unit(x1)[:, None, :], unit(x2)[None, :, :]
    # θ = 2 atan2(|x̂1 − x̂2|, |x̂1 + x̂2|) is accurate near θ = 0, where arccos(cos θ) loses
    # half the digits (1e-8 instead of 1e-16 on the diagonal). A zero input is in every
    # half-space {g·x ≥ 0}; its kernel row is 0 anyway (gram = 0).
    theta = 2 * jnp.arctan2(jnp.linalg.norm(u1 - u2, axis=-1), jnp.linalg.norm(u1 + u2, axis=-1))
    kernel = gram * (jnp.pi - theta) / (2 * jnp.pi)
    return 2 * kernel if train_readout else kernel
