r"""Fully connected networks in the NTK or the standard parameterisation.

Both parameterisations draw the same function at initialisation; they differ in what the
trainable parameters are, hence in the NTK:

- `"ntk"`: $z = \frac{\sigma_w}{\sqrt{n_\text{in}}} W x + \sigma_b b$ with $W, b \sim \mathcal
  N(0, 1)$ (Jacot et al. 2018): the NTK has a finite limit as the width grows.
- `"standard"`: $z = W x + b$ with $W \sim \mathcal N(0, \sigma_w^2/n_\text{in})$,
  $b \sim \mathcal N(0, \sigma_b^2)$: the NTK grows linearly with the width.

[`ntkode.MLP.infinite`][] returns the matching [`ntkode.InfiniteMLP`][]. The layers declare
themselves [`ntkode.AbstractDense`][] with multipliers $(s_w, s_b)$, so [`ntkode.ntk`][] forms
their kernel from per-layer Gram products $(s_w^2\, a\cdot a' + s_b^2)(B\cdot B')$.
"""

from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._ntk._layers import AbstractDense
from ._activations import AbstractActivation, as_activation
from ._kernels import InfiniteMLP, _check_std


class Dense(AbstractDense):
    """One affine layer in the NTK or standard parameterisation (see the module docstring)."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None
    W_std: float = eqx.field(static=True)
    b_std: float | None = eqx.field(static=True)
    parameterization: str = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        W_std: float,
        b_std: float | None,
        parameterization: Literal["ntk", "standard"],
        *,
        key: PRNGKeyArray,
        dtype: jnp.dtype | None = None,
    ):
        dtype = jnp.result_type(float) if dtype is None else dtype
        kw, kb = jax.random.split(key)
        w = jax.random.normal(kw, (out_size, in_size), dtype)
        b = None if b_std is None else jax.random.normal(kb, (out_size,), dtype)
        if parameterization == "standard":
            w = w * float(W_std / np.sqrt(in_size))  # weak type: keep `dtype`
            b = None if (b is None or b_std is None) else b * b_std
        self.weight, self.bias = w, b
        self.W_std, self.b_std, self.parameterization = W_std, b_std, parameterization

    @property
    def scales(self) -> tuple[float, float]:
        """Multipliers of `W x` and `b` in the forward pass."""
        if self.parameterization == "ntk":
            # Python floats are weakly typed: a float32 network stays float32 under x64.
            return float(self.W_std / np.sqrt(self.weight.shape[1])), float(self.b_std or 0.0)
        return 1.0, 1.0


class MLP(eqx.Module):
    r"""A fully connected network `depth × (Dense(width) → φ) → Dense(out_size)`.

    Maps one input vector `(in_size,)` to `(out_size,)` (ntkode applies models per example).

    **Arguments:**

    - `in_size`, `out_size`, `width`: layer sizes; `depth`: number of hidden layers (≥ 1).
    - `activation`: a name (`"relu"`, `"erf"`, `"tanh"`, `"gelu"`, ...), an elementwise
      callable, or an [`ntkode.AbstractActivation`][].
    - `W_std`, `b_std`: hidden-layer weight and bias standard deviations (`b_std=None`: no
      biases); `out_W_std`, `out_b_std`: the readout's.
    - `parameterization`: `"ntk"` or `"standard"`.
    - `key`: a `jax.random.key`; `dtype`: floating dtype of the weights.

    Its empirical NTK ([`ntkode.ntk`][]) tends to `self.infinite().ntk(x)` as `width` grows
    (relative error $O(\text{width}^{-1/2})$).
    """

    layers: tuple[Dense, ...]
    activation: AbstractActivation
    depth: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    in_size: int = eqx.field(static=True)
    out_size: int = eqx.field(static=True)

    def __init__(
        self,
        in_size: int,
        out_size: int,
        width: int,
        depth: int,
        activation: str | Callable[[Array], Array] | AbstractActivation = "relu",
        W_std: float = 2.0**0.5,
        b_std: float | None = 0.1,
        out_W_std: float = 1.0,
        out_b_std: float | None = 0.1,
        parameterization: Literal["ntk", "standard"] = "ntk",
        *,
        key: PRNGKeyArray,
        dtype: jnp.dtype | None = None,
    ):
        # Validate through the infinite-width spec, which owns the checks and messages.
        InfiniteMLP(depth, activation, W_std, b_std, out_W_std, out_b_std, parameterization,
                    widths=width)  # fmt: skip
        for name, v in (("in_size", in_size), ("out_size", out_size), ("width", width)):
            if int(v) < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {v!r}.")
        W_std, out_W_std = float(W_std), float(out_W_std)  # validated above: not None
        b_std, out_b_std = _check_std("b_std", b_std), _check_std("out_b_std", out_b_std)
        sizes = [int(in_size)] + [int(width)] * int(depth) + [int(out_size)]
        keys = jax.random.split(key, len(sizes) - 1)
        layers = []
        for i, k in enumerate(keys):
            last = i == len(keys) - 1
            layers.append(
                Dense(
                    sizes[i],
                    sizes[i + 1],
                    out_W_std if last else W_std,
                    out_b_std if last else b_std,
                    parameterization,
                    key=k,
                    dtype=dtype,
                )
            )
        self.layers = tuple(layers)
        self.activation = as_activation(activation)
        self.depth, self.width = int(depth), int(width)
        self.in_size, self.out_size = int(in_size), int(out_size)

    @property
    def parameterization(self) -> str:
        return self.layers[0].parameterization

    def __call__(self, x: Float[Array, " in_size"]) -> Float[Array, " out_size"]:
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)

    def infinite(self, **kwargs) -> InfiniteMLP:
        """The [`ntkode.InfiniteMLP`][] with this network's hyperparameters (and widths)."""
        first, last = self.layers[0], self.layers[-1]
        return InfiniteMLP(
            self.depth,
            self.activation,
            first.W_std,
            first.b_std,
            last.W_std,
            last.b_std,
            self.parameterization,
            widths=self.width,
            in_size=self.in_size,
            **kwargs,
        )
