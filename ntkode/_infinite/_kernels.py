r"""Analytic infinite-width NNGP and NTK of fully connected networks, computed in blocks.

The recursion of Jacot et al. (2018) and Arora et al. (2019), in neural-tangents' conventions
(so that the two libraries compute the same numbers for the same hyperparameters). With the
input kernel $\Sigma^0(x, x') = x\cdot x'/d$ and, for each hidden layer $l = 1\ldots L$ and the
readout layer,

$$\tilde\Sigma^{l} = \sigma_w^2\,\Sigma^{l-1} + \sigma_b^2,\qquad
  \tilde\Theta^{l} = \tilde\Sigma^{l} + \sigma_w^2\,\Theta^{l-1}$$
(NTK parameterisation),

followed (hidden layers only) by the activation,
$\Sigma^l = \mathbb E[\phi(u)\phi(v)]$, $\Theta^l = \tilde\Theta^l\,\mathbb E[\phi'(u)\phi'(v)]$,
$(u, v) \sim \mathcal N(0, \tilde\Sigma^l)$. In the *standard* parameterisation the gradient
with respect to a weight matrix is not scaled by $1/\sqrt{n_\text{in}}$, so
$\tilde\Theta^l = n_\text{in}\Sigma^{l-1} + 1 + \sigma_w^2\Theta^{l-1}$ depends on the finite
widths (Sohl-Dickstein et al. 2020; neural-tangents' `parameterization="standard"`).
"""

from typing import Literal, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._activations import AbstractActivation, Elementwise, as_activation


class Kernels(NamedTuple):
    """The two infinite-width kernels between `x1` and `x2`, each of shape `(n1, n2)`."""

    nngp: Array
    ntk: Array


def _check_std(name: str, value) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"`{name}` must be a number (a standard deviation), got {value!r}."
        ) from None
    if not np.isfinite(v) or v < 0:
        raise ValueError(
            f"`{name}` = {value!r} is not a valid standard deviation: weight and bias "
            "variances must be non-negative and finite (pass e.g. W_std=2**0.5, b_std=0.1)."
        )
    return v


