r"""What moves when a grid is tuned: node kinds for [`ntkode.tune_grid`][].

A node kind turns increasing node *positions* into a surrogate. The optimiser moves the
positions (through the order-keeping logits of `ntkode/_tuning/_objective.py`); the kind says
what a position is:

- [`ntkode.tuning.ScheduleNodes`][]: a scheduling value $s_g$. The kernels stay, their
  positions on the scheduling variable move.
- [`ntkode.tuning.TimeNodes`][]: a time $t_g$ on the reference run. Each kernel is recomputed
  as $\Theta_g = \mathrm{NTK}(\theta_{ref}(t_g))$ from the reference weights interpolated
  linearly in time, and its scheduling value is $\sigma(t_g, u_{ref}(t_g))$, so the gradient
  also flows through the NTK. $\partial\Theta_g/\partial t_g$ is a forward-mode derivative of
  the NTK along the weight path (a custom JVP), so reverse mode never stores Jacobians.
"""

import abc
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from .._core._kernel_flow import flatten_kernel
from .._core._model import partition
from .._core._solution import Solution, _hermite
from .._ntk import AbstractNTKImplementation, ntk
from .._ntk._api import engine_implementation
from .._ntk._base import symmetric_contract
from .._ntk._validate import check_inputs, check_model_inputs
from .._scheduled._dense import KernelGrid
from .._scheduled._grid import Implementation
from .._scheduled._problem import ScheduledKernelProblem
from .._scheduled._schedule import Time


def reference_span(problem: ScheduledKernelProblem, reference: Solution) -> tuple[float, float]:
    """The part of the problem's time span that the reference run covers."""
    t0, t1 = float(problem.t0), float(problem.t1)
    return max(t0, float(reference.t[0])), min(t1, float(reference.t[-1]))


def _check_span(what: str, values, lo: float, hi: float) -> None:
    v = np.asarray(values, dtype=float)
    tol = 1e-9 * max(hi - lo, 1.0)
    bad = v[(v < lo - tol) | (v > hi + tol)]
    if bad.size:
        raise ValueError(
            f"{what} {bad.tolist()} lie outside the time span [{lo}, {hi}]; node times must "
            "lie inside the reference run (and the problem's tspan)."
        )


def _check_increasing(what: str, v) -> None:
    v = np.asarray(v, dtype=float)
    if v.ndim != 1 or not np.all(np.isfinite(v)) or np.any(np.diff(v) <= 0):
        raise ValueError(f"{what} must be finite and strictly increasing, got {v.tolist()}.")


class AbstractNodes(eqx.Module):
    """A kind of grid node for [`ntkode.tune_grid`][]: what a node position means.

    Subclasses implement:

    - `init(problem, reference) -> (positions, state)`: check that this kind applies, and
      return the initial node positions (strictly increasing, `(G,)`) and whatever
      `problem_at` needs (a pytree, or `None`).
    - `problem_at(problem, positions, state)`: the surrogate with its nodes at `positions`,
      written in `jnp` without Python branching on values (it is differentiated).
    - `node_times(positions)`: the node times on the reference run, or `None` when positions
      are not times.
    """

    @abc.abstractmethod
    def init(
        self, problem: ScheduledKernelProblem, reference: Solution
    ) -> tuple[Float[Array, " G"], PyTree]:
        """Initial node positions and the state `problem_at` needs."""

    @abc.abstractmethod
    def problem_at(
        self, problem: ScheduledKernelProblem, positions: Float[Array, " G"], state: PyTree
    ) -> ScheduledKernelProblem:
        """The surrogate with its nodes at `positions`."""

    @abc.abstractmethod
    def node_times(self, positions: Float[Array, " G"]) -> Float[Array, " G"] | None:
        """Node times on the reference run (`None` if positions are not times)."""


class ScheduleNodes(AbstractNodes):
    """The kernels stay; their positions $s_g$ on the scheduling variable move."""

    def init(self, problem, reference):
        x0 = problem.grid.nodes
        _check_increasing("The grid's nodes", x0)
        if isinstance(problem.schedule, Time):
            _check_span("The grid's time nodes", x0, *reference_span(problem, reference))
        return x0, None

    def problem_at(self, problem, positions, state):
        return eqx.tree_at(lambda p: p.grid, problem, problem.grid.with_nodes(positions))

    def node_times(self, positions):
        return None


