"""ntkode: neural-network training as an ODE, with (scheduled) neural-tangent-kernel surrogates.

This module is the whole public API of the numerics. The studies behind the `ntkode`
command line (with their plots and reference problems) live in `ntkode.studies`; their names
are also reachable from here, imported on first use, so that `import ntkode` stays light
(no matplotlib, scikit-learn or tqdm).
"""

import importlib
import importlib.metadata
from typing import Any

from . import (
    datasets as datasets,
    losses as losses,
    policies as policies,
    schedules as schedules,
    transfer as transfer,
    tuning as tuning,
)
from ._control._certificate import (
    StepCertificate as StepCertificate,
    step_certificate as step_certificate,
)
from ._control._descent import Descent as Descent, descend as descend
from ._control._design import PolicyDesign as PolicyDesign, design_policy as design_policy
from ._control._network import GradientDescentProblem as GradientDescentProblem
from ._control._surrogate import ScheduledDescentProblem as ScheduledDescentProblem
from ._core._adapters import (
    AbstractApply as AbstractApply,
    ModelAdapter as ModelAdapter,
    from_apply as from_apply,
    from_flax as from_flax,
)
from ._core._compare import (
    Comparison as Comparison,
    compare as compare,
    trajectory_errors as trajectory_errors,
)
from ._core._data import Dataset as Dataset
from ._core._gradient_flow import (
    GradientFlowField as GradientFlowField,
    GradientFlowProblem as GradientFlowProblem,
)
from ._core._kernel_flow import (
    KernelFlowField as KernelFlowField,
    KernelFlowProblem as KernelFlowProblem,
)
from ._core._metrics import (
    accuracy as accuracy,
    class_agreement as class_agreement,
    classification_metrics as classification_metrics,
)
from ._core._options import SolveOptions as SolveOptions
from ._core._problem import AbstractProblem as AbstractProblem, remake as remake
from ._core._regression import kernel_regression as kernel_regression
from ._core._results import RESULTS as RESULTS
from ._core._solution import Outputs as Outputs, Solution as Solution
from ._core._solve import (
    EnsembleProblem as EnsembleProblem,
    solve as solve,
    timed_solve as timed_solve,
)
from ._gated._masked import (
    MaskedKernels as MaskedKernels,
    check_simplex as check_simplex,
    mkl_objective as mkl_objective,
    ntk_weights as ntk_weights,
)
from ._gated._network import (
    GatedReLU as GatedReLU,
    gated_relu_ntk_infinite as gated_relu_ntk_infinite,
)
from ._gated._solvers import (
    GroupLassoSolution as GroupLassoSolution,
    MKLSolution as MKLSolution,
    group_lasso as group_lasso,
    kernel_ridge as kernel_ridge,
    optimal_mkl as optimal_mkl,
)
from ._infinite._activations import (
    AbstractActivation as AbstractActivation,
    Elementwise as Elementwise,
    Erf as Erf,
    Relu as Relu,
)
from ._infinite._kernels import InfiniteMLP as InfiniteMLP, Kernels as Kernels
from ._infinite._mlp import MLP as MLP
from ._infinite._predict import infinite_width_problem as infinite_width_problem
from ._ntk import (
    NTVPNTK as NTVPNTK,
    AbstractDense as AbstractDense,
    AbstractNTKImplementation as AbstractNTKImplementation,
    JacobianNTK as JacobianNTK,
    StructuredNTK as StructuredNTK,
    ntk as ntk,
    ntk_operator as ntk_operator,
    ntk_vp as ntk_vp,
)
from ._path._kernel import AbstractPathMethod as AbstractPathMethod, PathKernel as PathKernel
from ._path._machines import (
    KernelComparison as KernelComparison,
    compare_kernels as compare_kernels,
)
from ._path._methods import PathFlow as PathFlow, PathGradientDescent as PathGradientDescent
from ._path._path_kernel import path_kernel as path_kernel
from ._plot import plot as plot
from ._scheduled._basis import (
    AbstractPieceBasis as AbstractPieceBasis,
    EigenBasis as EigenBasis,
    KrylovBasis as KrylovBasis,
)
from ._scheduled._certify import (
    Certificate as Certificate,
    ResidualEnvelope as ResidualEnvelope,
    certify as certify,
    certify_residual as certify_residual,
)
from ._scheduled._dense import KernelGrid as KernelGrid
from ._scheduled._grid import AbstractKernelGrid as AbstractKernelGrid
from ._scheduled._low_rank import LowRankKernelGrid as LowRankKernelGrid
from ._scheduled._problem import ScheduledKernelProblem as ScheduledKernelProblem
from ._scheduled._shared import SharedKernelGrid as SharedKernelGrid
from ._tuning._tune import TuneResult as TuneResult, tune_grid as tune_grid

# Study-level names (`ntkode.studies`), imported when first asked for.
_STUDY_NAMES = (
    "classification_study",
    "closure_study",
    "ClosureNetwork",
    "compare_study",
    "control_study",
    "digits_data",
    "digits_problem",
    "DigitsCNN",
    "floor_study",
    "iou",
    "iou_per_image",
    "load_closure_network",
    "mkl_compare",
    "mkl_study",
    "sine_problem",
    "UNet",
    "width_run",
    "width_study",
)


def __getattr__(name: str) -> Any:
    if name == "studies" or name in _STUDY_NAMES:
        studies = importlib.import_module(".studies", __name__)
        return studies if name == "studies" else getattr(studies, name)
    raise AttributeError(f"module 'ntkode' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "studies", *_STUDY_NAMES])


try:
    __version__ = importlib.metadata.version("ntkode")
except importlib.metadata.PackageNotFoundError:
    __version__ = "0.0.0+unknown"
