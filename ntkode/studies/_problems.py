"""The reference problems of the studies (**sine** and its variants), built in one call."""

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core._data import Dataset
from .._core._gradient_flow import GradientFlowProblem
from ..datasets import sine

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
}


def _activation(name):
    if callable(name):
        return name
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown `activation` {name!r}; choose one of {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def sine_problem(
    *,
    width: int = 512,
    depth: int = 2,
    n_train: int = 256,
    n_test: int = 256,
    dim: int = 8,
    t_end: float = 50.0,
    learning_rate: float = 1.0,
    activation="relu",
    seed: int = 0,
    dtype=None,
) -> GradientFlowProblem:
    """The **sine** reference problem: an MLP `dim → width^depth → 1` on `y = sin(Σx)`.

    Equinox's default (standard) initialisation, mean-MSE, `η = 1`, `t ∈ [0, t_end]`.
    `activation="softplus"` gives the smooth variant (**sine-softplus**), whose kernels do not
    chatter the way ReLU's do.

    **Returns:** a [`ntkode.GradientFlowProblem`][] (its `model` and `data` are fields).
    """
    for name, value in (("width", width), ("depth", depth)):
        if int(value) < 1:
            raise ValueError(f"`{name}` must be at least 1, got {value}.")
    dtype = jnp.result_type(float) if dtype is None else dtype
    data: Dataset = sine(n_train, n_test, dim, key=jax.random.key(seed), dtype=dtype)
    model = eqx.nn.MLP(
        dim,
        1,
        width,
        depth,
        activation=_activation(activation),
        key=jax.random.key(seed + 1),
        dtype=dtype,
    )
    return GradientFlowProblem(model, data, tspan=(0.0, t_end), learning_rate=learning_rate)
