r"""Minibatch optimisers for the closure network, as objects (optax underneath).

Each optimiser is a warm-up-then-cosine learning-rate schedule (Loshchilov and Hutter 2017)
fed to an optax transformation. [`Ranger`][] is the seed's optimiser: Lookahead (Zhang,
Lucas, Hinton and Ba 2019) over RAdam (Liu et al. 2020), i.e.
`optax.lookahead(optax.radam(...))`, which keeps *slow* weights next to the *fast* ones the
gradients are taken at; the slow weights are the result.
"""

import abc
from typing import Any

import equinox as eqx
import optax


class AbstractOptimiser(eqx.Module):
    """How the closure network's weights move: a schedule and an optax transformation.

    Subclasses declare `learning_rate` and implement `transformation`, `wrap` (the
    optimiser's view of the weights), `fast` (the weights gradients are taken at) and
    `result` (the weights to keep).
    """

    learning_rate: eqx.AbstractVar[float]
    warmup: eqx.AbstractVar[float]

    @abc.abstractmethod
    def transformation(self, schedule: optax.Schedule) -> optax.GradientTransformation:
        """The optax transformation, with learning rate `schedule`."""

    @abc.abstractmethod
    def wrap(self, params: Any) -> Any:
        """The optimiser's parameters built from the network's weights."""

    @abc.abstractmethod
    def fast(self, params: Any) -> Any:
        """The weights at which gradients are taken."""

    @abc.abstractmethod
    def result(self, params: Any) -> Any:
        """The weights of the trained network."""

    def build(self, steps: int) -> optax.GradientTransformation:
        """The transformation for a run of `steps` steps (warm-up, then cosine decay)."""
        if not (self.learning_rate > 0 and 0 <= self.warmup < 1):
            raise ValueError(
                f"`learning_rate` must be positive and `warmup` in [0, 1) (a fraction of the "
                f"steps); got {self.learning_rate} and {self.warmup}."
            )
        steps = max(int(steps), 1)
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=float(self.learning_rate),
            # At least one warm-up step, but never all of them (a one-step run is all decay).
            warmup_steps=min(max(1, int(self.warmup * steps)), steps - 1),
            decay_steps=steps,
            end_value=0.01 * float(self.learning_rate),
        )
        return self.transformation(schedule)

    def settings(self) -> dict[str, Any]:
        """The optimiser's name and fields (JSON-serialisable), to record and compare runs."""
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        return {"optimiser": type(self).__name__.lower(), **fields}


class Adam(AbstractOptimiser):
    """Adam (Kingma and Ba 2015), `optax.adam`, on the warm-up-then-cosine schedule."""

    learning_rate: float = 3e-3
    warmup: float = 0.05

    def transformation(self, schedule):
        return optax.adam(schedule)

    def wrap(self, params):
        return params

    def fast(self, params):
        return params

    def result(self, params):
        return params


class Ranger(AbstractOptimiser):
    """Ranger: Lookahead over RAdam, `optax.lookahead(optax.radam(...))`, as in the seed.

    Every `sync_period` fast steps, the slow weights move `slow_step_size` of the way to the
    fast ones (Zhang et al. 2019's defaults: 6 and 0.5); the slow weights are the result.
    """

    learning_rate: float = 3e-3
    warmup: float = 0.05
    sync_period: int = 6
    slow_step_size: float = 0.5

    def transformation(self, schedule):
        return optax.lookahead(optax.radam(schedule), self.sync_period, self.slow_step_size)

    def wrap(self, params):
        return optax.LookaheadParams.init_synced(params)

    def fast(self, params):
        return params.fast

    def result(self, params):
        return params.slow


OPTIMISERS = {"adam": Adam, "ranger": Ranger}


def optimiser_from(name: str | AbstractOptimiser, learning_rate: float | None = None):
    """An optimiser object from its name (`"adam"`, `"ranger"`) or itself."""
    if isinstance(name, AbstractOptimiser):
        if learning_rate is not None:
            raise ValueError("Pass `learning_rate` inside the optimiser object, not beside it.")
        return name
    if name not in OPTIMISERS:
        raise ValueError(
            f"`optimiser` must be one of {tuple(OPTIMISERS)} or an AbstractOptimiser, got {name!r}."
        )
    return OPTIMISERS[name]() if learning_rate is None else OPTIMISERS[name](learning_rate)
