r"""Path kernels along the true training path (Domingos 2020), continuous and discrete.

Along gradient flow $d\theta/dt = -\eta\nabla_\theta L$ every output moves by
$df(\theta, x)/dt = -\eta\sum_i \Theta_{\theta(t)}(x, x_i)\,\nabla_{u_i}L$, so

$$f(\theta_T, x) = f(\theta_0, x) - \eta\sum_i W_i(x), \qquad
W_i(x) = \int_{t_0}^{T}\Theta_{\theta(t)}(x, x_i)\,\nabla_{u_i}L(t)\,dt,$$

and with the *path kernel* $K(x, x_i) = \int_{t_0}^{T}\Theta_{\theta(t)}(x, x_i)\,dt$ and
$a_i(x) = -\eta K(x, x_i)^{-1} W_i(x)$ this is Domingos' kernel machine
$f(\theta_T, x) = \sum_i K(x, x_i)\,a_i(x) + b(x)$, $b = f(\theta_0, x)$.
[`ntkode.path_kernel`][] integrates $K$ and $W$ as extra ODE states next to the weights, so
the identity holds to the solver's tolerance. [`ntkode.path_kernel_gd`][] does the same
for finitely many steps of full-batch gradient descent, where the tangent kernel is
integrated along each straight step segment (Bell et al. 2023, "The exact path kernel"):
$f(\theta + \Delta) - f(\theta) = \int_0^1 J(\theta + s\Delta)\,ds\;\Delta$ exactly, with the
segment integral done by Gauss–Legendre quadrature.

Time is flow time: one gradient-descent step of size $\eta$ is one unit of time, so a
$T$-step run and the flow over $[0, T]$ have comparable kernels.
"""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._gradient_flow import GradientFlowProblem
from .._core._model import apply, apply_one, partition
from .._core._options import SolveOptions
from .._core._results import RESULTS, promote


class PathKernel(eqx.Module):
    r"""The path kernel of one training run, evaluated between queries and training inputs.

    **Fields:**

    - `kernel`: $K(x_q, x_i) = \int \Theta_{\theta(t)}(x_q, x_i)\,dt$, shape `(q, n, k, k)`,
      or `(q, n)` (the trace over outputs) when built with `trace=True`.
    - `loss_weighted`: $W_i(x_q) = \int \Theta_{\theta(t)}(x_q, x_i)\nabla_{u_i}L\,dt$,
      shape `(q, n, k)`.
    - `weights`: Domingos' $a_i(x_q)$, shape `(q, n, k)`; with a traced kernel
      $a_{i} = -\eta W_i / K(x_q, x_i)$ per output.
    - `bias`: $b(x_q) = f(\theta_0, x_q)$, shape `(q, k)`.
    - `outputs`: $f(\theta_T, x_q)$ from the trained weights, shape `(q, k)`.
    - `reconstruction`: $\sum_i K(x_q, x_i)\,a_i(x_q) + b(x_q)$, shape `(q, k)`.
    - `residual`: $\|f(\theta_T) - \text{reconstruction}\| / \|f(\theta_T) - f(\theta_0)\|$ over
      all queries (relative to how far the outputs moved, the strict choice).
    - `model`: the trained model $\theta_T$.
    - `result`, `stats`: how the solve ended ([`ntkode.RESULTS`][]) and its step counts.
    - `method`: `"flow"` or `"gd"`.
    """

    kernel: Array
    loss_weighted: Float[Array, "q n k"]
    weights: Float[Array, "q n k"]
    bias: Float[Array, "q k"]
    outputs: Float[Array, "q k"]
    reconstruction: Float[Array, "q k"]
    residual: Float[Array, ""]
    model: Any
    result: RESULTS
    stats: dict[str, Array]
    method: str = eqx.field(static=True, default="flow")


def jacobian(model: Any, x: Float[Array, "n ..."]) -> Float[Array, "n k P"]:
    """Per-example Jacobians of `model` w.r.t. all its floating-point arrays, `(n, k, P)`.

    Per-example `jacrev` (never through the whole batch); the leaves are concatenated in
    `jax.tree.leaves` order, the same order as [`ntkode.ntk`][]'s reference contraction.
    """
    params, static = partition(model)
    f = lambda p, xi: apply_one(eqx.combine(p, static), xi)
    jac = jax.vmap(jax.jacrev(f), in_axes=(None, 0))(params, x)
    leaves = [j.reshape(j.shape[0], j.shape[1], -1) for j in jax.tree.leaves(jac)]
    return jnp.concatenate(leaves, axis=-1)


