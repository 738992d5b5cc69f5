r"""Learning-rate policies: the control input $\eta_k$ of full-batch gradient descent.

A policy maps the step $k$ and the state of training (the clock $t_k$, the train outputs
$u_k$, the targets and the loss) to the step size $\eta_k > 0$. Gradient descent on the mean
loss, $u_{k+1} = u_k - \eta_k\,\Theta_k\,\nabla_u L(u_k)$, is stable on a quadratic only while
$\eta_k\,\lambda_{\max}(\Theta_k)/n < 2$, and $\lambda_{\max}$ grows during training
(progressive sharpening; Cohen et al. 2021, "Gradient descent on neural networks typically
occurs at the edge of stability"), so choosing $\eta_k$ is a control problem. In the flow
$d\theta/dt = -\eta(t)\nabla L$ it is not: a time-varying $\eta$ only reparameterises time.

- Open-loop policies read the step only: [`ntkode.policies.Constant`][],
  [`ntkode.policies.PiecewiseConstant`][] and [`ntkode.policies.Cosine`][] (linear warm-up
  and cosine decay, optax's `warmup_cosine_decay_schedule`; Loshchilov & Hutter 2017).
- Gain-scheduled policies read a scheduling variable $s = \sigma(t, u)$ from
  [`ntkode.schedules`][] and are functions of it alone: [`ntkode.policies.GainScheduled`][]
  (values at nodes, interpolated like a kernel grid) and
  [`ntkode.policies.InverseSharpness`][] ($\eta(s) = c\,n / \lambda_{\max}$ read off a kernel
  grid). They are the gain-scheduling controllers of linear-parameter-varying control
  (Rugh & Shamma 2000, "Research on gain scheduling"), with the scheduled NTK as the plant.
- [`ntkode.policies.Switched`][] runs one policy for a number of steps, then another (a
  warm-up).

Every policy is self-contained data (an `eqx.Module`): the same object drives the surrogate
and the real network, and its array fields are the parameters that
[`ntkode.design_policy`][] differentiates.
"""

import abc

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, Int

from .._core._errors import check_finite, check_positive, is_concrete
from .._core._losses import AbstractLoss
from .._scheduled._grid import AbstractKernelGrid, check_grid, check_nodes
from .._scheduled._interp import AbstractInterpolation, Linear, check_interpolation
from .._scheduled._schedule import AbstractSchedule, Time


def _check_positive_values(name: str, values) -> None:
    if not is_concrete(values):
        return
    check_finite(name, values)
    v = np.asarray(values)
    if v.size and np.any(v <= 0):
        flat = v.reshape(-1)
        i = int(np.flatnonzero(flat <= 0)[0])
        raise ValueError(
            f"`{name}` must hold positive learning rates; entry {i} is {float(flat[i])!r}. "
            "A step of size 0 does nothing and a negative one climbs the loss."
        )


def _check_count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"`{name}` must be an integer of at least {minimum}, got {value!r}.")
    return int(value)


def _check_schedule(schedule) -> None:
    if not isinstance(schedule, AbstractSchedule):
        raise TypeError(
            "`schedule` must be a scheduling variable from ntkode.schedules (e.g. "
            f"schedules.LossLevel()), got {type(schedule).__name__}."
        )


class AbstractLearningRatePolicy(eqx.Module):
    r"""A learning-rate policy $\eta_k = \pi(k, t_k, u_k)$.

    `__call__(k, t, u, y, loss)`: the step index (an integer array), the clock
    $t_k = \sum_{j<k}\eta_j$ (the flow time of the $\eta = 1$ gradient flow, the time of a
    grid built from [`ntkode.GradientFlowProblem`][] at `learning_rate=1`), the train
    outputs `(n, k)`, the train targets and the loss. Returns $\eta_k$, a positive scalar.
    """

    @abc.abstractmethod
    def __call__(
        self,
        k: Int[Array, ""],
        t: Float[Array, ""],
        u: Float[Array, "n k"],
        y: Float[Array, "n k"],
        loss: AbstractLoss,
    ) -> Float[Array, ""]:
        """The learning rate of step `k`."""


