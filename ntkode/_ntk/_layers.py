r"""The layers the structured NTK understands, and their per-example weight derivatives.

A dense layer $y = s_w\,W a + s_b\,b$ (multipliers $s_w$, $s_b$: `(1, 1)` for
`eqx.nn.Linear`, $(\sigma_w/\sqrt{n_\text{in}}, \sigma_b)$ for an NTK-parameterised layer,
Jacot et al. 2018) has $\partial f/\partial W = s_w\, B \otimes a$ and
$\partial f/\partial b = s_b\, B$ with back-propagated signal $B = \partial f/\partial y$, so
its NTK term is $(s_w^2\, a\cdot a' + s_b^2)\,(B\cdot B')$: the Gram route of
[`ntkode.StructuredNTK`][]. A layer takes that route when it is an `eqx.nn.Linear` or
declares itself an [`ntkode.AbstractDense`][]; convolutions (`eqx.nn.Conv`) are tapped too,
and their per-example weight gradients are built locally from `(a, B)`.
"""

import abc
import itertools
import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray


class AbstractDense(eqx.Module):
    r"""A dense layer $y = s_w\, W a + s_b\, b$, declared so that the structured NTK can tap it.

    Subclasses provide `weight` `(out, in)`, `bias` `(out,)` or `None`, and the multipliers
    `scales` $= (s_w, s_b)$ as Python numbers; the forward pass is this class's own
    `__call__`, so the identity the structured NTK relies on,
    $\Theta_{W,b}(x, x') = (s_w^2\, a\cdot a' + s_b^2)\,(B\cdot B')$, holds by construction.
    """

    weight: eqx.AbstractVar[Float[Array, "out in"]]
    bias: eqx.AbstractVar[Float[Array, " out"] | None]

    @property
    @abc.abstractmethod
    def scales(self) -> tuple[float, float]:
        """The multipliers $(s_w, s_b)$ of $W a$ and $b$ (Python numbers, not trained)."""

    def __call__(
        self, x: Float[Array, " in"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " out"]:
        del key  # deterministic; accepted like equinox's layers (e.g. in eqx.nn.Sequential)
        sw, sb = self.scales
        z = sw * (self.weight @ x)
        return z if self.bias is None else z + sb * self.bias


def is_tappable(v: Any) -> bool:
    """A layer the structured NTK replaces by a tap: dense (`Linear`, `AbstractDense`) or `Conv`."""
    if isinstance(v, eqx.nn.Linear | AbstractDense):
        return eqx.is_inexact_array(v.weight) and v.weight.ndim == 2
    if isinstance(v, eqx.nn.Conv):
        return eqx.is_inexact_array(v.weight) and v.weight.ndim == v.num_spatial_dims + 2
    return False


def dense_scales(layer: Any) -> tuple[float, float] | None:
    """$(s_w, s_b)$ of a dense layer, `None` for other layers (they take a Jacobian route).

    Multipliers that are not concrete numbers (say, trained scales) also give `None`: the
    layer's own `vjp` (the local Jacobian route) is exact whatever its forward pass is.
    """
    if isinstance(layer, eqx.nn.Linear):
        return 1.0, 1.0
    if isinstance(layer, AbstractDense):
        try:
            sw, sb = layer.scales
            return float(sw), float(sb)
        except TypeError:  # a tracer (jax's ConcretizationTypeError is a TypeError)
            return None
    return None


def fill(layer: Any, weight: Any, bias: Any) -> Any:
    """`layer` with its weight and bias replaced (`None`s punch holes for a tap)."""
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (weight, bias), is_leaf=lambda v: v is None
    )


def _patch_views(layer, x):
    """For each kernel offset, the input values it multiplies: `(b, in, positions)` arrays.

    Strided slices of the zero-padded batch `x` `(b, in, *spatial)`; together they are the
    im2col patches (XLA:CPU's `conv_general_dilated_patches`, a convolution with a one-hot
    kernel, is several times slower).
    """
    spatial = x.shape[2:]
    window = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.dilation, strict=True)]
    pads = layer.padding
    if isinstance(pads, str):
        pads = jax.lax.padtype_to_pads(spatial, window, layer.stride, pads)
    xp = jnp.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in pads])
    out = [
        (s + lo + hi - w) // st + 1
        for s, (lo, hi), w, st in zip(spatial, pads, window, layer.stride, strict=True)
    ]
    for offset in itertools.product(*[range(k) for k in layer.kernel_size]):
        start = [0, 0] + [o * d for o, d in zip(offset, layer.dilation, strict=True)]
        limit = list(x.shape[:2]) + [
            b + (n - 1) * st + 1 for b, n, st in zip(start[2:], out, layer.stride, strict=True)
        ]
        view = jax.lax.slice(xp, start, limit, [1, 1] + list(layer.stride))
        yield view.reshape(x.shape[0], x.shape[1], -1)