# ---------------------------------------------------------------- kernels along the path


class _PathKernels(eqx.Module):
    """NTKs at the reference weights interpolated linearly in time between saved times."""

    ts: Float[Array, " T"]
    weights: PyTree[Array]  # parameter pytree with leading axis T
    static: Any = eqx.field(static=True)
    x_train: Array
    x_test: Array
    n_outputs: int = eqx.field(static=True)
    implementation: Any

    def params(self, t):
        r"""$\theta_{ref}(t)$ and its slope $d\theta/dt$ on the segment holding `t`."""
        i = jnp.clip(jnp.searchsorted(self.ts, t, side="right") - 1, 0, self.ts.shape[0] - 2)
        h = self.ts[i + 1] - self.ts[i]
        a = (t - self.ts[i]) / h
        lo = jax.tree.map(lambda w: w[i], self.weights)
        hi = jax.tree.map(lambda w: w[i + 1], self.weights)
        p = jax.tree.map(lambda x, y: x + a * (y - x), lo, hi)
        dp = jax.tree.map(lambda x, y: (y - x) / h, lo, hi)
        return p, dp

    def kernels(self, params):
        """Flat `(n·k, n·k)` train and `(m·k, n·k)` test kernels at `params`.

        The engine's features of the train inputs are computed once and contracted with
        themselves and with the test inputs' (two `ntk` calls would compute them twice, and
        their forward-mode derivative too).
        """
        n, m, k = self.x_train.shape[0], self.x_test.shape[0], self.n_outputs
        if self.implementation == "reference":
            model = eqx.combine(params, self.static)
            kt = ntk(model, self.x_train, implementation="reference")
            ks = ntk(model, self.x_test, self.x_train, implementation="reference") if m else None
        else:
            impl = engine_implementation(self.implementation, False, "TimeNodes")
            contract = lambda a, b: impl.contract(params, self.static, a, b, False)
            f = impl.features(params, self.static, self.x_train)
            kt = symmetric_contract(contract, f)
            ks = contract(impl.features(params, self.static, self.x_test), f) if m else None
        kt = flatten_kernel(kt, n, n, k, "kt")
        if ks is not None:
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


class _TimeState(eqx.Module):
    """What [`TimeNodes.problem_at`][] needs from the reference run."""

    path: _PathKernels
    ref_t: Float[Array, " T"]
    ref_train: Float[Array, "T n k"]
    ref_train_dot: Float[Array, "T n k"]
    end_kernels: tuple[tuple[Array, Array], tuple[Array, Array]]
    # A decreasing schedule along the run (e.g. the loss level): latest time first.
    flip: bool = eqx.field(static=True)


