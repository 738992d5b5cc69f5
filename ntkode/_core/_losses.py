r"""Losses usable in weight space (a scalar to differentiate) and in function space.

Every loss is a mean over examples, $L(u) = \frac1n \sum_i \ell(u_i, y_i)$, so the
function-space gradient that drives kernel flows is $\nabla_u L = \nabla_{u_i}\ell / n$.
"""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class AbstractLoss(eqx.Module):
    """A per-example loss $\\ell(u_i, y_i)$, averaged over the examples."""

    name: eqx.AbstractClassVar[str]

    @abc.abstractmethod
    def per_example(self, u: Float[Array, "n k"], y: Float[Array, "n k"]) -> Float[Array, " n"]:
        """The loss of each example, shape `(n,)`."""

    def __call__(self, u: Float[Array, "n k"], y: Float[Array, "n k"]) -> Float[Array, ""]:
        """The mean loss over examples."""
        return jnp.mean(self.per_example(u, y))

    @abc.abstractmethod
    def grad(self, u: Float[Array, "n k"], y: Float[Array, "n k"]) -> Float[Array, "n k"]:
        """$\\nabla_u L(u)$, the function-space gradient (shape of `u`), in closed form."""


class MSE(AbstractLoss):
    r"""Mean squared error $L = \frac1n\sum_i \tfrac12\|u_i - y_i\|^2$; $\nabla_u L = (u - Y)/n$."""

    name = "mse"

    def per_example(self, u, y):
        return 0.5 * jnp.sum((u - y) ** 2, axis=-1)

    def grad(self, u, y):
        return (u - y) / u.shape[0]


class CrossEntropy(AbstractLoss):
    r"""Softmax cross-entropy with one-hot (or probability) targets.

    $\ell(u_i, y_i) = \operatorname{logsumexp}(u_i) - y_i \cdot u_i$ (for rows of `y` summing
    to one), so $\nabla_u L = (\operatorname{softmax}(u) - Y)/n$.
    """

    name = "cross_entropy"

    def per_example(self, u, y):
        return jax.nn.logsumexp(u, axis=-1) * jnp.sum(y, axis=-1) - jnp.sum(y * u, axis=-1)

    def grad(self, u, y):
        return (jax.nn.softmax(u, axis=-1) * jnp.sum(y, -1, keepdims=True) - y) / u.shape[0]


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
