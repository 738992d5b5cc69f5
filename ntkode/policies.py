"""Learning-rate policies for [`ntkode.descend`][]: open-loop, gain-scheduled, switched."""

from ._control._policy import (
    AbstractLearningRatePolicy as AbstractLearningRatePolicy,
    AbstractScheduledPolicy as AbstractScheduledPolicy,
    Constant as Constant,
    Cosine as Cosine,
    GainScheduled as GainScheduled,
    InverseSharpness as InverseSharpness,
    PiecewiseConstant as PiecewiseConstant,
    Switched as Switched,
)
