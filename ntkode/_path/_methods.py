r"""The two training runs behind a path kernel: gradient flow, and exact gradient descent.

- [`ntkode.PathFlow`][] integrates $(\theta, K, W)$ with
  $\dot\theta = -\eta\nabla L$, $\dot K = \Theta_\theta(x_q, X)$,
  $\dot W_i = \Theta_\theta(x_q, x_i)\nabla_{u_i}L$ as one diffrax solve (Domingos 2020), so
  the reconstruction identity holds to the solver's tolerance.
- [`ntkode.PathGradientDescent`][] runs $\theta_{j+1} = \theta_j - \eta\nabla L(\theta_j)$ and
  adds, per step, the kernel $\int_0^1 J(\theta_j + s\Delta_j, x_q)\,ds\,J(\theta_j, x_i)^\top$
  along the straight segment $\Delta_j = \theta_{j+1} - \theta_j$, by Gauss–Legendre
  quadrature: $f(\theta + \Delta) - f(\theta) = \int_0^1 J(\theta + s\Delta)\,ds\;\Delta$
  exactly (Bell et al. 2023, "The exact path kernel").
"""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .._core._gradient_flow import GradientFlowField, GradientFlowProblem
from .._core._model import apply, partition
from .._core._options import SolveOptions, progress_meter
from .._core._results import RESULTS, promote
from ._kernel import AbstractPathMethod, PathKernel, Tangents, assemble


class _PathField(eqx.Module):
    """Vector field of the state `(θ, K, W)`: the true flow plus the two kernel integrals."""

    flow: GradientFlowField
    tangents: Tangents
    queries: Array

    def __call__(self, t, state, learning_rate):
        params = state[0]
        flow = self.flow
        g = flow.loss.grad(apply(eqx.combine(params, flow.static), flow.x), flow.y)
        training = self.tangents.training(params, flow.static, flow.x, g)
        d_kernel, d_weighted = self.tangents.rates(params, flow.static, self.queries, training)
        return flow(t, params, learning_rate), d_kernel, d_weighted


@eqx.filter_jit
def _flow(problem, queries, tangents, solver, controller, dt0, max_steps, meter):
    params, _ = partition(problem.model)
    q, n, k = queries.shape[0], problem.data.n_train, problem.data.n_outputs
    field = _PathField(problem.vector_field, tangents, queries)
    y0 = (params, *tangents.zeros(q, n, k, problem.data.y_train.dtype))
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
        progress_meter=meter,
        throw=False,
    )
    params_T, K, W = jax.tree.map(lambda a: a[-1], sol.ys)
    stats = {s: jnp.asarray(sol.stats[s]) for s in ("num_steps", "num_rejected_steps")}
    return params_T, K, W, promote(sol.result), stats


