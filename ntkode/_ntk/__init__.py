"""Empirical neural tangent kernels."""

from ._api import ntk as ntk
from ._base import AbstractNTKImplementation as AbstractNTKImplementation
from ._jacobian import JacobianNTK as JacobianNTK
from ._layers import AbstractDense as AbstractDense
from ._ntvp import NTVPNTK as NTVPNTK, ntk_operator as ntk_operator, ntk_vp as ntk_vp
from ._reference import ntk_reference as ntk_reference
from ._structured import StructuredNTK as StructuredNTK
