r"""Full-batch gradient descent under a learning-rate policy: the run and its record.

[`ntkode.descend`][] is the discrete-time sibling of [`ntkode.solve`][]: gradient descent has
no solver, tolerances or save times, only a policy and a number of steps. It runs either
plant,

- [`ntkode.ScheduledDescentProblem`][]: the scheduled-NTK surrogate in discrete time,
  $u_{k+1} = u_k - \eta_k\,\Theta(s_k)\,\nabla_u L(u_k)$
  (`ntkode/_control/_surrogate.py`);
- [`ntkode.GradientDescentProblem`][]: the real network trained by optax gradient descent,
  $\theta_{k+1} = \theta_k - \eta_k \nabla_\theta L(\theta_k)$ (`ntkode/_control/_network.py`),

with the same policy object, and returns a [`ntkode.Descent`][] holding every step.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from .._core._data import Dataset
from .._core._errors import is_concrete
from .._core._losses import AbstractLoss
from .._core._results import RESULTS, is_successful, message as result_message
from .._scheduled._problem import _warn_outside
from ._policy import AbstractLearningRatePolicy, check_policy, scheduled_parts


class Descent(eqx.Module):
    r"""A gradient-descent run: the state at every step and the learning rates used.

    **Fields:**

    - `time`: the clock $t_k = \sum_{j<k}\eta_j$ at steps $k = 0, \dots, K$, `(K+1,)`.
    - `train`, `test`: outputs at every step, `(K+1, n, k)` and `(K+1, m, k)`.
    - `eta`: the learning rate of each step, `(K,)` (step $k$ maps state $k$ to $k+1$).
    - `params`: the network's parameters at `saved_steps` (leading axis), or `None`.
    - `saved_steps`: the steps whose parameters were kept.
    - `result`: `RESULTS.successful`, or `RESULTS.diverged` when the outputs became
      non-finite (`sol.diverged`).
    - `y_train`, `y_test`, `loss`: what the losses are measured against.
    """

    time: Float[Array, " K+1"]
    train: Float[Array, "K+1 n k"]
    test: Float[Array, "K+1 m k"]
    eta: Float[Array, " K"]
    params: PyTree[Array] | None
    result: RESULTS
    y_train: Float[Array, "n k"]
    y_test: Float[Array, "m k"]
    loss: AbstractLoss
    saved_steps: tuple[int, ...] = eqx.field(static=True, default=())
    kind: str = eqx.field(static=True, default="")

    @property
    def steps(self) -> int:
        """$K$, the number of steps taken."""
        return self.eta.shape[-1]

    @property
    def train_loss(self) -> Float[Array, " K+1"]:
        """The train loss at every step."""
        return jax.vmap(self.loss, in_axes=(0, None))(self.train, self.y_train)

    @property
    def test_loss(self) -> Float[Array, " K+1"]:
        """The test loss at every step (NaN if the test split is empty)."""
        if self.y_test.shape[0] == 0:
            return jnp.full(self.time.shape, jnp.nan)
        return jax.vmap(self.loss, in_axes=(0, None))(self.test, self.y_test)

    @property
    def success(self) -> bool:
        return bool(is_successful(self.result))

    @property
    def diverged(self) -> bool:
        """Whether the outputs became non-finite."""
        return not self.success

    @property
    def message(self) -> str:
        return result_message(self.result)

    def steps_to(self, target: float) -> int | None:
        """The first step $k$ with train loss $\\le$ `target`, or `None` if never reached.

        `target` must be non-negative and below the loss at step 0.
        """
        losses = np.asarray(self.train_loss)
        check_target(target, float(losses[0]))
        hit = np.flatnonzero(losses <= target)
        return int(hit[0]) if hit.size else None

    def summary(self, target: float | None = None) -> dict[str, Any]:
        """Plain numbers: final losses, divergence, steps to `target` (if given), the rates."""
        out = {
            "kind": self.kind,
            "steps": self.steps,
            "final_train_loss": float(self.train_loss[-1]),
            "final_test_loss": float(self.test_loss[-1]),
            "diverged": self.diverged,
            "eta": np.asarray(self.eta).tolist(),
        }
        if target is not None:
            out["steps_to_target"] = self.steps_to(target)
        return out


def check_target(target: Any, loss0: float) -> float:
    """A target train loss must be finite, non-negative and below the loss at step 0."""
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise TypeError(f"`target` must be a number (a train loss), got {target!r}.") from None
    if not np.isfinite(value) or value < 0:
        raise ValueError(
            f"`target` = {target!r} is not a reachable train loss: losses are non-negative; "
            "pass a finite value >= 0."
        )
    if value >= loss0:
        raise ValueError(
            f"`target` = {value:.6g} is already reached at step 0 (the initial train loss is "
            f"{loss0:.6g}); pass a target below it."
        )
    return value


def check_steps(steps: Any) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"`steps` (K) must be a positive integer, got {steps!r}.")
    return int(steps)


class AbstractDescentProblem(eqx.Module):
    """A plant that full-batch gradient descent can run: data, a loss, a starting state."""

    data: eqx.AbstractVar[Dataset]
    loss: eqx.AbstractVar[AbstractLoss]

    @abc.abstractmethod
    def _descend(
        self, policy: AbstractLearningRatePolicy, steps: int, save: tuple[int, ...]
    ) -> Descent:
        """`steps` steps under `policy`, keeping parameters at the steps `save`."""

    @abc.abstractmethod
    def _check_save(self, save: tuple[int, ...]) -> None:
        """Refuse `save_params` where there are no parameters."""

    @abc.abstractmethod
    def _range_check(self, run: Descent) -> None:
        """Warn (once per range) where the plant's scheduling variable left its nodes."""


