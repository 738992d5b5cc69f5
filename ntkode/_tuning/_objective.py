"""The tuning objective: surrogate-vs-reference discrepancy as a function of node logits.

See [`ntkode.tune_grid`][] (module `_tuning`) for the mathematics. Here: the order-keeping
node parameterisation, NTKs along the reference path with a forward-mode time derivative,
and the objective module with its jitted value and gradient.
"""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .._core._kernel_flow import flatten_kernel
from .._core._solution import _hermite
from .._ntk import ntk
from .._scheduled._problem import ScheduledKernelProblem

# ---------------------------------------------------------------- parameterisation


def nodes_to_logits(nodes: Float[Array, " G"]) -> Float[Array, " G-2"]:
    """Logits `z` of the interior nodes (inverse of [`logits_to_nodes`][])."""
    d = jnp.diff(nodes)
    logp = jnp.log(d / jnp.sum(d))
    return logp[1:] - logp[0]


def logits_to_nodes(z: Float[Array, " G-2"], lo, hi) -> Float[Array, " G"]:
    r"""Strictly increasing nodes from `lo` to `hi`.

    The increments are $(hi - lo)\,\mathrm{softmax}([0, z])$: positive, summing to the span.
    """
    p = jax.nn.softmax(jnp.concatenate([jnp.zeros((1,), z.dtype), z]))
    inner = lo + (hi - lo) * jnp.cumsum(p)[:-1]
    return jnp.concatenate([jnp.reshape(lo, (1,)), inner, jnp.reshape(hi, (1,))]).astype(z.dtype)


# ---------------------------------------------------------------- kernels along the path


class _PathKernels(eqx.Module):
    """NTKs at the reference weights interpolated linearly in time between saved times."""

    ts: Array  # saved times (T,)
    weights: Any  # parameter pytree with leading axis T
    static: Any = eqx.field(static=True)
    x_train: Array
    x_test: Array
    n_outputs: int = eqx.field(static=True)
    implementation: str = eqx.field(static=True)

    def params(self, t):
        """$\\theta_{ref}(t)$ and its slope $d\\theta/dt$ on the segment holding `t`."""
        i = jnp.clip(jnp.searchsorted(self.ts, t, side="right") - 1, 0, self.ts.shape[0] - 2)
        h = self.ts[i + 1] - self.ts[i]
        a = (t - self.ts[i]) / h
        lo = jax.tree.map(lambda w: w[i], self.weights)
        hi = jax.tree.map(lambda w: w[i + 1], self.weights)
        p = jax.tree.map(lambda x, y: x + a * (y - x), lo, hi)
        dp = jax.tree.map(lambda x, y: (y - x) / h, lo, hi)
        return p, dp

    def kernels(self, params):
        """Flat `(n·k, n·k)` train and `(m·k, n·k)` test kernels at `params`."""
        model = eqx.combine(params, self.static)
        n, m, k = self.x_train.shape[0], self.x_test.shape[0], self.n_outputs
        kt = flatten_kernel(
            ntk(model, self.x_train, implementation=self.implementation), n, n, k, "kt"
        )
        if m:
            ks = ntk(model, self.x_test, self.x_train, implementation=self.implementation)
            ks = flatten_kernel(ks, m, n, k, "ks")
        else:
            ks = jnp.zeros((0, n * k), kt.dtype)
        # Symmetrise like KernelGrid does (round-off in J Jᵀ).
        return 0.5 * (kt + kt.T), ks


@eqx.filter_custom_jvp
def _kernels_at(t, path: _PathKernels):
    return path.kernels(path.params(t)[0])


@_kernels_at.def_jvp
def _kernels_at_jvp(primals, tangents):
    t, path = primals
    t_dot, _ = tangents
    p, dp = path.params(t)
    out, dout = jax.jvp(path.kernels, (p,), (dp,))
    if t_dot is None:
        return out, jax.tree.map(jnp.zeros_like, out)
    # Linear in t_dot, so reverse mode transposes it without storing any Jacobian.
    return out, jax.tree.map(lambda d: d * t_dot, dout)


