r"""`ScheduledDescentProblem`: the scheduled-NTK surrogate in discrete time, a plant model.

Full-batch gradient descent seen in function space is
$u_{k+1} = u_k - \eta_k\,\Theta_k\,\nabla_u L(u_k)$ with the network's NTK $\Theta_k$ at step
$k$. The surrogate replaces $\Theta_k$ by the scheduled kernel
$\Theta(s_k) = \sum_g w_g(s_k)\,\Theta_g$ of a kernel grid, $s_k = \sigma(t_k, u_k)$: a
discrete-time linear-parameter-varying model. It is the explicit-Euler discretisation of
[`ntkode.ScheduledKernelProblem`][]'s flow with steps $\eta_k$ (the same vector field,
`ScheduledKernelField`), so:

- with one kernel it is exactly the linearised network $f(\theta_0) + J_0(\theta - \theta_0)$
  trained by gradient descent (Lee et al. 2019): the linearised model's outputs move by
  $-\eta J_0 J_0^\top \nabla_u L$;
- with small steps it approaches the continuous surrogate, at first order in the step;
- with large steps it shows what the flow cannot: for MSE each eigen-direction of
  $\Theta(s_k)$ is multiplied by $1 - \eta_k\lambda/n$, stable only while
  $\eta_k\lambda_{\max}/n < 2$.

The loss is any of `ntkode.losses` (the update uses its closed-form gradient); the
per-step certificate of [`ntkode.step_certificate`][] is for mean MSE.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._core._data import Dataset
from .._core._errors import check_finite
from .._core._losses import AbstractLoss, as_loss, mse
from .._core._model import apply
from .._core._problem import initial_outputs
from .._scheduled._grid import AbstractKernelGrid
from .._scheduled._interp import AbstractInterpolation, Linear
from .._scheduled._problem import ScheduledKernelField, ScheduledKernelProblem
from .._scheduled._schedule import AbstractSchedule, Time
from ._descent import AbstractDescentProblem, finish, scheduled_values, warn_outside
from ._network import GradientDescentProblem


def without_test(data: Dataset) -> Dataset:
    """`data` with an empty test split (the train split and its name unchanged)."""
    return eqx.tree_at(lambda d: (d.x_test, d.y_test), data, (data.x_train[:0], data.y_train[:0]))


class ScheduledDescentProblem(AbstractDescentProblem):
    r"""Gradient descent on the scheduled NTK: $u_{k+1} = u_k - \eta_k\Theta(s_k)\nabla_u L$.

    **Arguments** (as [`ntkode.ScheduledKernelProblem`][], without a time span or learning
    rate: [`ntkode.descend`][] takes the policy and the number of steps):

    - `grid`: a kernel grid ([`ntkode.KernelGrid`][] or [`ntkode.LowRankKernelGrid`][]).
    - `data`: a [`ntkode.Dataset`][] matching the grid.
    - `schedule`: the scheduling variable (default `Time()`, the clock
      $t_k = \sum_{j<k}\eta_j$; see [`ntkode.policies.AbstractLearningRatePolicy`][]).
    - `interpolation`: convex weights (default `Linear()`).
    - `loss`: default mean MSE.
    - `u0_train`, `u0_test`: outputs at step 0; default the grid's remembered ones, else
      zeros.

    Use [`ScheduledDescentProblem.from_problem`][] for the surrogate of a network's run.
    """

    grid: AbstractKernelGrid
    schedule: AbstractSchedule
    interpolation: AbstractInterpolation
    u0_train: Float[Array, "n k"]
    u0_test: Float[Array, "m k"]
    data: Dataset
    loss: AbstractLoss

    def __init__(
        self,
        grid: AbstractKernelGrid,
        data: Dataset,
        schedule: AbstractSchedule = Time(),
        interpolation: AbstractInterpolation = Linear(),
        loss: AbstractLoss | str = mse,
        u0_train: Float[ArrayLike, "n k"] | None = None,
        u0_test: Float[ArrayLike, "m k"] | None = None,
    ):
        # The continuous surrogate checks the grid against the data, the schedule and the
        # interpolation, and fills the defaults: one set of rules for both.
        flow = ScheduledKernelProblem(
            grid, data, schedule, interpolation, as_loss(loss), u0_train=u0_train, u0_test=u0_test
        )
        self.grid = flow.grid
        self.schedule = flow.schedule
        self.interpolation = flow.interpolation
        self.u0_train = flow.u0_train
        self.u0_test = flow.u0_test
        self.data = flow.data
        self.loss = flow.loss

    @classmethod
    def from_problem(
        cls,
        grid: AbstractKernelGrid,
        problem: GradientDescentProblem,
        schedule: AbstractSchedule = Time(),
        interpolation: AbstractInterpolation = Linear(),
    ) -> "ScheduledDescentProblem":
        """The surrogate of a network plant (a [`ntkode.GradientDescentProblem`][]): its
        data, loss and initial outputs, with the kernels of `grid`."""
        if not isinstance(problem, GradientDescentProblem):
            raise TypeError(
                "`problem` must be an ntkode.GradientDescentProblem (the network whose data, "
                f"loss and initial outputs the surrogate takes), got {type(problem).__name__}."
            )
        model = problem.model
        data = problem.data
        u0 = apply(model, data.x_train)
        check_finite("the network's initial outputs", u0)
        return cls(
            grid,
            data,
            schedule,
            interpolation,
            problem.loss,
            u0_train=u0,
            u0_test=initial_outputs(
                "u0_test", apply(model, data.x_test), (data.n_test, data.n_outputs), u0.dtype
            ),
        )

    def train_only(self) -> "ScheduledDescentProblem":
        """The same surrogate without its test split: each step then multiplies the train
        kernels only (for designs and sweeps that read the train loss alone; the study's
        digits problem has 5.6 test images per training image, and as many times larger test
        kernels)."""
        return ScheduledDescentProblem(
            self.grid.with_zero_test(0),
            without_test(self.data),
            self.schedule,
            self.interpolation,
            self.loss,
            u0_train=self.u0_train,
        )

    @property
    def vector_field(self) -> ScheduledKernelField:
        return ScheduledKernelField(
            self.grid, self.schedule, self.interpolation, self.data.y_train, self.loss
        )

    def _check_save(self, save):
        if save:
            raise ValueError(
                "`save_params` applies to ntkode.GradientDescentProblem (the network); the "
                "surrogate has no parameters."
            )

    def _descend(self, policy, steps, save):
        field = self.vector_field
        y, dtype = self.data.y_train, self.u0_train.dtype

        def step(carry, k):
            u, us, t = carry
            eta = jnp.asarray(policy(k, t, u, y, self.loss), dtype)
            # One explicit-Euler step of the continuous surrogate's field, of length η_k.
            du, dus = field(t, (u, us), eta)
            return (u + du, us + dus, t + eta), (u, us, t, eta)

        t0 = jnp.zeros((), dtype)
        # Rematerialised: reverse mode (policy design) would otherwise keep each step's
        # gathered kernels, (support, n·k, n·k) per step.
        final, (u, us, t, eta) = jax.lax.scan(
            jax.checkpoint(step), (self.u0_train, self.u0_test, t0), jnp.arange(steps)
        )
        uK, usK, tK = final
        return finish(self, t, u, us, eta, (tK, uK, usK), kind="surrogate")

    def _range_check(self, run):
        warn_outside(scheduled_values(self.schedule, run), self.grid.nodes)


__all__ = ["ScheduledDescentProblem", "without_test"]
