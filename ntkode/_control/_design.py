r"""Designing a gain-scheduled learning rate on the surrogate, by gradients through $K$ steps.

The policy is [`ntkode.policies.GainScheduled`][] on the surrogate's own nodes, schedule and
interpolation; its node values are moved by an optax optimiser on the gradient (`jax.grad`
through the $K$ steps of [`ntkode.ScheduledDescentProblem`][]) of

- $\log L_K$, the train loss after $K$ steps (`target=None`), or
- a smooth count of the steps spent above a target loss,
  $\sum_{k=0}^{K} \operatorname{sigmoid}\bigl((\log L_k - \log L_*)/\tau\bigr)$, whose
  value tends to the number of steps to reach $L_*$ as $\tau \to 0$ (for a loss that
  falls monotonically).

**Certified designs** (`certified=True`) are parameterised so that the stability limit holds
at every scheduling value, not just along one trajectory. The policy holds its value over
each node interval (`PiecewiseConstant("left")`: $\eta(s) = \eta_g$ on $[s_g, s_{g+1})$),
with $\eta_g = c_{\max}\,n\,\operatorname{sigmoid}(z_g)/\max(\lambda_{\max,g},
\lambda_{\max,g+1})$ and $c_{\max} < 2$. On that interval the surrogate's active kernels are
among $\Theta_g, \Theta_{g+1}$ (every interpolation of [`ntkode.schedules`][] is local to the
interval), so $\eta(s)\,\lambda_{\max,g'}/n < c_{\max}$ at every active node $g'$: every
step is stable whatever path the state takes, and contracts when the kernels are positive
definite ([`ntkode.step_certificate`][]). At the cap this is
[`ntkode.policies.InverseSharpness`][] with $c = c_{\max}$; the design can only trade speed
against the slowly decaying top modes below it. **Uncertified designs**
(`certified=False`) have the same form with $\eta_g = e^{z_g}$ free: the surrogate may then
step beyond its stability limit, and nothing guarantees what it predicts there.
"""

import time
from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from .._core._results import RESULTS, is_successful, message as result_message
from .._scheduled._certify import Certificate, certify
from .._scheduled._interp import PiecewiseConstant
from .._tuning._run import run_optax
from ._descent import check_steps, check_target
from ._policy import GainScheduled
from ._surrogate import ScheduledDescentProblem

#: The designed policies hold their value over each node interval (see the module notes).
HOLD = PiecewiseConstant("left")


class _Design(eqx.Module):
    """`z ↦` the design objective of the gain-scheduled policy with node logits `z`."""

    problem: ScheduledDescentProblem
    cap: Float[Array, " G"]  # c_max·n/max(λ_g, λ_g+1) (certified), unused otherwise
    log_target: Float[Array, ""] | None
    temperature: float = eqx.field(static=True)
    steps: int = eqx.field(static=True)
    certified: bool = eqx.field(static=True)

    def positions(self, z: Float[Array, " G"]) -> Float[Array, " G"]:
        """The learning rates at the nodes (what the optimiser's log reports)."""
        return self.cap * jax.nn.sigmoid(z) if self.certified else jnp.exp(z)

    def logits(self, values: Float[Array, " G"]) -> Float[Array, " G"]:
        if not self.certified:
            return jnp.log(values)
        p = jnp.clip(values / self.cap, 1e-4, 1 - 1e-4)
        return jnp.log(p) - jnp.log1p(-p)

    def policy(self, z: Float[Array, " G"]) -> GainScheduled:
        p = self.problem
        return GainScheduled(p.schedule, p.grid.nodes, self.positions(z), HOLD)

    def value(self, z, args=None):
        run = self.problem._descend(self.policy(z), self.steps, ())
        losses = run.train_loss
        if self.log_target is None:
            return jnp.log(losses[-1])
        # A diverging surrogate counts as above the target at every step it is non-finite.
        logs = jnp.where(jnp.isfinite(losses), jnp.log(losses), jnp.inf)
        return jnp.sum(jax.nn.sigmoid((logs - self.log_target) / self.temperature))


class PolicyDesign(eqx.Module):
    """The outcome of [`ntkode.design_policy`][].

    **Fields:**

    - `policy`: the designed [`ntkode.policies.GainScheduled`][] (the best iterate).
    - `initial_policy`: where the design started.
    - `certified`: whether the policy satisfies the stability limit at every scheduling
      value by construction (see `ntkode/_control/_design.py`).
    - `objective`, `initial_objective`, `history`: the design objective at the best, initial
      and every evaluated iterate.
    - `best_step`, `num_steps`: the iterate returned and the optimiser steps taken.
    - `result`, `detail`: a [`ntkode.RESULTS`][] item and a sentence (as for
      [`ntkode.tune_grid`][]); `seconds`: wall time.
    - `steps`, `target`: the horizon $K$ and the target loss (or `None`) designed for.
    """

    policy: GainScheduled
    initial_policy: GainScheduled
    certified: bool
    objective: float
    initial_objective: float
    history: np.ndarray
    best_step: int
    num_steps: int
    result: RESULTS
    detail: str
    seconds: float
    steps: int
    target: float | None

    @property
    def success(self) -> bool:
        return bool(is_successful(self.result))

    @property
    def message(self) -> str:
        return f"{result_message(self.result)} {self.detail}"


