r"""The tuning objective: surrogate-vs-reference discrepancy as a function of node logits.

See [`ntkode.tune_grid`][] (`ntkode/_tuning/_tune.py`) for the mathematics. Here: the
order-keeping node parameterisation and the objective module with its jitted value and
gradient. The discrepancy per saved time is aggregated over times with an exponent $p$
(`power`): $p = 2$ is least squares, larger $p$ weights the worst times more, and
$p \to \infty$ approaches the max error over time that [`ntkode.trajectory_errors`][]
reports. The end nodes stay where they are (they are where the grid must reach) and the
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
from ._spectrum import rescale

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
    power: float = eqx.field(static=True, default=2.0)
    # For power != 2: the largest squared discrepancy over saved times at the initial nodes,
    # the unit that keeps J on the least-squares scale (`c Σ_t (e_t / c)^{p/2}`, `e_t = ‖r_t‖²`).
    unit: Any = 1.0
    # With `spectrum = k > 0`: the node kernels' leading eigen-directions `(G, nk, k)`, whose
    # log-scales follow the G - 2 node logits in `z` (`ntkode/_tuning/_spectrum.py`).
    directions: Float[Array, "G nk k"] | None = None

    @property
    def n_logits(self) -> int:
        return self.x0.shape[0] - 2

    def z0(self) -> Float[Array, " P"]:
        """The parameters of the initial grid: node logits, then zero log-scales."""
        z = nodes_to_logits(self.x0)
        if self.directions is None:
            return z
        g, _, k = self.directions.shape
        return jnp.concatenate([z, jnp.zeros((g * k,), z.dtype)])

    def log_scales(self, z) -> Float[Array, "G k"] | None:
        """The per-node log-scales of the leading eigen-directions (`None`: nodes only)."""
        if self.directions is None:
            return None
        g, _, k = self.directions.shape
        return z[self.n_logits :].reshape(g, k)

    def with_unit(self) -> "_Objective":
        """This objective with `unit` measured at the initial nodes (`power != 2` only)."""
        if self.power == 2:
            return self
        e = _per_time(self, self.z0())
        return eqx.tree_at(lambda o: o.unit, self, jnp.max(jnp.concatenate(e)))

    def positions(self, z: Float[Array, " P"]) -> Float[Array, " G"]:
        """Node positions in the optimised coordinate (scheduling values or times)."""
        return logits_to_nodes(z[: self.n_logits], self.x0[0], self.x0[-1])

    def problem_at(self, z: Float[Array, " P"]) -> ScheduledKernelProblem:
        problem = self.nodes.problem_at(self.problem, self.positions(z), self.state)
        if self.directions is None:
            return problem
        return rescale(problem, self.directions, self.log_scales(z))

    def initial_problem(self) -> ScheduledKernelProblem:
        """The surrogate at the initial positions exactly (not round-tripped through `z`)."""
        return self.nodes.problem_at(self.problem, self.x0, self.state)

    def discrepancies(self, z) -> list[Float[Array, "T ..."]]:
        """Surrogate minus reference at the saved times: train (and test) outputs."""
        sol = self.problem_at(z)._solve(self.solver, self.options)
        out = [sol.train - self.u_ref]
        if self.us_ref is not None:
            out.append(sol.test - self.us_ref)
        return out

    def residuals(self, z, args=None):
        r"""The residual vector whose squared norm is $J$.

        `power = 2`: every output at every saved time. Otherwise one residual per saved time
        (and per output set), $\sqrt{c}\,(e_t / c)^{p/4}$ with $e_t = \|r_t\|^2$: smooth
        at $e_t = 0$ for $p \ge 4$.
        """
        ds = self.discrepancies(z)
        if self.power == 2:
            return jnp.concatenate([d.reshape(-1) for d in ds])
        per_time = [jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1) for d in ds]
        per_time = [e + jnp.finfo(e.dtype).tiny for e in per_time]  # finite derivative at 0
        unit = jnp.asarray(self.unit, per_time[0].dtype)
        return jnp.concatenate([jnp.sqrt(unit) * (e / unit) ** (self.power / 4) for e in per_time])

    def value(self, z, args=None):
        r = self.residuals(z)
        return jnp.sum(r * r)


@eqx.filter_jit
def _per_time(obj, z):
    return [jnp.sum(d.reshape(d.shape[0], -1) ** 2, axis=1) for d in obj.discrepancies(z)]


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
