"""`SolveOptions`: how to solve, declared once for every entry point that runs a diffrax solve.

[`ntkode.solve`][], [`ntkode.timed_solve`][], [`ntkode.PathFlow`][] and
[`ntkode.tune_grid`][] all take these options, either as keywords (`rtol=1e-6`) or as one
`options=SolveOptions(...)` object (keywords then override its fields).
"""

import dataclasses
import sys
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import check_positive, is_concrete

_DEFAULT_RTOL = 1e-4
_DEFAULT_ATOL = 1e-6


class SolveOptions(eqx.Module):
    """Options of a diffrax solve of a training-dynamics problem.

    **Fields** (all optional):

    - `saveat`: times at which to save outputs (a 1-D array inside `tspan`), or a number of
      equally spaced times over `tspan` (default 101).
    - `rtol`, `atol`: tolerances of the default `diffrax.PIDController` (default `1e-4`,
      `1e-6`). They are passed as arrays, so changing them does not recompile. Giving them
      together with `stepsize_controller` is an error (the controller has its own).
    - `dt0`: initial step (default: chosen by the controller).
    - `max_steps`: step budget (default 100,000); if it is hit the result says so.
    - `stepsize_controller`: overrides the default adaptive controller.
    - `adjoint`: how ODE solves are differentiated: `diffrax.RecursiveCheckpointAdjoint()`
      (default) or `diffrax.DirectAdjoint()` for reverse mode, `diffrax.ForwardMode()` for
      forward mode. All three differentiate the discrete forward solve and agree with finite
      differences. `diffrax.BacksolveAdjoint()` is refused: it integrates the training flow
      backwards, which is unstable because gradient flow is dissipative (errors grow
      exponentially); `diffrax.ImplicitAdjoint()` is refused because a finite-time solve is
      not a steady state. Closed-form solves are differentiated directly, whatever the
      adjoint.
    - `event`: a `diffrax.Event` that may stop the solve early; its `cond_fn(t, y, args)`
      sees the problem's state `y` (the weights for the true flow, `(u_train, u_test)` for
      kernel flows) and `args`, the learning rate. Every problem supports events (closed
      forms locate the crossing exactly); the solution records where the solve stopped
      (see [`ntkode.Solution`][]).
    - `progress`: `True` for a progress bar (diffrax's `TqdmProgressMeter`) or a diffrax
      progress meter.
    - `throw`: raise `RuntimeError` with the result's sentence if the solve did not succeed.
    - `save_weights`: also keep the weights at the saved times (true flow only; never dense).
    """

    saveat: Any = None
    rtol: Any = None
    atol: Any = None
    dt0: Any = None
    max_steps: int = eqx.field(static=True, default=100_000)
    stepsize_controller: diffrax.AbstractStepSizeController | None = None
    adjoint: diffrax.AbstractAdjoint | None = None
    event: diffrax.Event | None = None
    progress: Any = eqx.field(static=True, default=False)
    throw: bool = eqx.field(static=True, default=False)
    save_weights: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        for name in ("rtol", "atol", "dt0"):
            value = getattr(self, name)
            if value is not None:
                check_positive(name, value)
        steps = self.max_steps
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
            raise ValueError(f"`max_steps` must be a positive integer, got {steps!r}.")
        if self.stepsize_controller is not None:
            if not isinstance(self.stepsize_controller, diffrax.AbstractStepSizeController):
                raise TypeError(
                    "`stepsize_controller` must be a diffrax step-size controller (e.g. "
                    "diffrax.PIDController(rtol=1e-5, atol=1e-7)), got "
                    f"{self.stepsize_controller!r}."
                )
            given = [n for n in ("rtol", "atol") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"`{'` and `'.join(given)}` would be ignored: a `stepsize_controller` was "
                    "given, and it carries its own tolerances. Pass them to the controller "
                    "(e.g. diffrax.PIDController(rtol=..., atol=...)) or drop the controller."
                )
        if self.adjoint is not None:
            check_adjoint(self.adjoint)
        if self.event is not None and not isinstance(self.event, diffrax.Event):
            raise TypeError(f"`event` must be a diffrax.Event, got {self.event!r}.")

    @classmethod
    def build(cls, options: "SolveOptions | None" = None, **changes: Any) -> "SolveOptions":
        """`options` (default: all defaults) with the fields named in `changes` replaced."""
        if options is not None and not isinstance(options, SolveOptions):
            raise TypeError(
                f"`options` must be an ntkode.SolveOptions, got {type(options).__name__}."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise TypeError(f"Unknown solve option(s) {unknown}; the options are {sorted(names)}.")
        base = cls() if options is None else options
        return dataclasses.replace(base, **changes) if changes else base

    def refuse(self, where: str, *names: str) -> None:
        """Raise if any option in `names` is set: `where` does not use it."""
        used = [n for n in names if getattr(self, n) not in (None, False)]
        if used:
            raise ValueError(f"{where} does not use the solve option(s) {used}; drop them.")

    def tolerances(self, rtol: float = _DEFAULT_RTOL, atol: float = _DEFAULT_ATOL):
        """`(rtol, atol)`, with the given defaults where unset."""
        return (
            rtol if self.rtol is None else self.rtol,
            atol if self.atol is None else self.atol,
        )

    def controller(
        self, dtype, rtol: float = _DEFAULT_RTOL, atol: float = _DEFAULT_ATOL
    ) -> diffrax.AbstractStepSizeController:
        """The step-size controller: the given one, or a PID controller at the tolerances."""
        if self.stepsize_controller is not None:
            return self.stepsize_controller
        r, a = self.tolerances(rtol, atol)
        return diffrax.PIDController(rtol=jnp.asarray(r, dtype), atol=jnp.asarray(a, dtype))

    def resolve(self, problem: Any, *, ensemble: bool = False) -> "ResolvedOptions":
        """Everything a problem's solver needs, as arrays of the problem's precision.

        Works on traced problems too (inside `jax.jit`, `jax.vmap`, `jax.grad`): nothing here
        converts an array to a Python number.
        """
        dtype = problem.tspan[0].dtype
        return ResolvedOptions(
            ts=save_times(self.saveat, problem.tspan[0], problem.tspan[1], dtype),
            controller=self.controller(dtype),
            dt0=None if self.dt0 is None else jnp.asarray(self.dt0, dtype),
            max_steps=int(self.max_steps),
            adjoint=diffrax.RecursiveCheckpointAdjoint() if self.adjoint is None else self.adjoint,
            event=self.event,
            progress_meter=diffrax.NoProgressMeter() if ensemble else progress_meter(self.progress),
            save_weights=bool(self.save_weights),
        )

    def check_solver(self, solver: Any) -> None:
        """Raise a sentence if `solver` is not a diffrax solver instance that these options
        can drive (`None`, the problem's own default, is always fine)."""
        if solver is None:
            return
        if isinstance(solver, str):
            raise TypeError(
                f"`solver` must be a diffrax solver object, e.g. diffrax.Tsit5(), not the "
                f"string {solver!r}."
            )
        if isinstance(solver, type):
            if issubclass(solver, diffrax.AbstractSolver):
                raise TypeError(
                    f"`solver` must be a diffrax solver instance: pass {solver.__name__}() "
                    f"(with parentheses), not the class {solver.__name__}."
                )
            raise TypeError(f"`solver` must be a diffrax solver instance, got the class {solver}.")
        if not isinstance(solver, diffrax.AbstractSolver):
            raise TypeError(
                "`solver` must be a diffrax solver (e.g. diffrax.Tsit5(), diffrax.Kvaerno5()), "
                f"got {type(solver).__name__}."
            )
        if isinstance(solver, diffrax.AbstractAdaptiveSolver):
            return
        name = type(solver).__name__
        controller = self.stepsize_controller
        if controller is None or isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
            raise ValueError(
                f"diffrax.{name}() has no error estimate, so it cannot adapt its step size: "
                "pass `dt0` (the step) and `stepsize_controller=diffrax.ConstantStepSize()`, "
                "or an adaptive solver such as diffrax.Tsit5()."
            )
        if isinstance(controller, diffrax.ConstantStepSize) and self.dt0 is None:
            raise ValueError(
                f"diffrax.{name}() with a constant step size needs `dt0`, the step to take."
            )


class ResolvedOptions(eqx.Module):
    """What a problem's `_solve` receives: save times, controller, budget, adjoint, event."""

    ts: Float[Array, " T"]
    controller: diffrax.AbstractStepSizeController
    dt0: Array | None
    max_steps: int = eqx.field(static=True)
    adjoint: diffrax.AbstractAdjoint
    event: diffrax.Event | None
    progress_meter: diffrax.AbstractProgressMeter
    save_weights: bool = eqx.field(static=True)


def save_times(saveat: Any, t0: Any, t1: Any, dtype) -> jax.Array:
    """Save times from `saveat` (a count or an array inside `[t0, t1]`), validated.

    Checks that need numbers run on concrete values now, and on traced ones (a problem built
    inside `jax.jit`) as runtime checks (`eqx.error_if`), so that nothing is silently clipped.
    """
    if saveat is None:
        saveat = 101
    if isinstance(saveat, int | np.integer) and not isinstance(saveat, bool):
        if saveat < 2:
            raise ValueError(f"`saveat` as a count must be at least 2, got {saveat}.")
        return jnp.linspace(t0, t1, int(saveat), dtype=dtype)
    if isinstance(saveat, diffrax.SaveAt):
        raise TypeError(
            "`saveat` takes the times to save at (an array, or a count), not a diffrax.SaveAt: "
            "ntkode decides *what* is saved (function-space outputs, optionally weights)."
        )
    if jnp.ndim(saveat) != 1 or jnp.size(saveat) == 0:
        raise ValueError(f"`saveat` must be a 1-D array of times, got shape {jnp.shape(saveat)}.")
    if is_concrete(saveat) and is_concrete(t0) and is_concrete(t1):
        ts = np.asarray(saveat, dtype=float)
        a, b = float(t0), float(t1)
        if not np.all(np.isfinite(ts)):
            raise ValueError("`saveat` contains non-finite times.")
        if ts.size > 1 and np.any(np.diff(ts) <= 0):
            raise ValueError("`saveat` times must be strictly increasing.")
        span = b - a
        if ts[0] < a - 1e-12 * span or ts[-1] > b + 1e-12 * span:
            raise ValueError(
                f"`saveat` times must lie inside tspan = ({a}, {b}); got [{ts[0]}, {ts[-1]}]."
            )
        return jnp.asarray(np.clip(ts, a, b), dtype=dtype)
    ts = jnp.asarray(saveat, dtype)
    span = t1 - t0
    slack = 1e-12 * span
    ok = (
        jnp.all(jnp.isfinite(ts))
        & jnp.all(jnp.diff(ts) > 0)
        & (ts[0] >= t0 - slack)
        & (ts[-1] <= t1 + slack)
    )
    ts = eqx.error_if(
        ts, ~ok, "`saveat` times must be finite, strictly increasing and inside `tspan`."
    )
    return jnp.clip(ts, t0, t1)


def check_adjoint(adjoint: Any) -> None:
    """Accept the diffrax adjoints whose gradients agree with finite differences on every
    ntkode problem; refuse the others with a sentence saying why and what to use."""
    use = (
        "Use diffrax.RecursiveCheckpointAdjoint() (the default) or diffrax.DirectAdjoint() "
        "for reverse mode (jax.grad), or diffrax.ForwardMode() for forward mode (jax.jvp, "
        "jax.jacfwd)."
    )
    if isinstance(adjoint, _ACCEPTED_ADJOINTS):
        return
    if isinstance(adjoint, diffrax.BacksolveAdjoint):
        raise ValueError(
            "`adjoint=diffrax.BacksolveAdjoint()` is refused: it re-solves the training flow "
            "backwards in time, and gradient flow is dissipative, so the reversed flow "
            "amplifies errors exponentially (on a frozen NTK it gave d loss/d learning rate "
            f"= 947.8 where the correct value is -0.0175). {use}"
        )
    if isinstance(adjoint, diffrax.ImplicitAdjoint):
        raise ValueError(
            "`adjoint=diffrax.ImplicitAdjoint()` is refused: it differentiates a steady state "
            "by the implicit function theorem, and a training solve over a finite `tspan` is "
            f"not at one, so its gradients would be wrong. {use}"
        )
    if isinstance(adjoint, diffrax.AbstractAdjoint):
        raise ValueError(
            f"`adjoint={type(adjoint).__name__}(...)` is not one ntkode has checked against "
            f"finite differences. {use}"
        )
    raise TypeError(f"`adjoint` must be a diffrax adjoint object, got {adjoint!r}. {use}")


# Discretise-then-optimise adjoints: they differentiate the forward solve's own steps.
_ACCEPTED_ADJOINTS = (
    diffrax.RecursiveCheckpointAdjoint,
    diffrax.DirectAdjoint,
    diffrax.ForwardMode,
)


def progress_meter(progress: Any) -> diffrax.AbstractProgressMeter:
    """A diffrax progress meter from `progress` (`True`: a tqdm bar, on a terminal only)."""
    if isinstance(progress, diffrax.AbstractProgressMeter):
        return progress
    if progress and _terminal():
        return diffrax.TqdmProgressMeter(refresh_steps=20)
    # In a pipe or a CI log a bar writes thousands of carriage-return fragments: the studies
    # print one line per stage instead.
    return diffrax.NoProgressMeter()


def _terminal() -> bool:
    return sys.stderr.isatty()
