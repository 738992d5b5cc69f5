r"""Problems: the true gradient flow in weight space and frozen-kernel flows in function space.

Every problem is an `eqx.Module` holding data, a loss, a time span and a learning rate, and
knows how to solve itself given a solver and [`SolveOptions`][]; users call [`ntkode.solve`][].
"""

import abc
import dataclasses
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._data import Dataset
from ._errors import check_finite, check_positive, check_tspan, is_concrete
from ._losses import AbstractLoss, as_loss, mse
from ._model import apply, check_model_data, partition
from ._solution import Solution, from_diffrax


class SolveOptions(eqx.Module):
    """Everything `solve` passes to a problem besides the solver (built by `solve`)."""

    ts: Float[Array, " T"]
    controller: diffrax.AbstractStepSizeController
    dt0: Array | None
    max_steps: int = eqx.field(static=True)
    adjoint: diffrax.AbstractAdjoint
    event: diffrax.Event | None
    progress_meter: diffrax.AbstractProgressMeter
    save_weights: bool = eqx.field(static=True)


class AbstractProblem(eqx.Module):
    """A training-dynamics problem: data, loss, time span, learning rate."""

    data: eqx.AbstractVar[Dataset]
    loss: eqx.AbstractVar[AbstractLoss]
    tspan: eqx.AbstractVar[tuple[Array, Array]]
    learning_rate: eqx.AbstractVar[Array]

    @abc.abstractmethod
    def _solve(self, solver: Any, options: SolveOptions) -> Solution:
        """Solve with `solver` (or the problem's own fast path when `solver is None`)."""

    @property
    def t0(self) -> Array:
        return self.tspan[0]

    @property
    def t1(self) -> Array:
        return self.tspan[1]


def _as_time(t, dtype) -> Array:
    return jnp.asarray(t, dtype=dtype)


def _init_common(self, data, loss, tspan, learning_rate):
    if not isinstance(data, Dataset):
        raise TypeError(
            f"`data` must be an ntkode.Dataset (e.g. ntkode.datasets.sine()), got {type(data)}."
        )
    t0, t1 = check_tspan(tspan)
    check_positive("learning_rate", learning_rate)
    self.data = data
    self.loss = as_loss(loss)
    # Times and the learning rate follow the data's precision (float32 data, float32 solve).
    dtype = data.y_train.dtype
    self.tspan = (_as_time(t0, dtype), _as_time(t1, dtype))
    self.learning_rate = jnp.asarray(learning_rate, dtype=dtype)


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
    tspan: tuple[Array, Array]
    learning_rate: Array

    def __init__(self, model, data, loss=mse, tspan=(0.0, 1.0), learning_rate=1.0):
        _init_common(self, data, loss, tspan, learning_rate)
        if is_concrete(data.x_train):
            check_model_data(model, data)
        self.model = model

    @property
    def vector_field(self) -> GradientFlowField:
        params, static = partition(self.model)
        return GradientFlowField(static, self.loss, self.data.x_train, self.data.y_train)

    def _solve(self, solver, options: SolveOptions) -> Solution:
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
            saveat=diffrax.SaveAt(ts=options.ts, fn=save),
            stepsize_controller=options.controller,
            adjoint=options.adjoint,
            event=options.event,
            max_steps=options.max_steps,
            throw=False,
            progress_meter=options.progress_meter,
        )
        u, us, du, dus, w = sol.ys  # pyright: ignore[reportGeneralTypeIssues]
        return make_solution(
            self, sol.ts, u, us, du, dus, kind="true", result=sol.result, stats=sol.stats, weights=w
        )


def _stats(stats) -> dict[str, Array]:
    return {
        k: jnp.asarray(stats[k]) for k in ("num_steps", "num_accepted_steps", "num_rejected_steps")
    }


def make_solution(problem, ts, u, us, du, dus, *, kind, result=None, stats=None, weights=None):
    """A `Solution` of `problem` from saved outputs and their time derivatives.

    `result` is a diffrax result code (default: successful) and `stats` diffrax's step stats
    (default: zero steps, as for exact closed forms).
    """
    if stats is None:
        zero = jnp.array(0)
        stats = {"num_steps": zero, "num_accepted_steps": zero, "num_rejected_steps": zero}
    else:
        stats = _stats(stats)
    return Solution(
        t=ts,
        train=u,
        test=us,
        train_dot=du,
        test_dot=dus,
        weights=weights,
        result=from_diffrax(diffrax.RESULTS.successful if result is None else result),
        stats=stats,
        y_train=problem.data.y_train,
        y_test=problem.data.y_test,
        loss=problem.loss,
        kind=kind,
    )