class Constant(AbstractLearningRatePolicy):
    r"""$\eta_k = \eta$ at every step."""

    value: Float[Array, ""] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        check_positive("value", self.value)

    def __call__(self, k, t, u, y, loss):
        return self.value


class PiecewiseConstant(AbstractLearningRatePolicy):
    r"""$\eta_k = $ `values[j]` for `boundaries[j-1] <= k < boundaries[j]` (steps).

    **Arguments:**

    - `boundaries`: strictly increasing positive step indices where the rate changes.
    - `values`: `len(boundaries) + 1` positive rates.
    """

    boundaries: tuple[int, ...] = eqx.field(static=True, converter=tuple)
    values: Float[Array, " P"] = eqx.field(converter=jnp.asarray)

    def __check_init__(self):
        b = [_check_count("boundaries", _int_or(v), 1) for v in self.boundaries]
        if any(b1 <= b0 for b0, b1 in zip(b, b[1:], strict=False)):
            raise ValueError(f"`boundaries` must be strictly increasing, got {list(b)}.")
        if self.values.shape != (len(b) + 1,):
            raise ValueError(
                f"`values` has shape {self.values.shape}; {len(b)} boundaries need "
                f"{len(b) + 1} values, one per piece."
            )
        _check_positive_values("values", self.values)

    def __call__(self, k, t, u, y, loss):
        edges = jnp.asarray(self.boundaries, jnp.int32)
        return self.values[jnp.searchsorted(edges, k, side="right")]


def _int_or(value):
    """`value` itself when it is an integer (numpy included), else unchanged (for the check)."""
    return int(value) if isinstance(value, np.integer) else value


class Cosine(AbstractLearningRatePolicy):
    r"""Linear warm-up to `peak` over `warmup` steps, then cosine decay to `end` at `steps`.

    optax's `warmup_cosine_decay_schedule` (Loshchilov & Hutter 2017, "SGDR"; Goyal et al.
    2017 for the warm-up): $\eta_k$ rises linearly from `init` at $k = 0$ to `peak` at
    $k = $ `warmup`, then follows $\text{end} + (\text{peak} - \text{end})
    (1 + \cos(\pi (k - w)/(\text{steps} - w)))/2$, reaching `end` at $k = $ `steps`.

    **Arguments:**

    - `peak`: the largest rate (positive).
    - `steps`: the step at which the decay ends (the run's length, usually).
    - `warmup`: warm-up steps, `0 <= warmup < steps` (default 0).
    - `init`: the rate at step 0 when warming up (default `peak / (warmup + 1)`).
    - `end`: the final rate, `>= 0` (default 0: the last step of a `steps`-step run still
      moves, by a small positive rate).
    """

    peak: Float[Array, ""]
    init: Float[Array, ""]
    end: Float[Array, ""]
    steps: int = eqx.field(static=True)
    warmup: int = eqx.field(static=True)

    def __init__(
        self,
        peak: Float[ArrayLike, ""],
        steps: int,
        warmup: int = 0,
        init: Float[ArrayLike, ""] | None = None,
        end: Float[ArrayLike, ""] = 0.0,
    ):
        self.steps = _check_count("steps", steps, 1)
        self.warmup = _check_count("warmup", warmup, 0)
        if self.warmup >= self.steps:
            raise ValueError(
                f"`warmup` = {warmup} must be smaller than `steps` = {steps} (the decay needs "
                "at least one step)."
            )
        self.peak = jnp.asarray(peak)
        self.init = self.peak / (self.warmup + 1) if init is None else jnp.asarray(init)
        self.end = jnp.asarray(end)

    def __check_init__(self):
        check_positive("peak", self.peak)
        check_positive("init", self.init)
        if is_concrete(self.end) and not (np.isfinite(self.end) and float(self.end) >= 0):
            raise ValueError(f"`end` must be finite and non-negative, got {self.end!r}.")

    def __call__(self, k, t, u, y, loss):
        # optax branches on the peak's value, so it gets a unit peak and the rates in its
        # units: the peak stays an array (traced, differentiable), not a Python number.
        unit = optax.warmup_cosine_decay_schedule(
            self.init / self.peak, 1.0, self.warmup, self.steps, self.end / self.peak
        )
        return self.peak * unit(k)


