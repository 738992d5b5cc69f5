r"""The problem interface every training-dynamics problem implements, and what they share.

A problem is an `eqx.Module` holding data, a loss, a time span and a learning rate; it knows
how to solve itself given a solver and resolved [`ntkode.SolveOptions`][]. Users call
[`ntkode.solve`][].
"""

import abc
import dataclasses
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array

from ._data import Dataset
from ._errors import check_finite, check_positive, check_tspan
from ._losses import AbstractLoss, as_loss
from ._options import ResolvedOptions
from ._results import RESULTS, promote
from ._solution import Outputs, Solution


class AbstractProblem(eqx.Module):
    """A training-dynamics problem: data, loss, time span, learning rate."""

    data: eqx.AbstractVar[Dataset]
    loss: eqx.AbstractVar[AbstractLoss]
    tspan: eqx.AbstractVar[tuple[Array, Array]]
    learning_rate: eqx.AbstractVar[Array]

    @abc.abstractmethod
    def _solve(self, solver: Any, options: ResolvedOptions) -> Solution:
        """Solve with `solver` (or the problem's own fast path when `solver is None`)."""

    @property
    def t0(self) -> Array:
        return self.tspan[0]

    @property
    def t1(self) -> Array:
        return self.tspan[1]


def init_common(self, data, loss, tspan, learning_rate) -> None:
    """Validate and store the fields every problem has (inside its `__init__`)."""
    if not isinstance(data, Dataset):
        raise TypeError(
            f"`data` must be an ntkode.Dataset (e.g. ntkode.datasets.sine()), got {type(data)}."
        )
    t0, t1 = check_tspan(tspan)
    check_positive("learning_rate", learning_rate)
    self.data = data
    self.loss = as_loss(loss)
    for name in ("y_train", "y_test"):
        self.loss.check_targets(getattr(data, name), name)
    # Times and the learning rate follow the data's precision (float32 data, float32 solve).
    dtype = data.y_train.dtype
    self.tspan = (jnp.asarray(t0, dtype=dtype), jnp.asarray(t1, dtype=dtype))
    self.learning_rate = jnp.asarray(learning_rate, dtype=dtype)


def initial_outputs(name: str, value: Any, shape: tuple[int, ...], dtype) -> Array:
    """Outputs at `t0` of the given shape (zeros when `value` is `None`), checked finite."""
    if value is None:
        return jnp.zeros(shape, dtype)
    value = jnp.asarray(value, dtype)
    if value.shape != shape:
        raise ValueError(f"`{name}` has shape {value.shape}; expected {shape}.")
    check_finite(name, value)
    return value


def _stats(stats) -> dict[str, Array]:
    return {
        k: jnp.asarray(stats[k]) for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")
    }


def make_solution(
    problem, ts, u, us, du, dus, *, kind, result=None, stats=None, weights=None, final=None
):
    """A `Solution` of `problem` from outputs and their time derivatives at the times `ts`.

    `result` is a result code (diffrax's or ntkode's; default: successful) and `stats`
    diffrax's step stats (default: zero steps, as for exact closed forms). `final` is
    `(t_stop, u, us, du, dus)` where the solve stopped (default: the last saved time, for
    paths that can only evaluate the saved times); saved times past `t_stop` get the
    outputs at the stop, held constant, with zero derivatives, if an event stopped the
    solve, and NaN if it failed there (see [`ntkode.Solution`][]).
    """
    if stats is None:
        zero = jnp.array(0)
        stats = {"num_steps": zero, "num_accepted_steps": zero, "num_rejected_steps": zero}
    else:
        stats = _stats(stats)
    watches_events = final is not None
    if final is None:
        final = (ts[-1], u[-1], us[-1], du[-1], dus[-1])
    t_stop, uf, usf, duf, dusf = final
    t_stop = jnp.asarray(t_stop, ts.dtype)
    result = RESULTS.successful if result is None else promote(result)
    reached = ts <= t_stop
    # Past an event, training stopped: the stop state holds. Past a failure, nothing was
    # computed: NaN, never a value that looks like a result.
    stopped = result == RESULTS.event_occurred
    nan = lambda a: jnp.full_like(a, jnp.nan)
    fill = lambda a: jnp.where(stopped, a, nan(a))
    u, us = hold(reached, u, fill(uf)), hold(reached, us, fill(usf))
    du = hold(reached, du, fill(jnp.zeros_like(duf)))
    dus = hold(reached, dus, fill(jnp.zeros_like(dusf)))
    return Solution(
        t=ts,
        train=u,
        test=us,
        train_dot=du,
        test_dot=dus,
        weights=weights,
        result=result,
        stats=stats,
        y_train=problem.data.y_train,
        y_test=problem.data.y_test,
        loss=problem.loss,
        t_stop=t_stop,
        final=Outputs(uf, usf),
        final_dot=Outputs(duf, dusf),
        kind=kind,
        watches_events=watches_events,
    )


def hold(reached: Array, saved: Any, final: Any) -> Any:
    """`saved` (leading axis: saved times) where `reached`, else `final` (a pytree each)."""

    def one(a, b):
        mask = reached.reshape(reached.shape + (1,) * (a.ndim - 1))
        return jnp.where(mask, a, b[None])

    return jax.tree.map(one, saved, final)


def solve_function_space(problem, field, solver, options: ResolvedOptions, kind: str) -> Solution:
    """diffrax solve of a function-space field on the state `(u_train, u_test)`."""
    solver = diffrax.Tsit5() if solver is None else solver
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field),
        solver,
        problem.t0,
        problem.t1,
        options.dt0,
        (problem.u0_train, problem.u0_test),
        args=problem.learning_rate,
        # The saved times, and the state where the solve stopped (t1, or an event).
        saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=options.ts), diffrax.SubSaveAt(t1=True)]),
        stepsize_controller=options.controller,
        adjoint=options.adjoint,
        event=options.event,
        max_steps=options.max_steps,
        throw=False,
        progress_meter=options.progress_meter,
    )
    (u, us), (uf, usf) = sol.ys  # pyright: ignore[reportGeneralTypeIssues]
    t_stop = sol.ts[1][0]  # pyright: ignore[reportOptionalSubscript]
    # The velocities at the saved times one time at a time: a scheduled grid's field gathers
    # its piece's node kernels, so batched over T saved times it would hold T copies of them
    # (60 GB at n = 8,192 for 108 times and two nodes).
    du, dus = jax.lax.map(
        lambda a: field(a[0], (a[1], a[2]), problem.learning_rate), (options.ts, u, us)
    )
    duf, dusf = field(t_stop, (uf[0], usf[0]), problem.learning_rate)
    return make_solution(
        problem,
        options.ts,
        u,
        us,
        du,
        dus,
        kind=kind,
        result=sol.result,
        stats=sol.stats,
        final=(t_stop, uf[0], usf[0], duf, dusf),
    )


def remake(problem: AbstractProblem, **changes: Any) -> AbstractProblem:
    """A copy of `problem` with some fields replaced (Julia's `remake(prob; kw...)`).

    The new problem is validated like a freshly built one. Example:
    `remake(prob, learning_rate=0.5, tspan=(0.0, 10.0))`.
    """
    names = {f.name for f in dataclasses.fields(problem)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(
            f"remake: {type(problem).__name__} has no field(s) {unknown}; its fields are "
            f"{sorted(names)}."
        )
    return dataclasses.replace(problem, **changes)
