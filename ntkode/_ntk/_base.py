r"""The interface every NTK implementation follows: per-example features, then a contraction.

Splitting a kernel into `features(x)` (computed once per example) and `contract(f1, f2)`
(computed once per pair) is what lets one blocking and sharding engine serve every
implementation: blocks of rows and columns only ever need the features of their own examples.

A third operation, `weight_outputs(f, w)`, turns the features of the model into those of the
one-output model $x_i \mapsto w_i \cdot f(x_i)$ with per-example output weights $w_i$, so that
$\sum_b \Theta(x, x_i)_{ab}\, w_{ib} = \nabla_\theta f_a(x)\cdot\nabla_\theta(w_i\cdot f(x_i))$
is one contraction with one output on the right, never a `(n1, n2, k, k)` kernel times `w`:
what a path kernel's loss-weighted integral $\int \Theta\,\nabla_u L\,dt$ needs at every step
(Domingos 2020).
"""

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree


class AbstractNTKImplementation(eqx.Module):
    """A way of computing the empirical NTK, as features of examples and their contraction.

    Subclasses implement `features`, `weight_outputs` and `contract`; all run inside `jit` on
    batches. They also declare `contract_uses_params`: `False` when the features hold all
    the contraction needs, so that features taken at two different sets of weights can be
    contracted (as a gradient-descent path kernel does); `True` when `contract` recomputes
    both sides at the weights it is given.
    """

    contract_uses_params: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def features(self, params: PyTree[Array], static: Any, x: Float[Array, "b ..."]) -> Any:
        """Per-example quantities for a batch `x` (leading axis = examples)."""

    @abc.abstractmethod
    def weight_outputs(self, features: Any, weights: Float[Array, "b k"]) -> Any:
        """Features of the one-output model $x_i \\mapsto w_i \\cdot f(x_i)$.

        `contract(f1, weight_outputs(f2, w), trace=False)[..., 0]` is
        $\\sum_b \\Theta(x_1, x_2)_{ab}\\, w_b$, shape `(b1, b2, k)`.
        """

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
        if x2 is None:
            return symmetric_contract(lambda a, b: self.contract(params, static, a, b, trace), f1)
        return self.contract(params, static, f1, self.features(params, static, x2), trace)


# Below this many examples per block, smaller matrix products cost more than symmetry saves:
# measured on 2 cores (XLA:CPU), 128-row blocks made the n = 256 convolutional kernel's
# contraction 1.8x slower than one product, while 256-row blocks of the n = 1024 MLP kernel
# were 1.3x faster than one product.
_MIN_SYMMETRIC_BLOCK = 256


def symmetric_contract(contract: Callable[[Any, Any], Array], f: Any) -> Array:
    r"""`contract(f, f)` computing only the blocks on and above the diagonal.

    The kernel of a batch with itself is symmetric ($\Theta_{ij,ab} = \Theta_{ji,ba}$):
    with `m` row blocks, `m(m+1)/2` of the `m²` blocks are computed and the rest are
    transposes, which saves up to half of every `n²` term.
    """
    n = jax.tree.leaves(f)[0].shape[0]
    m = min(4, n // _MIN_SYMMETRIC_BLOCK)
    if m < 2:
        return contract(f, f)
    edges = [round(i * n / m) for i in range(m + 1)]
    parts = [jax.tree.map(lambda a, i=i: a[edges[i] : edges[i + 1]], f) for i in range(m)]
    blocks = {}
    for i in range(m):
        for j in range(i, m):
            blocks[i, j] = contract(parts[i], parts[j])
    swap = lambda k: jnp.swapaxes(jnp.swapaxes(k, 0, 1), 2, 3) if k.ndim == 4 else k.T
    rows = [
        jnp.concatenate([blocks[i, j] if i <= j else swap(blocks[j, i]) for j in range(m)], 1)
        for i in range(m)
    ]
    return jnp.concatenate(rows, 0)


def contract_jacobians(
    j1: list[Float[Array, "n1 k p"]], j2: list[Float[Array, "n2 k p"]], trace: bool
) -> Array:
    r"""$\sum_{\text{leaves}} J_1 J_2^\top$ for per-example Jacobian leaves `(n, k, p)`."""
    spec = "iap,jap->ij" if trace else "iap,jbp->ijab"
    out = None
    for a, b in zip(j1, j2, strict=True):
        term = jnp.einsum(spec, a, b)
        out = term if out is None else out + term
    assert out is not None, "a model with no parameters has no NTK"
    return out


def weight_jacobians(
    jacobians: list[Float[Array, "n k p"]], weights: Float[Array, "n k"]
) -> list[Float[Array, "n 1 p"]]:
    r"""Jacobian leaves of the one-output model $w_i \cdot f(x_i)$: $\sum_a w_{ia} J_{i,a}$."""
    return [jnp.einsum("nkp,nk->np", j, weights)[:, None] for j in jacobians]
