r"""Scheduling variables $s = \sigma(t, u)$: where on the kernel grid the surrogate is.

A schedule reads the time and the current train outputs and returns one number. Time is the
simplest; state-dependent schedules (the training-loss level, the residual norm) are the
point of a linear-parameter-varying model: the surrogate follows the *state*, so it stays
meaningful when training does not follow the reference run's clock (another learning rate,
other targets, another start).
"""

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core._losses import AbstractLoss


class AbstractSchedule(eqx.Module):
    """A scheduling variable $\\sigma(t, u)$, a scalar.

    `__call__(t, u, y, loss)`: time, train outputs `(n, k)`, train targets `(n, k)`, loss.
    """

    # False for schedules that depend on time only (the solver can then use exact
    # exponentials between switching times).
    depends_on_state: ClassVar[bool] = True

    @abc.abstractmethod
    def __call__(
        self,
        t: Float[Array, ""],
        u: Float[Array, "n k"],
        y: Float[Array, "n k"],
        loss: AbstractLoss,
    ) -> Float[Array, ""]:
        """The scheduling value."""


class Time(AbstractSchedule):
    """$\\sigma(t, u) = t$: kernels follow the reference run's clock."""

    depends_on_state: ClassVar[bool] = False

    def __call__(self, t, u, y, loss):
        return jnp.asarray(t, u.dtype)


class LossLevel(AbstractSchedule):
    r"""$\sigma = \log L(u)$ (or $L(u)$ with `log=False`): the training-loss level.

    The loss falls during training, so along a reference run the node values decrease in time;
    grids sort their nodes, which is harmless.
    """

    log: bool = eqx.field(static=True, default=True)

    def residual_sq(self, s, n: int):
        r"""For mean MSE, the $\|u - Y\|^2$ at which this schedule takes value `s`."""
        return 2.0 * n * (jnp.exp(s) if self.log else jnp.maximum(s, 0.0))

    def __call__(self, t, u, y, loss):
        value = loss(u, y)
        # The floor keeps log finite if the residual underflows to zero exactly.
        return jnp.log(jnp.maximum(value, jnp.finfo(u.dtype).tiny)) if self.log else value


class ResidualNorm(AbstractSchedule):
    r"""$\sigma = \log\|u - Y\|$ (or $\|u - Y\|$ with `log=False`), the train residual norm."""

    log: bool = eqx.field(static=True, default=True)

    def residual_sq(self, s, n: int):
        r"""The $\|u - Y\|^2$ at which this schedule takes value `s`."""
        return jnp.exp(2.0 * s) if self.log else jnp.maximum(s, 0.0) ** 2

    def __call__(self, t, u, y, loss):
        value = jnp.sqrt(jnp.sum((u - y) ** 2))
        return jnp.log(jnp.maximum(value, jnp.finfo(u.dtype).tiny)) if self.log else value


class Custom(AbstractSchedule):
    """A user-defined schedule: `fn(t, u, y) -> scalar`, written with `jax.numpy`.

    Treated as state-dependent (solved with an ODE solver).
    """

    fn: Callable = eqx.field(static=True)

    def __call__(self, t, u, y, loss):
        return jnp.asarray(self.fn(t, u, y), u.dtype).reshape(())


__all__ = ["AbstractSchedule", "Custom", "LossLevel", "ResidualNorm", "Time"]