class InfiniteMLP(eqx.Module):
    r"""The infinite-width limit of a fully connected network: its NNGP and NTK.

    The network is `depth` hidden layers `Dense(width) → φ`, then `Dense(out)` (as
    neural-tangents' `stax.serial(*[Dense(w, W_std, b_std), act] * depth, Dense(k, out_W_std,
    out_b_std))`). The kernels are the same for every output (shape `(n1, n2)`; the full
    kernel is $\Theta \otimes I_k$).

    **Arguments:**

    - `depth`: number of hidden layers, at least 1.
    - `activation`: `"relu"`, `"erf"` (closed forms), `"tanh"`, `"gelu"`, `"sigmoid"`, ...
      (Gauss–Hermite quadrature), any elementwise callable, or an
      [`ntkode.AbstractActivation`][].
    - `W_std`, `b_std`: weight and bias standard deviations of the hidden layers
      (`b_std=None`: no biases).
    - `out_W_std`, `out_b_std`: the same for the readout layer.
    - `parameterization`: `"ntk"` (default; width-independent kernels) or `"standard"`.
    - `widths`: hidden widths (an int or one per layer); needed by the standard
      parameterisation, whose NTK grows with width.
    - `in_size`: input dimension, checked against the inputs when given.
    - `quadrature_degree`: Gauss–Hermite points per dimension for activations without a
      closed form.
    - `block_size`: number of kernel entries computed at once; the `(n1, n2)` outputs are
      filled in row blocks so that n = 10,000 inputs fit in memory.

    Call it: `nngp, ntk = InfiniteMLP(3, "relu")(x1, x2)`.
    """

    depth: int = eqx.field(static=True)
    activation: AbstractActivation
    W_std: float = eqx.field(static=True)
    b_std: float | None = eqx.field(static=True)
    out_W_std: float = eqx.field(static=True)
    out_b_std: float | None = eqx.field(static=True)
    parameterization: str = eqx.field(static=True)
    widths: tuple[int, ...] | None = eqx.field(static=True)
    in_size: int | None = eqx.field(static=True)
    block_size: int = eqx.field(static=True)

    def __init__(
        self,
        depth: int,
        activation="relu",
        W_std: float = 2.0**0.5,
        b_std: float | None = 0.1,
        out_W_std: float = 1.0,
        out_b_std: float | None = 0.1,
        parameterization: Literal["ntk", "standard"] = "ntk",
        widths: int | tuple[int, ...] | None = None,
        in_size: int | None = None,
        *,
        quadrature_degree: int = 32,
        block_size: int = 2**22,
    ):
        if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or depth < 1:
            raise ValueError(
                f"`depth` must be an integer >= 1 (the number of hidden layers), got {depth!r}."
            )
        self.depth = int(depth)
        self.activation = as_activation(activation, quadrature_degree)
        self.W_std = _check_std("W_std", W_std)
        self.b_std = _check_std("b_std", b_std)
        self.out_W_std = _check_std("out_W_std", out_W_std)
        self.out_b_std = _check_std("out_b_std", out_b_std)
        if self.W_std is None or self.out_W_std is None:
            raise ValueError("`W_std` and `out_W_std` must be numbers, not None.")
        if parameterization not in ("ntk", "standard"):
            raise ValueError(
                f"Unknown `parameterization` {parameterization!r}: choose 'ntk' or 'standard'."
            )
        self.parameterization = parameterization
        if widths is not None:
            widths = (int(widths),) * self.depth if np.ndim(widths) == 0 else tuple(widths)
            if len(widths) != self.depth or any(int(w) < 1 for w in widths):
                raise ValueError(
                    f"`widths` must be a positive int or {self.depth} positive ints (one per "
                    f"hidden layer), got {widths!r}."
                )
            widths = tuple(int(w) for w in widths)
        elif parameterization == "standard":
            raise ValueError(
                "The standard parameterisation's NTK grows with the hidden widths: pass "
                "`widths` (an int, or one per hidden layer)."
            )
        self.widths = widths
        self.in_size = None if in_size is None else int(in_size)
        if int(block_size) < 1:
            raise ValueError(f"`block_size` must be positive, got {block_size}.")
        self.block_size = int(block_size)

    # -- the recursion -------------------------------------------------------------------
    def _layers(self, d: int):
        """(W_std, b_std, fan_in) of the hidden layers, then of the readout layer."""
        fan_in = (d, *(self.widths or (1,) * self.depth))
        hidden = [(self.W_std, self.b_std, fan_in[i]) for i in range(self.depth)]
        return hidden, (self.out_W_std, self.out_b_std, fan_in[-1])

    def _dense(self, s, t, W, b, fan_in):
        """One Dense layer on (NNGP, NTK); `t is None` before the first layer."""
        s_pre = W * W * s + (0.0 if b is None else b * b)
        if self.parameterization == "ntk":
            t_pre = s_pre if t is None else s_pre + W * W * t
        else:
            t_pre = fan_in * s + (0.0 if b is None else 1.0)
            t_pre = t_pre if t is None else t_pre + W * W * t
        return s_pre, t_pre

    def _variances(self, x):
        """Pre-activation variances $\\tilde\\Sigma^l(x, x)$ of each hidden layer, `(depth, n)`."""
        hidden, _ = self._layers(x.shape[1])
        q = jnp.sum(x * x, axis=1) / x.shape[1]
        out = []
        for W, b, _ in hidden:
            q = W * W * q + (0.0 if b is None else b * b)
            out.append(q)
            q = self.activation.dual_diagonal(q)
        return jnp.stack(out)

    def _block(self, x1, x2, q1, q2, rows=None, cols=None):
        """Both kernels for rows `x1` against `x2`, given their variances.

        `rows`, `cols`: indices of these rows and columns when both come from one input set
        (they mark the diagonal); `cols` defaults to all of `x2`.
        """
        hidden, (Wo, bo, fo) = self._layers(x1.shape[1])
        s = x1 @ x2.T / x1.shape[1]
        if rows is None:
            same = None
        else:
            cols = jnp.arange(x2.shape[0]) if cols is None else cols
            same = rows[:, None] == cols[None, :]
        t = None
        for layer, (W, b, fan_in) in enumerate(hidden):
            s_pre, t_pre = self._dense(s, t, W, b, fan_in)
            s, dot = self.activation.dual(q1[layer][:, None], s_pre, q2[layer][None, :], same)
            t = t_pre * dot
        return self._dense(s, t, Wo, bo, fo)

    def _entries_per_block(self) -> int:
        """Kernel entries per block: `block_size` divided by the work per entry."""
        work = self.activation.degree**2 if isinstance(self.activation, Elementwise) else 1
        return max(1, self.block_size // work)

    def _rows_per_block(self, n2: int) -> int:
        return max(1, self._entries_per_block() // n2)

    # -- public --------------------------------------------------------------------------
    def __call__(self, x1: Float[Array, "n1 d"], x2: Float[Array, "n2 d"] | None = None) -> Kernels:
        """NNGP and NTK between `x1` and `x2` (default `x1`), each `(n1, n2)`."""
        x1 = self._check_inputs("x1", x1)
        x2 = x1 if x2 is None else self._check_inputs("x2", x2)
        if x1.shape[1] != x2.shape[1]:
            raise ValueError(
                f"Input dimension mismatch: `x1` has {x1.shape[1]} features per example but "
                f"`x2` has {x2.shape[1]}; both must have the same dimension."
            )
        dtype = jnp.promote_types(x1.dtype, x2.dtype)
        symmetric = x2 is x1
        return _kernels_jit(self, x1.astype(dtype), x2.astype(dtype), symmetric)

    def nngp(
        self, x1: Float[Array, "n1 d"], x2: Float[Array, "n2 d"] | None = None
    ) -> Float[Array, "n1 n2"]:
        """The NNGP kernel (covariance of the outputs at initialisation)."""
        return self(x1, x2).nngp

    def ntk(
        self, x1: Float[Array, "n1 d"], x2: Float[Array, "n2 d"] | None = None
    ) -> Float[Array, "n1 n2"]:
        """The infinite-width neural tangent kernel."""
        return self(x1, x2).ntk

    def _check_inputs(self, name, x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            x = x.astype(jnp.result_type(float))
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(
                f"`{name}` must be a non-empty matrix of inputs (n, d), got shape {x.shape}."
            )
        if self.in_size is not None and x.shape[1] != self.in_size:
            raise ValueError(
                f"Input dimension mismatch: `{name}` has {x.shape[1]} features per example "
                f"but the network takes in_size={self.in_size}."
            )
        return x


@eqx.filter_jit
def _kernels_jit(spec: InfiniteMLP, x1, x2, symmetric: bool) -> Kernels:
    q1 = spec._variances(x1)
    q2 = q1 if symmetric else spec._variances(x2)
    n1, n2 = x1.shape[0], x2.shape[0]
    rows = spec._rows_per_block(n2)
    index = jnp.arange(n1) if symmetric else None
    if symmetric and 4 * _MIN_TILE <= n1 and n1 * n1 <= _MAX_SYMMETRIC:
        return _symmetric_tiles(spec, x1, q1)
    if rows >= n1:
        return Kernels(*spec._block(x1, x2, q1, q2, index))
    # Row blocks under lax.map: memory stays O(rows · n2) per intermediate, outputs O(n1 · n2).
    nb = -(-n1 // rows)
    pad = nb * rows - n1
    xb = jnp.pad(x1, ((0, pad), (0, 0))).reshape(nb, rows, -1)
    # Padded rows are zero inputs: their variances are finite (b² or 0), values discarded.
    qb = jnp.pad(q1, ((0, 0), (0, pad)), constant_values=1.0)
    qb = qb.reshape(q1.shape[0], nb, rows).transpose(1, 0, 2)
    ib = jnp.arange(nb * rows).reshape(nb, rows)
    s, t = jax.lax.map(
        lambda a: spec._block(a[0], x2, a[1], q2, a[2] if symmetric else None), (xb, qb, ib)
    )
    return Kernels(s.reshape(-1, n2)[:n1], t.reshape(-1, n2)[:n1])


# Square tiles for K(X, X): only tiles on or above the diagonal are computed (about half the
# work), then mirrored. Used up to n = 4096; beyond, row blocks keep the memory at the output's.
_MIN_TILE = 64
_MAX_SYMMETRIC = 4096**2


def _symmetric_tiles(spec: InfiniteMLP, x, q) -> Kernels:
    n = x.shape[0]
    side = max(_MIN_TILE, min(-(-n // 4), int(np.sqrt(spec._entries_per_block()))))
    nt = -(-n // side)
    pad = nt * side - n
    xb = jnp.pad(x, ((0, pad), (0, 0))).reshape(nt, side, -1)
    qb = jnp.pad(q, ((0, 0), (0, pad)), constant_values=1.0)
    qb = qb.reshape(q.shape[0], nt, side).transpose(1, 0, 2)
    ib = jnp.arange(nt * side).reshape(nt, side)
    pi, pj = np.triu_indices(nt)

    def tile(ij):
        i, j = ij
        return spec._block(xb[i], xb[j], qb[i], qb[j], ib[i], ib[j])

    tiles = jax.lax.map(tile, (jnp.asarray(pi), jnp.asarray(pj)))

    def assemble(t):
        full = jnp.zeros((nt, nt, side, side), t.dtype)
        full = full.at[pj, pi].set(jnp.swapaxes(t, 1, 2))
        full = full.at[pi, pj].set(t)
        return full.transpose(0, 2, 1, 3).reshape(nt * side, nt * side)[:n, :n]

    return Kernels(*(assemble(t) for t in tiles))
