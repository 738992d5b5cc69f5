"""Transfer: a kernel grid built on one training run, used to predict other runs.

(a) the same run's test outputs, (b) a run with another learning rate, (c) a run on other
targets. Time schedules follow the reference run's clock; state schedules (the loss level)
follow the state, which is what should transfer across learning rates. Gradient flow with
learning rate $\\eta$ is the $\\eta = 1$ flow with time rescaled by $\\eta$, so in case (b) a
loss-scheduled grid sees exactly the states it was built on, while a time-scheduled one
applies them at the wrong times.
"""

from .._core._gradient_flow import GradientFlowProblem
from .._core._model import apply
from ._grid import AbstractKernelGrid
from ._interp import AbstractInterpolation, Linear
from ._problem import ScheduledKernelProblem
from ._schedule import AbstractSchedule, Time


def surrogate_for(
    grid: AbstractKernelGrid,
    problem: GradientFlowProblem,
    schedule: AbstractSchedule = Time(),
    interpolation: AbstractInterpolation = Linear(),
) -> ScheduledKernelProblem:
    """The scheduled surrogate of a true-flow `problem` using `grid` (built on any run).

    Data, loss, time span, learning rate and initial outputs come from `problem` (the
    initial outputs are its model's outputs), the kernels from `grid`.

    **Arguments:**

    - `grid`: a kernel grid ([`ntkode.KernelGrid`][] or [`ntkode.LowRankKernelGrid`][]) on
      the training inputs of `problem`.
    - `problem`: the [`ntkode.GradientFlowProblem`][] whose run the surrogate predicts.
    - `schedule`, `interpolation`: as in [`ntkode.ScheduledKernelProblem`][].

    **Returns:** a [`ntkode.ScheduledKernelProblem`][].
    """
    if not isinstance(problem, GradientFlowProblem):
        raise TypeError(
            f"`problem` must be an ntkode.GradientFlowProblem, got {type(problem).__name__}."
        )
    model, data = problem.model, problem.data
    return ScheduledKernelProblem(
        grid,
        data,
        schedule,
        interpolation,
        problem.loss,
        problem.tspan,
        problem.learning_rate,
        u0_train=apply(model, data.x_train),
        u0_test=apply(model, data.x_test),
    )


__all__ = ["surrogate_for"]
