"""Data sets: synthetic regression, the Jordan-curve closure task, scikit-learn's small sets."""

from .._core._data import Dataset as Dataset
from ._closure import closure as closure
from ._sine import sine as sine
from ._uci import (
    breast_cancer as breast_cancer,
    diabetes as diabetes,
    digits as digits,
    iris as iris,
    uci as uci,
    wine as wine,
)
