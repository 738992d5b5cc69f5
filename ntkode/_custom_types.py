"""Shape-annotated aliases used on public signatures (jaxtyping)."""

from typing import Any, TypeAlias

from jaxtyping import Array, ArrayLike, Float, PyTree, Real

Scalar: TypeAlias = Float[Array, ""]
ScalarLike: TypeAlias = Real[ArrayLike, ""] | float | int
Inputs: TypeAlias = Float[Array, "n ..."]
Outputs: TypeAlias = Float[Array, "n k"]
Kernel: TypeAlias = Float[Array, "n1 n2 k k"]
FlatKernel: TypeAlias = Float[Array, "nk mk"]
Params: TypeAlias = PyTree[Array]
Static: TypeAlias = Any

__all__ = [
    "Array",
    "FlatKernel",
    "Float",
    "Inputs",
    "Kernel",
    "Outputs",
    "Params",
    "PyTree",
    "Scalar",
    "ScalarLike",
    "Static",
]
