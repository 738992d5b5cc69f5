"""Data sets: synthetic regression, the Jordan-curve closure task, scikit-learn's small sets."""

from .._data import Dataset as Dataset
from ._closure import closure as closure
from ._sine import sine as sine
