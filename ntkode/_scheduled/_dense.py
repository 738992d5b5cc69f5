r"""`KernelGrid`: a kernel grid stored densely, `(G, n·k, n·k)` train and `(G, m·k, n·k)` test.

The constructor checks what a grid of neural tangent kernels must be (finite, symmetric and
positive semi-definite train kernels $J J^\top$, one per strictly increasing node) and says
which node breaks the rule; [`KernelGrid.compress`][] turns it into a
[`ntkode.LowRankKernelGrid`][].
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .._core._errors import is_concrete
from .._core._kernel_flow import flatten_kernel
from ._grid import AbstractKernelGrid, check_finite_per_node, check_nodes, init_metadata
from ._lanczos import lanczos, ritz
from ._low_rank import LowRankKernelGrid


def check_kernels(name: str, k: Any, G: int, psd_tol: float | None) -> Array:
    """Finite, symmetric within tolerance (then symmetrised), PSD within tolerance."""
    if not is_concrete(k):
        return 0.5 * (k + jnp.swapaxes(k, -1, -2)) if psd_tol is not None else k
    check_finite_per_node(name, k)
    a = np.asarray(k)
    if psd_tol is None:
        return k
    scale = max(float(np.max(np.abs(a))), np.finfo(a.dtype).tiny)
    asym = float(np.max(np.abs(a - np.swapaxes(a, -1, -2))))
    if asym > 1e-4 * scale + 10 * psd_tol * scale:
        raise ValueError(
            f"`{name}` is not symmetric (max |K - Kᵀ| = {asym:.3g}, max |K| = {scale:.3g}); "
            "a train kernel Θ(X, X) is symmetric. Did you pass a test kernel Θ(X*, X)?"
        )
    sym = 0.5 * (a + np.swapaxes(a, -1, -2))
    lam = np.linalg.eigvalsh(sym)
    lo, hi = lam[:, 0], np.max(np.abs(lam), axis=1)
    bad = np.flatnonzero(lo < -psd_tol * np.maximum(hi, np.finfo(a.dtype).tiny))
    if bad.size:
        g = int(bad[np.argmin(lo[bad])])
        raise ValueError(
            f"`{name}` is not positive semi-definite: node {g} has eigenvalue {lo[g]:.6g} "
            f"(largest |eigenvalue| {hi[g]:.6g}; tolerance {psd_tol:.1g} relative). Neural "
            "tangent kernels are Gram matrices J Jᵀ; check how the kernel was built, or pass "
            "`psd_tol=None` to skip this check."
        )
    return jnp.asarray(sym, dtype=a.dtype)


def default_tol(dtype) -> float:
    # Round-off in J Jᵀ gives eigenvalues of order sqrt(eps)·λ_max at worst in practice.
    return float(np.sqrt(np.finfo(dtype).eps))


def inexact(x: Any) -> Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float))


class KernelGrid(AbstractKernelGrid):
    r"""Neural tangent kernels $\Theta_1, \dots, \Theta_G$ at nodes $s_1 < \dots < s_G$, dense.

    **Arguments:**

    - `nodes`: strictly increasing scheduling values, shape `(G,)`.
    - `kernel_train`: `(G, n·k, n·k)` or `(G, n, n, k, k)` train kernels $\Theta_g(X, X)$.
    - `kernel_test`: `(G, m·k, n·k)` or `(G, m, n, k, k)` test kernels $\Theta_g(X_*, X)$;
      default none (zero rows: test outputs then stay at their initial values).
    - `n_outputs`: `k`, needed to read flat kernels (default 1).
    - `times`: optional reference times at which the kernels were taken (metadata).
    - `u0_train`, `u0_test`: optional outputs at the reference run's start; a
      [`ntkode.ScheduledKernelProblem`][] starts from them by default.
    - `psd_tol`: relative tolerance of the symmetry/PSD check (default $\sqrt{\epsilon}$);
      `None` skips it.

    Other constructors: [`KernelGrid.from_solution`][], [`KernelGrid.from_params`][];
    [`KernelGrid.compress`][] turns a dense grid into a [`ntkode.LowRankKernelGrid`][].
    """

    nodes: Float[Array, " G"]
    kernel_train: Float[Array, "G nk nk"]
    kernel_test: Float[Array, "G mk nk"]
    times: Float[Array, " G"] | None
    u0_train: Float[Array, "n k"] | None
    u0_test: Float[Array, "m k"] | None
    n_outputs: int = eqx.field(static=True)

    def __init__(
        self,
        nodes: Float[ArrayLike, " G"],
        kernel_train: Float[ArrayLike, "G nk nk"] | Float[ArrayLike, "G n n k k"],
        kernel_test: Float[ArrayLike, "G mk nk"] | Float[ArrayLike, "G m n k k"] | None = None,
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
        if kt.ndim == 5:
            n, n2, k, k2 = kt.shape[1:]
            if n != n2 or k != k2:
                raise ValueError(
                    f"`kernel_train` has shape {kt.shape}; expected (G, n, n, k, k) for a train "
                    "kernel Θ(X, X)."
                )
            n_outputs = k
            kt = jax.vmap(lambda a: flatten_kernel(a, n, n, k, "kernel_train"))(kt)
        if kt.ndim != 3 or kt.shape[1] != kt.shape[2]:
            raise ValueError(
                f"`kernel_train` has shape {kt.shape}; expected (G, n·k, n·k) or (G, n, n, k, k)."
            )
        if kt.shape[0] != G:
            raise ValueError(
                f"`kernel_train` holds {kt.shape[0]} kernels but `nodes` has {G} values; "
                "pass one kernel per node."
            )
        nk = kt.shape[1]
        if nk % n_outputs:
            raise ValueError(
                f"`kernel_train` size {nk} is not a multiple of n_outputs={n_outputs}."
            )
        n = nk // n_outputs
        if kernel_test is None:
            ks = jnp.zeros((G, 0, nk), kt.dtype)
        else:
            ks = jnp.asarray(kernel_test, kt.dtype)
            if ks.ndim == 5:
                m = ks.shape[1]
                ks = jax.vmap(lambda a: flatten_kernel(a, m, n, n_outputs, "kernel_test"))(ks)
            if ks.ndim != 3 or ks.shape[0] != G or ks.shape[2] != nk or ks.shape[1] % n_outputs:
                raise ValueError(
                    f"`kernel_test` has shape {ks.shape}; expected ({G}, m·{n_outputs}, {nk}) or "
                    f"({G}, m, {n}, {n_outputs}, {n_outputs}) to match `kernel_train`."
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
        return self.kernel_train.shape[-2]

    @property
    def n_test_outputs(self) -> int:
        return self.kernel_test.shape[-2]

    @property
    def rank(self) -> int:
        return self.dim

    def train_matvec(self, idx, w, v):
        return jnp.einsum("a,aij,j->i", w, self.kernel_train[idx], v)

    def test_matvec(self, idx, w, v):
        return jnp.einsum("a,aij,j->i", w, self.kernel_test[idx], v)

    def piece_operators(self, idx, w):
        train = jnp.einsum("a,aij->ij", w, self.kernel_train[idx])
        test = jnp.einsum("a,aij->ij", w, self.kernel_test[idx])
        return (lambda v: train @ v), (lambda v: test @ v)

    def spectral(self):
        # One eigendecomposition per node.
        lam, vec = jax.vmap(jnp.linalg.eigh)(self.kernel_train)
        return lam, vec, jnp.einsum("gij,gjr->gir", self.kernel_test, vec)

    def piece_spectral(self, idx, w):
        # One eigendecomposition of the (n·k)² combination.
        lam, vec = jnp.linalg.eigh(jnp.einsum("a,aij->ij", w, self.kernel_train[idx]))
        return lam, vec, jnp.einsum("a,aij,jr->ir", w, self.kernel_test[idx], vec)

    def eigenvalues(self):
        return jax.vmap(jnp.linalg.eigvalsh)(self.kernel_train)

    def dense_train(self):
        return self.kernel_train

    def dense_test(self):
        return self.kernel_test

    def with_zero_test(self, rows):
        zero = jnp.zeros((self.size, rows, self.dim), self.kernel_train.dtype)
        return eqx.tree_at(lambda g: g.kernel_test, self, zero)

    def compress(
        self,
        rank: int,
        *,
        krylov_dim: int | None = None,
        sketch: int | None = None,
        power_iterations: int = 1,
    ) -> LowRankKernelGrid:
        r"""A low-rank copy keeping the top-`rank` eigenpairs $V_r, \Lambda_r$ of each kernel.

        The test kernels are projected on the same eigenvectors ($\Theta_* V_r V_r^\top$).
        The result's `compression_error[:, 0]` and `[:, 1]` are the relative Frobenius errors
        of the train and test kernels at each node.

        **Arguments:**

        - `rank`: eigenpairs kept per node.
        - `krylov_dim`: `None` (default) for every eigenpair by one eigendecomposition per
          node, $O((nk)^3)$; or a number of Lanczos steps `≥ rank`, from a fixed start
          vector, keeping the top-`rank` Ritz pairs: $O(\text{krylov\_dim}\,(nk)^2)$, the
          fast path for large training sets (the Ritz pairs of a decaying spectrum converge
          from the top; the reported error is exact for them, since $V_r^\top\Theta V_r =
          \Lambda_r$ gives $\|\Theta - V_r\Lambda_r V_r^\top\|_F^2 = \|\Theta\|_F^2 -
          \|\Lambda_r\|_F^2$).
        - `sketch`: instead, a randomized eigendecomposition (Halko, Martinsson & Tropp 2011,
          "Finding structure with randomness", SIAM Review 53(2), Algorithms 4.4 and 5.3): the
          range of $\Theta\Omega$ for a Gaussian $\Omega$ with `sketch ≥ rank` columns,
          refined by `power_iterations` products with $\Theta$ (each followed by a QR), then
          the Rayleigh–Ritz pairs of the small `sketch²` matrix $Q^\top\Theta Q$:
          `2 + power_iterations` kernel-matrix products (GEMMs, compute-bound, instead of
          Lanczos' `krylov_dim` memory-bound matrix-vector products). Rayleigh–Ritz pairs
          satisfy $V_r^\top\Theta V_r = \Lambda_r$, so the reported error is exact as for
          Lanczos. The Gaussian is seeded: compressions are reproducible.

        **Returns:** a [`ntkode.LowRankKernelGrid`][].
        """
        if isinstance(rank, bool) or not isinstance(rank, int | np.integer):
            raise TypeError(f"`rank` must be an integer, got {rank!r}.")
        rank = int(rank)
        if not 1 <= rank <= self.dim:
            raise ValueError(f"`rank` must be between 1 and n·k = {self.dim}, got {rank}.")
        if krylov_dim is not None and sketch is not None:
            raise ValueError(
                "Pass `krylov_dim` (Lanczos) or `sketch` (randomized), not both: they are two "
                "ways to find the same top eigenpairs."
            )
        if sketch is not None:
            for name, value, low in (
                ("sketch", sketch, rank),
                ("power_iterations", power_iterations, 0),
            ):
                if isinstance(value, bool) or not isinstance(value, int | np.integer):
                    raise TypeError(f"`{name}` must be an integer, got {value!r}.")
                if not low <= value:
                    raise ValueError(f"`{name}` must be at least {low}, got {value}.")
            cols = min(int(sketch), self.dim)
            lam_r, vec_r = jax.lax.map(
                lambda k: randomized_eigh(k, rank, cols, int(power_iterations)), self.kernel_train
            )
            total = jnp.sum(self.kernel_train**2, axis=(1, 2))
            kept = jnp.sum(lam_r**2, axis=1)
            err_train = jnp.sqrt(jnp.maximum(total - kept, 0.0) / total)
        elif krylov_dim is None:
            lam, vec = jax.vmap(jnp.linalg.eigh)(self.kernel_train)
            lam_r, vec_r = lam[:, -rank:], vec[:, :, -rank:]
            # The dropped eigenvalues give the error directly (no cancellation at full rank).
            dropped = jnp.sum(lam[:, :-rank] ** 2, axis=1) if rank < self.dim else 0.0 * lam[:, 0]
            err_train = jnp.sqrt(dropped / jnp.sum(lam**2, axis=1))
        else:
            if isinstance(krylov_dim, bool) or not isinstance(krylov_dim, int | np.integer):
                raise TypeError(f"`krylov_dim` must be an integer or None, got {krylov_dim!r}.")
            if not rank <= krylov_dim:
                raise ValueError(
                    f"`krylov_dim` ({krylov_dim}) must be at least `rank` ({rank}): the top "
                    "eigenpairs are read from that many Lanczos steps."
                )
            lam_r, vec_r = jax.lax.map(
                lambda k: top_ritz_pairs(k, rank, min(int(krylov_dim), self.dim)),
                self.kernel_train,
            )
            # ‖Θ - V_r Λ_r V_rᵀ‖_F² = ‖Θ‖_F² - ‖Λ_r‖² for Ritz pairs.
            total = jnp.sum(self.kernel_train**2, axis=(1, 2))
            kept = jnp.sum(lam_r**2, axis=1)
            err_train = jnp.sqrt(jnp.maximum(total - kept, 0.0) / total)
        basis = jnp.einsum("gij,gjr->gir", self.kernel_test, vec_r)
        approx = jnp.einsum("gir,gjr->gij", basis, vec_r)
        norm = jnp.sqrt(jnp.sum(self.kernel_test**2, axis=(1, 2)))
        err_test = jnp.sqrt(jnp.sum((self.kernel_test - approx) ** 2, axis=(1, 2))) / jnp.where(
            norm > 0, norm, 1.0
        )
        return LowRankKernelGrid(
            self.nodes,
            lam_r,
            vec_r,
            basis,
            compression_error=jnp.stack([err_train, err_test], axis=1),
            n_outputs=self.n_outputs,
            times=self.times,
            u0_train=self.u0_train,
            u0_test=self.u0_test,
        )


def randomized_eigh(
    kernel: Array, rank: int, sketch: int, power_iterations: int
) -> tuple[Array, Array]:
    """Top-`rank` Rayleigh–Ritz pairs of a symmetric `kernel` on a randomized range.

    Halko, Martinsson & Tropp (2011), Algorithms 4.4 (subspace iteration) and 5.3; the
    Gaussian test matrix is seeded, so compressions are reproducible.
    """
    omega = jax.random.normal(jax.random.key(0), (kernel.shape[0], sketch), kernel.dtype)
    q = jnp.linalg.qr(kernel @ omega)[0]
    for _ in range(power_iterations):
        q = jnp.linalg.qr(kernel @ q)[0]
    small = q.T @ (kernel @ q)
    lam, U = jnp.linalg.eigh(0.5 * (small + small.T))
    return lam[-rank:], q @ U[:, -rank:]


def top_ritz_pairs(kernel: Array, rank: int, steps: int) -> tuple[Array, Array]:
    """The top-`rank` Ritz pairs of a symmetric `kernel` after `steps` Lanczos steps.

    The start vector is fixed (a seeded Gaussian), so compressions are reproducible.
    """
    start = jax.random.normal(jax.random.key(0), kernel.shape[:1], kernel.dtype)
    Q, alpha, beta, m = lanczos(lambda v: kernel @ v, start, steps)
    lam, S = ritz(alpha, beta, m)
    return lam[-rank:], Q.T @ S[:, -rank:]


__all__ = [
    "KernelGrid",
    "check_kernels",
    "default_tol",
    "inexact",
    "randomized_eigh",
    "top_ritz_pairs",
]