def tangent_kernel(j1: Array, j2: Array, trace: bool) -> Array:
    """$J_1 J_2^\\top$ from per-example Jacobians: `(n1, n2, k, k)`, or its trace `(n1, n2)`."""
    if trace:
        return jnp.einsum("qap,iap->qi", j1, j2)
    return jnp.einsum("qap,ibp->qiab", j1, j2)


def _check_queries(problem, queries) -> Array:
    if not isinstance(problem, GradientFlowProblem):
        raise TypeError(
            "path kernels follow the true weight path: pass an ntkode.GradientFlowProblem, "
            f"got {type(problem).__name__}."
        )
    queries = jnp.asarray(queries, problem.data.x_train.dtype)
    feat = problem.data.x_train.shape[1:]
    if queries.ndim != len(feat) + 1 or queries.shape[1:] != feat:
        raise ValueError(
            f"`queries` has shape {queries.shape}; expected (q, {', '.join(map(str, feat))}): "
            f"a batch of inputs shaped like the training inputs {feat}."
        )
    if queries.shape[0] == 0:
        raise ValueError("`queries` is empty; pass at least one query input.")
    if not np.all(np.isfinite(np.asarray(queries))):
        raise ValueError("`queries` contains non-finite values.")
    return queries


def _domingos(K, W, b, f_T, learning_rate, trace: bool):
    """Weights $a_i$, the reconstruction and its relative residual."""
    if trace:
        safe = jnp.where(K == 0, 1.0, K)
        a = jnp.where((K == 0)[..., None], 0.0, -learning_rate * W / safe[..., None])
        recon = b + jnp.einsum("qi,qia->qa", K, a)
    else:
        # k×k blocks: a_i solves K(x, x_i) a_i = -η W_i (pseudo-inverse: a block can be
        # singular, e.g. a dead output; then the minimum-norm a_i still reconstructs).
        a = jnp.einsum("qiab,qib->qia", jnp.linalg.pinv(K), -learning_rate * W)
        recon = b + jnp.einsum("qiab,qib->qa", K, a)
    moved = jnp.linalg.norm(f_T - b)
    residual = jnp.linalg.norm(f_T - recon) / jnp.where(moved > 0, moved, 1.0)
    return a, recon, residual


class _PathField(eqx.Module):
    """Vector field of the state `(θ, K, W)`: the true flow plus the two kernel integrals."""

    static: Any
    loss: Any
    x: Array
    y: Array
    queries: Array
    trace: bool = eqx.field(static=True)

    def __call__(self, t, state, learning_rate):
        params, _, _ = state
        model = eqx.combine(params, self.static)
        jx = jacobian(model, self.x)
        g = self.loss.grad(apply(model, self.x), self.y)
        v = jnp.einsum("ikp,ik->ip", jx, g)  # J_i^T ∇_{u_i} L, one parameter vector per example
        grads = jax.grad(lambda p: self.loss(apply(eqx.combine(p, self.static), self.x), self.y))(
            params
        )
        jq = jacobian(model, self.queries)
        dK = tangent_kernel(jq, jx, self.trace)
        dW = jnp.einsum("qap,ip->qia", jq, v)
        return jax.tree.map(lambda d: -learning_rate * d, grads), dK, dW


def _kernel_zeros(q, n, k, trace, dtype):
    return jnp.zeros((q, n) if trace else (q, n, k, k), dtype)


@eqx.filter_jit
def _flow(problem, queries, solver, controller, dt0, max_steps, trace):
    params, static = partition(problem.model)
    q, n, k = queries.shape[0], problem.data.n_train, problem.data.n_outputs
    dtype = problem.data.y_train.dtype
    field = _PathField(
        static, problem.loss, problem.data.x_train, problem.data.y_train, queries, trace
    )
    y0 = (params, _kernel_zeros(q, n, k, trace, dtype), jnp.zeros((q, n, k), dtype))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        problem.t0,
        problem.t1,
        dt0,
        y0,
        args=problem.learning_rate,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )
    params_T, K, W = jax.tree.map(lambda a: a[-1], sol.ys)
    stats = {s: jnp.asarray(sol.stats[s]) for s in ("num_steps", "num_rejected_steps")}
    return params_T, K, W, promote(sol.result), stats


def _finish(problem, queries, params_T, K, W, result, stats, trace, method) -> PathKernel:
    _, static = partition(problem.model)
    model_T = eqx.combine(params_T, static)
    b = apply(problem.model, queries)
    f_T = apply(model_T, queries)
    a, recon, residual = _domingos(K, W, b, f_T, problem.learning_rate, trace)
    if not bool(jnp.all(jnp.isfinite(f_T))):
        # Gradient descent (or a failed solve) diverged: say so rather than hand back NaNs.
        result = RESULTS.diverged
    return PathKernel(
        kernel=K,
        loss_weighted=W,
        weights=a,
        bias=b,
        outputs=f_T,
        reconstruction=recon,
        residual=residual,
        model=model_T,
        result=result,
        stats=stats,
        method=method,
    )


