r"""`LowRankKernelGrid`: each node's kernels through `r` eigenpairs of its train kernel.

A node stores $\Lambda_g$ `(r,)`, $V_g$ `(n·k, r)` and the projected test kernel
$B_g = \Theta_g(X_*, X) V_g$ `(m·k, r)`, so that
$\Theta_g(X, X) \approx V_g \Lambda_g V_g^\top$ and $\Theta_g(X_*, X) \approx B_g V_g^\top$:
memory $O(G (n + m) k r)$ instead of $O(G (n + m) n k^2)$. The train residual outside
$\operatorname{span} V_g$ is not moved by node $g$ (its kernel is zero there), which is exactly
how the exact solver and the ODE vector field treat it. Made by [`KernelGrid.compress`][] or
[`ntkode.KernelGrid.from_params`][] with `rank=`; the compression error is kept beside the
kernels.
"""

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._grid import AbstractKernelGrid, check_nodes, init_metadata


class LowRankKernelGrid(AbstractKernelGrid):
    r"""Neural tangent kernels at nodes $s_1 < \dots < s_G$, each through `r` eigenpairs.

    **Arguments:**

    - `nodes`: strictly increasing scheduling values, `(G,)`.
    - `eigvals`: eigenvalues $\Lambda_g$ of each train kernel, `(G, r)`, ascending.
    - `eigvecs`: the matching orthonormal eigenvectors $V_g$, `(G, n·k, r)`.
    - `test_basis`: $\Theta_g(X_*, X) V_g$, `(G, m·k, r)`; default none (zero rows).
    - `compression_error`: relative Frobenius errors of the train (`[:, 0]`) and test
      (`[:, 1]`) kernels at each node, `(G, 2)`, or `None` when unknown.
    - `n_outputs`, `times`, `u0_train`, `u0_test`: as in [`ntkode.KernelGrid`][].
    """

    nodes: Float[Array, " G"]
    eigvals: Float[Array, "G r"]
    eigvecs: Float[Array, "G nk r"]
    test_basis: Float[Array, "G mk r"]
    compression_error: Float[Array, "G 2"] | None
    times: Float[Array, " G"] | None
    u0_train: Float[Array, "n k"] | None
    u0_test: Float[Array, "m k"] | None
    n_outputs: int = eqx.field(static=True)

    def __init__(
        self,
        nodes: Float[ArrayLike, " G"],
        eigvals: Float[ArrayLike, "G r"],
        eigvecs: Float[ArrayLike, "G nk r"],
        test_basis: Float[ArrayLike, "G mk r"] | None = None,
        *,
        compression_error: Float[ArrayLike, "G 2"] | None = None,
        n_outputs: int = 1,
        times: Float[ArrayLike, " G"] | None = None,
        u0_train: Float[ArrayLike, "n k"] | None = None,
        u0_test: Float[ArrayLike, "m k"] | None = None,
    ):
        vec = jnp.asarray(eigvecs)
        if not jnp.issubdtype(vec.dtype, jnp.inexact):
            vec = vec.astype(jnp.result_type(float))
        dtype = vec.dtype
        nodes = jnp.asarray(nodes, dtype)
        lam = jnp.asarray(eigvals, dtype)
        check_nodes(nodes)
        G = nodes.shape[0]
        if vec.ndim != 3 or vec.shape[0] != G:
            raise ValueError(
                f"`eigvecs` has shape {vec.shape}; expected ({G}, n·k, r), one basis per node."
            )
        nk, r = vec.shape[1:]
        if lam.shape != (G, r):
            raise ValueError(
                f"`eigvals` has shape {lam.shape}; expected ({G}, {r}) like `eigvecs`."
            )
        if nk % n_outputs:
            raise ValueError(f"`eigvecs` has {nk} rows, not a multiple of n_outputs={n_outputs}.")
        basis = (
            jnp.zeros((G, 0, r), dtype) if test_basis is None else jnp.asarray(test_basis, dtype)
        )
        if basis.ndim != 3 or basis.shape[0] != G or basis.shape[2] != r:
            raise ValueError(f"`test_basis` has shape {basis.shape}; expected ({G}, m·k, {r}).")
        err = None if compression_error is None else jnp.asarray(compression_error, dtype)
        if err is not None and err.shape != (G, 2):
            raise ValueError(f"`compression_error` has shape {err.shape}; expected ({G}, 2).")
        self.nodes = nodes
        self.eigvals = lam
        self.eigvecs = vec
        self.test_basis = basis
        self.compression_error = err
        init_metadata(self, dtype, times, u0_train, u0_test, n_outputs)

    @property
    def dim(self) -> int:
        return self.eigvecs.shape[-2]

    @property
    def n_test_outputs(self) -> int:
        return self.test_basis.shape[-2]

    @property
    def rank(self) -> int:
        return self.eigvals.shape[-1]

    def train_matvec(self, idx, w, v):
        lam, vec = self.eigvals[idx], self.eigvecs[idx]
        return jnp.einsum("a,air,ar,ajr,j->i", w, vec, lam, vec, v)

    def test_matvec(self, idx, w, v):
        return jnp.einsum("a,air,ajr,j->i", w, self.test_basis[idx], self.eigvecs[idx], v)

    def spectral(self):
        return self.eigvals, self.eigvecs, self.test_basis

    def piece_spectral(self, idx, w):
        # Σ_j w_j V_j Λ_j V_jᵀ lives in the span of the stacked bases [V_1 … V_a] = Q R:
        # it is Q (R D Rᵀ) Qᵀ with D = diag(w_j Λ_j), so one QR of an (n·k, a·r) matrix and
        # one (a·r)² eigendecomposition give its exact eigenpairs, O(n·k·(a·r)²) work.
        lam, vec, basis = self.eigvals[idx], self.eigvecs[idx], self.test_basis[idx]
        a, nk, r = vec.shape
        q, R = jnp.linalg.qr(jnp.moveaxis(vec, 0, 1).reshape(nk, a * r))
        small = (R * (w[:, None] * lam).reshape(-1)) @ R.T
        theta, U = jnp.linalg.eigh(0.5 * (small + small.T))
        vecs = q @ U
        proj = jnp.einsum("ajr,jq->arq", vec, vecs)
        return theta, vecs, jnp.einsum("a,amr,arq->mq", w, basis, proj)

    def eigenvalues(self):
        # The kernel is zero outside the stored basis: n·k - r zero eigenvalues.
        lam = self.eigvals
        pad = jnp.zeros((lam.shape[0], self.dim - self.rank), lam.dtype)
        return jnp.sort(jnp.concatenate([pad, lam], axis=1), axis=1)

    def dense_train(self):
        return jnp.einsum("gir,gr,gjr->gij", self.eigvecs, self.eigvals, self.eigvecs)

    def dense_test(self):
        return jnp.einsum("gir,gjr->gij", self.test_basis, self.eigvecs)

    def with_zero_test(self, rows):
        zero = jnp.zeros((self.size, rows, self.rank), self.eigvals.dtype)
        return eqx.tree_at(lambda g: g.test_basis, self, zero)


__all__ = ["LowRankKernelGrid"]
