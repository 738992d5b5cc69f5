r"""Kernel machines from one training run: NTK at init, NTK at the end, and the path kernel.

Each machine is kernel regression started from the network at initialisation,
$\hat f(x) = f(\theta_0, x) + K(x, X)\,(K(X, X) + \lambda I)^{-1}\,(Y - f(\theta_0, X))$
(for the NTK at init this is the infinitely-long-trained linearised network, Lee et al.
2019), compared with the trained network on held-out inputs.
"""

from typing import Literal

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core._gradient_flow import GradientFlowProblem
from .._core._model import apply
from .._core._regression import kernel_regression
from .._core._results import is_successful, message
from .._ntk._api import ntk
from .._ntk._base import AbstractNTKImplementation
from ._kernel import AbstractPathMethod, PathKernel
from ._methods import PathFlow
from ._path_kernel import path_kernel


class KernelComparison(eqx.Module):
    """Test predictions of a trained network and of three kernel machines built from its run.

    **Fields:** `y_test` `(m, k)`; `network` (the trained network); `ntk_init`, `ntk_final`,
    `path` (kernel regression with the NTK at $\\theta_0$, at $\\theta_T$, and the path
    kernel); `path_kernel` (the [`ntkode.PathKernel`][] on train then test inputs, whose
    `residual` certifies the run); `train` holds the same four predictions on the training
    inputs. `errors()` summarises.
    """

    y_test: Float[Array, "m k"]
    network: Float[Array, "m k"]
    ntk_init: Float[Array, "m k"]
    ntk_final: Float[Array, "m k"]
    path: Float[Array, "m k"]
    train: dict[str, Float[Array, "n k"]]
    path_kernel: PathKernel

    def predictions(self) -> dict[str, Float[Array, "m k"]]:
        """Test predictions by name: `network`, `ntk_init`, `ntk_final`, `path`."""
        return {
            "network": self.network,
            "ntk_init": self.ntk_init,
            "ntk_final": self.ntk_final,
            "path": self.path,
        }

    def errors(self) -> dict[str, dict[str, float]]:
        """Per machine: test MSE against the targets, and the relative distance
        $\\|\\hat f - f_{net}\\| / \\|f_{net}\\|$ to the trained network on the test inputs."""
        out = {}
        net = self.network
        for name, pred in self.predictions().items():
            out[name] = {
                "test_mse": float(jnp.mean(jnp.sum((pred - self.y_test) ** 2, -1))),
                "vs_network": float(jnp.linalg.norm(pred - net) / jnp.linalg.norm(net)),
            }
        return out


def compare_kernels(
    problem: GradientFlowProblem,
    method: AbstractPathMethod = PathFlow(),
    *,
    trace: bool = False,
    ridge: float = 1e-8,
    implementation: Literal["auto", "structured", "jacobian", "ntvp"]
    | AbstractNTKImplementation = "auto",
) -> KernelComparison:
    """Train `problem`'s network, then compare it with kernel regression by three kernels.

    Runs [`ntkode.path_kernel`][] with `method` on the training inputs followed by the test
    inputs, takes the NTKs at the first and last weights ([`ntkode.ntk`][]), and fits
    [`ntkode.kernel_regression`][] with each kernel from the network at initialisation.

    **Arguments:**

    - `problem`: a [`ntkode.GradientFlowProblem`][] whose data has a test split.
    - `method`: the training run, [`ntkode.PathFlow`][] (default) or
      [`ntkode.PathGradientDescent`][], with its options.
    - `trace`: use kernels traced over outputs (one kernel shared by all outputs); needed
      when there are many outputs per example (images).
    - `ridge`: relative ridge of the kernel regressions.
    - `implementation`: the NTK implementation, as in [`ntkode.ntk`][].

    **Returns:** a [`ntkode.KernelComparison`][]. Raises `RuntimeError` with the result's
    sentence if the training run failed.
    """
    data = problem.data
    if data.n_test == 0:
        raise ValueError("compare_kernels needs a test split: build the Dataset with x_test.")
    queries = jnp.concatenate([data.x_train, data.x_test])
    pk = path_kernel(problem, queries, method, trace=trace, implementation=implementation)
    if not is_successful(pk.result):
        raise RuntimeError(
            f"The training run behind the path kernel failed: {message(pk.result)} "
            "(for gradient descent: lower the learning rate)."
        )
    n = data.n_train
    b = pk.bias
    preds = {}
    for name, model in (("ntk_init", problem.model), ("ntk_final", pk.model)):
        kern = ntk(model, queries, data.x_train, implementation=implementation, trace=trace)
        preds[name] = _fit(kern, n, data.y_train, b, ridge)
    preds["path"] = _fit(pk.kernel, n, data.y_train, b, ridge)
    net = apply(pk.model, data.x_test)
    train = {name: p[:n] for name, p in preds.items()}
    train["network"] = pk.outputs[:n]
    return KernelComparison(
        y_test=data.y_test,
        network=net,
        ntk_init=preds["ntk_init"][n:],
        ntk_final=preds["ntk_final"][n:],
        path=preds["path"][n:],
        train=train,
        path_kernel=pk,
    )


def _fit(kern, n, y, b, ridge):
    """Predictions on all queries (train then test) from a `(q, n, ...)` kernel.

    Solved by LU: the per-step gradient-descent path kernel is not symmetric, and float32
    kernels with a tiny ridge can be numerically indefinite (Cholesky would fail).
    """
    out = kernel_regression(
        kern[:n], kern, y, u0_train=b[:n], u0_test=b, ridge=ridge, relative_ridge=True,
        symmetric=False,
    )  # fmt: skip
    return out.test