def path_kernel(
    problem: GradientFlowProblem,
    queries: Float[Array, "q ..."],
    solver: diffrax.AbstractSolver | None = None,
    *,
    trace: bool = False,
    options: SolveOptions | None = None,
    **solve_kwargs: Any,
) -> PathKernel:
    r"""Domingos' path kernel of the gradient flow `problem`, integrated next to the weights.

    Solves the state $(\theta, K, W)$ with $\dot\theta = -\eta\nabla L$,
    $\dot K = \Theta_\theta(x_q, X)$ and $\dot W_i = \Theta_\theta(x_q, x_i)\nabla_{u_i}L$ over
    `problem.tspan` (Domingos 2020, "Every model learned by gradient descent is
    approximately a kernel machine"), then forms $a_i(x_q)$, $b(x_q)$ and the residual of
    $f(\theta_T, x_q) = \sum_i K(x_q, x_i)a_i(x_q) + b(x_q)$.

    **Arguments:**

    - `problem`: a [`ntkode.GradientFlowProblem`][].
    - `queries`: inputs `(q, ...)` shaped like the training inputs (e.g. train and test
      inputs concatenated, for kernel regression with the path kernel).
    - `solver`: a diffrax solver (default `Tsit5()`).
    - `options`, `**solve_kwargs`: [`ntkode.SolveOptions`][] of the solve (`rtol`, default
      `1e-7`; `atol`, default `1e-9`; `dt0`, `max_steps`, `stepsize_controller`); the residual
      falls with the tolerance (it is the solver's error on $f(\theta_T)$).
    - `trace`: keep only the trace over outputs of each kernel block, `(q, n)` instead of
      `(q, n, k, k)` (for many outputs, e.g. per-pixel predictions).

    **Returns:** a [`ntkode.PathKernel`][].
    """
    queries = _check_queries(problem, queries)
    opts = SolveOptions.build(options, **solve_kwargs)
    opts.refuse("path_kernel", "saveat", "adjoint", "event", "progress", "save_weights", "throw")
    dtype = problem.tspan[0].dtype
    stepsize_controller = opts.controller(dtype, rtol=1e-7, atol=1e-9)
    dt0, max_steps = opts.dt0, opts.max_steps
    solver = diffrax.Tsit5() if solver is None else solver
    dt0_arr = None if dt0 is None else jnp.asarray(dt0, dtype)
    out = _flow(problem, queries, solver, stepsize_controller, dt0_arr, int(max_steps), bool(trace))
    return _finish(problem, queries, *out, bool(trace), "flow")


@eqx.filter_jit
def _gd(problem, queries, init, blocks, stride, nodes, weights, trace):
    _, static = partition(problem.model)
    x, y, loss, lr = problem.data.x_train, problem.data.y_train, problem.loss, problem.learning_rate

    def delta_of(p):
        grads = jax.grad(lambda pp: loss(apply(eqx.combine(pp, static), x), y))(p)
        # Cast η to each weight's dtype: float32 weights stay float32 under x64.
        return jax.tree.map(lambda d: -lr.astype(d.dtype) * d, grads)

    def plain(p, _):
        return jax.tree.map(lambda a, d: a + d, p, delta_of(p)), None

    def kernel_step(p, K, W, scale):
        model = eqx.combine(p, static)
        jx = jacobian(model, x)
        g = loss.grad(apply(model, x), y)
        v = jnp.einsum("ikp,ik->ip", jx, g)  # J_i^T ∇_{u_i} L, one parameter vector per example
        delta = delta_of(p)
        # Exact per-step identity f(θ+Δ) − f(θ) = ∫_0^1 J(θ+sΔ) ds · Δ: the query side of the
        # kernel is averaged along the straight segment, the training side is J(θ) (the
        # gradient the step used), so the step's kernel is not symmetric (Bell et al. 2023).
        for s, w in zip(nodes, weights, strict=True):
            ps = jax.tree.map(lambda a, d, s=s: a + s * d, p, delta)
            jq = jacobian(eqx.combine(ps, static), queries)
            K = K + (scale * w) * tangent_kernel(jq, jx, trace)
            W = W + (scale * w) * jnp.einsum("qap,ip->qia", jq, v)
        return jax.tree.map(lambda a, d: a + d, p, delta), K, W

    before = (stride - 1) // 2  # the kernel step sits mid-block: a midpoint rule in time

    def block(carry, _):
        p, K, W = carry
        p, _ = jax.lax.scan(plain, p, None, length=before)
        p, K, W = kernel_step(p, K, W, stride)
        p, _ = jax.lax.scan(plain, p, None, length=stride - 1 - before)
        return (p, K, W), None

    out, _ = jax.lax.scan(block, init, None, length=blocks)
    return out


