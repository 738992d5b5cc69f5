r"""How the exact solver diagonalises each piece: full eigendecompositions or Lanczos bases.

On a piece where the scheduled kernel is a fixed $\Theta$, the MSE surrogate is the
linear time-invariant flow $\dot r = -c\,\Theta r$, solved in closed form in an eigenbasis of
$\Theta$ (`ntkode/_scheduled/_exact.py`). Two ways to get that basis:

- [`ntkode.EigenBasis`][]: every eigenpair, by one eigendecomposition per piece. Exact, but
  $O((nk)^3)$ time and $O((nk)^2)$ memory per piece: at `n = 8,192` one `eigh` takes minutes
  on two cores, far more than training's kernels themselves.
- [`ntkode.KrylovBasis`][]: the Lanczos basis of the Krylov space
  $\mathcal K_m(\Theta, r) = \operatorname{span}\{r, \Theta r, \dots, \Theta^{m-1} r\}$ grown
  from the residual entering the piece. With $\Theta Q_m = Q_m T_m + \beta_{m+1}
  q_{m+1} e_m^\top$, the flow is approximated by $e^{-c\tau\Theta} r \approx Q_m
  e^{-c\tau T_m} Q_m^\top r$ (Saad 1992; Hochbruck & Lubich 1997): only `m` kernel-vector
  products, $O(m\,(nk)^2)$ for a dense kernel and no factorisation. Eigenpairs of the small
  tridiagonal $T_m$ play the role of the kernel's, so the same closed forms apply. The error
  of the residual is estimated by the first term of Saad's expansion,
  $\beta_{m+1}\,c\,|e_m^\top \varphi_\tau(T_m) e_1|\,\|r\|$ with
  $\varphi_\tau(T) = \int_0^\tau e^{-cTs}ds$, at every time the piece is used; above
  `rtol` the solution's result is `RESULTS.not_converged` (never silent).

Y. Saad (1992), "Analysis of some Krylov subspace approximations to the matrix exponential
operator", SIAM J. Numer. Anal. 29(1). M. Hochbruck, C. Lubich (1997), "On Krylov subspace
approximations to the matrix exponential operator", SIAM J. Numer. Anal. 34(5).
"""

import abc
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ._grid import AbstractKernelGrid
from ._lanczos import lanczos, ritz


class PieceBasis(NamedTuple):
    """An (approximate) eigenbasis of one piece's train kernel, and what its error needs.

    The train residual is read as a `(rows, columns)` matrix (`rows = n·k`, or `n` for
    kernels shared by the outputs), the test outputs likewise with `test_basis.shape[0]`
    rows. The eigenvectors are `eigvecs` itself, or `[frame_1 … frame_a] @ eigvecs` when
    node bases `frame` `(a, rows, r)` are given (a low-rank piece keeps the bases of its
    nodes, numbers `nodes`, and a small `(a·r, q)` mixing matrix, so that applying its
    eigenvectors costs `O(rows·a·r)` per vector instead of forming them).
    """

    eigvals: Float[Array, " r"]
    eigvecs: Float[Array, "rows_or_q r"]
    test_basis: Float[Array, "test_rows r"]
    # Krylov error estimate $\beta_{m+1}\,|\sum_i S_{mi} S_{1i}\,\varphi_i|$: the
    # coupling $\beta_{m+1}$ and the products $S_{mi} S_{1i}$ (zero for exact bases).
    coupling: Float[Array, ""]
    tail: Float[Array, " r"]
    nodes: Int[Array, " a"] | None = None
    frame: Float[Array, "a rows rank"] | None = None

    @property
    def rows(self) -> int:
        """Rows of the train residual matrix."""
        return self.eigvecs.shape[0] if self.frame is None else self.frame.shape[1]

    def project(self, R: Float[Array, "rows c"]) -> Float[Array, "r c"]:
        """Coordinates $V^\top R$ of `R` on the eigenvectors."""
        if self.frame is None:
            return self.eigvecs.T @ R
        return self.eigvecs.T @ jnp.einsum("air,ic->arc", self.frame, R).reshape(-1, R.shape[1])

    def coordinates(self, X: Float[Array, "r ..."]) -> Float[Array, "a rank ..."]:
        """$V X$ as coordinates on each node basis of the frame (`frame` must be given)."""
        assert self.frame is not None
        a, _, rank = self.frame.shape
        X = jnp.tensordot(self.eigvecs, X, axes=(1, 0))
        return X.reshape((a, rank) + X.shape[1:])

    def expand(self, X: Float[Array, "r ..."]) -> Float[Array, "rows ..."]:
        """$V X$, contracting the leading axis of `X`."""
        if self.frame is None:
            return jnp.tensordot(self.eigvecs, X, axes=(1, 0))
        return jnp.tensordot(self.frame, self.coordinates(X), axes=((0, 2), (0, 1)))


