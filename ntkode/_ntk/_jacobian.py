r"""Jacobian contraction: per-example gradients, contracted over parameters.

$\Theta(x, x')_{ab} = \sum_p \partial_p f_a(x)\, \partial_p f_b(x')$, with per-example
Jacobians from `vmap(jacrev(f(θ, x_i)))` — never `jacrev` through the batch, which would
differentiate every output through every example. Works for any model; memory is
`O(n k P)` per block, which `block_size` bounds. (Novak et al. 2022, "Fast finite width neural
tangent kernel", §3.1.)
"""

from typing import Any

import equinox as eqx
import jax
from jaxtyping import Array, Float, PyTree

from .._core._model import apply_one
from ._base import AbstractNTKImplementation, contract_jacobians, weight_jacobians


def per_example_jacobian(
    params: PyTree[Array], static: Any, x: Float[Array, "n ..."]
) -> list[Float[Array, "n k p"]]:
    """Per-example Jacobians of the flattened outputs, one `(n, k, p_leaf)` array per leaf.

    The one per-example Jacobian of ntkode: every implementation, the reference and the
    fallbacks call it.
    """
    f = lambda p, xi: apply_one(eqx.combine(p, static), xi)
    jac = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(params, x)
    return [j.reshape(j.shape[0], j.shape[1], -1) for j in jax.tree.leaves(jac)]


class JacobianNTK(AbstractNTKImplementation):
    """Contract per-example Jacobians; applies to every model."""

    contract_uses_params = False

    def features(self, params, static, x):
        return per_example_jacobian(params, static, x)

    def weight_outputs(self, features, weights):
        return weight_jacobians(features, weights)

    def contract(self, params, static, f1, f2, trace):
        return contract_jacobians(f1, f2, trace)
