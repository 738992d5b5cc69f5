"""ntkode: neural-network training as an ODE, with (scheduled) neural-tangent-kernel surrogates.

The whole public API is re-exported here.
"""

import importlib.metadata

from . import datasets as datasets, losses as losses
from ._compare import (
    Comparison as Comparison,
    compare as compare,
    trajectory_errors as trajectory_errors,
)
from ._data import Dataset as Dataset
from ._ntk import ntk as ntk
from ._problems import (
    AbstractProblem as AbstractProblem,
    GradientFlowField as GradientFlowField,
    GradientFlowProblem as GradientFlowProblem,
    KernelFlowField as KernelFlowField,
    KernelFlowProblem as KernelFlowProblem,
    remake as remake,
)
from ._reference_problems import sine_problem as sine_problem
from ._solution import RESULTS as RESULTS, Outputs as Outputs, Solution as Solution
from ._solve import EnsembleProblem as EnsembleProblem, solve as solve, timed_solve as timed_solve

# -- fast NTK engine (issue 3) --
# -- scheduled kernels (issue 4) --
from . import schedules as schedules, transfer as transfer
from ._certify import Certificate as Certificate, certify as certify
from ._grid import KernelGrid as KernelGrid
from ._scheduled import ScheduledKernelProblem as ScheduledKernelProblem

# -- grid tuning (issue 5) --
from ._tuning import TuneResult as TuneResult, tune_grid as tune_grid
# -- infinite width (issue 6) --
# -- path kernels and closure (issue 7) --
# -- gated ReLU and MKL (issue 8) --
# -- studies --
from ._study import compare_study as compare_study

try:
    __version__ = importlib.metadata.version("ntkode")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
