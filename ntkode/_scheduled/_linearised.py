r"""Kernel grids from a cheap run: exponential steps of the linearised network.

A grid needs parameter states along training; an accurate true flow is what a surrogate is
meant to avoid (its steps grow with the stiffness $\eta\lambda_{\max}/n$, which grows as
training goes). Here the states come from a few large *exponential* steps instead. On a
step of length $h$ from $\theta_j$, the network is replaced by its linearisation
$f(\theta_j) + J_j(\theta - \theta_j)$ (Lee et al. 2019), whose mean-MSE gradient flow has the
closed form

$$\theta(h) = \theta_j - \tfrac{\eta}{n} J_j^\top \Phi_h r_j, \qquad
\Phi_h = \int_0^h e^{-c\Theta_j s}\,ds, \quad c = \eta / n,$$

with $\Theta_j = J_j J_j^\top$ and $r_j = f(\theta_j, X) - Y$: one kernel, one
$\Phi_h r$ (an eigendecomposition, or a Lanczos basis for large `n`) and one
vector-Jacobian product per step, however stiff. The next state's outputs are those of the
network itself, not of the linear model, so each step restarts from the truth at its own
weights: the exponential Euler method for $\dot\theta = -\eta\nabla L(\theta)$ with the
Gauss–Newton linearisation (Hochbruck & Ostermann 2010, "Exponential integrators", Acta
Numerica 19). The kernels at the steps' starting states are the grid's kernels, so the run
costs little more than the grid itself. For a linear model it is exact.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._core._data import Dataset
from .._core._gradient_flow import GradientFlowProblem
from .._core._losses import MSE
from .._core._model import apply, partition
from .._core._regression import decay_integral
from ._basis import AbstractPieceBasis, EigenBasis, check_piece_basis
from ._grid import AbstractKernelGrid
from ._schedule import AbstractSchedule, Time


@eqx.filter_jit
def _step(params, static, grid, piece_basis, x, y, learning_rate, h):
    """One exponential step of the linearised network from `params`, over time `h`."""
    net = lambda p: apply(eqx.combine(p, static), x)
    u, vjp = jax.vjp(net, params)
    n = u.shape[0]
    c = learning_rate / n
    r = (u - y).reshape(-1)
    # The grid holds this state's kernel alone: one piece, node 0 with weight 1.
    one = piece_basis.prepare(grid, jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), r.dtype))
    b = piece_basis.basis(grid, jax.tree.map(lambda a: a[0], one), r)
    R = r.reshape(b.rows, -1)
    coef = b.project(R)
    # Φ_h r: the decay integral on the basis, and h·r on what the basis leaves out (λ = 0).
    phi_r = b.expand(decay_integral(c * b.eigvals, h)[:, None] * coef)
    phi_r = phi_r + h * (R - b.expand(coef))
    (g,) = vjp(phi_r.reshape(u.shape))
    return jax.tree.map(lambda p, d: p - c * d, params, g)


def linearised_grid(
    problem: GradientFlowProblem,
    times: Float[ArrayLike, " G"],
    *,
    substeps: int = 1,
    schedule: AbstractSchedule = Time(),
    piece_basis: AbstractPieceBasis = EigenBasis(),
    rank: int | None = None,
    krylov_dim: int | None = None,
    trace: bool = False,
    implementation: Any = "auto",
    block_size: int | None = None,
    landmarks: int | None = None,
) -> AbstractKernelGrid:
    """See [`AbstractKernelGrid.from_linearised_steps`][]."""
    from ._dense import KernelGrid
    from ._low_rank import LowRankKernelGrid, stack_low_rank
    from ._shared import SharedKernelGrid

    if not isinstance(problem, GradientFlowProblem):
        raise TypeError(
            f"`problem` must be an ntkode.GradientFlowProblem, got {type(problem).__name__}."
        )
    if not isinstance(problem.loss, MSE):
        raise ValueError(
            "Linearised steps have a closed form for mean MSE only; for "
            f"{problem.loss.name} build the grid from a true-flow solution "
            "(KernelGrid.from_solution)."
        )
    check_piece_basis(piece_basis)
    if landmarks is not None and (rank is not None or trace):
        raise ValueError(
            "`landmarks` (Nyström kernels) does not combine with `rank` or `trace=True`: its "
            "rank is the number of landmarks (times the outputs); drop the others."
        )
    if isinstance(substeps, bool) or not isinstance(substeps, int | np.integer) or substeps < 1:
        raise ValueError(f"`substeps` must be a positive integer, got {substeps!r}.")
    req = np.atleast_1d(np.asarray(times, dtype=float))
    t0, t1 = float(problem.t0), float(problem.t1)
    span = t1 - t0
    if req.ndim != 1 or not np.all(np.isfinite(req)) or np.any(np.diff(req) <= 0):
        raise ValueError("`times` must be finite and strictly increasing.")
    if req[0] < t0 - 1e-12 * span or req[-1] > t1 + 1e-12 * span:
        raise ValueError(f"`times` must lie inside tspan = ({t0}, {t1}); got {req.tolist()}.")
    data = problem.data
    # Kernels at intermediate steps need no test rows.
    train_only = Dataset(data.x_train, data.y_train, name=data.name)
    params, static = partition(problem.model)
    dtype = data.y_train.dtype

    def kernels(p, d):
        g = KernelGrid.from_params(
            [p],
            problem.model,
            d,
            jnp.zeros(1),
            trace=trace,
            implementation=implementation,
            block_size=block_size,
            landmarks=landmarks,
        )
        assert isinstance(g, KernelGrid | SharedKernelGrid | LowRankKernelGrid)
        return g

    t = t0
    current = None  # the kernels of `params`, once computed
    kept, us = [], []
    for target in req.tolist():
        if target > t + 1e-12 * span:
            h = jnp.asarray((target - t) / substeps, dtype)
            for _ in range(substeps):
                g = kernels(params, train_only) if current is None else current
                x, y, lr = data.x_train, data.y_train, problem.learning_rate
                params = _step(params, static, g, piece_basis, x, y, lr, h)
                current = None
            t = target
        current = kernels(params, data)
        kept.append(current)
        us.append(apply(eqx.combine(params, static), data.x_train))
    nodes = np.asarray(
        [
            float(schedule(jnp.asarray(tg, dtype), u, data.y_train, problem.loss))
            for tg, u in zip(req, us, strict=True)
        ]
    )
    order = np.argsort(nodes, kind="stable")
    if np.any(np.diff(nodes[order]) == 0):
        raise ValueError(
            "Two node times give the same scheduling value; choose other times or another schedule."
        )
    meta = dict(
        n_outputs=data.n_outputs,
        times=req[order],
        u0_train=apply(problem.model, data.x_train),
        u0_test=apply(problem.model, data.x_test),
    )
    if landmarks is not None:
        return stack_low_rank([kept[j] for j in order], nodes[order], **meta)
    stack = lambda name: jnp.stack([getattr(kept[j], name)[0] for j in order])
    cls = SharedKernelGrid if trace else KernelGrid
    grid = cls(nodes[order], stack("kernel_train"), stack("kernel_test"), psd_tol=None, **meta)
    if rank is None:
        return grid
    assert isinstance(grid, KernelGrid)
    return grid.compress(rank, krylov_dim=krylov_dim)


__all__ = ["linearised_grid"]
