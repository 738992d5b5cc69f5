"""The solution object every `solve` returns: saved outputs, a status with a sentence, stats."""

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._losses import AbstractLoss
from ._results import RESULTS, is_successful, message as result_message


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

    - `t`: saved times, shape `(T,)`.
    - `train`, `test`: outputs at the saved times, `(T, n, k)` and `(T, m, k)`.
    - `train_dot`, `test_dot`: their time derivatives (used by `sol(t)` for cubic Hermite
      interpolation, accurate to the solver's tolerance between saved times).
    - `weights`: the parameter pytree at the saved times (leading axis `T`), when asked for
      with `save_weights=True`; else `None`.
    - `result`: a [`ntkode.RESULTS`][] item (`sol.retcode`, `sol.message`).
    - `stats`: step counts (`num_steps`, `num_accepted_steps`, `num_rejected_steps`).
    - `y_train`, `y_test`, `loss`: what the losses are measured against.

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
    kind: str = eqx.field(static=True, default="")

    def __call__(self, t) -> Outputs:
        """Train and test outputs at time(s) `t` (scalar or array), interpolated."""
        self._single("sol(t)")
        t = jnp.asarray(t, self.t.dtype)
        lo, hi = float(self.t[0]), float(self.t[-1])
        if self.t.shape[0] == 1:
            raise ValueError("This solution saved a single time; interpolation needs two.")
        tn = np.asarray(t)
        span = hi - lo
        if np.any(tn < lo - 1e-9 * span) or np.any(tn > hi + 1e-9 * span):
            raise ValueError(
                f"sol(t) was asked for t outside the saved range [{lo}, {hi}]; "
                "solve with a wider `saveat`."
            )
        f = lambda ti: (
            _hermite(ti, self.t, self.train, self.train_dot),
            _hermite(ti, self.t, self.test, self.test_dot),
        )
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

    @property
    def retcode(self) -> RESULTS:
        """The result code (`RESULTS.successful`, `RESULTS.max_steps_reached`, ...)."""
        return self.result

    @property
    def success(self) -> bool | np.ndarray:
        """Whether the solve succeeded (an array, one per trajectory, for ensembles)."""
        return is_successful(self.result)

    @property
    def message(self) -> str:
        """A sentence saying how the solve ended (one line per trajectory for ensembles)."""
        return result_message(self.result)

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
        """Plain-Python summary: final losses, steps, status."""
        self._single("summary()")
        return {
            "kind": self.kind,
            "t_end": float(self.t[-1]),
            "final_train_loss": float(self.train_loss[-1]),
            "final_test_loss": float(self.test_loss[-1]),
            "steps": self.num_steps,
            "retcode": result_message(self.result),
        }
