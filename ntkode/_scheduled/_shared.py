r"""`SharedKernelGrid`: one `(n, n)` kernel per node shared by the `k` outputs, $\Theta\otimes I_k$.

A network with `k` outputs has an `(n·k)²` NTK: `(n, n, k, k)` blocks
$\Theta(x_i, x_j)_{ab}$. For classifiers the off-diagonal output blocks are small and the
diagonal ones alike (exactly so at infinite width, and for the last dense layer's own
contribution at any width: Jacot et al. 2018; Novak et al. 2022 call such kernels
"output-traced"), so the kernel is often replaced by $\bar\Theta \otimes I_k$ with
$\bar\Theta = \operatorname{tr}_k \Theta / k$, the mean diagonal block (`ntkode.ntk(...,
trace=True) / k`). Stored that way a node costs $k^2$ times less memory and a product
$k$ times less work: at `n = 1,437`, `k = 10` (the **digits** problem), 16 MB per node
instead of 1.65 GB in float64. Whether the full blocks are needed is measured, not assumed:
the comparison study reports both.

In the example-major flat layout of the outputs (`u.reshape(-1)`),
$(\bar\Theta\otimes I_k)\,\mathrm{vec}(V) = \mathrm{vec}(\bar\Theta V)$ for `V` `(n, k)`, and
the eigenvectors are those of $\bar\Theta$ on each output column: spectra have `n` rows
(`ntkode/_scheduled/_exact.py` reads the residual as an `(n, k)` matrix for them).
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._dense import KernelGrid, check_kernels, default_tol, inexact
from ._grid import AbstractKernelGrid, check_nodes, init_metadata
from ._low_rank import LowRankKernelGrid


def _kron(kernels: Array, k: int) -> Array:
    """`(G, a, b)` kernels as `(G, a·k, b·k)` flat kernels $K \\otimes I_k$."""
    eye = jnp.eye(k, dtype=kernels.dtype)
    G, a, b = kernels.shape
    return jnp.einsum("gij,cd->gicjd", kernels, eye).reshape(G, a * k, b * k)


class SharedKernelGrid(AbstractKernelGrid):
    r"""Kernels $\bar\Theta_g \otimes I_k$ at nodes $s_1 < \dots < s_G$: one `(n, n)` per node.

    **Arguments:**

    - `nodes`: strictly increasing scheduling values, `(G,)`.
    - `kernel_train`: `(G, n, n)` train kernels $\bar\Theta_g(X, X)$, shared by the outputs.
    - `kernel_test`: `(G, m, n)` test kernels $\bar\Theta_g(X_*, X)$; default none.
    - `n_outputs`: `k`, the outputs that share each kernel (default 1).
    - `times`, `u0_train`, `u0_test`, `psd_tol`: as in [`ntkode.KernelGrid`][].

    Built from a network by [`ntkode.KernelGrid.from_params`][] or
    [`ntkode.KernelGrid.from_solution`][] with `trace=True`.
    """

    nodes: Float[Array, " G"]
    kernel_train: Float[Array, "G n n"]
    kernel_test: Float[Array, "G m n"]
    times: Float[Array, " G"] | None
    u0_train: Float[Array, "n k"] | None
    u0_test: Float[Array, "m k"] | None
    n_outputs: int = eqx.field(static=True)

    def __init__(
        self,
        nodes: Float[ArrayLike, " G"],
        kernel_train: Float[ArrayLike, "G n n"],
        kernel_test: Float[ArrayLike, "G m n"] | None = None,
        *,
        n_outputs: int = 1,
        times: Float[ArrayLike, " G"] | None = None,
        u0_train: Float[ArrayLike, "n k"] | None = None,
        u0_test: Float[ArrayLike, "m k"] | None = None,
        psd_tol: float | None | str = "auto",
    ):
        nodes = inexact(nodes)
        check_nodes(nodes)
        G = nodes.shape[0]
        kt = inexact(kernel_train)
        if kt.ndim != 3 or kt.shape[1] != kt.shape[2]:
            raise ValueError(
                f"`kernel_train` has shape {kt.shape}; expected (G, n, n), one kernel per node "
                "shared by every output."
            )
        if kt.shape[0] != G:
            raise ValueError(
                f"`kernel_train` holds {kt.shape[0]} kernels but `nodes` has {G} values; "
                "pass one kernel per node."
            )
        if isinstance(n_outputs, bool) or not isinstance(n_outputs, int) or n_outputs < 1:
            raise ValueError(f"`n_outputs` must be a positive integer, got {n_outputs!r}.")
        n = kt.shape[1]
        if kernel_test is None:
            ks = jnp.zeros((G, 0, n), kt.dtype)
        else:
            ks = jnp.asarray(kernel_test, kt.dtype)
            if ks.ndim != 3 or ks.shape[0] != G or ks.shape[2] != n:
                raise ValueError(
                    f"`kernel_test` has shape {ks.shape}; expected ({G}, m, {n}) to match "
                    "`kernel_train`."
                )
        tol = default_tol(kt.dtype) if psd_tol == "auto" else psd_tol
        if isinstance(tol, str):
            raise ValueError(f"`psd_tol` must be a number, None or 'auto', got {psd_tol!r}.")
        self.kernel_train = check_kernels("kernel_train", kt, G, tol)
        self.kernel_test = check_kernels("kernel_test", ks, G, None)
        self.nodes = nodes.astype(kt.dtype)
        init_metadata(self, kt.dtype, times, u0_train, u0_test, n_outputs)

    @property
    def dim(self) -> int:
        return self.kernel_train.shape[-1] * self.n_outputs

    @property
    def n_test_outputs(self) -> int:
        return self.kernel_test.shape[-2] * self.n_outputs

    @property
    def rank(self) -> int:
        return self.dim

    def _apply(self, kernels, idx, w, v):
        V = v.reshape(-1, self.n_outputs)
        return jnp.einsum("a,aij,jc->ic", w, kernels[idx], V).reshape(-1)

    def train_matvec(self, idx, w, v):
        return self._apply(self.kernel_train, idx, w, v)

    def test_matvec(self, idx, w, v):
        return self._apply(self.kernel_test, idx, w, v)

    def piece_operators(self, idx, w):
        train = jnp.einsum("a,aij->ij", w, self.kernel_train[idx])
        test = jnp.einsum("a,aij->ij", w, self.kernel_test[idx])
        k = self.n_outputs
        return (lambda v: (train @ v.reshape(-1, k)).reshape(-1)), (
            lambda v: (test @ v.reshape(-1, k)).reshape(-1)
        )

    def spectral(self):
        # n-row bases: each eigenvector of the shared kernel serves every output column.
        lam, vec = jax.vmap(jnp.linalg.eigh)(self.kernel_train)
        return lam, vec, jnp.einsum("gij,gjr->gir", self.kernel_test, vec)

    def piece_spectral(self, idx, w):
        lam, vec = jnp.linalg.eigh(jnp.einsum("a,aij->ij", w, self.kernel_train[idx]))
        return lam, vec, jnp.einsum("a,aij,jr->ir", w, self.kernel_test[idx], vec)

    def eigenvalues(self):
        # Each eigenvalue of the shared kernel once per output (sorted stays sorted).
        lam = jax.vmap(jnp.linalg.eigvalsh)(self.kernel_train)
        return jnp.repeat(lam, self.n_outputs, axis=1)

    def dense_train(self):
        return _kron(self.kernel_train, self.n_outputs)

    def dense_test(self):
        return _kron(self.kernel_test, self.n_outputs)

    def compress(self, rank: int, **options: Any) -> LowRankKernelGrid:
        r"""A low-rank copy: the top-`rank` eigenpairs of each shared kernel, for every output.

        $\bar\Theta \approx V_r \Lambda_r V_r^\top$ by [`KernelGrid.compress`][] (its
        `options`: `krylov_dim`, or `sketch` and `power_iterations`) on the `(n, n)`
        kernels, returned as the full-block [`ntkode.LowRankKernelGrid`][] of
        $(V_r \Lambda_r V_r^\top) \otimes I_k$: `rank·k` eigenpairs (each eigenvalue once
        per output), eigenvectors $V_r \otimes I_k$ and test basis
        $(\bar\Theta_* V_r) \otimes I_k$, so every low-rank solver applies. The relative
        compression errors are those of the shared kernels (the Kronecker factor scales
        both norms alike).
        """
        k = self.n_outputs
        shared = KernelGrid(self.nodes, self.kernel_train, self.kernel_test, psd_tol=None)
        low = shared.compress(rank, **options)
        return LowRankKernelGrid(
            self.nodes,
            jnp.repeat(low.eigvals, k, axis=1),
            _kron(low.eigvecs, k),
            _kron(low.test_basis, k),
            compression_error=low.compression_error,
            n_outputs=k,
            times=self.times,
            u0_train=self.u0_train,
            u0_test=self.u0_test,
        )

    def with_zero_test(self, rows):
        if rows % self.n_outputs:
            raise ValueError(f"`rows` must be a multiple of n_outputs={self.n_outputs}.")
        zero = jnp.zeros((self.size, rows // self.n_outputs, self.kernel_train.shape[-1]))
        return eqx.tree_at(lambda g: g.kernel_test, self, zero.astype(self.kernel_train.dtype))


__all__ = ["SharedKernelGrid"]
