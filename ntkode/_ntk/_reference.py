r"""The simple, obviously-correct empirical NTK: per-example Jacobians, contracted.

$\Theta(x, x')_{ab} = \sum_p \partial_p f_a(\theta, x)\, \partial_p f_b(\theta, x')$.
Per-example Jacobians come from `vmap(jacrev(f(θ, x_i)))` (never `jacrev` through the whole
batch, which differentiates every output through every example). This is the reference the
fast engine is tested against.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core._model import num_outputs, partition
from ._base import contract_jacobians
from ._jacobian import per_example_jacobian


def ntk_reference(
    model: Any, x1: Float[Array, "n1 ..."], x2: Float[Array, "n2 ..."] | None = None
) -> Float[Array, "n1 n2 k k"]:
    """Empirical NTK of `model` between `x1` and `x2` (default `x1`), shape `(n1, n2, k, k)`.

    Differentiates with respect to every floating-point array in the model.
    """
    x1 = jnp.asarray(x1)
    num_outputs(model, x1, "x1")
    if x2 is not None:
        x2 = jnp.asarray(x2)
        num_outputs(model, x2, "x2")
    params, static = partition(model)
    return _reference_jit(params, static, x1, x2)  # pyright: ignore[reportReturnType]


def _reference_impl(params, static, x1, x2):
    j1 = per_example_jacobian(params, static, x1)
    j2 = j1 if x2 is None else per_example_jacobian(params, static, x2)
    return contract_jacobians(j1, j2, trace=False)


_reference_jit = eqx.filter_jit(_reference_impl)