class PathFlow(AbstractPathMethod):
    r"""The path kernel of gradient flow, integrated next to the weights by one diffrax solve.

    **Arguments:**

    - `solver`: a diffrax solver (default `diffrax.Tsit5()`).
    - `options`, `**solve_kwargs`: [`ntkode.SolveOptions`][] of the solve: `rtol` (default
      `1e-7`), `atol` (default `1e-9`), `dt0`, `max_steps`, `stepsize_controller`,
      `progress`. Pass `throw=` to [`ntkode.path_kernel`][] instead.
    - `error_estimate`: also solve the weights alone at 100× tighter tolerances (a few times
      cheaper than the path-kernel solve: no kernels) to estimate the error of
      $f(\theta_T)$ itself (`PathKernel.output_error`). The reconstruction residual alone
      does not bound it: the solver's errors in $\theta$, $K$ and $W$ are correlated.
    """

    solver: diffrax.AbstractSolver
    options: SolveOptions
    error_estimate: bool = eqx.field(static=True)

    def __init__(
        self,
        solver: diffrax.AbstractSolver | None = None,
        options: SolveOptions | None = None,
        *,
        error_estimate: bool = True,
        **solve_kwargs: Any,
    ):
        opts = SolveOptions.build(options, **solve_kwargs)
        if opts.throw:
            raise ValueError(
                "PathFlow does not take `throw`: pass `throw=True` to ntkode.path_kernel "
                "(it applies to every path method)."
            )
        opts.refuse("PathFlow", "saveat", "adjoint", "event", "save_weights")
        if solver is not None and not isinstance(solver, diffrax.AbstractSolver):
            raise TypeError(
                f"`solver` must be a diffrax solver (e.g. diffrax.Tsit5()), got {solver!r}."
            )
        self.solver = diffrax.Tsit5() if solver is None else solver
        self.options = opts
        self.error_estimate = bool(error_estimate)

    def run(self, problem, queries, tangents) -> PathKernel:
        opts = self.options
        dtype = problem.tspan[0].dtype
        controller = opts.controller(dtype, rtol=1e-7, atol=1e-9)
        dt0 = None if opts.dt0 is None else jnp.asarray(opts.dt0, dtype)
        meter = progress_meter(opts.progress)
        out = _flow(problem, queries, tangents, self.solver, controller, dt0, opts.max_steps, meter)
        reference = None
        if self.error_estimate:
            rtol, atol = opts.tolerances(1e-7, 1e-9)
            tight = diffrax.PIDController(
                rtol=jnp.asarray(rtol, dtype) / 100, atol=jnp.asarray(atol, dtype) / 100
            )
            reference = _end_weights(problem, self.solver, tight, dt0, 100 * opts.max_steps)
        return assemble(problem, queries, *out, method=self, reference_T=reference)


@eqx.filter_jit
def _end_weights(problem, solver, controller, dt0, max_steps):
    """The weights at `t1` of the true flow alone (no kernels), for the error estimate."""
    params, _ = partition(problem.model)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(problem.vector_field),
        solver,
        problem.t0,
        problem.t1,
        dt0,
        params,
        args=problem.learning_rate,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=controller,
        max_steps=max_steps,
        throw=False,
    )
    ok = sol.result == diffrax.RESULTS.successful
    # A failed reference solve gives no estimate (NaN), never a wrong one.
    return jax.tree.map(lambda a: jnp.where(ok, a[-1], jnp.nan), sol.ys)


@eqx.filter_jit
def _gd(problem, queries, tangents, init, blocks, stride, nodes, weights):
    field = problem.vector_field
    static, x, y, lr = field.static, field.x, field.y, problem.learning_rate

    def delta_of(p):
        # Cast η to each weight's dtype: float32 weights stay float32 under x64.
        return jax.tree.map(lambda d: lr.astype(d.dtype) * d, field(0.0, p, 1.0))

    def plain(p, _):
        return jax.tree.map(lambda a, d: a + d, p, delta_of(p)), None

    def kernel_step(p, K, W, scale):
        g = field.loss.grad(apply(eqx.combine(p, static), x), y)
        # The training side is J(θ) (the gradient the step used), taken once per step.
        training = tangents.training(p, static, x, g)
        delta = delta_of(p)
        # Exact per-step identity f(θ+Δ) − f(θ) = ∫_0^1 J(θ+sΔ) ds · Δ: the query side of the
        # kernel is averaged along the straight segment, so the step's kernel is not
        # symmetric (Bell et al. 2023).
        for s, w in zip(nodes, weights, strict=True):
            ps = jax.tree.map(lambda a, d, s=s: a + s * d, p, delta)
            d_kernel, d_weighted = tangents.rates(ps, static, queries, training)
            K = K + (scale * w) * d_kernel
            W = W + (scale * w) * d_weighted
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


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


