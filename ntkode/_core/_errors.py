"""Input validation that names the argument and says what to do.

Checks run only on concrete values: inside `jit`/`vmap` the arrays are tracers and the
checks are skipped (they already ran when the object was first built outside).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when `x` holds actual numbers (not a JAX tracer)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, x: Any) -> None:
    """Raise `ValueError` if the array `x` (argument `name`) holds NaN or infinity."""
    if not is_concrete(x):
        return
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # A global array spanning several processes (jax.distributed): count where it lives;
        # the count comes back replicated, readable by every process.
        bad = int(_count_nonfinite(x))
    else:
        arr = np.asarray(x)
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(
            f"`{name}` contains {bad} non-finite value(s) (NaN or infinity); "
            "remove or impute them before building the problem."
        )


@jax.jit
def _count_nonfinite(x):
    return jnp.sum(~jnp.isfinite(x))


def check_nonempty(name: str, x: Any) -> None:
    """Raise if `x` has no rows."""
    if jnp.ndim(x) == 0 or jnp.shape(x)[0] == 0:
        raise ValueError(
            f"`{name}` is empty (shape {jnp.shape(x)}); pass at least one example "
            "along the leading axis."
        )


def check_positive(name: str, value: Any) -> None:
    """Raise if a scalar is not strictly positive (and finite)."""
    if not is_concrete(value):
        return
    v = np.asarray(value)
    if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"`{name}` must be positive and finite, got {value!r}.")


def check_tspan(tspan: Any) -> tuple[Any, Any]:
    """Validate `(t0, t1)`: two finite numbers with `t1 > t0`."""
    try:
        t0, t1 = tspan
    except (TypeError, ValueError):
        raise ValueError(f"`tspan` must be a pair (t0, t1), got {tspan!r}.") from None
    if is_concrete(t0) and is_concrete(t1):
        a, b = float(t0), float(t1)
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"`tspan` must be finite, got {tspan!r}.")
        if b <= a:
            what = "empty" if b == a else "reversed"
            raise ValueError(
                f"`tspan` = ({a}, {b}) is {what}: training time runs forwards, so pass "
                "(t0, t1) with t1 > t0."
            )
    return t0, t1


def default_psd_tol(dtype) -> float:
    """Relative tolerance of PSD checks: round-off in Gram matrices J Jᵀ leaves eigenvalues of
    order sqrt(eps)·λ_max at worst in practice."""
    return float(np.sqrt(np.finfo(dtype).eps))


def check_psd_kernels(name: str, kernels: Any, psd_tol: float | None, label: str = "node") -> None:
    r"""Raise a sentence unless every `(N, N)` matrix in the stack `kernels` `(G, N, N)` is
    symmetric and positive semi-definite within the relative tolerance `psd_tol`.

    A kernel flow $du/dt = -\eta\Theta\nabla_u L$ with a negative eigenvalue grows the loss
    exponentially along that eigenvector, which no solver reports as an error; neural
    tangent kernels are Gram matrices and have none. Skipped for `psd_tol=None` and on
    tracers. `label` names the stack's entries in the message (`"node"` for kernel grids).
    """
    if psd_tol is None or not is_concrete(kernels):
        return
    if isinstance(kernels, jax.Array) and not kernels.is_fully_addressable:
        # A global array spanning several processes (jax.distributed): every process
        # gathers the whole stack (a collective, called by all alike) and checks it.
        from jax.experimental import multihost_utils

        kernels = multihost_utils.process_allgather(kernels, tiled=True)
    a = np.asarray(kernels, dtype=float)
    scale = max(float(np.max(np.abs(a))) if a.size else 0.0, np.finfo(float).tiny)
    asym = float(np.max(np.abs(a - np.swapaxes(a, -1, -2)))) if a.size else 0.0
    if asym > 1e-4 * scale + 10 * psd_tol * scale:
        raise ValueError(
            f"`{name}` is not symmetric (max |K - Kᵀ| = {asym:.3g}, max |K| = {scale:.3g}); "
            "a train kernel Θ(X, X) is symmetric. Did you pass a test kernel Θ(X*, X)?"
        )
    sym = 0.5 * (a + np.swapaxes(a, -1, -2))
    for g in range(sym.shape[0]):
        # A Cholesky factorisation of K + tol·‖K‖·I exists iff λ_min > -tol·‖K‖: six times
        # cheaper than the spectrum, which is computed only to report a failure.
        norm = max(float(np.max(np.sum(np.abs(sym[g]), axis=1))), np.finfo(float).tiny)
        try:
            np.linalg.cholesky(sym[g] + psd_tol * norm * np.eye(sym.shape[-1]))
            continue
        except np.linalg.LinAlgError:
            lam = np.linalg.eigvalsh(sym[g])
        lo, hi = float(lam[0]), float(np.max(np.abs(lam)))
        if lo >= -psd_tol * hi:
            continue
        where = f" ({label} {g})" if a.shape[0] > 1 else ""
        raise ValueError(
            f"`{name}` is not positive semi-definite{where}: it has eigenvalue {lo:.6g} "
            f"(largest |eigenvalue| {hi:.6g}; tolerance {psd_tol:.1g} relative), so the "
            "kernel flow would grow the loss exponentially along it. Neural tangent kernels "
            "are Gram matrices J Jᵀ; check how the kernel was built, or pass `psd_tol=None` "
            "to skip this check."
        )
