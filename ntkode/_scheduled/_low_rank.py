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

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._grid import AbstractKernelGrid, check_finite_per_node, check_nodes, init_metadata


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
        for name, a in (("eigvals", lam), ("eigvecs", vec), ("test_basis", basis)):
            check_finite_per_node(name, a)
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
        lam, mix, test = self.piece_frame(idx, w)
        return lam, stacked(self.eigvecs[idx]) @ mix, test

    def frame_bases(self):
        return self.eigvecs

    def piece_frames(self, idx, w):
        # Pieces of a piecewise-constant schedule combine neighbouring nodes (g, g + 1): their
        # cross-Grams V_gᵀV_{g+1} are computed once per pair, G - 1 GEMMs, and looked up.
        if idx.shape[1] != 2 or self.size < 2:
            return super().piece_frames(idx, w)
        V = self.eigvecs
        adjacent = jnp.einsum("gir,gis->grs", V[:-1], V[1:])

        def one(iw):
            i, wi = iw
            lo = jnp.clip(jnp.minimum(i[0], i[1]), 0, self.size - 2)
            table = jnp.where(i[0] < i[1], adjacent[lo], adjacent[lo].T)
            # Not a neighbouring pair and both weights used: compute it (never, for the
            # built-in interpolations; a zero weight makes the cross-Gram irrelevant).
            direct = (jnp.abs(i[0] - i[1]) != 1) & jnp.all(wi != 0)
            cross = jax.lax.cond(direct, lambda: V[i[0]].T @ V[i[1]], lambda: table)
            return self.piece_frame(i, wi, cross=cross)

        return jax.lax.map(one, (idx, w))

    def piece_frame(self, idx, w, cross=None):
        # Σ_j w_j V_j Λ_j V_jᵀ = F D Fᵀ with F = [V_1 … V_a] `(n·k, a·r)` and D = diag(w_j Λ_j).
        # Its eigenvectors with nonzero eigenvalues lie in span F: they are returned as F · mix,
        # from the small Gram matrix FᵀF alone. FᵀF has identity diagonal blocks (each V_j is
        # orthonormal), so the only n-row work is the cross-Grams V_iᵀV_j, one GEMM per pair
        # of nodes; F itself is never formed (the solver applies F · mix node by node), and
        # the projections V_jᵀ V = (FᵀF)_j mix of the test basis are small products.
        # - D ≥ 0 (PSD kernels, convex weights): F D Fᵀ = A Aᵀ with A = F D^{1/2}; its nonzero
        #   eigenpairs are those of AᵀA = D^{1/2} (FᵀF) D^{1/2} = U θ Uᵀ, with eigenvectors
        #   A U θ^{-1/2} (the SVD of A through its Gram matrix): one (a·r)² eigh.
        # - Otherwise (a kernel that is not PSD, or extrapolating weights): FᵀF = W s Wᵀ gives
        #   the orthonormal basis F W s^{-1/2} of span F (directions with s at round-off level
        #   dropped: F is zero there), in which the kernel is s^{1/2} Wᵀ D W s^{1/2} = U θ Uᵀ:
        #   mix = W s^{-1/2} U, two (a·r)² eighs.
        # Eigenvalues at round-off level (|θ| ≤ a·r·ε·max|θ|: kernels zero there, or nodes
        # sharing eigenvectors) come out as θ = 0 with zero columns; every other eigenvector
        # stays orthonormal.
        lam, vec, basis = self.eigvals[idx], self.eigvecs[idx], self.test_basis[idx]
        a, nk, r = vec.shape
        d = (w[:, None] * lam).reshape(-1)
        eye = jnp.eye(r, dtype=vec.dtype)
        blocks = [[eye] * a for _ in range(a)]
        for i in range(a):
            for j in range(i + 1, a):
                c = vec[i].T @ vec[j] if cross is None or a != 2 else cross
                blocks[i][j], blocks[j][i] = c, c.T
        gram = jnp.block(blocks)
        tiny = a * r * float(jnp.finfo(vec.dtype).eps)

        def small_eigh(small):
            theta, U = jnp.linalg.eigh(0.5 * (small + small.T))
            keep = jnp.abs(theta) > tiny * jnp.max(jnp.abs(theta))
            return jnp.where(keep, theta, 0.0), U * keep[None, :]

        def by_gram(_):
            root = jnp.sqrt(jnp.maximum(d, 0.0))
            theta, U = small_eigh(root[:, None] * gram * root[None, :])
            inv = jnp.where(theta > 0, 1.0 / jnp.sqrt(jnp.where(theta > 0, theta, 1.0)), 0.0)
            return theta, root[:, None] * U * inv[None, :]

        def indefinite(_):
            s, W = jnp.linalg.eigh(gram)
            keep = s > tiny * jnp.max(s)
            root = jnp.sqrt(jnp.where(keep, s, 0.0))
            inv = jnp.where(keep, 1.0 / jnp.where(keep, root, 1.0), 0.0)
            Ws = W * root[None, :]
            theta, U = small_eigh((Ws.T * d) @ Ws)
            return theta, (W * inv[None, :]) @ U

        theta, mix = jax.lax.cond(jnp.all(d >= 0), by_gram, indefinite, None)
        # Σ_j w_j B_j (V_jᵀ V) from the projections `(a·r, q)` stacked by node.
        test = jnp.einsum("a,amr,arq->mq", w, basis, (gram @ mix).reshape(a, r, -1))
        return theta, mix, test

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


def stacked(bases: Float[Array, "a nk r"]) -> Float[Array, "nk ar"]:
    """The node bases `(a, n·k, r)` side by side, `(n·k, a·r)`."""
    a, nk, r = bases.shape
    return jnp.moveaxis(bases, 0, 1).reshape(nk, a * r)


def stack_low_rank(grids: list[LowRankKernelGrid], nodes, **meta: Any) -> LowRankKernelGrid:
    """One low-rank grid from single-node ones (in the given order)."""
    cat = lambda name: jnp.concatenate([getattr(g, name) for g in grids])
    errs = [g.compression_error for g in grids]
    err = None if any(e is None for e in errs) else jnp.concatenate(errs)  # type: ignore[arg-type]
    return LowRankKernelGrid(
        nodes, cat("eigvals"), cat("eigvecs"), cat("test_basis"), compression_error=err, **meta
    )


__all__ = ["LowRankKernelGrid", "stack_low_rank"]