# ---------------------------------------------------------------- objective


class _Objective(eqx.Module):
    """`z ↦` residuals / `J` of the surrogate with nodes given by logits `z`."""

    problem: ScheduledKernelProblem
    solver: Any
    options: Any
    u_ref: Array
    us_ref: Array | None
    lo: Array
    hi: Array
    mode: str = eqx.field(static=True)
    path: _PathKernels | None
    ref_t: Array | None
    ref_train: Array | None
    ref_train_dot: Array | None
    end_kernels: tuple | None
    flip: bool = eqx.field(static=True)

    def positions(self, z):
        """Node positions in the optimised coordinate (scheduling values or times)."""
        return logits_to_nodes(z, self.lo, self.hi)

    def problem_at(self, z) -> ScheduledKernelProblem:
        x = self.positions(z)
        grid = self.problem.grid
        if self.mode == "schedule":
            grid = eqx.tree_at(lambda g: g.nodes, grid, x.astype(grid.nodes.dtype))
            return eqx.tree_at(lambda p: p.grid, self.problem, grid)
        # Time nodes: kernels at the interior times, the end kernels computed once.
        assert self.path is not None and self.end_kernels is not None
        kt, ks = jax.lax.map(lambda t: _kernels_at(t, self.path), x[1:-1])
        (kt0, ks0), (kt1, ks1) = self.end_kernels
        kt = jnp.concatenate([kt0[None], kt, kt1[None]])
        ks = jnp.concatenate([ks0[None], ks, ks1[None]])
        sched, y, loss = self.problem.schedule, self.problem.data.y_train, self.problem.loss
        u = jax.vmap(lambda t: _hermite(t, self.ref_t, self.ref_train, self.ref_train_dot))(x)
        s = jax.vmap(lambda t, ui: sched(t, ui, y, loss))(x, u)
        times = x
        if self.flip:  # a decreasing schedule (e.g. the loss level): latest time first
            kt, ks, s, times = kt[::-1], ks[::-1], s[::-1], times[::-1]
        dtype = grid.kernel_train.dtype
        grid = eqx.tree_at(
            lambda g: (g.nodes, g.kernel_train, g.kernel_test, g.times),
            grid,
            (s.astype(dtype), kt.astype(dtype), ks.astype(dtype), times.astype(dtype)),
            is_leaf=lambda a: a is None,
        )
        return eqx.tree_at(lambda p: p.grid, self.problem, grid)

    def residuals(self, z, args=None):
        sol = self.problem_at(z)._solve(self.solver, self.options)
        r = (sol.train - self.u_ref).reshape(-1)
        if self.us_ref is not None:
            r = jnp.concatenate([r, (sol.test - self.us_ref).reshape(-1)])
        return r

    def value(self, z, args=None):
        r = self.residuals(z)
        return jnp.sum(r * r)


@eqx.filter_jit
def _value(obj, z):
    return obj.value(z)


@eqx.filter_jit
def _value_and_grad(obj, z):
    return eqx.filter_value_and_grad(lambda zz: obj.value(zz))(z)


@eqx.filter_jit
def _value_and_grad_fwd(obj, z):
    # diffrax.ForwardMode supports forward-mode only: one JVP per interior node.
    v = obj.value(z)
    g = jax.jacfwd(obj.value)(z)
    return v, g


def objective_and_gradient(obj: "_Objective", z, adjoint) -> tuple[Array, Array]:
    """`(J, ∇J)` with the mode of differentiation the adjoint supports."""
    if isinstance(adjoint, diffrax.ForwardMode):
        return _value_and_grad_fwd(obj, z)
    return _value_and_grad(obj, z)


__all__ = ["logits_to_nodes", "nodes_to_logits", "objective_and_gradient"]
