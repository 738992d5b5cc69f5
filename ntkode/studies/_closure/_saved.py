"""A trained closure network on disk, and loaded back as a callable: images → inside probabilities.

A folder holds `network.eqx` (the weights, `eqx.tree_serialise_leaves`) and `network.json`
(the U-Net's hyperparameters, which rebuild its structure, and a record of how it was
trained). [`load_closure_network`][] rebuilds the U-Net from the JSON, reads the weights
into it, and returns a [`ClosureNetwork`][]: any batch of curve images `(n, m, m)` (0/1
curve pixels, any side `m` that the U-Net's poolings divide) to inside probabilities.
"""

import os
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..._core._records import read_json, write_json
from ._unet import UNet

_WEIGHTS, _META = "network.eqx", "network.json"
_KEYS = ("scales", "channels", "growth", "norm", "dtype")


class ClosureNetwork(eqx.Module):
    """A trained closure U-Net as a function of curve images.

    Call it on images `(n, m, m)` (or one image `(m, m)`) whose pixels are 1 on a curve and
    0 elsewhere; it returns the probability `(n, m, m)` that each pixel is inside a curve
    (threshold at 0.5 for a mask). The U-Net is fully convolutional, so `m` may differ from
    the training size, as long as it is a multiple of `2**(scales - 1)`.

    **Fields:** `model` (the [`UNet`][]); `record` (what `network.json` says about the
    network and its training).
    """

    model: UNet
    record: dict[str, Any] = eqx.field(static=True)

    def logits(self, images: ArrayLike, chunk: int = 256) -> Float[Array, "n m m"]:
        """Per-pixel logits `(n, m, m)` of curve images `(n, m, m)`."""
        x, single = _check_images(self.model, images)
        dtype = self.model.head.weight.dtype
        out = [
            _apply(self.model, jnp.asarray(x[i : i + chunk, None], dtype))
            for i in range(0, x.shape[0], chunk)
        ]
        z = jnp.concatenate(out) if out else jnp.zeros((0,) + x.shape[1:], dtype)
        return z[0] if single else z

    def __call__(self, images: ArrayLike) -> Float[Array, "n m m"]:
        """Inside probabilities `(n, m, m)` of curve images `(n, m, m)`."""
        return jax.nn.sigmoid(self.logits(images))


@eqx.filter_jit
def _apply(model: UNet, x: Array) -> Array:
    return jax.vmap(model)(x)


def _check_images(model: UNet, images: ArrayLike) -> tuple[np.ndarray, bool]:
    x = np.asarray(images)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(
            f"`images` must be curve images (n, m, m) or one image (m, m), got shape "
            f"{np.shape(images)}; for the (n, 1, m, m) inputs of ntkode.datasets.closure, "
            "pass x[:, 0]."
        )
    if x.size and not np.all((x == 0) | (x == 1)):
        raise ValueError(
            "`images` must hold 0/1 curve pixels (1 where a curve passes), as the network "
            f"was trained on; found values in [{x.min():g}, {x.max():g}]."
        )
    model.check_size(x.shape[-1], "images")
    return x, single


def save_closure_network(folder: str, model: UNet, record: dict[str, Any] | None = None) -> None:
    """Write `model` to `folder` (`network.eqx` and `network.json`, with `record` added)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, _WEIGHTS)
    eqx.tree_serialise_leaves(path + ".tmp", model)
    os.replace(path + ".tmp", path)
    write_json(
        os.path.join(folder, _META),
        {"hyperparameters": model.hyperparameters(), **(record or {})},
    )


def load_closure_network(folder: str | os.PathLike) -> ClosureNetwork:
    """Load a closure network saved by the closure study (or [`save_closure_network`][]).

    **Arguments:**

    - `folder`: the folder with `network.eqx` and `network.json` (e.g. the `network/`
      folder inside the output of `ntkode closure`).

    **Returns:** a [`ClosureNetwork`][]: call it on curve images `(n, m, m)` to get inside
    probabilities `(n, m, m)`.
    """
    folder = os.fspath(folder)
    meta, weights = os.path.join(folder, _META), os.path.join(folder, _WEIGHTS)
    if not os.path.isdir(folder):
        raise ValueError(f"`folder` {folder!r} does not exist; pass the folder of a saved network.")
    if not os.path.exists(meta):
        raise ValueError(
            f"`folder` {folder!r} has no {_META} (the network's hyperparameters), so its "
            f"weights cannot be read; pass the folder written by the closure study."
        )
    if not os.path.exists(weights):
        raise ValueError(f"`folder` {folder!r} has {_META} but no {_WEIGHTS} (the weights).")
    record = read_json(meta)
    hyper = record.get("hyperparameters") if isinstance(record, dict) else None
    if not isinstance(hyper, dict) or sorted(hyper) != sorted(_KEYS):
        raise ValueError(
            f"{_META} in `folder` {folder!r} does not describe a closure U-Net: expected "
            f"hyperparameters {list(_KEYS)}, found {hyper if hyper is None else sorted(hyper)}."
        )
    try:
        like = eqx.filter_eval_shape(
            lambda: UNet(
                hyper["scales"], hyper["channels"], hyper["growth"], hyper["norm"],
                key=jax.random.key(0), dtype=jnp.dtype(hyper["dtype"]),
            )
        )  # fmt: skip
        model = eqx.tree_deserialise_leaves(weights, like)
    except (ValueError, TypeError, RuntimeError, EOFError, OSError) as err:
        raise ValueError(
            f"the weights in {_WEIGHTS} do not match the hyperparameters in {_META} "
            f"(in `folder` {folder!r}): {err}"
        ) from err
    return ClosureNetwork(model, record)
