r"""Scheduling variables $s = \sigma(t, u)$: where on the kernel grid the surrogate is.

A schedule reads the time and the current train outputs and returns one number. Time is the
simplest; state-dependent schedules (the training-loss level, the residual norm) are the
point of a linear-parameter-varying model: the surrogate follows the *state*, so it stays
meaningful when training does not follow the reference run's clock (another learning rate,
other targets, another start).

Every concrete schedule says whether it reads the state (`depends_on_state`). Schedules that
are functions of the train residual norm $\|u - Y\|$ alone derive from
[`ntkode.schedules.AbstractNormSchedule`][] and can invert themselves (`residual_sq`): for
mean MSE under a PSD kernel $\|u - Y\|$ never grows, so the exact piecewise solver of
`ntkode/_scheduled/_exact.py` crosses their pieces once each, at computable times.
"""

import abc
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._core._losses import AbstractLoss


class AbstractSchedule(eqx.Module):
    """A scheduling variable $\\sigma(t, u)$, a scalar.

    `__call__(t, u, y, loss)`: time, train outputs `(n, k)`, train targets `(n, k)`, loss.

    Subclasses set the class variable `depends_on_state`: `False` when the value depends on
    the time only.
    """

    depends_on_state: eqx.AbstractClassVar[bool]

    @abc.abstractmethod
    def __call__(
        self,
        t: Float[ArrayLike, ""],
        u: Float[Array, "n k"],
        y: Float[Array, "n k"],
        loss: AbstractLoss,
    ) -> Float[Array, ""]:
        """The scheduling value."""


class AbstractNormSchedule(AbstractSchedule):
    r"""A schedule that is an increasing function of the train residual norm $\|u - Y\|$.

    Subclasses implement `residual_sq(s, n)`, the inverse map: the $\|u - Y\|^2$ at which
    the schedule takes the value `s` for mean MSE on `n` train examples.
    """

    @abc.abstractmethod
    def residual_sq(self, s: Float[Array, "*shape"], n: int) -> Float[Array, "*shape"]:
        r"""The $\|u - Y\|^2$ at which this schedule takes value `s` (mean MSE, `n` examples)."""


class Time(AbstractSchedule):
    """$\\sigma(t, u) = t$: kernels follow the reference run's clock."""

    depends_on_state: ClassVar[bool] = False

    def __call__(self, t, u, y, loss):
        return jnp.asarray(t, u.dtype)


class LossLevel(AbstractNormSchedule):
    r"""$\sigma = \log L(u)$ (or $L(u)$ with `log=False`): the training-loss level.

    The loss falls during training, so along a reference run the node values decrease in time;
    grids sort their nodes, which is harmless. `residual_sq` inverts it for mean MSE,
    $L = \|u - Y\|^2 / (2n)$.
    """

    log: bool = eqx.field(static=True, default=True)
    depends_on_state: ClassVar[bool] = True

    def residual_sq(self, s, n):
        return 2.0 * n * (jnp.exp(s) if self.log else jnp.maximum(s, 0.0))

    def __call__(self, t, u, y, loss):
        value = loss(u, y)
        # The floor keeps log finite if the residual underflows to zero exactly.
        return jnp.log(jnp.maximum(value, jnp.finfo(u.dtype).tiny)) if self.log else value


class ResidualNorm(AbstractNormSchedule):
    r"""$\sigma = \log\|u - Y\|$ (or $\|u - Y\|$ with `log=False`), the train residual norm."""

    log: bool = eqx.field(static=True, default=True)
    depends_on_state: ClassVar[bool] = True

    def residual_sq(self, s, n):
        return jnp.exp(2.0 * s) if self.log else jnp.maximum(s, 0.0) ** 2

    def __call__(self, t, u, y, loss):
        value = jnp.sqrt(jnp.sum((u - y) ** 2))
        return jnp.log(jnp.maximum(value, jnp.finfo(u.dtype).tiny)) if self.log else value


class Custom(AbstractSchedule):
    """A user-defined schedule: `fn(t, u, y) -> scalar`, written with `jax.numpy`.

    Treated as state-dependent (solved with an ODE solver). For a schedule with more
    structure (time only, or a function of the residual norm), subclass
    [`ntkode.schedules.AbstractSchedule`][] or [`ntkode.schedules.AbstractNormSchedule`][].
    """

    fn: Callable = eqx.field(static=True)
    depends_on_state: ClassVar[bool] = True

    def __call__(self, t, u, y, loss):
        return jnp.asarray(self.fn(t, u, y), u.dtype).reshape(())


__all__ = [
    "AbstractNormSchedule",
    "AbstractSchedule",
    "Custom",
    "LossLevel",
    "ResidualNorm",
    "Time",
]
