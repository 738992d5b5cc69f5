"""Scheduling variables and interpolation weights for [`ntkode.ScheduledKernelProblem`][]."""

from ._scheduled._interp import (
    AbstractInterpolation as AbstractInterpolation,
    AbstractPiecewiseConstant as AbstractPiecewiseConstant,
    Linear as Linear,
    PiecewiseConstant as PiecewiseConstant,
    Smoothstep as Smoothstep,
)
from ._scheduled._problem import ScheduleRangeWarning as ScheduleRangeWarning
from ._scheduled._schedule import (
    AbstractNormSchedule as AbstractNormSchedule,
    AbstractSchedule as AbstractSchedule,
    Custom as Custom,
    LossLevel as LossLevel,
    ResidualNorm as ResidualNorm,
    Time as Time,
)
