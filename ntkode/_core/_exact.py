r"""Closed-form solves: a solution from a function that evaluates the exact flow at any times,
with `diffrax.Event`s located on the closed form.

A closed form can be evaluated anywhere, so an event's crossing time is found exactly rather
than at the end of a solver step. Each condition of the event is evaluated at the saved times
and at 256 equally spaced times of `tspan`; the first interval where it triggers (by
diffrax's rules: a boolean becoming `True`, a real value changing sign in the event's
`direction`) is bisected to machine precision with optimistix. The crossing time of a
real-valued condition is differentiable: optimistix's implicit-function adjoint gives
$dt^*/d\theta = -(\partial_\theta c)/(\partial_t c)$ at the root. A boolean condition has no
derivative, and its time is not differentiated (as in diffrax). A condition that crosses and
returns within one of those intervals is not seen, as an adaptive solver can step over it.
"""

from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import optimistix as optx
from jaxtyping import Array, Bool, Float

from ._options import ResolvedOptions
from ._problem import make_solution
from ._results import RESULTS

#: `outputs_at(ts) -> (u, us, du, dus)`: the exact flow at times `ts` (any order), each with
#: a leading time axis.
OutputsAt = Callable[[Array], tuple[Array, Array, Array, Array]]

_BRACKET_POINTS = 256
# Bisection halvings after bracketing on 256 intervals: beyond float64 resolution.
_BISECTIONS = 64


def exact_solution(
    problem: Any,
    outputs_at: OutputsAt,
    options: ResolvedOptions,
    kind: str,
    result: RESULTS = RESULTS.successful,
):
    """The [`ntkode.Solution`][] of a closed-form flow, stopped by `options.event` if given.

    **Arguments:**

    - `problem`: the problem (its `tspan`, learning rate, data and loss are used).
    - `outputs_at`: the exact flow at any times, `ts -> (u, us, du, dus)`.
    - `options`: the resolved solve options (save times, event).
    - `kind`: the solution's label.
    - `result`: the closed form's own result code (e.g. an approximate basis that missed its
      tolerance); an event that fires on a successful closed form makes it
      `RESULTS.event_occurred`, a failure is kept.
    """
    ts = options.ts
    t0, t1 = problem.t0.astype(ts.dtype), problem.t1.astype(ts.dtype)
    if options.event is None:
        t_stop = t1
    else:
        t_stop, fired = locate_event(options.event, outputs_at, problem.learning_rate, t0, t1, ts)
        ok = result == RESULTS.successful
        result = RESULTS.where(fired & ok, RESULTS.event_occurred, result)
    u, us, du, dus = outputs_at(jnp.concatenate([ts, t_stop[None]]))
    final = (t_stop, u[-1], us[-1], du[-1], dus[-1])
    return make_solution(
        problem, ts, u[:-1], us[:-1], du[:-1], dus[:-1], kind=kind, result=result, final=final
    )


def locate_event(
    event: diffrax.Event,
    outputs_at: OutputsAt,
    args: Any,
    t0: Float[Array, ""],
    t1: Float[Array, ""],
    ts: Float[Array, " T"],
) -> tuple[Float[Array, ""], Bool[Array, ""]]:
    """`(t_stop, fired)`: the first time any condition of `event` triggers (`t1` if none)."""
    grid = jnp.sort(jnp.concatenate([ts, jnp.linspace(t0, t1, _BRACKET_POINTS + 1)]))
    u, us, _, _ = outputs_at(grid)
    conds = jax.tree.leaves(event.cond_fn, is_leaf=callable)
    directions = jax.tree.leaves(event.direction, is_leaf=lambda x: x is None)
    t_stop, fired = t1, jnp.array(False)
    for cond, direction in zip(conds, directions, strict=True):

        def value(t, cond=cond):
            a, b, _, _ = outputs_at(t[None])
            return cond(t, (a[0], b[0]), args)

        values = jax.vmap(lambda t, a, b, cond=cond: cond(t, (a, b), args))(grid, u, us)
        t_i, fired_i = _first_trigger(value, values, grid, direction)
        t_stop = jnp.where(fired_i & (t_i < t_stop), t_i, t_stop)
        fired = fired | fired_i
    return t_stop, fired


def _first_trigger(value, values, grid, direction) -> tuple[Array, Array]:
    """The first time `value(t)` triggers, bracketed by its `values` on `grid`."""
    boolean = jnp.issubdtype(values.dtype, jnp.bool_)
    if boolean:
        # diffrax's rule: a boolean condition triggers where it is True (at t0 too).
        hits = values
    else:
        old, new = jnp.sign(values[:-1]), jnp.sign(values[1:])
        if direction is None:
            crossed = old != new
        elif direction:
            crossed = (old <= 0) & (new > 0)
        else:
            crossed = (old > 0) & (new <= 0)
        # A real condition cannot trigger at t0: it needs a sign change.
        hits = jnp.concatenate([jnp.array([False]), crossed])
    fired = jnp.any(hits)
    j = jnp.argmax(hits)
    at_start = j == 0
    lo = grid[jnp.maximum(j - 1, 0)]
    hi = grid[j]
    # Oriented so that the root is where `signed` goes from negative to non-negative.
    flip = jnp.asarray(values[jnp.maximum(j - 1, 0)]) > 0

    def signed(t):
        v = value(t)
        if boolean:
            return jnp.where(v, 1.0, -1.0).astype(grid.dtype)
        return jnp.where(flip, -v, v)

    # With nothing to find, bisect a dummy with a root mid-bracket (under vmap both branches
    # run, so the search must stay well defined).
    mid = 0.5 * (lo + hi)
    ok = fired & ~at_start
    g = lambda t, _: jnp.where(ok, signed(t), t - mid)
    sol = optx.root_find(
        g,
        # Fixed halvings, no tolerance: the bracket shrinks below float resolution; the
        # result code (max steps) is therefore not a failure and is not used.
        optx.Bisection(rtol=0.0, atol=0.0, flip=False),
        mid,
        options={"lower": lo, "upper": hi},
        max_steps=_BISECTIONS,
        throw=False,
    )
    # optimistix returns the last midpoint; the upper end is where the condition has
    # triggered (for booleans: the first True time to machine precision).
    t = sol.value
    if boolean:
        t = jax.lax.stop_gradient(t)
    t = jnp.where(at_start, grid[0], t)
    return t, fired
