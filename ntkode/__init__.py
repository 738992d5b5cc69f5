"""ntkode: neural-network training as an ODE, with (scheduled) neural-tangent-kernel surrogates.

The whole public API is re-exported here.
"""

import importlib.metadata

from . import datasets as datasets, losses as losses, schedules as schedules, transfer as transfer
from ._activations import (
    AbstractActivation as AbstractActivation,
    Elementwise as Elementwise,
    Erf as Erf,
    Relu as Relu,
)
from ._certify import Certificate as Certificate, certify as certify
from ._closure_study import ClosureCNN as ClosureCNN, closure_study as closure_study, iou as iou
from ._compare import (
    Comparison as Comparison,
    compare as compare,
    trajectory_errors as trajectory_errors,
)
from ._data import Dataset as Dataset
from ._gated import GatedReLU as GatedReLU, gated_relu_ntk_infinite as gated_relu_ntk_infinite
from ._grid import KernelGrid as KernelGrid
from ._infinite import InfiniteMLP as InfiniteMLP, Kernels as Kernels
from ._kernel_machines import (
    KernelComparison as KernelComparison,
    compare_kernels as compare_kernels,
    kernel_regression as kernel_regression,
)
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
from ._nets import MLP as MLP, mlp_ntk as mlp_ntk
from ._ntk import (
    NTVPNTK as NTVPNTK,
    AbstractNTKImplementation as AbstractNTKImplementation,
    JacobianNTK as JacobianNTK,
    StructuredNTK as StructuredNTK,
    ntk as ntk,
    ntk_operator as ntk_operator,
    ntk_vp as ntk_vp,
)
from ._path_kernel import (
    PathKernel as PathKernel,
    path_kernel as path_kernel,
    path_kernel_gd as path_kernel_gd,
)
from ._predict import (
    infinite_width_problem as infinite_width_problem,
    predict_infinite as predict_infinite,
    predict_mse as predict_mse,
)
from ._problems import (
    AbstractProblem as AbstractProblem,
    GradientFlowField as GradientFlowField,
    GradientFlowProblem as GradientFlowProblem,
    KernelFlowField as KernelFlowField,
    KernelFlowProblem as KernelFlowProblem,
    remake as remake,
)
from ._reference_problems import sine_problem as sine_problem
from ._scheduled import ScheduledKernelProblem as ScheduledKernelProblem
from ._solution import RESULTS as RESULTS, Outputs as Outputs, Solution as Solution
from ._solve import EnsembleProblem as EnsembleProblem, solve as solve, timed_solve as timed_solve
from ._study import compare_study as compare_study
from ._tuning import TuneResult as TuneResult, tune_grid as tune_grid
from ._widths import width_run as width_run, width_study as width_study

try:
    __version__ = importlib.metadata.version("ntkode")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0.0.0+unknown"