class PathGradientDescent(AbstractPathMethod):
    r"""The exact path kernel of full-batch gradient descent, one straight segment per step.

    Runs $\theta_{j+1} = \theta_j - \eta\nabla L(\theta_j)$ with the problem's model, data,
    loss and learning rate, and adds per step
    $\int_0^1 J(\theta_j + s\Delta_j, x_q)\,ds\,J(\theta_j, x_i)^\top$ by `nodes`-point
    Gauss–Legendre quadrature (exact for outputs polynomial of degree $2\,$`nodes`$-1$ along
    the segment; smooth networks reach machine precision with a few nodes, ReLU kinks inside
    a segment limit it; Bell et al. 2023). Each step is one unit of flow time, so the result
    is comparable with [`ntkode.PathFlow`][] over `tspan = (0, steps)`.

    **Arguments:**

    - `steps`: number of steps (default `t1 - t0` of the problem, which must then be whole).
    - `nodes`: Gauss–Legendre nodes per segment (≥ 1).
    - `stride`: `1` (default) for the exact per-step kernel. With `stride = s > 1` only the
      middle step of each block of `s` steps is integrated, weighted by `s` (a midpoint rule
      over the path): `s` times cheaper, and no longer exact: the reconstruction residual
      then measures this time-quadrature error. `steps` must be a multiple of it.
    - `chunk`: blocks of steps compiled into one call (the run is a loop over chunks).
    - `progress`: print the step count after every chunk.
    """

    steps: int | None = eqx.field(static=True, default=None)
    nodes: int = eqx.field(static=True, default=4)
    stride: int = eqx.field(static=True, default=1)
    chunk: int = eqx.field(static=True, default=10)
    progress: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        if self.steps is not None:
            _positive_int("steps", self.steps)
        _positive_int("nodes", self.nodes)
        _positive_int("chunk", self.chunk)
        _positive_int("stride", self.stride)
        if self.steps is not None and self.steps % self.stride:
            raise ValueError(
                f"`stride` must divide `steps` = {self.steps}, got stride = {self.stride}."
            )

    def run(self, problem, queries, tangents) -> PathKernel:
        if tangents.implementation.contract_uses_params:
            raise ValueError(
                "PathGradientDescent pairs query features at points along each step with "
                "training features at its start; this NTK implementation contracts both at one "
                "set of weights. Use implementation='structured' or 'jacobian'."
            )
        steps = self._steps(problem)
        s, w = np.polynomial.legendre.leggauss(self.nodes)
        # Python floats (weakly typed): numpy scalars would promote float32 runs to float64.
        s, w = tuple(float(v) for v in 0.5 * (s + 1.0)), tuple(float(v) for v in 0.5 * w)
        blocks = steps // self.stride
        params, _ = partition(problem.model)
        q, n, k = queries.shape[0], problem.data.n_train, problem.data.n_outputs
        state = (params, *tangents.zeros(q, n, k, problem.data.y_train.dtype))
        done = 0
        while done < blocks:
            m = min(self.chunk, blocks - done)
            state = _gd(problem, queries, tangents, state, m, self.stride, s, w)
            done += m
            if self.progress:
                print(f"  gradient descent: step {done * self.stride}/{steps}", flush=True)
        stats = {"num_steps": jnp.asarray(steps), "num_rejected_steps": jnp.asarray(0)}
        return assemble(
            problem, queries, *state, RESULTS.successful, stats, method=self, exact=True
        )

    def _steps(self, problem: GradientFlowProblem) -> int:
        if self.steps is not None:
            return int(self.steps)
        span = float(problem.t1 - problem.t0)
        if abs(span - round(span)) > 1e-9 or round(span) < 1:
            raise ValueError(
                f"PathGradientDescent(steps=None) takes the steps from tspan, whose length "
                f"{span} is not a positive whole number; pass `steps=`."
            )
        steps = int(round(span))
        if steps % self.stride:
            raise ValueError(
                f"`stride` must divide the number of steps {steps} (from tspan), got "
                f"stride = {self.stride}."
            )
        return steps
