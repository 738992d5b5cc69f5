r"""Tuning the kernels too: per-node scales of each node kernel's leading eigen-directions.

Moving node times alone leaves each node kernel what the network's NTK was at that time; on
ReLU networks the surrogate error then plateaus above the truth's uncertainty (the kernel
between nodes is a linear interpolation, and no node placement makes it the kernel the flow
actually sees). With `spectrum=k`, [`ntkode.tune_grid`][] also moves, per node $g$, $k$
log-scales $b_g \in \mathbb{R}^k$ of the node kernel along its $k$ leading eigenvectors
$U_g$ (an orthonormal `(n·k, k)` basis taken once from the kernel at the initial nodes and
then held fixed):

$$\Theta_g' = S_g \Theta_g S_g, \qquad \Theta_{*,g}' = \Theta_{*,g} S_g, \qquad
S_g = I + U_g\,\mathrm{diag}(e^{b_g} - 1)\,U_g^\top .$$

This is the kernel of the train Jacobian rows $S_g J_g$ (the test Jacobian unchanged), so the
tuned kernels stay symmetric positive semi-definite and the test kernel stays the matching
cross-kernel; where $U_g$ are eigenvectors of $\Theta_g$, eigenvalue $\lambda_i$ becomes
$e^{2 b_{g,i}} \lambda_i$. $b = 0$ is the untuned grid. Training converges fastest along the
kernel's leading principal components (Jacot, Gabriel & Hongler 2018, "Neural Tangent
Kernel"), so a few parameters per node carry most of the effect, and the test kernel carries
the correction to test outputs. Costs $O((nk)^2 k)$ per node, no eigensolve in the
differentiated path.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._scheduled._dense import KernelGrid
from .._scheduled._problem import ScheduledKernelProblem


def check_spectrum(spectrum, problem: ScheduledKernelProblem) -> int:
    """`spectrum` as an int, or one sentence naming what to pass."""
    if isinstance(spectrum, bool) or not isinstance(spectrum, int) or spectrum < 0:
        raise ValueError(
            "`spectrum` must be a non-negative integer (how many leading eigen-directions of "
            f"each node kernel to rescale; 0 moves the nodes only), got {spectrum!r}."
        )
    if spectrum == 0:
        return 0
    if not isinstance(problem.grid, KernelGrid):
        raise ValueError(
            "`spectrum` rescales dense node kernels; pass a problem with a dense "
            f"ntkode.KernelGrid, not a {type(problem.grid).__name__} (or spectrum=0)."
        )
    size = problem.grid.kernel_train.shape[-1]
    if spectrum >= size:
        raise ValueError(
            f"`spectrum` must be smaller than the kernel size n·k = {size}, got {spectrum}."
        )
    return spectrum


def leading_directions(grid: KernelGrid, k: int) -> Float[Array, "G nk k"]:
    """The `k` leading orthonormal eigenvectors of each node's train kernel."""
    _, vecs = jnp.linalg.eigh(jax.lax.stop_gradient(grid.kernel_train))
    return vecs[..., ::-1][..., :k]


def rescale(
    problem: ScheduledKernelProblem, u: Float[Array, "G nk k"], b: Float[Array, "G k"]
) -> ScheduledKernelProblem:
    r"""The problem with node kernels $S_g \Theta_g S_g$ and test kernels $\Theta_{*,g} S_g$."""
    grid = problem.grid
    d = jnp.expm1(b).astype(u.dtype)  # (G, k)

    def one(kt, ks, ug, dg):
        ktu = kt @ ug  # (nk, k)
        corr = (ug * dg) @ ktu.T  # U D Uᵀ Θ
        core = (ug.T @ ktu) * dg[:, None] * dg[None, :]  # D Uᵀ Θ U D
        kt2 = kt + corr + corr.T + ug @ core @ ug.T
        ks2 = ks + ((ks @ ug) * dg) @ ug.T
        return 0.5 * (kt2 + kt2.T), ks2

    kt, ks = jax.vmap(one)(grid.kernel_train, grid.kernel_test, u, d)
    grid = eqx.tree_at(lambda g: (g.kernel_train, g.kernel_test), grid, (kt, ks))
    return eqx.tree_at(lambda p: p.grid, problem, grid)


__all__ = ["check_spectrum", "leading_directions", "rescale"]
