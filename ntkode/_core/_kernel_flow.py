r"""Frozen-kernel flows in function space: $du/dt = -\eta\,\Theta\,\nabla_u L$, fixed $\Theta$."""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._data import Dataset
from ._errors import check_finite, check_psd_kernels, default_psd_tol
from ._exact import exact_solution
from ._losses import MSE, AbstractLoss, mse
from ._model import apply, check_model_data
from ._options import ResolvedOptions
from ._problem import AbstractProblem, init_common, initial_outputs, solve_function_space
from ._regression import mse_flow
from ._solution import Solution


def flatten_kernel(kernel, n1: int, n2: int, k: int, name: str) -> Float[Array, "n1k n2k"]:
    """Bring a kernel given as `(n1, n2)`, `(n1, n2, k, k)` or `(n1·k, n2·k)` to `(n1·k, n2·k)`.

    A `(n1, n2)` kernel for `k > 1` outputs means the same kernel on every output
    ($\\Theta \\otimes I_k$).
    """
    kernel = jnp.asarray(kernel)
    if kernel.shape == (n1, n2, k, k):
        return jnp.transpose(kernel, (0, 2, 1, 3)).reshape(n1 * k, n2 * k)
    if kernel.shape == (n1 * k, n2 * k):
        return kernel
    if kernel.shape == (n1, n2):
        return jnp.kron(kernel, jnp.eye(k, dtype=kernel.dtype))
    raise ValueError(
        f"`{name}` has shape {kernel.shape} but the data need ({n1}, {n2}), "
        f"({n1}, {n2}, {k}, {k}) or ({n1 * k}, {n2 * k}) ({n1} and {n2} examples, {k} outputs)."
    )


class KernelFlowField(eqx.Module):
    r"""Function-space flow $du/dt = -\eta\,\Theta\,\nabla_u L$, test outputs carried along.

    State: `(u_train (n, k), u_test (m, k))`; `args`: the learning rate.
    """

    kernel_train: Array
    kernel_test: Array
    y: Array
    loss: AbstractLoss

    def __call__(self, t, state, learning_rate):
        u, us = state
        g = self.loss.grad(u, self.y).reshape(-1)
        du = -learning_rate * (self.kernel_train @ g).reshape(u.shape)
        dus = -learning_rate * (self.kernel_test @ g).reshape(us.shape)
        return du, dus


