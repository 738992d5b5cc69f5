r"""Lanczos tridiagonalisation with full reorthogonalisation, for symmetric kernels.

Used twice: Krylov bases of the exact solver's pieces (`ntkode/_scheduled/_basis.py`), and
the top eigenpairs of large kernels for low-rank grids (`KernelGrid.compress`). C. Lanczos
(1950); full reorthogonalisation as in G. H. Golub, C. F. Van Loan, *Matrix Computations*,
§10.3.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int


def lanczos(
    matvec, r: Float[Array, " N"], dim: int
) -> tuple[Float[Array, "m N"], Float[Array, " m"], Float[Array, " m"], Int[Array, ""]]:
    r"""`dim` steps of Lanczos on the symmetric operator `matvec`, started at `r`.

    Full reorthogonalisation (twice, classical Gram–Schmidt) keeps the basis orthonormal in
    floating point. On breakdown (an invariant subspace: $\beta_{j+1} \approx 0$) the
    remaining rows are zero and no more products are taken.

    **Returns:** `(Q, alpha, beta, m)`: basis rows `Q` `(dim, N)` (rows `≥ m` zero), the
    tridiagonal's diagonal `alpha` and couplings `beta` (`beta[j]` couples rows `j` and
    `j + 1`; `beta[m - 1]` is $\beta_{m+1}$), and the number of active rows `m`.
    """
    N = r.shape[0]
    dtype = r.dtype
    eps = float(np.finfo(dtype).eps)
    norm = jnp.linalg.norm(r)
    q0 = r / jnp.where(norm > 0, norm, 1.0)
    zero = jnp.zeros((N,), dtype)

    def step(carry, j):
        Q, q, q_prev, b_prev, scale, done = carry
        v = jax.lax.cond(done, lambda x: zero, matvec, q)
        a = q @ v
        v = v - a * q - b_prev * q_prev
        Q = Q.at[j].set(q)
        for _ in range(2):
            v = v - Q.T @ (Q @ v)
        b = jnp.linalg.norm(v)
        scale = jnp.maximum(scale, jnp.abs(a) + b + b_prev)
        a, b = jnp.where(done, 0.0, a), jnp.where(done, 0.0, b)
        broke = done | (b <= 10 * eps * scale) | (norm == 0)
        q_next = jnp.where(broke, zero, v / jnp.where(b > 0, b, 1.0))
        return (Q, q_next, q, b, scale, broke), (a, b, ~done)

    init = (jnp.zeros((dim, N), dtype), q0, zero, jnp.zeros((), dtype), jnp.zeros((), dtype))
    (Q, *_), (alpha, beta, active) = jax.lax.scan(
        step, (*init, jnp.asarray(False)), jnp.arange(dim)
    )
    return Q, alpha, beta, jnp.sum(active)


def ritz(
    alpha: Float[Array, " m"], beta: Float[Array, " m"], m: Int[Array, ""]
) -> tuple[Float[Array, " m"], Float[Array, "m m"]]:
    """Eigenpairs of the Lanczos tridiagonal (ascending), its first `m` rows active."""
    # Couplings past the last active row would tie it to zero rows: drop them.
    off = jnp.where(jnp.arange(1, alpha.shape[0]) < m, beta[:-1], 0.0)
    return jnp.linalg.eigh(jnp.diag(alpha) + jnp.diag(off, 1) + jnp.diag(off, -1))


__all__ = ["lanczos", "ritz"]
