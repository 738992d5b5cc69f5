"""The solution object every `solve` returns: saved outputs, where the solve stopped, a
status with a sentence, step counts."""

import math
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from ._errors import is_concrete
from ._losses import AbstractLoss
from ._results import RESULTS, is_successful, message as result_message, promote


class Outputs(NamedTuple):
    """Function-space state at one time: train outputs `(n, k)` and test outputs `(m, k)`."""

    train: Array
    test: Array


def _hermite(t, ts, y, dy):
    """Cubic Hermite interpolation of saved values `y` (with slopes `dy`) at scalar `t`."""
    i = jnp.clip(jnp.searchsorted(ts, t, side="right") - 1, 0, ts.shape[0] - 2)
    t0, t1 = ts[i], ts[i + 1]
    h = t1 - t0
    s = jnp.where(h > 0, (t - t0) / jnp.where(h > 0, h, 1.0), 0.0)
    h00 = 2 * s**3 - 3 * s**2 + 1
    h10 = s**3 - 2 * s**2 + s
    h01 = -2 * s**3 + 3 * s**2
    h11 = s**3 - s**2
    return h00 * y[i] + h10 * h * dy[i] + h01 * y[i + 1] + h11 * h * dy[i + 1]


class Solution(eqx.Module):
    """The result of [`ntkode.solve`][].

    **Fields:**

    - `t`: the saved times (those asked for with `saveat`), shape `(T,)`.
    - `train`, `test`: outputs at the saved times, `(T, n, k)` and `(T, m, k)`.
    - `train_dot`, `test_dot`: their time derivatives, used by `sol(t)` (see there).
    - `weights`: the parameter pytree at the saved times (leading axis `T`), when asked for
      with `save_weights=True`; else `None`.
    - `result`: a [`ntkode.RESULTS`][] item (`sol.retcode`, `sol.message`).
    - `stats`: step counts (`num_steps`, `num_accepted_steps`, `num_rejected_steps`).
    - `y_train`, `y_test`, `loss`: what the losses are measured against.
    - `t_stop`: where the solve stopped: the end of `tspan`, or the time an event fired.
    - `final`: the [`ntkode.Outputs`][] at `t_stop`; `final_dot`: their time derivatives.

    **Events.** When a `diffrax.Event` stops the solve, `result` is
    `RESULTS.event_occurred` (a success: `sol.success` is `True`), `sol.event_time` is
    `t_stop` and `sol.final` holds the outputs there. Saved times past the stop keep their
    place in `t` (shapes stay fixed, so solutions can be stacked, vmapped and jitted) with
    this meaning: training stopped, so the outputs (and weights) there are those at the
    stop, held constant, and their time derivatives are zero. `sol.saved` is `True` at the
    times the solve actually reached. Losses, `sol(t)`, `summary()` and
    [`ntkode.compare`][] follow this convention; nothing is `inf`. A solve that *failed*
    before the end (`max_steps_reached`, a non-finite value; `sol.success` is `False`)
    has NaN at the times it did not reach: those values were never computed.

    An ensemble solve returns one `Solution` whose arrays have a leading trajectory axis.
    """

    t: Float[Array, " T"]
    train: Float[Array, "T n k"]
    test: Float[Array, "T m k"]
    train_dot: Float[Array, "T n k"]
    test_dot: Float[Array, "T m k"]
    weights: PyTree[Array] | None
    result: RESULTS
    stats: dict[str, Array]
    y_train: Float[Array, "n k"]
    y_test: Float[Array, "m k"]
    loss: AbstractLoss
    t_stop: Float[Array, ""]
    final: Outputs
    final_dot: Outputs
    kind: str = eqx.field(static=True, default="")
    # Whether the path that made this solution could stop at an event (every ntkode solver
    # can but one that only evaluates its saved times); `solve` refuses events otherwise.
    watches_events: bool = eqx.field(static=True, default=True, repr=False)

    def __call__(self, t) -> Outputs:
        r"""Train and test outputs at time(s) `t` (scalar or array), interpolated.

        Cubic Hermite interpolation of the saved outputs and their exact time derivatives
        (the problem's vector field at each saved time). At saved times it returns the
        solve's values. Between them its error is the interpolant's, not the solver's
        tolerance: at most $h^4/384 \cdot \max|u^{(4)}|$ on an interval of length $h$; for
        MSE on a frozen kernel $u^{(4)} = (\eta\Theta/n)^4 (u - Y)$, so a mode decaying at
        rate $r = \eta\lambda/n$ is interpolated to about $(rh)^4/384$ of its size while
        $rh \lesssim 1$, and badly beyond. Measured on the README's quick-start frozen
        kernel (fastest rate $r = 6.7$): saves 1.0, 0.5 and 0.25 apart gave errors of 3.0%,
        0.56% and 0.069% of the outputs' motion, against the closed form's 1e-15. Save
        times closer than $1/r$ of the fastest mode that matters (`saveat`) where `sol(t)`
        must be accurate between saves. Past `t_stop` (an event) the outputs are those at
        the stop.
        """
        self._single("sol(t)")
        if self.t.shape[0] == 1:
            raise ValueError("This solution saved a single time; interpolation needs two.")
        t = jnp.asarray(t, self.t.dtype)
        if is_concrete(t) and is_concrete(self.t):
            lo, hi = float(self.t[0]), float(self.t[-1])
            tn = np.asarray(t)
            span = hi - lo
            if np.any(tn < lo - 1e-9 * span) or np.any(tn > hi + 1e-9 * span):
                raise ValueError(
                    f"sol(t) was asked for t outside the saved range [{lo}, {hi}]; "
                    "solve with a wider `saveat`."
                )
        f = lambda ti: _interpolate(ti, self)
        if t.ndim == 0:
            return Outputs(*f(t))
        return Outputs(*jax.vmap(f)(t))

    def _single(self, what: str) -> None:
        if self.t.ndim != 1:
            raise ValueError(
                f"{what} needs a single trajectory; index an ensemble solution first (`sol[i]`)."
            )

    def __getitem__(self, i: int) -> "Solution":
        """Trajectory `i` of an ensemble solution."""
        if self.t.ndim != 2:
            raise TypeError("Only ensemble solutions (with a trajectory axis) can be indexed.")
        return jax.tree.map(lambda a: a[i], self)

    def without_weights(self) -> "Solution":
        """This solution with its saved weights dropped (`weights=None`), to free them."""
        return eqx.tree_at(lambda s: s.weights, self, None, is_leaf=lambda x: x is None)

    @property
    def retcode(self) -> RESULTS:
        """The result code (`RESULTS.successful`, `RESULTS.max_steps_reached`, ...)."""
        return self.result

    @property
    def success(self) -> bool | np.ndarray:
        """Whether the solve succeeded or an event stopped it (one per trajectory for
        ensembles)."""
        return is_successful(self.result)

    @property
    def message(self) -> str:
        """A sentence saying how the solve ended (one line per trajectory for ensembles)."""
        return result_message(self.result)

    @property
    def saved(self) -> Bool[Array, " T"]:
        """`True` at the saved times the solve reached (all of them unless an event fired)."""
        return self.t <= self.t_stop[..., None]

    @property
    def event_time(self) -> float | np.ndarray | None:
        """When an event stopped the solve: `None` if none did (NaN entries for ensembles)."""
        fired = np.asarray(promote(self.result) == RESULTS.event_occurred)
        if fired.ndim == 0:
            return float(self.t_stop) if fired else None
        return np.where(fired, np.asarray(self.t_stop), np.nan)

    @property
    def train_loss(self) -> Float[Array, " T"]:
        """Training loss at each saved time."""
        return self._loss_over_time(self.train, self.y_train)

    @property
    def test_loss(self) -> Float[Array, " T"]:
        """Test loss at each saved time (NaN if the test split is empty)."""
        if self.y_test.shape[-2] == 0:
            return jnp.full(self.t.shape, jnp.nan)
        return self._loss_over_time(self.test, self.y_test)

    def _loss_over_time(self, u, y):
        f = lambda ui, yi: self.loss(ui, yi)
        if self.t.ndim == 1:
            return jax.vmap(f, in_axes=(0, None))(u, y)
        return jax.vmap(jax.vmap(f, in_axes=(0, None)))(u, y)

    @property
    def num_steps(self) -> int | np.ndarray:
        s = np.asarray(self.stats["num_steps"])
        return int(s) if s.ndim == 0 else s

    def summary(self) -> dict[str, Any]:
        """Plain-Python summary: where the solve stopped, the losses there, steps, status."""
        self._single("summary()")
        test = self.loss(self.final.test, self.y_test) if self.y_test.shape[0] else math.nan
        return {
            "kind": self.kind,
            "t_end": float(self.t_stop),
            "final_train_loss": float(self.loss(self.final.train, self.y_train)),
            "final_test_loss": float(test),
            "steps": self.num_steps,
            "retcode": result_message(self.result),
        }


def _interpolate(t, sol: Solution) -> tuple[Array, Array]:
    """Hermite interpolation on the saved times, with the stop as the last knot."""
    ts, stop = sol.t, sol.t_stop
    i = jnp.clip(jnp.searchsorted(ts, t, side="right") - 1, 0, ts.shape[0] - 2)
    # When the stop falls inside the interval, the interval ends there.
    cut = ts[i + 1] > stop
    knots = jnp.stack([ts[i], jnp.where(cut, stop, ts[i + 1])])

    def one(y, dy, y_stop, dy_stop):
        right = jnp.where(cut, y_stop, y[i + 1])
        dright = jnp.where(cut, dy_stop, dy[i + 1])
        value = _hermite(
            jnp.minimum(t, knots[1]), knots, jnp.stack([y[i], right]), jnp.stack([dy[i], dright])
        )
        return jnp.where(t >= stop, y_stop, value)

    return (
        one(sol.train, sol.train_dot, sol.final.train, sol.final_dot.train),
        one(sol.test, sol.test_dot, sol.final.test, sol.final_dot.test),
    )
