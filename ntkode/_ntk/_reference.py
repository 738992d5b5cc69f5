r"""The simple, obviously-correct empirical NTK: per-example Jacobians, contracted.

$\Theta(x, x')_{ab} = \sum_p \partial_p f_a(\theta, x)\, \partial_p f_b(\theta, x')$.
Per-example Jacobians come from `vmap(jacrev(f(θ, x_i)))` (never `jacrev` through the whole
batch, which differentiates every output through every example). This is the reference the
fast engine is tested against.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core._model import apply_one, num_outputs, partition


def _per_example_jacobian(params, static, x):
    """Leaves of shape `(n, k, P_leaf)`."""
    f = lambda p, xi: apply_one(eqx.combine(p, static), xi)
    jac = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(params, x)
    return [j.reshape(j.shape[0], j.shape[1], -1) for j in jax.tree.leaves(jac)]


def _contract(j1, j2):
    return sum(jnp.einsum("iap,jbp->ijab", a, b) for a, b in zip(j1, j2, strict=True))


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
    j1 = _per_example_jacobian(params, static, x1)
    j2 = j1 if x2 is None else _per_example_jacobian(params, static, x2)
    return _contract(j1, j2)


_reference_jit = eqx.filter_jit(_reference_impl)
