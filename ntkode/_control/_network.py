r"""`GradientDescentProblem`: the real network trained by full-batch gradient descent (optax).

$\theta_{k+1} = \theta_k - \eta_k\,\nabla_\theta L(\theta_k)$ with optax's `sgd` (no momentum),
its learning rate set at every step by the policy through `optax.inject_hyperparams`: the
policy reads the network's own outputs, so a gain-scheduled policy designed on the surrogate
is closed around the network. The run records the outputs on the train and test inputs at
every step, so that a surrogate's prediction can be compared step by step, and can keep the
parameters at chosen steps (to build kernel grids from this run).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._core._data import Dataset
from .._core._errors import is_concrete
from .._core._losses import AbstractLoss, as_loss, mse
from .._core._model import apply, check_model_data, partition
from ._descent import AbstractDescentProblem, finish


class GradientDescentProblem(AbstractDescentProblem):
    r"""Full-batch gradient descent of an equinox model's weights under a learning-rate policy.

    The discrete-time sibling of [`ntkode.GradientFlowProblem`][]: one step of size $\eta_k$
    advances the clock $t$ by $\eta_k$ (one unit of flow time is one step of size 1).

    **Arguments:**

    - `model`: an equinox module mapping *one* input to its outputs (e.g. `eqx.nn.MLP`).
    - `data`: a [`ntkode.Dataset`][].
    - `loss`: [`ntkode.losses.mse`][] (default), [`ntkode.losses.cross_entropy`][] or a name.

    [`GradientDescentProblem.from_flow`][] takes the model, data and loss of a
    [`ntkode.GradientFlowProblem`][] (such as `ntkode.sine_problem()`).
    """

    model: Any
    data: Dataset
    loss: AbstractLoss

    def __init__(self, model: Any, data: Dataset, loss: AbstractLoss | str = mse):
        if not isinstance(data, Dataset):
            raise TypeError(
                f"`data` must be an ntkode.Dataset (e.g. ntkode.datasets.sine()), got {type(data)}."
            )
        if is_concrete(data.x_train):
            check_model_data(model, data)
        self.model = model
        self.data = data
        self.loss = as_loss(loss)

    @classmethod
    def from_flow(cls, problem: Any) -> "GradientDescentProblem":
        """The model, data and loss of a [`ntkode.GradientFlowProblem`][]."""
        from .._core._gradient_flow import GradientFlowProblem

        if not isinstance(problem, GradientFlowProblem):
            raise TypeError(
                f"`problem` must be an ntkode.GradientFlowProblem, got {type(problem).__name__}."
            )
        return cls(problem.model, problem.data, problem.loss)

    def _check_save(self, save):
        pass

    def _range_check(self, run):
        pass  # the network has no grid; a gain-scheduled policy's range is checked by descend

    def _descend(self, policy, steps, save):
        params, static = partition(self.model)
        data, loss = self.data, self.loss
        y = data.y_train
        dtype = y.dtype
        optimiser = optax.inject_hyperparams(optax.sgd, hyperparam_dtype=dtype)(learning_rate=1.0)

        def outputs(p, x):
            return apply(eqx.combine(p, static), x)

        # Step k's parameters go to slot `slot[k]` of the buffer (-1: not kept).
        slot = np.full(steps + 1, -1, np.int32)
        slot[list(save)] = np.arange(len(save), dtype=np.int32)
        slot = jnp.asarray(slot)
        buffer = jax.tree.map(lambda a: jnp.zeros((len(save),) + a.shape, a.dtype), params)

        def keep(buffer, p, k):
            i = slot[k]
            j = jnp.maximum(i, 0)
            return jax.tree.map(lambda b, a: b.at[j].set(jnp.where(i >= 0, a, b[j])), buffer, p)

        def step(carry, k):
            p, state, t, buffer = carry
            u, pullback = jax.vjp(lambda q: outputs(q, data.x_train), p)
            us = outputs(p, data.x_test)
            eta = jnp.asarray(policy(k, t, u, y, loss), dtype)
            (grads,) = pullback(loss.grad(u, y))
            state = state._replace(hyperparams={**state.hyperparams, "learning_rate": eta})
            updates, state = optimiser.update(grads, state, p)
            buffer = keep(buffer, p, k) if save else buffer
            return (optax.apply_updates(p, updates), state, t + eta, buffer), (u, us, t, eta)

        carry = (params, optimiser.init(params), jnp.zeros((), dtype), buffer)
        (pK, _, tK, buffer), (u, us, t, eta) = jax.lax.scan(step, carry, jnp.arange(steps))
        if save:
            buffer = keep(buffer, pK, steps)
        final = (tK, outputs(pK, data.x_train), outputs(pK, data.x_test))
        return finish(
            self,
            t,
            u,
            us,
            eta,
            final,
            params=buffer if save else None,
            save=save,
            kind="network",
        )


__all__ = ["GradientDescentProblem"]