# Patches of one chunk of examples should stay near a core: measured on 2-core AMD EPYC
# (2 MB L2 per core), 3x3 convolutions with 32 channels on 16x16 images ran 3-4x faster in
# chunks of 2-8 examples than with the whole batch's patches in memory at once; on a later
# 2-core EPYC (2 MB L2, 32 MB L3) chunks of 4 MB were 1.2-1.3x (32 channels) and 1.9x (one
# input channel) faster than chunks of 2 MB, and 8 MB 1.5x slower (256 images, 16x16).
_PATCH_BYTES = 2**22


def _conv_chunk(layer, k, inputs, signals):
    """Weight Jacobians `(b, k, p)` of one chunk of examples: one batched GEMM per call."""
    jac = 0.0
    for x, b_c in zip(inputs, signals, strict=True):
        m = x.shape[0]
        patches = jnp.stack(list(_patch_views(layer, x)), axis=1)  # (b, offsets, in, pos)
        patches = patches.reshape(m, -1, patches.shape[-1])
        sig = b_c.reshape(m, -1, patches.shape[-1])  # (b, k·out, positions)
        # Both operands contracted on their last axis and the long patch axis first: the
        # layout XLA:CPU's batched GEMM runs fastest (4x faster than `(k·out, patch)` out).
        jac = jac + jnp.einsum("mpc,moc->mpo", patches, sig)
    m, p = jac.shape[:2]
    return jnp.swapaxes(jac.reshape(m, p, k, -1), 1, 2).reshape(m, k, -1)


def _conv_jacobian(layer, inputs, signals):
    r"""Per-example Jacobians of a convolution from its inputs and signals: GEMMs, no autodiff.

    $\partial f_a / \partial W_{o,i,\delta} = \sum_c B_{a,o,c}\, x_{i, c+\delta}$ over output
    positions `c`: per example one matrix product of the signals `(k·out, positions)` with the
    im2col patches `(in·offsets, positions)`. The order of the parameters need not match the
    weight's layout: only inner products of Jacobians enter the kernel. On CPU the examples
    are taken in cache-sized chunks, in one independent loop per core (XLA:CPU runs
    independent loops concurrently); elsewhere all at once.
    """
    n, k = signals[0].shape[:2]
    bias = jnp.stack([b.reshape(n, k, b.shape[2], -1).sum(-1) for b in signals]).sum(0)
    tail = [] if not layer.use_bias else [bias]
    if jax.default_backend() != "cpu":
        return [_conv_chunk(layer, k, inputs, signals)] + tail
    per_example = sum(x[0].size for x in inputs) * int(np.prod(layer.kernel_size))
    chunk = int(np.clip(_PATCH_BYTES // (per_example * inputs[0].dtype.itemsize), 1, n))
    streams = int(np.clip(-(-n // chunk), 1, os.cpu_count() or 1))
    per_stream = -(-n // (chunk * streams))
    total = streams * per_stream * chunk
    pad = lambda a: jnp.pad(a, [(0, total - n)] + [(0, 0)] * (a.ndim - 1)).reshape(
        (streams, per_stream, chunk) + a.shape[1:]
    )
    xs, bs = [pad(x) for x in inputs], [pad(b) for b in signals]
    parts = [
        jax.lax.map(lambda xb: _conv_chunk(layer, k, *xb), ([x[s] for x in xs], [b[s] for b in bs]))
        for s in range(streams)
    ]
    jac = jnp.concatenate(parts).reshape((total, k, -1))[:n]
    return [jac] + tail


def _vjp_jacobian(layer, weight, bias, inputs, signals):
    """Per-example weight (and bias) Jacobian of any layer, by the layer's own `vjp`."""
    params = (weight, bias)

    def one_call(x, b_c):  # b_c: (k, *out_shape)
        _, vjp = jax.vjp(lambda p: fill(layer, *p)(x), params)
        return jax.vmap(lambda e: vjp(e)[0])(b_c)

    grads = [one_call(x, bc) for x, bc in zip(inputs, signals, strict=True)]
    total = jax.tree.map(lambda *g: sum(g), *grads)
    return [g.reshape(g.shape[0], -1) for g in jax.tree.leaves(total)]


def local_jacobian(layer, weight, bias, inputs, signals) -> list[Float[Array, "b k p"]]:
    """Per-example Jacobian leaves `(b, k, p)` of one tapped layer from its inputs and signals.

    `inputs` and `signals` hold one batch `(b, ...)` per call of the layer. Built locally: no
    pass through the rest of the network. Zero-padded, ungrouped convolutions use matrix
    products with their im2col patches; every other layer its own `vjp`, per example.
    """
    if isinstance(layer, eqx.nn.Conv) and layer.groups == 1 and layer.padding_mode == "ZEROS":
        return _conv_jacobian(layer, inputs, signals)
    return jax.vmap(lambda a, b: _vjp_jacobian(layer, weight, bias, a, b))(inputs, signals)
