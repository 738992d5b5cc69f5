r"""Kernel predictors: infinite-time kernel regression, finite-time MSE flow, and problems.

For mean MSE the frozen-kernel flow from outputs $u_0$ has the closed form
$u(t) = Y + e^{-\eta\Theta t/n}(u_0 - Y)$ on the training inputs, and as $t \to \infty$ the
test outputs tend to $u_*(\infty) = u_{0*} + \Theta(X_*, X)\,\Theta(X, X)^{-1}(Y - u_0)$
(Jacot et al. 2018; Lee et al. 2019, eq. 16). With $u_0 = 0$ this is kernel ridge-less
regression with the NTK, the mean prediction of an infinitely wide network.
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float

from .._core._data import Dataset
from .._core._errors import is_concrete
from .._core._losses import mse
from .._core._problems import KernelFlowProblem, flatten_kernel, mse_closed_form
from .._core._solution import Outputs


def _prepare(kernel_train, kernel_test, y_train, u0_train, u0_test):
    y = jnp.asarray(y_train)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"`y_train` must have shape (n,) or (n, k), got {y.shape}.")
    n, k = y.shape
    kt = jnp.asarray(kernel_train)
    if kt.ndim not in (2, 4) or kt.shape[0] != kt.shape[1]:
        raise ValueError(f"`kernel_train` must be a square kernel, got shape {kt.shape}.")
    kernel_train = flatten_kernel(kt, n, n, k, "kernel_train")
    ks = jnp.asarray(kernel_test)
    m = ks.shape[0] if ks.ndim in (2, 4) else 0
    if ks.ndim == 2 and ks.shape[1] == n * k and k > 1:
        m = ks.shape[0] // k
    kernel_test = flatten_kernel(ks, m, n, k, "kernel_test")
    dtype = jnp.result_type(kernel_train.dtype, y.dtype)
    u0 = jnp.zeros((n, k), dtype) if u0_train is None else jnp.asarray(u0_train, dtype)
    us0 = jnp.zeros((m, k), dtype) if u0_test is None else jnp.asarray(u0_test, dtype)
    if u0.shape != (n, k) or us0.shape != (m, k):
        raise ValueError(
            f"`u0_train`/`u0_test` must have shapes {(n, k)} and {(m, k)}, got "
            f"{u0.shape} and {us0.shape}."
        )
    return kernel_train.astype(dtype), kernel_test.astype(dtype), y.astype(dtype), u0, us0


def predict_infinite(
    kernel_train: Float[Array, "n n"],
    kernel_test: Float[Array, "m n"],
    y_train: Float[Array, "n k"],
    *,
    ridge: float = 0.0,
    u0_train: Float[Array, "n k"] | None = None,
    u0_test: Float[Array, "m k"] | None = None,
    solver: lx.AbstractLinearSolver = lx.Cholesky(),
) -> Outputs:
    r"""The $t \to \infty$ limit of the frozen-kernel MSE flow (kernel regression).

    $u_*(\infty) = u_{0*} + \Theta_*\,(\Theta + \lambda I)^{-1}(Y - u_0)$, solved with lineax.

    **Arguments:**

    - `kernel_train`: $\Theta(X, X)$ as `(n, n)`, `(n, n, k, k)` or `(n·k, n·k)`.
    - `kernel_test`: $\Theta(X_*, X)$ as `(m, n)`, `(m, n, k, k)` or `(m·k, n·k)`.
    - `y_train`: targets `(n, k)`.
    - `ridge`: $\lambda \ge 0$ added to the diagonal (regularises ill-conditioned kernels).
    - `u0_train`, `u0_test`: outputs at $t = 0$ (default zero: the mean predictor).
    - `solver`: a lineax solver for the symmetric positive (semi)definite system (default
      Cholesky).

    **Returns:** [`ntkode.Outputs`][] `(train (n, k), test (m, k))` at $t = \infty$.
    """
    if is_concrete(ridge) and not (np.isfinite(float(ridge)) and float(ridge) >= 0):
        raise ValueError(f"`ridge` must be non-negative and finite, got {ridge!r}.")
    kt, ks, y, u0, us0 = _prepare(kernel_train, kernel_test, y_train, u0_train, u0_test)
    train, test = _infinite_jit(kt, ks, y, u0, us0, jnp.asarray(ridge, kt.dtype), solver)
    if is_concrete(test) and not bool(jnp.all(jnp.isfinite(test))):
        raise ValueError(
            "Kernel regression produced non-finite predictions: `kernel_train` is singular "
            "or not positive definite (e.g. repeated inputs). Pass `ridge` > 0."
        )
    return Outputs(train, test)


@eqx.filter_jit
def _infinite_jit(kt, ks, y, u0, us0, ridge, solver):
    n, k = y.shape
    a = kt + ridge * jnp.eye(kt.shape[0], dtype=kt.dtype)
    op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
    r = (y - u0).reshape(-1)
    alpha = lx.linear_solve(op, r, solver=solver, throw=False).value
    train = u0 + (kt @ alpha).reshape(n, k)
    test = us0 + (ks @ alpha).reshape(-1, k)
    return train, test


def predict_mse(
    kernel_train: Float[Array, "n n"],
    kernel_test: Float[Array, "m n"],
    y_train: Float[Array, "n k"],
    t: Any,
    *,
    learning_rate: float = 1.0,
    u0_train: Float[Array, "n k"] | None = None,
    u0_test: Float[Array, "m k"] | None = None,
) -> Outputs:
    r"""The frozen-kernel mean-MSE flow at time(s) `t`, exactly (eigendecomposition).

    $u(t) = Y + e^{-\eta\Theta t/n}(u_0 - Y)$ and
    $u_*(t) = u_{0*} - \Theta_*\Theta^{-1}(I - e^{-\eta\Theta t/n})(u_0 - Y)$ (Lee et al.
    2019, eq. 9–10), with ntkode's time convention (mean loss, learning rate $\eta$).

    **Arguments:** as [`ntkode.predict_infinite`][], plus `t` (a scalar or a 1-D array of
    times $\ge 0$) and `learning_rate` $\eta$.

    **Returns:** [`ntkode.Outputs`][]; with a leading time axis when `t` is an array.
    """
    kt, ks, y, u0, us0 = _prepare(kernel_train, kernel_test, y_train, u0_train, u0_test)
    ts = jnp.asarray(t, kt.dtype)
    if is_concrete(ts) and not bool(jnp.all(jnp.isfinite(ts) & (ts >= 0))):
        raise ValueError(f"`t` must be finite and non-negative, got {t!r}.")
    u, us, _, _ = mse_closed_form(
        kt, ks, u0, us0, y, jnp.asarray(learning_rate, kt.dtype), jnp.atleast_1d(ts), 0.0
    )
    if ts.ndim == 0:
        return Outputs(u[0], us[0])
    return Outputs(u, us)


def infinite_width_problem(
    kernel: Any,
    data: Dataset,
    loss=mse,
    tspan=(0.0, 1.0),
    learning_rate=1.0,
    *,
    u0_train=None,
    u0_test=None,
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
    fn = kernel.ntk if hasattr(kernel, "ntk") and callable(kernel.ntk) else kernel
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
