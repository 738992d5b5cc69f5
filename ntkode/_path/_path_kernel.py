r"""Path kernels along the true training path (Domingos 2020), continuous and discrete.

Along gradient flow $d\theta/dt = -\eta\nabla_\theta L$ every output moves by
$df(\theta, x)/dt = -\eta\sum_i \Theta_{\theta(t)}(x, x_i)\,\nabla_{u_i}L$, so

$$f(\theta_T, x) = f(\theta_0, x) - \eta\sum_i W_i(x), \qquad
W_i(x) = \int_{t_0}^{T}\Theta_{\theta(t)}(x, x_i)\,\nabla_{u_i}L(t)\,dt,$$

and with the *path kernel* $K(x, x_i) = \int_{t_0}^{T}\Theta_{\theta(t)}(x, x_i)\,dt$ and
$a_i(x) = -\eta K(x, x_i)^{-1} W_i(x)$ this is Domingos' kernel machine
$f(\theta_T, x) = \sum_i K(x, x_i)\,a_i(x) + b(x)$, $b = f(\theta_0, x)$.
[`ntkode.path_kernel`][] is the one entry point; the training run is a strategy object:
[`ntkode.PathFlow`][] integrates $K$ and $W$ as extra ODE states next to the weights, so the
identity holds to the solver's tolerance, and [`ntkode.PathGradientDescent`][] does the same
for finitely many steps of full-batch gradient descent, exactly per step (Bell et al. 2023,
"The exact path kernel").

Time is flow time: one gradient-descent step of size $\eta$ is one unit of time, so a
$T$-step run and the flow over $[0, T]$ have comparable kernels.
"""

from typing import Any, Literal

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._gradient_flow import GradientFlowProblem
from .._core._results import is_successful, message
from .._ntk._api import engine_implementation
from .._ntk._base import AbstractNTKImplementation
from ._kernel import AbstractPathMethod, PathKernel, Tangents
from ._methods import PathFlow


def check_queries(problem: Any, queries: Any) -> Array:
    """`queries` as an array shaped like the training inputs, for a gradient-flow problem."""
    if not isinstance(problem, GradientFlowProblem):
        raise TypeError(
            "path kernels follow the true weight path: pass an ntkode.GradientFlowProblem, "
            f"got {type(problem).__name__}."
        )
    queries = jnp.asarray(queries, problem.data.x_train.dtype)
    feat = problem.data.x_train.shape[1:]
    if queries.ndim != len(feat) + 1 or queries.shape[1:] != feat:
        raise ValueError(
            f"`queries` has shape {queries.shape}; expected (q, {', '.join(map(str, feat))}): "
            f"a batch of inputs shaped like the training inputs {feat}."
        )
    if queries.shape[0] == 0:
        raise ValueError("`queries` is empty; pass at least one query input.")
    if not np.all(np.isfinite(np.asarray(queries))):
        raise ValueError("`queries` contains non-finite values.")
    return queries


def path_kernel(
    problem: GradientFlowProblem,
    queries: Float[Array, "q ..."],
    method: AbstractPathMethod = PathFlow(),
    *,
    trace: bool = False,
    implementation: Literal["auto", "structured", "jacobian", "ntvp"]
    | AbstractNTKImplementation = "auto",
    throw: bool = False,
) -> PathKernel:
    r"""Domingos' path kernel of `problem`'s training run, between `queries` and training inputs.

    Trains the model by `method` and accumulates $K(x_q, x_i) = \int \Theta_{\theta(t)}(x_q,
    x_i)\,dt$ and $W_i(x_q) = \int \Theta_{\theta(t)}(x_q, x_i)\nabla_{u_i}L\,dt$ along the way
    (Domingos 2020, "Every model learned by gradient descent is approximately a kernel
    machine"), then forms $a_i(x_q)$, $b(x_q)$ and the residual of
    $f(\theta_T, x_q) = \sum_i K(x_q, x_i)a_i(x_q) + b(x_q)$. Both rates come from the NTK
    engine's per-example features (the structured Gram products for dense layers), and the
    loss-weighted one as a kernel against the one-output model $g_i\cdot f(x_i)$.

    **Arguments:**

    - `problem`: a [`ntkode.GradientFlowProblem`][].
    - `queries`: inputs `(q, ...)` shaped like the training inputs (e.g. train and test
      inputs concatenated, for kernel regression with the path kernel).
    - `method`: [`ntkode.PathFlow`][] (default: gradient flow, with its solver and
      tolerances) or [`ntkode.PathGradientDescent`][] (exact per gradient-descent step).
    - `trace`: keep only the trace over outputs of each kernel block, `(q, n)` instead of
      `(q, n, k, k)` (for many outputs, e.g. per-pixel predictions).
    - `implementation`: the NTK implementation whose features are contracted, as in
      [`ntkode.ntk`][] (`"auto"`: structured where it applies).
    - `throw`: raise `RuntimeError` with the result's sentence if the run did not succeed
      (a failed solve, or gradient descent that diverged).

    **Returns:** a [`ntkode.PathKernel`][].
    """
    queries = check_queries(problem, queries)
    if not isinstance(method, AbstractPathMethod):
        raise TypeError(
            "`method` must be an ntkode.AbstractPathMethod, e.g. ntkode.PathFlow(rtol=1e-8) or "
            f"ntkode.PathGradientDescent(steps=100), got {method!r}."
        )
    impl = engine_implementation(implementation, bool(trace), "path_kernel")
    pk = method.run(problem, queries, Tangents(impl, bool(trace)))
    if throw and not is_successful(pk.result):
        raise RuntimeError(message(pk.result))
    return pk