class TimeNodes(AbstractNodes):
    r"""Node times $t_g$ move on the reference run; kernels are recomputed there.

    **Arguments:**

    - `model`: the network of the reference run (its non-float structure is used with the
      reference weights, which `reference` must carry: `solve(..., save_weights=True)`).
    - `times`: the initial node times (default: the grid's `times`, or its nodes for a time
      schedule).
    - `implementation`: how the NTKs are computed (see [`ntkode.ntk`][]).

    The problem's grid must be a dense [`ntkode.KernelGrid`][] (its kernels are replaced by
    recomputed dense ones), and its schedule must move one way along the reference run.
    """

    model: Any
    times: Float[Array, " G"] | None
    implementation: Implementation | AbstractNTKImplementation

    def __init__(
        self,
        model: Any,
        times: Float[ArrayLike, " G"] | None = None,
        implementation: Implementation | AbstractNTKImplementation = "auto",
    ):
        if model is None:
            raise ValueError(
                "`TimeNodes` needs `model`, the network of the reference run (its kernels are "
                "recomputed at the node times)."
            )
        self.model = model
        self.times = None if times is None else jnp.asarray(times, dtype=jnp.result_type(float))
        self.implementation = implementation

    def init(self, problem, reference):
        grid, schedule = problem.grid, problem.schedule
        if not isinstance(grid, KernelGrid):
            raise ValueError(
                "`TimeNodes` recomputes dense kernels; pass a problem with a dense "
                f"ntkode.KernelGrid, not a {type(grid).__name__}."
            )
        if reference.weights is None:
            raise ValueError(
                "`TimeNodes` needs the reference weights: solve the true flow with "
                "`save_weights=True`."
            )
        if self.times is not None:
            times = np.asarray(self.times, dtype=float)
        elif grid.times is not None:
            times = np.sort(np.asarray(grid.times, dtype=float))
        elif isinstance(schedule, Time):
            times = np.asarray(grid.nodes, dtype=float)
        else:
            raise ValueError(
                "The grid has no `times`; pass the node times: TimeNodes(model, times)."
            )
        _check_span("Node `times`", times, *reference_span(problem, reference))
        _check_increasing("Node `times`", times)
        if times.shape[0] != grid.size:
            raise ValueError(f"`times` has {times.shape[0]} values but the grid has {grid.size}.")
        # What `ntk` would check: the kernels are taken from the engine's features directly.
        x_train, _ = check_inputs(self.model, problem.data.x_train, None, name1="x_train")
        check_model_inputs(self.model, x_train, "x_train")
        params, static = partition(self.model)
        if jax.tree.structure(reference.weights) != jax.tree.structure(params):
            raise ValueError("`model` does not match the structure of the reference weights.")
        dtype = problem.u0_train.dtype
        path = _PathKernels(
            ts=reference.t.astype(dtype),
            weights=jax.tree.map(lambda w: w.astype(dtype), reference.weights),
            static=static,
            x_train=problem.data.x_train,
            x_test=problem.data.x_test,
            n_outputs=problem.data.n_outputs,
            implementation=self.implementation,
        )
        y, loss = problem.data.y_train, problem.loss
        u_ends = reference(jnp.asarray(times, dtype)).train
        s0 = np.asarray(
            [float(schedule(jnp.asarray(t, dtype), u, y, loss)) for t, u in zip(times, u_ends)]
        )
        d = np.diff(s0)
        if not (np.all(d > 0) or np.all(d < 0)):
            raise ValueError(
                "The schedule is not strictly monotone along the reference at the node times "
                f"(values {s0.tolist()}); time nodes need a schedule that moves one way."
            )
        state = _TimeState(
            path=path,
            ref_t=reference.t.astype(dtype),
            ref_train=reference.train.astype(dtype),
            ref_train_dot=reference.train_dot.astype(dtype),
            end_kernels=(
                _kernels_at(jnp.asarray(times[0], dtype), path),
                _kernels_at(jnp.asarray(times[-1], dtype), path),
            ),
            flip=bool(np.all(d < 0)),
        )
        return jnp.asarray(times, dtype), state

    def problem_at(self, problem, positions, state):
        x = positions
        # Kernels at the interior times; the end kernels were computed once.
        kt, ks = jax.lax.map(lambda t: _kernels_at(t, state.path), x[1:-1])
        (kt0, ks0), (kt1, ks1) = state.end_kernels
        kt = jnp.concatenate([kt0[None], kt, kt1[None]])
        ks = jnp.concatenate([ks0[None], ks, ks1[None]])
        sched, y, loss = problem.schedule, problem.data.y_train, problem.loss
        hermite = lambda t: _hermite(t, state.ref_t, state.ref_train, state.ref_train_dot)
        s = jax.vmap(lambda t: sched(t, hermite(t), y, loss))(x)
        times = x
        if state.flip:
            kt, ks, s, times = kt[::-1], ks[::-1], s[::-1], times[::-1]
        dtype = problem.grid.nodes.dtype
        grid = eqx.tree_at(
            lambda g: (g.nodes, g.kernel_train, g.kernel_test, g.times),
            problem.grid,
            tuple(a.astype(dtype) for a in (s, kt, ks, times)),
            is_leaf=lambda a: a is None,
        )
        return eqx.tree_at(lambda p: p.grid, problem, grid)

    def node_times(self, positions):
        return positions


__all__ = ["AbstractNodes", "ScheduleNodes", "TimeNodes", "reference_span"]
