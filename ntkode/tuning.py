"""Node kinds for [`ntkode.tune_grid`][]: what moves when a scheduled-NTK grid is tuned."""

from ._tuning._nodes import (
    AbstractNodes as AbstractNodes,
    ScheduleNodes as ScheduleNodes,
    TimeNodes as TimeNodes,
)
