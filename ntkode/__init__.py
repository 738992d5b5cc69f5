"""ntkode: neural-network training as an ODE, with (scheduled) neural-tangent-kernel surrogates.

The whole public API is re-exported here.
"""

import importlib.metadata

from . import datasets as datasets, losses as losses
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
from ._solution import Outputs as Outputs, RESULTS as RESULTS, Solution as Solution
from ._solve import EnsembleProblem as EnsembleProblem, solve as solve

# -- fast NTK engine (issue 3) --

# -- scheduled kernels (issue 4) --

# -- grid tuning (issue 5) --

# -- infinite width (issue 6) --
from ._activations import (
    AbstractActivation as AbstractActivation,
    Elementwise as Elementwise,
    Erf as Erf,
    Relu as Relu,
)
from ._infinite import InfiniteMLP as InfiniteMLP, Kernels as Kernels
from ._nets import MLP as MLP, mlp_ntk as mlp_ntk
from ._predict import (
    infinite_width_problem as infinite_width_problem,
    predict_infinite as predict_infinite,
    predict_mse as predict_mse,
)
from ._widths import width_run as width_run, width_study as width_study

# -- path kernels and closure (issue 7) --

# -- gated ReLU and MKL (issue 8) --

# -- studies --

try:
    __version__ = importlib.metadata.version("ntkode")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
