"""Scheduling variables and interpolation weights for [`ntkode.ScheduledKernelProblem`][]."""

from ._interp import (
    AbstractInterpolation as AbstractInterpolation,
    Linear as Linear,
    PiecewiseConstant as PiecewiseConstant,
    Smoothstep as Smoothstep,
)
from ._schedule import (
    AbstractSchedule as AbstractSchedule,
    Custom as Custom,
    LossLevel as LossLevel,
    ResidualNorm as ResidualNorm,
    Time as Time,
)
from ._scheduled import ScheduleRangeWarning as ScheduleRangeWarning