def path_kernel_gd(
    problem: GradientFlowProblem,
    queries: Float[Array, "q ..."],
    steps: int | None = None,
    *,
    nodes: int = 4,
    trace: bool = False,
    stride: int = 1,
    progress: bool = False,
    chunk: int = 10,
) -> PathKernel:
    r"""The exact path kernel of `steps` steps of full-batch gradient descent.

    Runs $\theta_{j+1} = \theta_j - \eta\nabla L(\theta_j)$ with the problem's model, data,
    loss and learning rate, and accumulates, per step, the kernel
    $\int_0^1 J(\theta_j + s\Delta_j, x_q)\,ds\,J(\theta_j, x_i)^\top$ along the straight
    segment $\Delta_j = \theta_{j+1} - \theta_j$ (Bell et al. 2023), by `nodes`-point
    Gauss–Legendre quadrature (exact for outputs polynomial of degree $2\,$`nodes`$-1$
    along the segment; smooth networks reach machine precision with a few nodes, ReLU
    kinks inside a segment limit it). Each step counts as one unit of flow time, so the
    result is comparable with [`ntkode.path_kernel`][] over `tspan = (0, steps)`.

    **Arguments:**

    - `problem`: a [`ntkode.GradientFlowProblem`][] (its `tspan` is ignored when `steps`
      is given).
    - `queries`: inputs `(q, ...)` shaped like the training inputs.
    - `steps`: number of steps (default `t1 - t0` of the problem, which must be whole).
    - `nodes`: Gauss–Legendre nodes per segment (≥ 1).
    - `trace`: keep the trace over outputs of the kernel blocks only, as in
      [`ntkode.path_kernel`][].
    - `stride`: `1` (default) for the exact per-step kernel. With `stride = s > 1` only
      the middle step of each block of `s` steps is integrated, weighted by `s` (a midpoint
      rule over the path): `s` times cheaper, and no longer exact: the reconstruction
      residual then measures this time-quadrature error. `steps` must be a multiple of it.
    - `progress`: print the step count every `chunk` blocks (the run is compiled in chunks
      of `chunk` blocks either way).

    **Returns:** a [`ntkode.PathKernel`][] with `method="gd"`.
    """
    queries = _check_queries(problem, queries)
    if steps is None:
        span = float(problem.t1 - problem.t0)
        if abs(span - round(span)) > 1e-9:
            raise ValueError(
                f"`steps` not given and tspan has length {span}, not a whole number of steps; "
                "pass `steps=`."
            )
        steps = int(round(span))
    if not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"`steps` must be a positive integer, got {steps!r}.")
    if not isinstance(nodes, int | np.integer) or nodes < 1:
        raise ValueError(f"`nodes` must be a positive integer, got {nodes!r}.")
    s, w = np.polynomial.legendre.leggauss(int(nodes))
    # Python floats (weakly typed): numpy scalars would promote float32 runs to float64.
    s, w = tuple(float(v) for v in 0.5 * (s + 1.0)), tuple(float(v) for v in 0.5 * w)
    if not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"`chunk` must be a positive integer, got {chunk!r}.")
    if not isinstance(stride, int | np.integer) or stride < 1 or steps % stride:
        raise ValueError(
            f"`stride` must be a positive integer dividing `steps` = {steps}, got {stride!r}."
        )
    blocks = int(steps) // int(stride)
    params, _ = partition(problem.model)
    q, n, k = queries.shape[0], problem.data.n_train, problem.data.n_outputs
    dtype = problem.data.y_train.dtype
    state = (params, _kernel_zeros(q, n, k, trace, dtype), jnp.zeros((q, n, k), dtype))
    done = 0
    while done < blocks:
        m = min(int(chunk), blocks - done)
        state = _gd(problem, queries, state, m, int(stride), s, w, bool(trace))
        done += m
        if progress:
            print(f"  gradient descent: step {done * stride}/{steps}", flush=True)
    p, K, W = state
    zero = jnp.asarray(int(steps))
    stats = {"num_steps": zero, "num_rejected_steps": jnp.asarray(0)}
    return _finish(problem, queries, p, K, W, RESULTS.successful, stats, bool(trace), "gd")