def flatten_kernel(kernel, n1: int, n2: int, k: int, name: str) -> Float[Array, "n1k n2k"]:
    """Bring a kernel given as `(n1, n2)`, `(n1, n2, k, k)` or `(n1·k, n2·k)` to `(n1·k, n2·k)`.

    A `(n1, n2)` kernel for `k > 1` outputs means the same kernel on every output
    ($\\Theta \\otimes I_k$).
    """
    kernel = jnp.asarray(kernel)
    if kernel.shape == (n1, n2, k, k):
        return jnp.transpose(kernel, (0, 2, 1, 3)).reshape(n1 * k, n2 * k)
    if kernel.shape == (n1 * k, n2 * k):
        return kernel
    if kernel.shape == (n1, n2):
        return jnp.kron(kernel, jnp.eye(k, dtype=kernel.dtype))
    raise ValueError(
        f"`{name}` has shape {kernel.shape} but the data need ({n1}, {n2}), "
        f"({n1}, {n2}, {k}, {k}) or ({n1 * k}, {n2 * k}) ({n1} and {n2} examples, {k} outputs)."
    )


class KernelFlowField(eqx.Module):
    r"""Function-space flow $du/dt = -\eta\,\Theta\,\nabla_u L$, test outputs carried along.

    State: `(u_train (n, k), u_test (m, k))`; `args`: the learning rate.
    """

    kernel_train: Array
    kernel_test: Array
    y: Array
    loss: AbstractLoss

    def __call__(self, t, state, learning_rate):
        u, us = state
        g = self.loss.grad(u, self.y).reshape(-1)
        du = -learning_rate * (self.kernel_train @ g).reshape(u.shape)
        dus = -learning_rate * (self.kernel_test @ g).reshape(us.shape)
        return du, dus


def mse_closed_form(kernel, kernel_test, u0, us0, y, learning_rate, ts, t0):
    r"""Exact frozen-kernel MSE flow at times `ts` by eigendecomposition.

    With $r = u - Y$ and $c = \eta/n$: $r(t) = V e^{-c\Lambda\tau} V^\top r_0$, and test outputs
    $u_*(t) = u_*(0) - c\,\Theta_* V \operatorname{diag}\big(\int_0^\tau e^{-c\lambda s}ds\big)
    V^\top r_0$, $\tau = t - t_0$. Returns `(u, us, du, dus)` with a leading time axis.
    """
    n, k = u0.shape
    m = us0.shape[0]
    c = learning_rate / n
    lam, vec = jnp.linalg.eigh(0.5 * (kernel + kernel.T))
    coef = vec.T @ (u0 - y).reshape(-1)
    tau = (ts - t0)[:, None]
    x = c * lam[None, :] * tau
    decay = jnp.exp(-x)
    small = jnp.abs(x) < 1e-6
    safe = jnp.where(small, 1.0, c * lam[None, :])
    integral = jnp.where(small, tau * (1 - 0.5 * x), -jnp.expm1(-x) / safe)
    r = (decay * coef) @ vec.T
    u = y.reshape(-1) + r
    us = us0.reshape(-1) - c * (integral * coef) @ (kernel_test @ vec).T
    du = -c * r @ kernel.T
    dus = -c * r @ kernel_test.T
    T = ts.shape[0]
    return u.reshape(T, n, k), us.reshape(T, m, k), du.reshape(T, n, k), dus.reshape(T, m, k)


