"""Empirical neural tangent kernels."""

from ._api import ntk as ntk
from ._reference import ntk_reference as ntk_reference
