r"""What a path-kernel run accumulates and returns, and the interface of the runs.

A run accumulates two integrals along the training path (Domingos 2020),
$K(x_q, x_i) = \int \Theta_{\theta(t)}(x_q, x_i)\,dt$ and
$W_i(x_q) = \int \Theta_{\theta(t)}(x_q, x_i)\,\nabla_{u_i}L\,dt$. Both rates come from the
NTK engine's per-example features ([`ntkode.AbstractNTKImplementation`][]): the first is
`contract(features(queries), features(X))`, the second uses
$\sum_b\Theta_{qi,ab}\,g_{ib} = \nabla_\theta f_a(x_q)\cdot\nabla_\theta(g_i\cdot f(x_i))$, the
kernel between the model on the queries and the loss-weighted one-output model on the
training inputs, so no `(q, n, k, k)` array is formed for it.
"""

import abc
from typing import Any

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float, PyTree

from .._core._gradient_flow import GradientFlowProblem
from .._core._model import apply, partition
from .._core._results import RESULTS
from .._ntk._base import AbstractNTKImplementation


class Tangents(eqx.Module):
    r"""The rates $\Theta_\theta(x_q, X)$ and $\Theta_\theta(x_q, X)\,g$ of a path kernel.

    `training` takes the features of the training inputs once per set of weights;
    `rates` contracts the features of the queries (possibly at other weights: a
    gradient-descent step pairs points along the step with its start) against them.
    """

    implementation: AbstractNTKImplementation
    trace: bool = eqx.field(static=True)

    def training(
        self, params: PyTree[Array], static: Any, x: Float[Array, "n ..."], g: Float[Array, "n k"]
    ) -> tuple[Any, Any]:
        """Features of the training inputs, and of the loss-weighted model $g_i\\cdot f(x_i)$."""
        f = self.implementation.features(params, static, x)
        return f, self.implementation.weight_outputs(f, g)

    def rates(
        self, params: PyTree[Array], static: Any, queries: Float[Array, "q ..."], training: Any
    ) -> tuple[Float[Array, "q n k k"] | Float[Array, "q n"], Float[Array, "q n k"]]:
        """$\\Theta(x_q, X)$ (its output trace with `trace`) and $\\Theta(x_q, X)\\,g$."""
        impl = self.implementation
        fq = impl.features(params, static, queries)
        f, fg = training
        d_kernel = impl.contract(params, static, fq, f, self.trace)
        d_weighted = impl.contract(params, static, fq, fg, False)[..., 0]
        return d_kernel, d_weighted

    def zeros(self, q: int, n: int, k: int, dtype: Any) -> tuple[Array, Array]:
        """The integrals at the start of the run."""
        kernel = jnp.zeros((q, n) if self.trace else (q, n, k, k), dtype)
        return kernel, jnp.zeros((q, n, k), dtype)


class PathKernel(eqx.Module):
    r"""The path kernel of one training run, evaluated between queries and training inputs.

    **Fields:**

    - `kernel`: $K(x_q, x_i) = \int \Theta_{\theta(t)}(x_q, x_i)\,dt$, shape `(q, n, k, k)`,
      or `(q, n)` (the trace over outputs) when built with `trace=True`.
    - `loss_weighted`: $W_i(x_q) = \int \Theta_{\theta(t)}(x_q, x_i)\nabla_{u_i}L\,dt$,
      shape `(q, n, k)`.
    - `weights`: Domingos' $a_i(x_q)$, shape `(q, n, k)`; with a traced kernel
      $a_{i} = -\eta W_i / K(x_q, x_i)$ per output.
    - `bias`: $b(x_q) = f(\theta_0, x_q)$, shape `(q, k)`.
    - `outputs`: $f(\theta_T, x_q)$ from the trained weights, shape `(q, k)`.
    - `reconstruction`: $\sum_i K(x_q, x_i)\,a_i(x_q) + b(x_q)$, shape `(q, k)`.
    - `residual`: $\|f(\theta_T) - \text{reconstruction}\| / \|f(\theta_T) - f(\theta_0)\|$ over
      all queries (relative to how far the outputs moved, the strict choice). It measures
      whether the kernel machine reproduces the *solved* weights: errors that the solver makes
      in $\theta$, $K$ and $W$ alike largely cancel in it, so it is not the error of
      $f(\theta_T)$ (it understates it by orders of magnitude at loose tolerances).
    - `output_error`: an estimate of the error of `outputs` itself, relative to the same
      movement: for [`ntkode.PathFlow`][], $\|f(\theta_T) - f(\theta_T^\star)\| /
      \|f(\theta_T) - f(\theta_0)\|$ with $\theta_T^\star$ from a second solve of the weights
      alone at 100× tighter tolerances (`NaN` if the estimate was switched off); `0` for
      [`ntkode.PathGradientDescent`][], whose steps are the training run itself. The error of
      the kernel machine against the true flow is at most `residual + output_error`.
    - `model`: the trained model $\theta_T$.
    - `result`, `stats`: how the run ended ([`ntkode.RESULTS`][]) and its step counts.
    - `method`: the [`ntkode.AbstractPathMethod`][] that made it.
    """

    kernel: Float[Array, "q n k k"] | Float[Array, "q n"]
    loss_weighted: Float[Array, "q n k"]
    weights: Float[Array, "q n k"]
    bias: Float[Array, "q k"]
    outputs: Float[Array, "q k"]
    reconstruction: Float[Array, "q k"]
    residual: Float[Array, ""]
    output_error: Float[Array, ""]
    model: Any
    result: RESULTS
    stats: dict[str, Array]
    method: "AbstractPathMethod"


