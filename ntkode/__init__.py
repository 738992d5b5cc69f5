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

# -- path kernels and closure (issue 7) --

# -- gated ReLU and MKL (issue 8) --
from ._gated import GatedReLU as GatedReLU, gated_relu_ntk_infinite as gated_relu_ntk_infinite
from ._mkl import (
    MaskedKernels as MaskedKernels,
    check_simplex as check_simplex,
    mkl_objective as mkl_objective,
    ntk_weights as ntk_weights,
)
from ._mkl_solve import (
    GroupLassoSolution as GroupLassoSolution,
    MKLSolution as MKLSolution,
    group_lasso as group_lasso,
    kernel_ridge as kernel_ridge,
    optimal_mkl as optimal_mkl,
)
from ._mkl_study import mkl_compare as mkl_compare, mkl_study as mkl_study

# -- studies --

try:
    __version__ = importlib.metadata.version("ntkode")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+unknown"
