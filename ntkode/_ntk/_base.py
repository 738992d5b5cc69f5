"""The interface every NTK implementation follows: per-example features, then a contraction.

Splitting a kernel into `features(x)` (computed once per example) and `contract(f1, f2)`
(computed once per pair) is what lets one blocking and sharding engine serve every
implementation: blocks of rows and columns only ever need the features of their own examples.
"""

import abc
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


class AbstractNTKImplementation(eqx.Module):
    """A way of computing the empirical NTK, as features of examples and their contraction.

    Subclasses implement `features` and `contract`; both run inside `jit` on batches.
    """

    @abc.abstractmethod
    def features(self, params: PyTree[Array], static: Any, x: Float[Array, "b ..."]) -> Any:
        """Per-example quantities for a batch `x` (leading axis = examples)."""

    @abc.abstractmethod
    def contract(
        self, params: PyTree[Array], static: Any, f1: Any, f2: Any, trace: bool
    ) -> Float[Array, "b1 b2 k k"] | Float[Array, "b1 b2"]:
        """The kernel block between two batches of features."""

    def kernel(
        self, params: PyTree[Array], static: Any, x1: Array, x2: Array | None, trace: bool
    ) -> Array:
        """The whole kernel in one piece (no blocking)."""
        f1 = self.features(params, static, x1)
        f2 = f1 if x2 is None else self.features(params, static, x2)
        return self.contract(params, static, f1, f2, trace)


def contract_jacobians(
    j1: list[Float[Array, "n1 k p"]], j2: list[Float[Array, "n2 k p"]], trace: bool
) -> Array:
    r"""$\sum_{\text{leaves}} J_1 J_2^\top$ for per-example Jacobian leaves `(n, k, p)`."""
    spec = "iap,jap->ij" if trace else "iap,jbp->ijab"
    out = None
    for a, b in zip(j1, j2, strict=True):
        term = jnp.einsum(spec, a, b)
        out = term if out is None else out + term
    return out