@eqx.filter_jit
def _descend_jit(problem, policy, steps, save):
    return problem._descend(policy, steps, save)


def descend(
    problem: AbstractDescentProblem,
    policy: AbstractLearningRatePolicy,
    steps: int,
    *,
    save_params: tuple[int, ...] | list[int] = (),
) -> Descent:
    r"""Run `steps` steps of full-batch gradient descent on `problem` under `policy`.

    **Arguments:**

    - `problem`: a [`ntkode.ScheduledDescentProblem`][] (the surrogate) or a
      [`ntkode.GradientDescentProblem`][] (the network).
    - `policy`: a learning-rate policy from [`ntkode.policies`][].
    - `steps`: $K \ge 1$.
    - `save_params`: steps $0 \le k \le K$ at which to keep the network's parameters (for
      kernel grids: [`ntkode.KernelGrid.from_params`][]); network only.

    **Returns:** a [`ntkode.Descent`][]. A run whose outputs became non-finite has
    `result = RESULTS.diverged`. A policy that gives a non-positive or non-finite rate
    while the state is finite is refused with the step and the value. Where the scheduling
    variable of the surrogate's grid or of a gain-scheduled policy leaves its nodes, a
    `ntkode.schedules.ScheduleRangeWarning` is issued once per range (the end values were
    used), as for the continuous surrogate.
    """
    if not isinstance(problem, AbstractDescentProblem):
        raise TypeError(
            "`problem` must be an ntkode.ScheduledDescentProblem or ntkode.GradientDescentProblem,"
            f" got {type(problem).__name__}."
        )
    check_policy(policy)
    steps = check_steps(steps)
    save = tuple(sorted({int(k) for k in save_params}))
    if save and (save[0] < 0 or save[-1] > steps):
        raise ValueError(f"`save_params` steps must lie in [0, {steps}], got {list(save_params)}.")
    problem._check_save(save)
    run = _descend_jit(problem, policy, steps, save)
    if is_concrete(run.eta):
        _check_rates(run)
        problem._range_check(run)
        for part in scheduled_parts(policy):
            values = scheduled_values(part.schedule, run)
            warn_outside(values, part.nodes)
    return run


def finish(problem, time, u, us, eta, final, *, params=None, save=(), kind=""):
    """A `Descent` from stacked per-step outputs and the state after the last step."""
    (tK, uK, usK) = final
    train = jnp.concatenate([u, uK[None]])
    ok = jnp.all(jnp.isfinite(train))
    return Descent(
        time=jnp.concatenate([time, tK[None]]),
        train=train,
        test=jnp.concatenate([us, usK[None]]),
        eta=eta,
        params=params,
        result=RESULTS.where(ok, RESULTS.successful, RESULTS.diverged),
        y_train=problem.data.y_train,
        y_test=problem.data.y_test,
        loss=problem.loss,
        saved_steps=save,
        kind=kind,
    )


def _check_rates(run: Descent) -> None:
    eta = np.asarray(run.eta)
    finite_state = np.all(np.isfinite(np.asarray(run.train[:-1]).reshape(run.steps, -1)), axis=1)
    bad = finite_state & ~(np.isfinite(eta) & (eta > 0))
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"The policy gave the learning rate {float(eta[k])!r} at step {k} while the state was "
            "finite; learning rates must be positive and finite (check the policy's values, "
            "and that a cosine schedule's `steps` covers the run)."
        )


def scheduled_values(schedule, run: Descent) -> Float[Array, " K+1"]:
    """The scheduling variable at every step of `run`."""
    return jax.vmap(lambda t, u: schedule(t, u, run.y_train, run.loss))(run.time, run.train)


def warn_outside(values, nodes) -> None:
    """The continuous surrogate's once-per-range warning, on the finite `values`.

    A single node (a frozen kernel, a constant value) covers every scheduling value.
    """
    if np.size(nodes) < 2:
        return
    v = np.asarray(values)
    v = v[np.isfinite(v)]
    if v.size:
        _warn_outside(v.min(), v.max(), np.asarray(nodes)[0], np.asarray(nodes)[-1])


__all__ = [
    "AbstractDescentProblem",
    "Descent",
    "check_steps",
    "check_target",
    "descend",
    "finish",
    "scheduled_values",
    "warn_outside",
]
