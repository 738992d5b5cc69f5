"""Applying an equinox model to a batch, and splitting it into weights and structure."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


def partition(model: Any) -> tuple[PyTree[Array], Any]:
    """Split a model into its floating-point arrays (the trainable weights) and the rest."""
    return eqx.partition(model, eqx.is_inexact_array)


def apply_one(model: Any, x: Array) -> Float[Array, " k"]:
    """The model's outputs for one input, flattened to a vector of length `k`."""
    return jnp.reshape(model(x), (-1,))


def apply(model: Any, x: Float[Array, "n ..."]) -> Float[Array, "n k"]:
    """The model's outputs on a batch, shape `(n, k)`, by `vmap` over the leading axis."""
    return jax.vmap(lambda xi: apply_one(model, xi))(x)


def _check_declared_input(model: Any, shape: tuple[int, ...], name: str) -> None:
    """Refuse inputs of a shape the model's first standard layer does not take.

    `eqx.nn.Linear` and `eqx.nn.MLP` take vectors of `in_features` / `in_size` (or scalars),
    `eqx.nn.Conv` takes `(in_channels, *spatial)`, `eqx.nn.Sequential` what its first layer
    takes. Such layers accept wrong shapes silently (an input `(3, 1)` for `in_size=3`
    broadcasts against the biases), so tracing alone cannot tell. Other models declare
    nothing and are only traced.
    """
    if isinstance(model, eqx.nn.Sequential) and len(model.layers):
        _check_declared_input(model.layers[0], shape, name)
    elif isinstance(model, eqx.nn.Linear | eqx.nn.MLP):
        size = model.in_features if isinstance(model, eqx.nn.Linear) else model.in_size
        expected = () if size == "scalar" else (int(size),)
        if shape != expected:
            raise ValueError(
                f"`{name}` examples have shape {shape} but the model "
                f"({type(model).__name__} with input size {size!r}) takes inputs of shape "
                f"{expected}; reshape the inputs to {(-1, *expected)}. (Other shapes "
                "broadcast inside its layers and give outputs, and kernels, of the wrong "
                "shape.)"
            )
    elif isinstance(model, eqx.nn.Conv):
        ndim = model.num_spatial_dims + 1
        if len(shape) != ndim or shape[0] != model.in_channels:
            raise ValueError(
                f"`{name}` examples have shape {shape} but the model ({type(model).__name__} "
                f"with {model.in_channels} input channels) takes inputs of shape "
                f"(channels={model.in_channels}, {model.num_spatial_dims} spatial axes); "
                "reshape the inputs."
            )


def num_outputs(model: Any, x: Float[Array, "n ..."], name: str = "x") -> int:
    """Number of outputs `k` of `model` on one example of `x`, with a clear error on misuse."""
    _check_declared_input(model, tuple(x.shape[1:]), name)
    try:
        out = jax.eval_shape(
            lambda xi: apply_one(model, xi), jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
        )
    except Exception as err:  # noqa: BLE001 - re-raised with context
        raise ValueError(
            f"The model could not be applied to one example of `{name}` (shape {x.shape[1:]}): "
            f"{type(err).__name__}: {err}. ntkode calls `model(x_i)` on single examples; check "
            "that the model's input size matches the data's feature shape."
        ) from err
    return int(out.shape[0])


def check_model_data(model: Any, data: Any) -> None:
    """The model accepts the data's inputs and has as many outputs as the targets."""
    params, _ = partition(model)
    if not jax.tree.leaves(params):
        raise ValueError("`model` has no floating-point arrays to train.")
    k = num_outputs(model, data.x_train, "x_train")
    if k != data.n_outputs:
        if data.num_classes is not None:
            raise ValueError(
                f"The model has {k} output(s) per example but the data hold integer class "
                f"labels, read as {data.num_classes} classes (one-hot targets of "
                f"{data.num_classes} columns); build the model with "
                f"out_size={data.num_classes}, or pass Dataset(..., num_classes={k}) if there "
                f"are {k} classes."
            )
        raise ValueError(
            f"The model has {k} output(s) per example but the targets `y_train` have "
            f"{data.n_outputs}; build the model with out_size={data.n_outputs} "
            "(or reshape the targets)."
        )


def num_params(model: Any) -> int:
    """Number of trainable scalars in `model`."""
    return sum(int(jnp.size(p)) for p in jax.tree.leaves(partition(model)[0]))
