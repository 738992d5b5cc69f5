r"""Losses usable in weight space (a scalar to differentiate) and in function space.

Every loss is a mean over examples, $L(u) = \frac1n \sum_i \ell(u_i, y_i)$, so the
function-space gradient that drives kernel flows is $\nabla_u L = \nabla_{u_i}\ell / n$.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import is_concrete


class AbstractLoss(eqx.Module):
    r"""A per-example loss $\ell(u_i, y_i)$, averaged over the examples."""

    name: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def per_example(self, u: Float[Array, "n k"], y: Float[Array, "n k"]) -> Float[Array, " n"]:
        """The loss of each example, shape `(n,)`."""

    def __call__(self, u: Float[Array, "n k"], y: Float[Array, "n k"]) -> Float[Array, ""]:
        """The mean loss over examples."""
        return jnp.mean(self.per_example(u, y))

    @abc.abstractmethod
    def grad(self, u: Float[Array, "n k"], y: Float[Array, "n k"]) -> Float[Array, "n k"]:
        r"""$\nabla_u L(u)$, the function-space gradient (shape of `u`), in closed form."""

    @abc.abstractmethod
    def check_targets(self, y: Float[Array, "n k"], name: str) -> None:
        """Raise a sentence if the targets `y` (argument `name`) cannot be used with this
        loss. Called on concrete targets when a problem is built."""


class MSE(AbstractLoss):
    r"""Mean squared error $L = \frac1n\sum_i \tfrac12\|u_i - y_i\|^2$; $\nabla_u L = (u - Y)/n$.

    Any real targets (for classification, one-hot rows: the usual NTK regression setup).
    """

    name = "mse"

    def per_example(self, u, y):
        return 0.5 * jnp.sum((u - y) ** 2, axis=-1)

    def grad(self, u, y):
        return (u - y) / u.shape[0]

    def check_targets(self, y, name):
        del y, name  # every real target is a regression target


class CrossEntropy(AbstractLoss):
    r"""Softmax cross-entropy over `k ≥ 2` classes.

    $\ell(u_i, y_i) = \operatorname{logsumexp}(u_i) - y_i \cdot u_i$ for a target row $y_i$
    of class probabilities (one-hot for a label), so $\nabla_u L =
    (\operatorname{softmax}(u) - Y)/n$.

    **Targets.** Build the [`ntkode.Dataset`][] from integer class labels `(n,)` (it stores
    them as one-hot rows of `num_classes` columns) or pass one-hot / probability rows
    `(n, k)` directly; the model then needs `k` outputs. Called directly, `loss(u, labels)`
    also takes integer labels `(n,)`. Anything else is refused with a sentence when the
    problem is built: one column (the softmax of one output is identically 1, so the loss
    would be 0) or rows that are not probabilities (real-valued regression targets: use
    [`ntkode.losses.mse`][]).
    """

    name = "cross_entropy"

    def per_example(self, u, y):
        y = _rows(u, y)
        return jax.nn.logsumexp(u, axis=-1) * jnp.sum(y, axis=-1) - jnp.sum(y * u, axis=-1)

    def grad(self, u, y):
        y = _rows(u, y)
        return (jax.nn.softmax(u, axis=-1) * jnp.sum(y, -1, keepdims=True) - y) / u.shape[0]

    def check_targets(self, y, name):
        if not is_concrete(y):
            return
        a = np.asarray(y)
        if a.shape[0] == 0:
            return
        if a.shape[-1] < 2:
            raise ValueError(
                f"cross_entropy needs at least two classes, but `{name}` has one column: the "
                "softmax of a single output is identically 1, so the loss would be 0 whatever "
                "the model does. Build the Dataset from integer class labels (n,) (one-hot "
                "rows, one column per class) with a model of that many outputs, or use mse "
                "for regression."
            )
        sums = a.sum(axis=-1)
        tol = 1e-3 if a.dtype == np.float32 else 1e-6
        if np.any(a < -tol) or np.any(np.abs(sums - 1) > tol):
            raise ValueError(
                f"cross_entropy needs class probabilities in `{name}`: one-hot (or probability) "
                "rows, non-negative and each summing to 1, or a Dataset built from integer "
                f"class labels (n,). Got rows summing to [{sums.min():.3g}, {sums.max():.3g}] "
                f"with entries in [{a.min():.3g}, {a.max():.3g}]: real-valued targets? For "
                "regression use mse."
            )


def _rows(u, y):
    """Targets as probability rows: integer labels `(n,)` become one-hot rows of `u`'s width."""
    if jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer):
        return jax.nn.one_hot(jnp.reshape(y, (-1,)), u.shape[-1], dtype=u.dtype)
    return y


mse = MSE()
cross_entropy = CrossEntropy()
_BY_NAME: dict[str, AbstractLoss] = {
    "mse": mse,
    "cross_entropy": cross_entropy,
    "ce": cross_entropy,
}


def as_loss(loss) -> AbstractLoss:
    """Accept a loss object or one of the names `"mse"`, `"cross_entropy"`."""
    if isinstance(loss, AbstractLoss):
        return loss
    if isinstance(loss, str) and loss.lower() in _BY_NAME:
        return _BY_NAME[loss.lower()]
    raise ValueError(
        f"Unknown `loss` {loss!r}: pass ntkode.losses.mse, ntkode.losses.cross_entropy, "
        "the names 'mse' or 'cross_entropy', or a subclass of ntkode.losses.AbstractLoss."
    )
