"""Analytic (infinite-width) kernels as frozen-kernel problems.

For predictions at a time $t$ or at $t = \\infty$ from any kernel, see
[`ntkode.kernel_regression`][].
"""

from collections.abc import Callable
from typing import Any

from jaxtyping import ArrayLike, Float

from .._core._data import Dataset
from .._core._kernel_flow import KernelFlowProblem
from .._core._losses import AbstractLoss, mse
from ._kernels import InfiniteMLP


def infinite_width_problem(
    kernel: InfiniteMLP | Callable[[Any, Any], Any],
    data: Dataset,
    loss: AbstractLoss | str = mse,
    tspan: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (0.0, 1.0),
    learning_rate: Float[ArrayLike, ""] = 1.0,
    *,
    u0_train: Float[ArrayLike, "n k"] | None = None,
    u0_test: Float[ArrayLike, "m k"] | None = None,
) -> KernelFlowProblem:
    """A [`ntkode.KernelFlowProblem`][] driven by an analytic (infinite-width) kernel.

    **Arguments:**

    - `kernel`: an [`ntkode.InfiniteMLP`][] (its NTK is used), or any callable
      `kernel(x1, x2) -> (n1, n2)` kernel.
    - `data`, `loss`, `tspan`, `learning_rate`: as in [`ntkode.KernelFlowProblem`][].
    - `u0_train`, `u0_test`: outputs at `t0` (default zeros: the mean of the infinitely wide
      network; pass a finite network's initial outputs to follow that network).

    **Returns:** a problem for [`ntkode.solve`][] (closed form for MSE) and `compare`.
    """
    if not isinstance(data, Dataset):
        raise TypeError(f"`data` must be an ntkode.Dataset, got {type(data).__name__}.")
    fn = kernel.ntk if isinstance(kernel, InfiniteMLP) else kernel
    if not callable(fn):
        raise TypeError("`kernel` must be an ntkode.InfiniteMLP or a callable kernel(x1, x2).")
    x, xs = data.x_train, data.x_test
    k_train = fn(x, x)
    k_test = fn(xs, x) if data.n_test > 0 else None
    return KernelFlowProblem(
        k_train,
        data,
        loss,
        tspan,
        learning_rate,
        kernel_test=k_test,
        u0_train=u0_train,
        u0_test=u0_test,
    )