class KernelFlowProblem(AbstractProblem):
    r"""Frozen-kernel (lazy, linearised) dynamics in function space.

    $du/dt = -\eta\,\Theta(X, X)\,\nabla_u L$ on the train outputs, and
    $du_*/dt = -\eta\,\Theta(X_*, X)\,\nabla_u L$ on the test outputs. For MSE, `solve` with no
    solver uses the exact closed form (no ODE steps); with a solver, or for other losses, a
    diffrax solve.

    **Arguments:**

    - `kernel_train`: $\Theta(X, X)$ as `(n, n)`, `(n, n, k, k)` or `(n·k, n·k)`.
    - `kernel_test`: $\Theta(X_*, X)$ as `(m, n)`, `(m, n, k, k)` or `(m·k, n·k)`; default
      zeros (test outputs then stay at `u0_test`).
    - `data`, `loss`, `tspan`, `learning_rate`: as in [`ntkode.GradientFlowProblem`][].
    - `u0_train`, `u0_test`: outputs at `t0` (default zeros: a kernel machine from zero).

    Use [`KernelFlowProblem.from_model`][] for the empirical NTK of a network.
    """

    kernel_train: Float[Array, "nk nk"]
    kernel_test: Float[Array, "mk nk"]
    u0_train: Float[Array, "n k"]
    u0_test: Float[Array, "m k"]
    data: Dataset
    loss: AbstractLoss
    tspan: tuple[Array, Array]
    learning_rate: Array

    def __init__(
        self,
        kernel_train,
        data,
        loss=mse,
        tspan=(0.0, 1.0),
        learning_rate=1.0,
        kernel_test=None,
        u0_train=None,
        u0_test=None,
    ):
        _init_common(self, data, loss, tspan, learning_rate)
        n, m, k = data.n_train, data.n_test, data.n_outputs
        dtype = data.y_train.dtype
        self.kernel_train = flatten_kernel(kernel_train, n, n, k, "kernel_train").astype(dtype)
        if kernel_test is None:
            kernel_test = jnp.zeros((m * k, n * k), dtype)
        self.kernel_test = flatten_kernel(kernel_test, m, n, k, "kernel_test").astype(dtype)
        self.u0_train = _initial("u0_train", u0_train, (n, k), dtype)
        self.u0_test = _initial("u0_test", u0_test, (m, k), dtype)
        for name in ("kernel_train", "kernel_test"):
            check_finite(name, getattr(self, name))

    @classmethod
    def from_model(
        cls,
        model,
        data: Dataset,
        loss=mse,
        tspan=(0.0, 1.0),
        learning_rate=1.0,
        *,
        implementation: str = "auto",
    ) -> "KernelFlowProblem":
        """The frozen empirical NTK of `model` at its current weights, and its outputs."""
        from .._ntk import ntk

        check_model_data(model, data)
        k_train = ntk(model, data.x_train, implementation=implementation)
        k_test = ntk(model, data.x_test, data.x_train, implementation=implementation)
        return cls(
            k_train,
            data,
            loss,
            tspan,
            learning_rate,
            kernel_test=k_test,
            u0_train=apply(model, data.x_train),
            u0_test=apply(model, data.x_test),
        )

    @property
    def vector_field(self) -> KernelFlowField:
        return KernelFlowField(self.kernel_train, self.kernel_test, self.data.y_train, self.loss)

    def _solve(self, solver, options: SolveOptions) -> Solution:
        if options.save_weights:
            raise ValueError("`save_weights=True` applies to GradientFlowProblem only.")
        if solver is None and isinstance(self.loss, type(mse)):
            u, us, du, dus = mse_closed_form(
                self.kernel_train,
                self.kernel_test,
                self.u0_train,
                self.u0_test,
                self.data.y_train,
                self.learning_rate,
                options.ts,
                self.t0,
            )
            return make_solution(self, options.ts, u, us, du, dus, kind="kernel")
        return solve_function_space(self, self.vector_field, solver, options, kind="kernel")


def solve_function_space(problem, field, solver, options: SolveOptions, kind: str) -> Solution:
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
        # Outputs only (no `SaveAt(fn=...)`): diffrax.BacksolveAdjoint accepts nothing else.
        saveat=diffrax.SaveAt(ts=options.ts),
        stepsize_controller=options.controller,
        adjoint=options.adjoint,
        event=options.event,
        max_steps=options.max_steps,
        throw=False,
        progress_meter=options.progress_meter,
    )
    u, us = sol.ys  # pyright: ignore[reportGeneralTypeIssues]
    du, dus = jax.vmap(lambda t, a, b: field(t, (a, b), problem.learning_rate))(sol.ts, u, us)
    return make_solution(
        problem, sol.ts, u, us, du, dus, kind=kind, result=sol.result, stats=sol.stats
    )


def _initial(name, value, shape, dtype):
    if value is None:
        return jnp.zeros(shape, dtype)
    value = jnp.asarray(value, dtype)
    if value.shape != shape:
        raise ValueError(f"`{name}` has shape {value.shape}; expected {shape}.")
    check_finite(name, value)
    return value


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


__all__ = [
    "AbstractProblem",
    "GradientFlowField",
    "GradientFlowProblem",
    "KernelFlowField",
    "KernelFlowProblem",
    "SolveOptions",
    "remake",
]