class AbstractPathMethod(eqx.Module):
    """How the training run behind a path kernel is carried out (and its options).

    Final subclasses: [`ntkode.PathFlow`][] (gradient flow) and
    [`ntkode.PathGradientDescent`][] (full-batch gradient descent, exact per step).
    """

    @abc.abstractmethod
    def run(
        self, problem: GradientFlowProblem, queries: Float[Array, "q ..."], tangents: Tangents
    ) -> PathKernel:
        """Train `problem`'s model and accumulate the path kernel at `queries` (validated)."""


def _domingos(K, W, b, f_T, learning_rate, trace: bool):
    """Weights $a_i$, the reconstruction and its relative residual."""
    if trace:
        safe = jnp.where(K == 0, 1.0, K)
        a = jnp.where((K == 0)[..., None], 0.0, -learning_rate * W / safe[..., None])
        recon = b + jnp.einsum("qi,qia->qa", K, a)
    else:
        # k×k blocks: a_i solves K(x, x_i) a_i = -η W_i (pseudo-inverse: a block can be
        # singular, e.g. a dead output; then the minimum-norm a_i still reconstructs).
        a = jnp.einsum("qiab,qib->qia", jnp.linalg.pinv(K), -learning_rate * W)
        recon = b + jnp.einsum("qiab,qib->qa", K, a)
    moved = jnp.linalg.norm(f_T - b)
    residual = jnp.linalg.norm(f_T - recon) / jnp.where(moved > 0, moved, 1.0)
    return a, recon, residual


def assemble(
    problem: GradientFlowProblem,
    queries: Array,
    params_T: PyTree[Array],
    K: Array,
    W: Array,
    result: RESULTS,
    stats: dict[str, Array],
    method: AbstractPathMethod,
    reference_T: PyTree[Array] | None = None,
    exact: bool = False,
) -> PathKernel:
    """The [`ntkode.PathKernel`][] of a finished run: Domingos' weights and the residual.

    `reference_T`: weights at the end of a more accurate solve of the same run (for the
    output-error estimate); `exact=True` for a run without discretisation error (gradient
    descent). With neither, `output_error` is `NaN` (not estimated).
    """
    _, static = partition(problem.model)
    model_T = eqx.combine(params_T, static)
    b = apply(problem.model, queries)
    f_T = apply(model_T, queries)
    a, recon, residual = _domingos(K, W, b, f_T, problem.learning_rate, K.ndim == 2)
    if reference_T is None:
        output_error = jnp.asarray(0.0 if exact else jnp.nan, f_T.dtype)
    else:
        f_star = apply(eqx.combine(reference_T, static), queries)
        moved = jnp.linalg.norm(f_T - b)
        output_error = jnp.linalg.norm(f_T - f_star) / jnp.where(moved > 0, moved, 1.0)
    if not bool(jnp.all(jnp.isfinite(f_T))):
        # Gradient descent (or a failed solve) diverged: say so rather than hand back NaNs.
        result = RESULTS.diverged
    return PathKernel(
        kernel=K,
        loss_weighted=W,
        weights=a,
        bias=b,
        outputs=f_T,
        reconstruction=recon,
        residual=residual,
        output_error=output_error,
        model=model_T,
        result=result,
        stats=stats,
        method=method,
    )