def interval_cap(
    problem: ScheduledDescentProblem, c_max: float, spectra: Certificate | None = None
) -> Float[Array, " G"]:
    r"""$c_{\max}\,n/\max(\lambda_{\max,g}, \lambda_{\max,g+1})$, the largest certified rate
    held over each node interval ($c_{\max}\,n/\lambda_{\max,G}$ beyond the last node).

    `spectra`: the grid's node spectra (`ntkode.certify(problem.grid)`), computed when `None`."""
    if spectra is None:
        spectra = certify(problem.grid, 1.0, problem.interpolation)
    lam = spectra.lambda_max
    worst = jnp.maximum(lam, jnp.concatenate([lam[1:], lam[-1:]]))
    return c_max * problem.data.n_train / worst


def design_policy(
    problem: ScheduledDescentProblem,
    steps: int,
    *,
    target: float | None = None,
    certified: bool = True,
    c_max: float = 1.9,
    init: GainScheduled | None = None,
    optimiser: optax.GradientTransformation | None = None,
    iterations: int = 100,
    temperature: float = 0.1,
    spectra: Certificate | None = None,
    log: Callable[[str], Any] = lambda s: None,
) -> PolicyDesign:
    r"""Design a gain-scheduled learning rate on the surrogate `problem` for `steps` steps.

    **Arguments:**

    - `problem`: a [`ntkode.ScheduledDescentProblem`][]; the policy lives on its nodes and
      reads its schedule.
    - `steps`: the horizon $K \ge 1$.
    - `target`: a train loss to reach in as few steps as possible (the smooth step count);
      `None` minimises $\log L_K$.
    - `certified`: keep the stability limit at every scheduling value (see the module
      notes), with $\eta\lambda_{\max}/n \le$ `c_max` $< 2$; `False` frees the values.
    - `init`: the starting policy, a `GainScheduled` on the problem's nodes (default: 0.95
      of the certified cap on each interval).
    - `optimiser`: an optax transformation on the node logits (default `optax.adam(0.05)`).
    - `iterations`: optimiser steps; `temperature`: $\tau$ of the smooth step count.
    - `spectra`: the grid's node spectra (`ntkode.certify(problem.grid)`), to reuse them;
      computed when `None`.
    - `log`: called with one line per iterate.

    **Returns:** a [`ntkode.PolicyDesign`][]; the best iterate is returned, so its
    objective never exceeds the initial one.
    """
    if not isinstance(problem, ScheduledDescentProblem):
        raise TypeError(
            f"`problem` must be an ntkode.ScheduledDescentProblem, got {type(problem).__name__}."
        )
    steps = check_steps(steps)
    if certified and problem.interpolation.support > 2:
        raise ValueError(
            "A certified design needs an interpolation local to each node interval (support "
            f"2, as all of ntkode.schedules); this one has support {problem.interpolation.support}."
        )
    if certified and not 0 < c_max < 2:
        raise ValueError(
            f"`c_max` = {c_max!r} must lie in (0, 2): the stability limit of gradient descent "
            "is η·λ_max/n < 2."
        )
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"`iterations` must be a non-negative integer, got {iterations!r}.")
    if not temperature > 0:
        raise ValueError(f"`temperature` must be positive, got {temperature!r}.")
    dtype = problem.u0_train.dtype
    if target is not None:
        loss0 = float(problem.loss(problem.u0_train, problem.data.y_train))
        target = check_target(target, loss0)
        if target == 0:
            raise ValueError("`target` = 0 has no logarithm: pass a positive target loss.")
    cap = interval_cap(problem, c_max, spectra).astype(dtype)
    design = _Design(
        # The objective reads the train loss only: the test kernels would be carried through
        # every step of the forward and reverse passes for nothing.
        problem=problem.train_only(),
        cap=cap,
        log_target=None if target is None else jnp.log(jnp.asarray(target, dtype)),
        temperature=float(temperature),
        steps=steps,
        certified=bool(certified),
    )
    if init is None:
        values = 0.95 * cap
    else:
        if not isinstance(init, GainScheduled) or init.nodes.shape != problem.grid.nodes.shape:
            raise ValueError(
                "`init` must be an ntkode.policies.GainScheduled on the problem's nodes "
                f"({problem.grid.size} of them)."
            )
        values = init.values.astype(dtype)
    z0 = design.logits(values)
    optimiser = optax.adam(0.05) if optimiser is None else optimiser
    start = time.perf_counter()
    run = run_optax(design, z0, optimiser, diffrax.RecursiveCheckpointAdjoint(), iterations, log)
    seconds = time.perf_counter() - start
    history = np.asarray(run.history)
    return PolicyDesign(
        policy=design.policy(run.best_z),
        initial_policy=design.policy(z0),
        certified=bool(certified),
        objective=float(history[run.best_step]),
        initial_objective=float(history[0]),
        history=history,
        best_step=run.best_step,
        num_steps=run.num_steps,
        result=run.result,
        detail=run.detail,
        seconds=seconds,
        steps=steps,
        target=target,
    )


__all__ = ["PolicyDesign", "design_policy", "interval_cap"]
