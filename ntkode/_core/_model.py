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


def num_outputs(model: Any, x: Float[Array, "n ..."], name: str = "x") -> int:
    """Number of outputs `k` of `model` on one example of `x`, with a clear error on misuse."""
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
