r"""The segmentation network of the closure study: an equinox U-Net, fully convolutional.

A U-Net (Ronneberger, Fischer and Brox 2015, "U-Net: convolutional networks for biomedical
image segmentation") is the network with which Courtois, Arias and Morel learn the closure
task: at each of `scales` resolutions two 3×3 convolutions, halving the resolution (2×2 max
pooling) on the way down and doubling it (nearest-neighbour upsampling, then a 3×3
convolution) on the way up, with the features of the way down concatenated at each
resolution; a 1×1 convolution gives one logit per pixel. With `scales = s` the deepest
features see $2^{s-1}$ pixels per cell, so the receptive field spans the image for
$s \ge 4$ at 32×32: a pixel's inside/outside can depend on the whole curve, as parity must.

Normalisation is group normalisation (Wu and He 2018), which uses no batch statistics:
the network is a function of one image, so its NTK and path kernel are defined per example
and a saved network predicts one image as it predicts a batch. `norm="none"` drops it.
Every weight sits in an `eqx.nn.Conv2d` (the upsampling has none), which
[`ntkode.ntk`][]'s structured engine handles layer by layer; the group-norm scales are
contracted as plain Jacobians.

The input side `m` must be a multiple of $2^{s-1}$ (each pooling halves it exactly);
[`UNet.check_size`][] says so in a sentence.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

NORMS = ("group", "none")


class _Block(eqx.Module):
    """Two 3×3 convolutions, each followed by (group) normalisation and a ReLU."""

    convs: tuple[eqx.nn.Conv2d, eqx.nn.Conv2d]
    norms: tuple[eqx.nn.GroupNorm, eqx.nn.GroupNorm] | None

    def __init__(self, cin: int, cout: int, norm: str, *, key: Array, dtype: Any):
        k1, k2 = jax.random.split(key)
        self.convs = (
            eqx.nn.Conv2d(cin, cout, 3, padding=1, key=k1, dtype=dtype),
            eqx.nn.Conv2d(cout, cout, 3, padding=1, key=k2, dtype=dtype),
        )
        groups = max(g for g in (1, 2, 4) if cout % g == 0)
        self.norms = (
            (
                eqx.nn.GroupNorm(groups, cout, dtype=dtype),
                eqx.nn.GroupNorm(groups, cout, dtype=dtype),
            )
            if norm == "group"
            else None
        )

    def __call__(self, x: Array) -> Array:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if self.norms is not None:
                x = self.norms[i](x)
            x = jax.nn.relu(x)
        return x


class UNet(eqx.Module):
    """A U-Net mapping one curve image `(1, m, m)` to per-pixel logits `(m, m)`.

    **Arguments:**

    - `scales`: resolutions (at least 2); the side of the input must be a multiple of
      `2**(scales - 1)`.
    - `channels`: channels at the finest resolution; each coarser one has `growth` times
      more (rounded).
    - `growth`: channel factor between resolutions (2 in the original U-Net).
    - `norm`: `"group"` (group normalisation) or `"none"`.
    - `key`: initialisation (equinox's default, uniform fan-in scaling).
    - `dtype`: floating dtype of the weights (default JAX's default float).
    """

    down: list[_Block]
    up: list[eqx.nn.Conv2d]
    fuse: list[_Block]
    head: eqx.nn.Conv2d
    scales: int = eqx.field(static=True)
    widths: tuple[int, ...] = eqx.field(static=True)
    growth: float = eqx.field(static=True)
    norm: str = eqx.field(static=True)

    def __init__(
        self,
        scales: int = 4,
        channels: int = 8,
        growth: float = 2.0,
        norm: str = "group",
        *,
        key: Array,
        dtype: Any = None,
    ):
        if int(scales) < 2:
            raise ValueError(f"`scales` must be at least 2, got {scales}.")
        if int(channels) < 1:
            raise ValueError(f"`channels` must be at least 1, got {channels}.")
        if not float(growth) >= 1.0:
            raise ValueError(f"`growth` must be at least 1, got {growth}.")
        if norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {norm!r}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        self.scales, self.growth, self.norm = int(scales), float(growth), norm
        self.widths = tuple(max(1, round(channels * growth**i)) for i in range(self.scales))
        keys = iter(jax.random.split(key, 3 * self.scales))
        self.down, cin = [], 1
        for c in self.widths:
            self.down.append(_Block(cin, c, norm, key=next(keys), dtype=dtype))
            cin = c
        self.up, self.fuse = [], []
        for i in range(self.scales - 2, -1, -1):
            c_in, c = self.widths[i + 1], self.widths[i]
            self.up.append(eqx.nn.Conv2d(c_in, c, 3, padding=1, key=next(keys), dtype=dtype))
            self.fuse.append(_Block(2 * c, c, norm, key=next(keys), dtype=dtype))
        self.head = eqx.nn.Conv2d(self.widths[0], 1, 1, key=next(keys), dtype=dtype)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this: `2**(scales - 1)`."""
        return 2 ** (self.scales - 1)

    def check_size(self, m: int, name: str = "images") -> None:
        """Raise a `ValueError` naming `name` unless side `m` suits this U-Net."""
        if m < self.multiple or m % self.multiple:
            raise ValueError(
                f"`{name}` are {m}×{m} pixels, but a U-Net with {self.scales} scales halves "
                f"the side {self.scales - 1} times: use sides that are multiples of "
                f"{self.multiple} (e.g. {self.multiple * max(1, round(m / self.multiple))})."
            )

    def hyperparameters(self) -> dict[str, Any]:
        """What rebuilds this architecture: `UNet(**h, key=...)` (JSON-serialisable)."""
        return {
            "scales": self.scales,
            "channels": self.widths[0],
            "growth": self.growth,
            "norm": self.norm,
            "dtype": jnp.dtype(self.head.weight.dtype).name,
        }

    def __call__(self, x: Float[Array, "1 m m"], *, key: Array | None = None) -> Array:
        if x.ndim != 3 or x.shape[0] != 1 or x.shape[1] != x.shape[2]:
            raise ValueError(f"a U-Net takes one image (1, m, m), got shape {x.shape}.")
        self.check_size(x.shape[-1])
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = _pool(x)
            x = block(x)
            skips.append(x)
        for up, fuse, skip in zip(self.up, self.fuse, skips[-2::-1], strict=True):
            x = jax.nn.relu(up(jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)))
            x = fuse(jnp.concatenate([x, skip], axis=0))
        return self.head(x)[0]


@eqx.filter_jit
def _build(key: Array, arch: tuple) -> UNet:
    return UNet(**dict(arch), key=key)


def build_unet(*, key: Array, **arch: Any) -> UNet:
    """`UNet(**arch, key=key)`, built under `jit`: one compilation for all the initialisers
    (eager initialisation compiles each layer's random draw separately, which takes
    seconds)."""
    if "dtype" in arch:
        arch["dtype"] = jnp.dtype(arch["dtype"] or jnp.result_type(float))
    return _build(key, tuple(sorted(arch.items())))


def _pool(x: Array) -> Array:
    """2×2 max pooling with stride 2 on `(c, m, m)`, `m` even."""
    c, m, _ = x.shape
    return jnp.max(x.reshape(c, m // 2, 2, m // 2, 2), axis=(2, 4))