class AbstractScheduledPolicy(AbstractLearningRatePolicy):
    r"""A gain-scheduled policy: $\eta_k = \eta(s_k)$ with $s_k = \sigma(t_k, u_k)$.

    Subclasses hold the scheduling variable, the nodes $s_1 < \dots < s_G$ their values live
    at, and the interpolation between nodes (outside $[s_1, s_G]$ the end values hold, as for
    kernel grids), and implement `at(s)`.
    """

    schedule: eqx.AbstractVar[AbstractSchedule]
    nodes: eqx.AbstractVar[Float[Array, " G"]]
    interpolation: eqx.AbstractVar[AbstractInterpolation]

    @abc.abstractmethod
    def at(self, s: Float[Array, ""]) -> Float[Array, ""]:
        """The learning rate at scheduling value `s`."""

    def __call__(self, k, t, u, y, loss):
        return self.at(self.schedule(t, u, y, loss))


class GainScheduled(AbstractScheduledPolicy):
    r"""$\eta(s) = \sum_g w_g(s)\,\eta_g$: values at the nodes, interpolated.

    With convex weights, $\eta(s)$ lies between its two neighbouring node values, which is
    what lets [`ntkode.design_policy`][] certify it at every $s$.

    **Arguments:**

    - `schedule`: the scheduling variable (e.g. `ntkode.schedules.LossLevel()`).
    - `nodes`: strictly increasing scheduling values, `(G,)`.
    - `values`: the positive learning rates at the nodes, `(G,)`.
    - `interpolation`: weights from [`ntkode.schedules`][] (default `Linear()`).
    """

    schedule: AbstractSchedule
    nodes: Float[Array, " G"] = eqx.field(converter=jnp.asarray)
    values: Float[Array, " G"] = eqx.field(converter=jnp.asarray)
    interpolation: AbstractInterpolation = Linear()

    def __check_init__(self):
        _check_schedule(self.schedule)
        check_interpolation(self.interpolation)
        check_nodes(self.nodes)
        if self.values.shape != self.nodes.shape:
            raise ValueError(
                f"`values` has shape {self.values.shape} but `nodes` {self.nodes.shape}: one "
                "learning rate per node."
            )
        _check_positive_values("values", self.values)

    def at(self, s):
        idx, w = self.interpolation.local(s, self.nodes)
        return jnp.sum(w * self.values[idx])