class AbstractPieceBasis(eqx.Module):
    """How the exact solver gets the eigenbasis of each piece's kernel.

    Subclasses implement `prepare` (per-piece data, computed once before the pieces are
    run) and `basis` (the piece's basis, given the residual entering it), and set
    `uses_residual` (`False` when the basis does not depend on the residual).
    """

    @abc.abstractmethod
    def prepare(
        self,
        grid: AbstractKernelGrid,
        idx: Int[Array, "P a"] | None,
        w: Float[Array, "P a"] | None,
    ) -> Any:
        """Per-piece data with a leading piece axis: piece `p` carries
        $\\sum_j w_{pj}\\Theta_{\\text{idx}_{pj}}$, or node `p`'s kernel when `idx is None`."""

    @abc.abstractmethod
    def basis(self, grid: AbstractKernelGrid, piece: Any, r: Float[Array, " nk"]) -> PieceBasis:
        """The basis of one piece (its slice of `prepare`'s output), from residual `r`."""

    @abc.abstractmethod
    def tolerance(self, dtype: Any) -> float:
        """Largest acceptable relative error estimate (the solve reports more as failure)."""


def _exact(lam, vec, basis, nodes=None) -> PieceBasis:
    # No error to estimate (leading axes kept: stacked over pieces or not).
    zero = jnp.zeros(lam.shape[:-1], lam.dtype)
    return PieceBasis(lam, vec, basis, zero, jnp.zeros_like(lam), nodes)


class EigenBasis(AbstractPieceBasis):
    r"""Every eigenpair of each piece's kernel: exact, one eigendecomposition per piece.

    Node kernels use the grid's own spectra (a [`ntkode.LowRankKernelGrid`][] stores them;
    combinations of low-rank kernels are diagonalised in the span of their bases, at
    $O(nk\,r^2)$). For dense grids this costs $O((nk)^3)$ per piece: above a few thousand
    outputs, prefer [`ntkode.KrylovBasis`][].
    """

    def prepare(self, grid, idx, w):
        if idx is None:
            return _exact(*grid.spectral())
        assert w is not None
        framed = grid.frame_bases() is not None
        return _exact(*grid.piece_frames(idx, w), idx if framed else None)

    def basis(self, grid, piece, r):
        bases = grid.frame_bases()
        if piece.nodes is None or bases is None:
            return piece
        # The piece's node bases, gathered here, one piece at a time (never stacked).
        return piece._replace(frame=bases[piece.nodes])

    def tolerance(self, dtype):
        return float("inf")


class KrylovBasis(AbstractPieceBasis):
    r"""A Lanczos basis of $\mathcal K_m(\Theta, r)$ from the residual entering each piece.

    Kernel-vector products only (`m` per piece, through the grid's own products, so dense,
    low-rank and output-shared grids all work), no eigendecomposition of the kernel: the
    fast path for large training sets. See the module notes for the approximation and its
    error estimate.

    **Arguments:**

    - `dim`: the Krylov dimension `m` (the budget of kernel-vector products per piece).
      Stiffer pieces (larger $\eta\lambda_{\max}\tau/n$ over a piece of length $\tau$)
      need more; if the estimate exceeds `rtol` anywhere, the solution's result is
      `RESULTS.not_converged`: raise `dim`, or cut pieces shorter
      (`PiecewiseConstant("average", substeps)`).
    - `rtol`: tolerance of the relative residual error estimate (default: $\sqrt\epsilon$
      of the solve's precision, `1.5e-8` in float64 and `3.5e-4` in float32).
    """

    dim: int = eqx.field(static=True, default=64)
    rtol: float | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        if isinstance(self.dim, bool) or not isinstance(self.dim, int | np.integer):
            raise TypeError(f"`dim` must be an integer, got {self.dim!r}.")
        if self.dim < 1:
            raise ValueError(f"`dim` must be at least 1, got {self.dim}.")
        if self.rtol is not None and not self.rtol > 0:
            raise ValueError(f"`rtol` must be positive, got {self.rtol!r}.")

    def prepare(self, grid, idx, w):
        if idx is None:
            G = grid.size
            return jnp.arange(G)[:, None], jnp.ones((G, 1), grid.nodes.dtype)
        return idx, w

    def basis(self, grid, piece, r):
        idx, w = piece
        dim = min(int(self.dim), r.shape[0])
        train_matvec, test_matvec = grid.piece_operators(idx, w)
        Q, alpha, beta, m = lanczos(train_matvec, r, dim)
        lam, S = ritz(alpha, beta, m)
        vec = Q.T @ S
        test = jax.vmap(test_matvec)(Q)  # (dim, M)
        last = jnp.maximum(m - 1, 0)
        return PieceBasis(lam, vec, test.T @ S, beta[last], S[last] * S[0])

    def tolerance(self, dtype):
        return float(np.sqrt(np.finfo(dtype).eps)) if self.rtol is None else float(self.rtol)


def check_piece_basis(piece_basis: Any) -> None:
    if not isinstance(piece_basis, AbstractPieceBasis):
        raise TypeError(
            "`piece_basis` must be ntkode.EigenBasis() or ntkode.KrylovBasis(dim=...), got "
            f"{type(piece_basis).__name__}."
        )


__all__ = [
    "AbstractPieceBasis",
    "EigenBasis",
    "KrylovBasis",
    "PieceBasis",
    "check_piece_basis",
]
