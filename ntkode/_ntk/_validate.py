"""Checks on NTK arguments that name the argument and say what to do."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._core._model import num_outputs, partition


def _as_array(x: Any, name: str):
    if isinstance(x, jax.Array | np.ndarray):
        arr = x
    elif isinstance(x, list | tuple | float | int):
        try:
            arr = np.asarray(x)
        except ValueError:
            arr = np.asarray(x, dtype=object)
    else:
        raise TypeError(
            f"`{name}` must be an array of inputs with examples on the leading axis, got "
            f"{type(x).__name__}. Pass a jax or numpy array (pytrees of inputs are not "
            "supported: stack them into one array)."
        )
    if arr.dtype == object or not (
        jnp.issubdtype(arr.dtype, jnp.number) or jnp.issubdtype(arr.dtype, jnp.bool_)
    ):
        raise TypeError(
            f"`{name}` must hold numbers, got dtype {arr.dtype} (ragged lists, strings or "
            "objects?). Pass a numeric jax or numpy array."
        )
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise ValueError(
            f"`{name}` must have at least one example on its leading axis, got shape {arr.shape}."
        )
    return jnp.asarray(arr)


def check_inputs(
    model: Any, x1: Any, x2: Any, *, name1: str = "x1", name2: str = "x2"
) -> tuple[jax.Array, jax.Array | None]:
    """Numeric arrays of examples, with matching feature shapes, for a model with weights.

    Whether the model accepts the feature shape is checked by `check_model_inputs`, which
    traces the model and therefore runs where tracing happens anyway (inside `jit`).
    """
    params, _ = partition(model)
    if not jax.tree.leaves(params):
        floats = [v for v in jax.tree.leaves(model) if isinstance(v, float | np.floating)]
        if floats:
            raise TypeError(
                f"`model` holds its numbers as {len(floats)} Python/NumPy scalar leaves "
                "instead of arrays, so it has no weights to differentiate; store weights as "
                "jax arrays (e.g. `jnp.asarray([...])`)."
            )
        raise ValueError(
            "`model` has no floating-point arrays, so its NTK is zero-dimensional; pass an "
            "equinox module whose weights are jax arrays."
        )
    x1 = _as_array(x1, name1)
    if x2 is None:
        return x1, None
    x2 = _as_array(x2, name2)
    if x2.shape[1:] != x1.shape[1:]:
        raise ValueError(
            f"`{name1}` and `{name2}` have different feature shapes {x1.shape[1:]} and "
            f"{x2.shape[1:]}; both must be batches of the model's input shape."
        )
    return x1, x2


def check_model_inputs(model: Any, x1: jax.Array, name1: str = "x1") -> int:
    """The model applies to one example of `x1`; returns its number of outputs `k`."""
    return num_outputs(model, x1, name1)


def check_block_size(block_size: Any) -> None:
    """`None` or a positive integer."""
    if block_size is None:
        return
    if isinstance(block_size, bool) or not isinstance(block_size, int | np.integer):
        raise TypeError(
            f"`block_size` must be a positive int (examples per block) or None, got {block_size!r}."
        )
    if block_size <= 0:
        raise ValueError(
            f"`block_size` must be positive (examples per block), got {block_size}; pass "
            "None to compute the kernel in one piece."
        )
