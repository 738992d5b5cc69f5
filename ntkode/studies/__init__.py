"""The studies behind the `ntkode` command line: each runs the numerics of `ntkode` on a
reference problem and writes a table, figures and a machine-readable `results.json`.

Plotting (matplotlib), scikit-learn's data sets and progress bars are used here only; install
them with `pip install "ntkode[studies]"`.
"""

from ._closure._study import ClosureCNN as ClosureCNN, closure_study as closure_study, iou as iou
from ._compare._classification import classification_study as classification_study
from ._compare._study import compare_study as compare_study
from ._mkl._study import mkl_compare as mkl_compare, mkl_study as mkl_study
from ._problems import (
    DigitsCNN as DigitsCNN,
    digits_data as digits_data,
    digits_problem as digits_problem,
    sine_problem as sine_problem,
)
from ._transfer import transfer_study as transfer_study
from ._widths._study import width_run as width_run, width_study as width_study