class KernelFlowProblem(AbstractProblem):
    r"""Frozen-kernel (lazy, linearised) dynamics in function space.

    $du/dt = -\eta\,\Theta(X, X)\,\nabla_u L$ on the train outputs, and
    $du_*/dt = -\eta\,\Theta(X_*, X)\,\nabla_u L$ on the test outputs. For MSE, `solve` with no
    solver uses the exact closed form (no ODE steps); with a solver, or for other losses, a
    diffrax solve.

    **Arguments:**

    - `kernel_train`: $\Theta(X, X)$ as `(n, n)`, `(n, n, k, k)` or `(n·k, n·k)`.
    - `data`, `loss`, `tspan`, `learning_rate`: as in [`ntkode.GradientFlowProblem`][].
    - `kernel_test`: $\Theta(X_*, X)$ as `(m, n)`, `(m, n, k, k)` or `(m·k, n·k)`; default
      zeros (test outputs then stay at `u0_test`).
    - `u0_train`, `u0_test`: outputs `(n, k)`, `(m, k)` at `t0` (default zeros: a kernel
      machine from zero).
    - `psd_tol`: `kernel_train` must be symmetric and positive semi-definite within this
      relative tolerance (default $\sqrt{\epsilon}$ of the data's precision); a negative
      eigenvalue would make the flow grow the loss exponentially. `None` skips the check.

    Use [`KernelFlowProblem.from_model`][] for the empirical NTK of a network.
    """

    kernel_train: Float[Array, "nk nk"]
    kernel_test: Float[Array, "mk nk"]
    u0_train: Float[Array, "n k"]
    u0_test: Float[Array, "m k"]
    data: Dataset
    loss: AbstractLoss
    tspan: tuple[Float[Array, ""], Float[Array, ""]]
    learning_rate: Float[Array, ""]

    def __init__(
        self,
        kernel_train: Float[ArrayLike, "n n"] | Float[ArrayLike, "n n k k"],
        data: Dataset,
        loss: AbstractLoss | str = mse,
        tspan: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (0.0, 1.0),
        learning_rate: Float[ArrayLike, ""] = 1.0,
        kernel_test: Float[ArrayLike, "m n"] | Float[ArrayLike, "m n k k"] | None = None,
        u0_train: Float[ArrayLike, "n k"] | None = None,
        u0_test: Float[ArrayLike, "m k"] | None = None,
        *,
        psd_tol: float | None | str = "auto",
    ):
        init_common(self, data, loss, tspan, learning_rate)
        n, m, k = data.n_train, data.n_test, data.n_outputs
        dtype = data.y_train.dtype
        self.kernel_train = flatten_kernel(kernel_train, n, n, k, "kernel_train").astype(dtype)
        if kernel_test is None:
            kernel_test = jnp.zeros((m * k, n * k), dtype)
        self.kernel_test = flatten_kernel(kernel_test, m, n, k, "kernel_test").astype(dtype)
        self.u0_train = initial_outputs("u0_train", u0_train, (n, k), dtype)
        self.u0_test = initial_outputs("u0_test", u0_test, (m, k), dtype)
        for name in ("kernel_train", "kernel_test"):
            check_finite(name, getattr(self, name))
        if psd_tol == "auto":
            psd_tol = default_psd_tol(dtype)
        elif psd_tol is not None and not isinstance(psd_tol, int | float):
            raise TypeError(f"`psd_tol` must be a number, None or 'auto', got {psd_tol!r}.")
        check_psd_kernels("kernel_train", self.kernel_train[None], psd_tol)

    @classmethod
    def from_model(
        cls,
        model: Any,
        data: Dataset,
        loss: AbstractLoss | str = mse,
        tspan: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (0.0, 1.0),
        learning_rate: Float[ArrayLike, ""] = 1.0,
        *,
        implementation: Any = "auto",
        block_size: int | None = None,
        devices: Any = None,
    ) -> "KernelFlowProblem":
        """The frozen empirical NTK of `model` at its current weights, and its outputs.

        `implementation`, `block_size` and `devices` are passed to [`ntkode.ntk`][]; with
        `devices="global"` (several processes on `jax.distributed`) the kernels are global
        arrays sharded by rows, and a solve of the problem runs on every process alike.
        """
        from .._ntk import ntk

        check_model_data(model, data)
        opts = dict(implementation=implementation, block_size=block_size, devices=devices)
        k_train = ntk(model, data.x_train, **opts)
        k_test = ntk(model, data.x_test, data.x_train, **opts)
        return cls(
            k_train,
            data,
            loss,
            tspan,
            learning_rate,
            kernel_test=k_test,
            u0_train=apply(model, data.x_train),
            u0_test=apply(model, data.x_test),
        )

    @property
    def vector_field(self) -> KernelFlowField:
        return KernelFlowField(self.kernel_train, self.kernel_test, self.data.y_train, self.loss)

    def _solve(self, solver, options: ResolvedOptions) -> Solution:
        if options.save_weights:
            raise ValueError("`save_weights=True` applies to GradientFlowProblem only.")
        if solver is None and isinstance(self.loss, MSE):
            return exact_solution(self, self._exact_outputs, options, kind="kernel")
        return solve_function_space(self, self.vector_field, solver, options, kind="kernel")

    def _exact_outputs(self, ts):
        """The closed-form MSE flow at times `ts` (Lee et al. 2019, eq. 9-10)."""
        return mse_flow(
            self.kernel_train,
            self.kernel_test,
            self.u0_train,
            self.u0_test,
            self.data.y_train,
            self.learning_rate,
            ts - self.t0,
        )
