r"""The true dynamics: full-batch gradient flow of the weights, $d\theta/dt = -\eta\nabla L$."""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._data import Dataset
from ._errors import is_concrete
from ._losses import AbstractLoss, mse
from ._model import apply, check_model_data, partition
from ._options import ResolvedOptions
from ._problem import AbstractProblem, hold, init_common, make_solution
from ._solution import Solution


class GradientFlowField(eqx.Module):
    r"""The true dynamics $d\theta/dt = -\eta \nabla_\theta L(\theta)$ as a diffrax vector field.

    `__call__(t, params, learning_rate)`: `params` is the model's floating-point pytree.
    """

    static: Any
    loss: AbstractLoss
    x: Array
    y: Array

    def __call__(self, t, params, learning_rate):
        def objective(p):
            return self.loss(apply(eqx.combine(p, self.static), self.x), self.y)

        grads = jax.grad(objective)(params)
        return jax.tree.map(lambda g: -learning_rate * g, grads)


class GradientFlowProblem(AbstractProblem):
    r"""Full-batch gradient flow of an equinox model's weights, $d\theta/dt = -\eta\nabla L$.

    **Arguments:**

    - `model`: an equinox module mapping *one* input to its outputs (e.g. `eqx.nn.MLP`).
    - `data`: a [`ntkode.Dataset`][].
    - `loss`: [`ntkode.losses.mse`][] (default), [`ntkode.losses.cross_entropy`][] or a name.
    - `tspan`: `(t0, t1)`; one unit of time is one gradient-descent step of size `η`.
    - `learning_rate`: $\eta > 0$.
    """

    model: Any
    data: Dataset
    loss: AbstractLoss
    tspan: tuple[Float[Array, ""], Float[Array, ""]]
    learning_rate: Float[Array, ""]

    def __init__(
        self,
        model: Any,
        data: Dataset,
        loss: AbstractLoss | str = mse,
        tspan: tuple[Float[ArrayLike, ""], Float[ArrayLike, ""]] = (0.0, 1.0),
        learning_rate: Float[ArrayLike, ""] = 1.0,
    ):
        init_common(self, data, loss, tspan, learning_rate)
        if is_concrete(data.x_train):
            check_model_data(model, data)
        self.model = model

    @property
    def vector_field(self) -> GradientFlowField:
        params, static = partition(self.model)
        return GradientFlowField(static, self.loss, self.data.x_train, self.data.y_train)

    def _solve(self, solver, options: ResolvedOptions) -> Solution:
        solver = diffrax.Tsit5() if solver is None else solver
        params, static = partition(self.model)
        field = self.vector_field
        xtr, xte = self.data.x_train, self.data.x_test

        def save(t, p, lr):
            def outputs(q):
                m = eqx.combine(q, static)
                return apply(m, xtr), apply(m, xte)

            (u, us), (du, dus) = jax.jvp(outputs, (p,), (field(t, p, lr),))
            return u, us, du, dus, (p if options.save_weights else None)

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            solver,
            self.t0,
            self.t1,
            options.dt0,
            params,
            args=self.learning_rate,
            # The saved times, and the state where the solve stopped (t1, or an event).
            saveat=diffrax.SaveAt(
                subs=[
                    diffrax.SubSaveAt(ts=options.ts, fn=save),
                    diffrax.SubSaveAt(t1=True, fn=save),
                ]
            ),
            stepsize_controller=options.controller,
            adjoint=options.adjoint,
            event=options.event,
            max_steps=options.max_steps,
            throw=False,
            progress_meter=options.progress_meter,
        )
        (u, us, du, dus, w), end = sol.ys  # pyright: ignore[reportGeneralTypeIssues]
        t_stop = sol.ts[1][0]  # pyright: ignore[reportOptionalSubscript]
        uf, usf, duf, dusf, wf = jax.tree.map(lambda a: a[0], end)
        if w is not None:
            # Past an event the network stopped training: it keeps its weights at the stop
            # (past a failure they were never computed: NaN).
            stopped = sol.result == diffrax.RESULTS.event_occurred
            wf = jax.tree.map(lambda a: jnp.where(stopped, a, jnp.nan), wf)
            w = hold(options.ts <= t_stop, w, wf)
        return make_solution(
            self,
            options.ts,
            u,
            us,
            du,
            dus,
            kind="true",
            result=sol.result,
            stats=sol.stats,
            weights=w,
            final=(t_stop, uf, usf, duf, dusf),
        )
