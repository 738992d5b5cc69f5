r"""Low-rank kernels from `m` landmark columns only: the Nyström approximation.

A dense train kernel costs $n^2$ kernel entries (each an inner product of two Jacobian rows of
`P` parameters). With landmarks $S \subset X$ of `m` training points, the Nyström
approximation (Williams & Seeger 2001, "Using the Nyström method to speed up kernel
machines", NeurIPS; Drineas & Mahoney 2005, JMLR 6) needs only the columns
$C = \Theta(X, X_S)$ `(n·k, m·k)` and $W = \Theta(X_S, X_S)$ (rows $S$ of $C$):

$$\Theta \approx C W^{+} C^\top = F F^\top, \qquad F = C E\,\omega^{-1/2},
\quad W = E \omega E^\top,$$

`O(n·m)` kernel entries instead of `O(n²)`. The eigenpairs come from the Gram matrix of
$F$: $F^\top F = U s U^\top$ gives $V = F U s^{-1/2}$, $\Lambda = s$ (an `(m·k)²`
eigendecomposition, GEMMs on `n`-row matrices). Test kernels use the same landmarks,
$\Theta(X_*, X) \approx \Theta(X_*, X_S) W^{+} C^\top$, so the stored test basis is
$\Theta(X_*, X_S) E \omega^{-1/2} U s^{1/2}$. Landmarks are a seeded uniform sample of the
training points.

Without the dense kernel the compression error cannot be computed exactly; it is
*estimated* from `samples` kernel rows $\Theta(X_R, X)$ at a seeded random sample $R$ of
train (and test) points: $\|\Theta_R - \tilde\Theta_R\|_F / \|\Theta_R\|_F$, the relative
Frobenius error of those rows (`samples·n` more kernel entries).
"""

from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._data import Dataset
from .._core._kernel_flow import flatten_kernel
from .._ntk import ntk
from ._low_rank import LowRankKernelGrid


def landmark_indices(n: int, landmarks: int, seed: int = 0) -> np.ndarray:
    """`landmarks` distinct training indices, a seeded uniform sample, sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=landmarks, replace=False))


def check_landmarks(landmarks: Any, n: int) -> int:
    if isinstance(landmarks, bool) or not isinstance(landmarks, int | np.integer):
        raise TypeError(f"`landmarks` must be an integer, got {landmarks!r}.")
    if not 1 <= landmarks <= n:
        raise ValueError(
            f"`landmarks` must be between 1 and the {n} training points, got {landmarks}."
        )
    return int(landmarks)


def _factor(columns, rows_idx, k):
    """`F` with `F Fᵀ = C W⁺ Cᵀ`, and `E ω^{-1/2}` (zero columns where `W` is singular)."""
    sel = (rows_idx[:, None] * k + np.arange(k)[None, :]).reshape(-1)
    W = columns[sel]
    omega, E = jnp.linalg.eigh(0.5 * (W + W.T))
    tol = W.shape[0] * float(jnp.finfo(W.dtype).eps) * jnp.max(jnp.abs(omega))
    keep = omega > tol
    whiten = E * jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, omega, 1.0)), 0.0)
    return columns @ whiten, whiten


def _eigen(F):
    """Orthonormal eigenpairs of `F Fᵀ` from `FᵀF = U s Uᵀ` (zero columns for s ≈ 0)."""
    s, U = jnp.linalg.eigh(F.T @ F)
    keep = s > F.shape[1] * float(jnp.finfo(F.dtype).eps) * jnp.max(jnp.abs(s))
    inv = jnp.where(keep, 1.0 / jnp.sqrt(jnp.where(keep, s, 1.0)), 0.0)
    return jnp.where(keep, s, 0.0), F @ (U * inv), U * jnp.sqrt(jnp.where(keep, s, 0.0))


def _row_error(exact, approx):
    norm = jnp.linalg.norm(exact)
    return jnp.linalg.norm(exact - approx) / jnp.where(norm > 0, norm, 1.0)


def nystrom_node(
    net: Any,
    data: Dataset,
    landmarks: int,
    *,
    samples: int = 64,
    seed: int = 0,
    **kw: Any,
) -> tuple[Float[Array, " r"], Float[Array, "nk r"], Float[Array, "mk r"], Float[Array, " 2"]]:
    """`(eigvals, eigvecs, test_basis, error_estimate)` of one network's kernels by Nyström.

    `kw` are [`ntkode.ntk`][]'s options (`implementation`, `block_size`). The rank is
    `landmarks·k` (directions where the landmark kernel is singular come out as zero
    columns with eigenvalue 0).
    """
    n, m, k = data.n_train, data.n_test, data.n_outputs
    idx = landmark_indices(n, landmarks, seed)
    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(n, size=min(samples, n), replace=False))
    trows = np.sort(rng.choice(m, size=min(samples, m), replace=False)) if m else rows[:0]
    # One kernel call for the landmark columns and the sampled rows of the error estimates:
    # by symmetry a sampled row K(x_i, X) is the column K(X, x_i)ᵀ, so the training
    # points' Jacobians are computed once.
    cols = [data.x_train[jnp.asarray(idx)], data.x_train[jnp.asarray(rows)]]
    if m:
        cols.append(data.x_test[jnp.asarray(trows)])
    flat = lambda a, r, c: flatten_kernel(a, r, c, k, "kernel")
    every = flat(ntk(net, data.x_train, jnp.concatenate(cols), **kw), n, sum(map(len, cols)))
    split = np.cumsum([landmarks * k, len(rows) * k])
    C, exact, exact_t = jnp.split(every, split, axis=1)
    F, whiten = _factor(C, idx, k)
    lam, V, coords = _eigen(F)  # V = F U s^{-1/2}; Fᵀ V = U s^{1/2} = coords
    sel = jnp.asarray((rows[:, None] * k + np.arange(k)[None, :]).reshape(-1))
    err_train = _row_error(exact.T, (V[sel] * lam) @ V.T)
    if m:
        Cs = flat(ntk(net, data.x_test, cols[0], **kw), m, landmarks)
        basis = Cs @ (whiten @ coords)
        tsel = jnp.asarray((trows[:, None] * k + np.arange(k)[None, :]).reshape(-1))
        err_test = _row_error(exact_t.T, basis[tsel] @ V.T)
    else:
        basis = jnp.zeros((0, V.shape[1]), V.dtype)
        err_test = jnp.zeros((), V.dtype)
    # Ascending, like every other grid's spectra.
    order = jnp.argsort(lam)
    return lam[order], V[:, order], basis[:, order], jnp.stack([err_train, err_test])


def nystrom_grid(
    states: list[Any],
    static: Any,
    data: Dataset,
    nodes: Float[Array, " G"],
    landmarks: int,
    *,
    meta: dict,
    **kw: Any,
) -> LowRankKernelGrid:
    """A [`ntkode.LowRankKernelGrid`][] of Nyström kernels at each parameter state."""
    landmarks = check_landmarks(landmarks, data.n_train)
    parts = [nystrom_node(eqx.combine(p, static), data, landmarks, **kw) for p in states]
    lam, vec, basis, err = (jnp.stack(a) for a in zip(*parts, strict=True))
    meta = {key: v for key, v in meta.items() if key != "psd_tol"}
    return LowRankKernelGrid(nodes, lam, vec, basis, compression_error=err, **meta)


__all__ = ["check_landmarks", "landmark_indices", "nystrom_grid", "nystrom_node"]
