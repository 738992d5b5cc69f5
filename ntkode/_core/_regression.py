r"""Kernel regression: the frozen-kernel mean-MSE flow at any time $t$, and its limit $t = \infty$.

With $r_0 = u_0 - Y$ on the training inputs, $c = \eta/n$ and a ridge $\lambda \ge 0$, every
input's prediction is

$$u_*(t) = u_{0*} - c\,\Theta(X_*, X)\,\Phi_t\,r_0, \qquad
\Phi_t = \int_0^t e^{-c(\Theta + \lambda I)s}\,ds,$$

which at $\lambda = 0$ on the training inputs is the exact flow $u(t) = Y + e^{-c\Theta t}r_0$
(Lee et al. 2019, eq. 9–10), and as $t \to \infty$ is kernel ridge regression
$u_*(\infty) = u_{0*} + \Theta_*(\Theta + \lambda I)^{-1}(Y - u_0)$ (Jacot et al. 2018). One
formula for finite and infinite time and one ridge convention, as in neural-tangents'
`predict.gradient_descent_mse`; every kernel predictor of ntkode calls the functions here.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ._errors import check_finite, is_concrete
from ._solution import Outputs


def decay_integral(rate: Array, tau: Array) -> Array:
    r"""$\int_0^\tau e^{-a s}\,ds = (1 - e^{-a\tau})/a$, elementwise, exact as $a\tau \to 0$."""
    x = rate * tau
    small = jnp.abs(x) < 1e-6
    safe = jnp.where(small, 1.0, rate)
    return jnp.where(small, tau * (1 - 0.5 * x), -jnp.expm1(-x) / safe)


def mse_flow(kernel, kernel_test, u0, us0, y, learning_rate, tau, ridge=0.0):
    r"""The frozen-kernel mean-MSE flow at elapsed times `tau`, by one eigendecomposition.

    `kernel` is `(N, N)` with `N = n·k` (flat outputs) or `N = n` (one kernel shared by the
    `k` outputs, $\Theta \otimes I_k$, never formed); `kernel_test` is `(M, N)` in the same
    layout. Returns `(u, us, du, dus)` with a leading time axis and the shapes of `u0`, `us0`.
    """
    n, k = u0.shape
    m = us0.shape[0]
    N = kernel.shape[0]
    cols = k if N == n and k > 1 else 1  # shared kernel: the k outputs are k columns
    c = learning_rate / n
    lam, vec = jnp.linalg.eigh(0.5 * (kernel + kernel.T))
    coef = vec.T @ (u0 - y).reshape(N, cols)  # (N, cols)
    tau = jnp.atleast_1d(tau)
    rate = c * (lam + ridge)
    phi = decay_integral(rate[None, :], tau[:, None])  # (T, N)
    decay = jnp.exp(-rate[None, :] * tau[:, None])
    test_basis = kernel_test @ vec  # (M, N)
    T = tau.shape[0]

    def out(basis, weights, scale):  # basis (R, N), weights (T, N) -> (T, R, cols)
        return jnp.einsum("rj,tj,jc->trc", basis, weights * scale, coef)

    u = u0.reshape(1, N, cols) - c * out(vec, phi, lam)
    du = -c * out(vec, decay, lam)
    us = us0.reshape(1, -1, cols) - c * out(test_basis, phi, 1.0)
    dus = -c * out(test_basis, decay, 1.0)
    return u.reshape(T, n, k), us.reshape(T, m, k), du.reshape(T, n, k), dus.reshape(T, m, k)


@eqx.filter_jit
def ridge_solve(kernel, rhs, ridge, symmetric: bool = True):
    r"""$(K + \lambda I)^{-1} B$ for `rhs` $B$ `(N, c)`, factorising once (lineax).

    Cholesky for symmetric kernels ($K + \lambda I$ positive definite), LU otherwise (the
    per-step gradient-descent path kernel is not symmetric).
    """
    n = kernel.shape[0]
    a = kernel + ridge * jnp.eye(n, dtype=kernel.dtype)
    if symmetric:
        op = lx.MatrixLinearOperator(a, lx.positive_semidefinite_tag)
        solver = lx.Cholesky()
    else:
        op, solver = lx.MatrixLinearOperator(a), lx.LU()
    state = solver.init(op, options={})  # factorise once, reuse for every column
    one = lambda b: lx.linear_solve(op, b, solver, state=state, throw=False).value
    return jax.vmap(one, in_axes=1, out_axes=1)(rhs)


def _layout(kernel_train, kernel_test, y) -> tuple[Array, Array, bool]:
    """Flat `(n·k, n·k)`/`(m·k, n·k)` kernels, or `(n, n)`/`(m, n)` shared by the outputs."""
    from ._kernel_flow import flatten_kernel

    n, k = y.shape
    kt, ks = jnp.asarray(kernel_train), jnp.asarray(kernel_test)
    if kt.ndim == 2 and kt.shape == (n, n) and ks.ndim == 2 and ks.shape[1] == n:
        return kt, ks, True
    if kt.ndim not in (2, 4) or kt.shape[0] != kt.shape[1]:
        raise ValueError(f"`kernel_train` must be a square kernel, got shape {kt.shape}.")
    m = ks.shape[0] if ks.ndim == 4 else ks.shape[0] // max(k, 1)
    return (
        flatten_kernel(kt, n, n, k, "kernel_train"),
        flatten_kernel(ks, m, n, k, "kernel_test"),
        False,
    )


def kernel_regression(
    kernel_train: Float[ArrayLike, "n n"] | Float[ArrayLike, "n n k k"],
    kernel_test: Float[ArrayLike, "m n"] | Float[ArrayLike, "m n k k"],
    y_train: Float[ArrayLike, "n k"],
    t: Float[ArrayLike, ""] | Float[ArrayLike, " T"] | None = None,
    *,
    learning_rate: float = 1.0,
    ridge: float = 0.0,
    relative_ridge: bool = False,
    u0_train: Float[ArrayLike, "n k"] | None = None,
    u0_test: Float[ArrayLike, "m k"] | None = None,
    symmetric: bool = True,
) -> Outputs:
    r"""Predictions of the frozen-kernel mean-MSE flow at time `t`, or of kernel regression.

    $u_*(t) = u_{0*} - \tfrac{\eta}{n}\,\Theta_*\!\int_0^t e^{-\frac{\eta}{n}(\Theta+\lambda
    I)s}ds\;(u_0 - Y)$ on the train and test inputs (see the module notes): at $\lambda = 0$
    on the train inputs this is the frozen-kernel flow, and with `t=None` ($t = \infty$) it is
    kernel ridge regression $u_{0*} + \Theta_*(\Theta + \lambda I)^{-1}(Y - u_0)$.

    **Arguments:**

    - `kernel_train`: $\Theta(X, X)$ as `(n, n)` (one kernel shared by the `k` outputs,
      $\Theta \otimes I_k$, never formed), `(n, n, k, k)` or `(n·k, n·k)`.
    - `kernel_test`: $\Theta(X_*, X)$ in the matching layout: `(m, n)`, `(m, n, k, k)` or
      `(m·k, n·k)`.
    - `y_train`: targets `(n,)` or `(n, k)`.
    - `t`: a time $\ge 0$, a 1-D array of times (outputs then get a leading time axis), or
      `None` for $t = \infty$ (a linear solve, no eigendecomposition).
    - `learning_rate`: $\eta$ (only finite times depend on it).
    - `ridge`: $\lambda \ge 0$ added to the diagonal of $\Theta$; with `relative_ridge=True`
      it is relative to the mean diagonal of $\Theta$ (neural-tangents' default scale).
    - `u0_train`, `u0_test`: outputs at $t = 0$ (default zero: from a zero function, the
      mean predictor of an infinitely wide network; pass a network's initial outputs to
      follow that network).
    - `symmetric`: `False` for a non-symmetric kernel (e.g. the per-step gradient-descent
      path kernel), solved by LU; finite times need a symmetric kernel.

    **Returns:** [`ntkode.Outputs`][] `(train (n, k), test (m, k))`, with a leading time axis
    when `t` is an array.
    """
    y = jnp.asarray(y_train)
    if not jnp.issubdtype(y.dtype, jnp.inexact):
        y = y.astype(jnp.result_type(float))
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"`y_train` must have shape (n,) or (n, k), got {y.shape}.")
    n, k = y.shape
    if is_concrete(ridge) and not (np.isfinite(float(ridge)) and float(ridge) >= 0):
        raise ValueError(f"`ridge` must be non-negative and finite, got {ridge!r}.")
    kt, ks, shared = _layout(kernel_train, kernel_test, y)
    dtype = jnp.result_type(kt.dtype, y.dtype)
    kt, ks, y = kt.astype(dtype), ks.astype(dtype), y.astype(dtype)
    m = ks.shape[0] if shared else ks.shape[0] // k
    u0 = jnp.zeros((n, k), dtype) if u0_train is None else jnp.asarray(u0_train, dtype)
    us0 = jnp.zeros((m, k), dtype) if u0_test is None else jnp.asarray(u0_test, dtype)
    if u0.shape != (n, k) or us0.shape != (m, k):
        raise ValueError(
            f"`u0_train`/`u0_test` must have shapes {(n, k)} and {(m, k)}, got "
            f"{u0.shape} and {us0.shape}."
        )
    for name, v in (("kernel_train", kt), ("kernel_test", ks)):
        check_finite(name, v)
    lam = jnp.asarray(ridge, dtype)
    if relative_ridge:
        lam = lam * jnp.mean(jnp.diag(kt))
    if t is None:
        return check_predictions(_infinite(kt, ks, y, u0, us0, lam, shared, symmetric))
    if not symmetric:
        raise ValueError(
            "Finite-time predictions need a symmetric `kernel_train` (an eigendecomposition); "
            "pass `t=None` for the t = ∞ limit of a non-symmetric kernel."
        )
    ts = jnp.asarray(t, dtype)
    if is_concrete(ts) and not bool(jnp.all(jnp.isfinite(ts) & (ts >= 0))):
        raise ValueError(f"`t` must be finite and non-negative, got {t!r}.")
    u, us, _, _ = _finite(kt, ks, u0, us0, y, jnp.asarray(learning_rate, dtype), ts, lam)
    return check_predictions(Outputs(u[0], us[0]) if ts.ndim == 0 else Outputs(u, us))


@eqx.filter_jit
def _finite(kt, ks, u0, us0, y, learning_rate, ts, lam):
    return mse_flow(kt, ks, u0, us0, y, learning_rate, ts, lam)


@eqx.filter_jit
def _infinite(kt, ks, y, u0, us0, lam, shared: bool, symmetric: bool):
    n, k = y.shape
    rhs = (y - u0) if shared else (y - u0).reshape(-1, 1)
    alpha = ridge_solve(kt, rhs, lam, symmetric)
    train = u0 + (kt @ alpha).reshape(n, k)
    test = us0 + (ks @ alpha).reshape(-1, k)
    return Outputs(train, test)


def check_predictions(out: Outputs, what: str = "Kernel regression") -> Outputs:
    """Raise a clear error if `out` holds non-finite values (concrete arrays only)."""
    for part in out:
        if is_concrete(part) and not bool(jnp.all(jnp.isfinite(part))):
            raise ValueError(
                f"{what} produced non-finite predictions: `kernel_train` is singular or not "
                "positive definite (e.g. repeated inputs). Pass `ridge` > 0."
            )
    return out


__all__ = ["decay_integral", "kernel_regression", "mse_flow", "ridge_solve"]
