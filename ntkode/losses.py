"""Losses: mean squared error and softmax cross-entropy (weight space and function space)."""

from ._core._losses import (
    MSE as MSE,
    AbstractLoss as AbstractLoss,
    CrossEntropy as CrossEntropy,
    as_loss as as_loss,
    cross_entropy as cross_entropy,
    mse as mse,
)
