r"""The tuning objective: surrogate-vs-reference discrepancy as a function of node logits.

See [`ntkode.tune_grid`][] (`ntkode/_tuning/_tune.py`) for the mathematics. Here: the
order-keeping node parameterisation and the objective module with its jitted value and
gradient. The end nodes stay where they are (they are where the grid must reach) and the
interior nodes are $s_1 + (s_G - s_1)\,\mathrm{cumsum}(\mathrm{softmax}([0, z]))$: positive
increments with one free logit per interior node, so order is kept by construction and
nothing is ever clipped.
"""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._core._options import ResolvedOptions
from .._scheduled._problem import ScheduledKernelProblem
from ._nodes import AbstractNodes

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


# ---------------------------------------------------------------- objective


class _Objective(eqx.Module):
    """`z ↦` residuals / `J` of the surrogate with node positions given by logits `z`."""

    problem: ScheduledKernelProblem
    nodes: AbstractNodes
    state: PyTree
    x0: Float[Array, " G"]  # the initial positions; the ends stay there
    solver: Any
    options: ResolvedOptions
    u_ref: Float[Array, "T n k"]
    us_ref: Float[Array, "T m k"] | None

    def positions(self, z: Float[Array, " G-2"]) -> Float[Array, " G"]:
        """Node positions in the optimised coordinate (scheduling values or times)."""
        return logits_to_nodes(z, self.x0[0], self.x0[-1])

    def problem_at(self, z: Float[Array, " G-2"]) -> ScheduledKernelProblem:
        return self.nodes.problem_at(self.problem, self.positions(z), self.state)

    def initial_problem(self) -> ScheduledKernelProblem:
        """The surrogate at the initial positions exactly (not round-tripped through `z`)."""
        return self.nodes.problem_at(self.problem, self.x0, self.state)

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