class InverseSharpness(AbstractScheduledPolicy):
    r"""$\eta(s) = c\,n / \max_{g\ \text{active at}\ s} \lambda_{\max}(\Theta_g)$, read off a grid.

    The classical step-size rule $\eta = c / L$ for an $L$-smooth quadratic with the
    curvature of mean MSE in function space, $\lambda_{\max}(\Theta)/n$. Because
    $\lambda_{\max}$ is convex, $\lambda_{\max}(\sum_g w_g\Theta_g) \le \max_g
    \lambda_{\max}(\Theta_g)$ over the active nodes, so $\eta(s)\,\lambda_{\max}(\Theta(s))/n
    \le c$: with $c < 2$ the policy satisfies the stability limit of the scheduled surrogate
    at every $s$ (its per-step certificate, [`ntkode.step_certificate`][]).

    Build it with [`InverseSharpness.from_grid`][].

    **Fields:** `c`, `schedule`, `nodes`, `lambda_max` (per node, `(G,)`), `n_train`,
    `interpolation` (which nodes are active at $s$).
    """

    c: Float[Array, ""] = eqx.field(converter=jnp.asarray)
    schedule: AbstractSchedule
    nodes: Float[Array, " G"] = eqx.field(converter=jnp.asarray)
    lambda_max: Float[Array, " G"] = eqx.field(converter=jnp.asarray)
    n_train: int = eqx.field(static=True)
    interpolation: AbstractInterpolation = Linear()

    def __check_init__(self):
        check_positive("c", self.c)
        _check_schedule(self.schedule)
        check_interpolation(self.interpolation)
        check_nodes(self.nodes)
        if self.lambda_max.shape != self.nodes.shape:
            raise ValueError(
                f"`lambda_max` has shape {self.lambda_max.shape} but `nodes` {self.nodes.shape}."
            )
        if is_concrete(self.lambda_max) and not np.all(np.asarray(self.lambda_max) > 0):
            raise ValueError(
                "Every node's largest kernel eigenvalue must be positive for c·n/λ_max to be a "
                f"learning rate; got {np.asarray(self.lambda_max).tolist()}."
            )
        _check_count("n_train", self.n_train, 1)

    @classmethod
    def from_grid(
        cls,
        grid: AbstractKernelGrid,
        c: Float[ArrayLike, ""] = 1.9,
        schedule: AbstractSchedule = Time(),
        interpolation: AbstractInterpolation = Linear(),
    ) -> "InverseSharpness":
        """The policy $c\\,n/\\lambda_{\\max}$ with the node spectra of `grid`.

        `schedule` and `interpolation` should be those of the surrogate built on `grid`
        (then `c < 2` certifies it; see the class notes).
        """
        check_grid(grid)
        lam = grid.eigenvalues()[:, -1]
        return cls(c, schedule, grid.nodes, lam, grid.n_train, interpolation)

    def at(self, s):
        idx, w = self.interpolation.local(s, self.nodes)
        lam = jnp.max(jnp.where(w > 0, self.lambda_max[idx], 0.0))
        return self.c * self.n_train / lam


class Switched(AbstractLearningRatePolicy):
    r"""`first` for the steps $k <$ `at`, then `then` (which counts its steps from the switch).

    A warm-up: e.g. `Switched(Constant(0.3), InverseSharpness.from_grid(...), at=20)`. A
    warm-up beyond the stability limit is *not* certified: the surrogate predicts its top
    modes grow, while a real network may instead flatten (a catapult; Lewkowycz et al. 2020,
    "The large learning rate phase of deep learning").
    """

    first: AbstractLearningRatePolicy
    then: AbstractLearningRatePolicy
    at: int = eqx.field(static=True)

    def __check_init__(self):
        for name in ("first", "then"):
            if not isinstance(getattr(self, name), AbstractLearningRatePolicy):
                raise TypeError(
                    f"`{name}` must be a learning-rate policy from ntkode.policies, got "
                    f"{type(getattr(self, name)).__name__}."
                )
        _check_count("at", _int_or(self.at), 1)

    def __call__(self, k, t, u, y, loss):
        a = self.first(k, t, u, y, loss)
        b = self.then(k - self.at, t, u, y, loss)
        return jnp.where(k < self.at, a, b)


def check_policy(policy) -> None:
    if not isinstance(policy, AbstractLearningRatePolicy):
        raise TypeError(
            "`policy` must be a learning-rate policy from ntkode.policies (e.g. "
            f"policies.Constant(0.1)), got {type(policy).__name__}."
        )


def scheduled_parts(policy: AbstractLearningRatePolicy) -> list[AbstractScheduledPolicy]:
    """The gain-scheduled policies inside `policy` (itself, or the parts of a `Switched`)."""
    if isinstance(policy, Switched):
        return scheduled_parts(policy.first) + scheduled_parts(policy.then)
    return [policy] if isinstance(policy, AbstractScheduledPolicy) else []


__all__ = [
    "AbstractLearningRatePolicy",
    "AbstractScheduledPolicy",
    "Constant",
    "Cosine",
    "GainScheduled",
    "InverseSharpness",
    "PiecewiseConstant",
    "Switched",
    "check_policy",
    "scheduled_parts",
]
