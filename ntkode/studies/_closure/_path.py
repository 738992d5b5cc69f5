r"""Domingos' path kernel of a minibatch SGD run (his Remark 5), accumulated step by step.

Plain minibatch SGD on the mean binary cross-entropy,
$\theta_{s+1} = \theta_s - \eta\,\nabla_\theta \tfrac1B\sum_{i \in B_s} L_i(\theta_s)$, moves
every output by

$$f(\theta_{s+1}, x) - f(\theta_s, x) = -\frac{\eta}{B}\sum_{i\in B_s}
\Theta_{\theta_s}(x, x_i)\,\nabla_{u_i}L_i + O(\eta^2),$$

so summing over the run, $f(\theta_T, x) = f(\theta_0, x) - \sum_i \sum_s \tfrac{\eta}{B}
I_i(s)\,\Theta_{\theta_s}(x, x_i)\,\nabla_{u_i}L_i(s)$ with $I_i(s) = 1$ when image $i$ is
in the minibatch of step $s$ (Domingos 2020, Remark 5). The *path kernel* of the run is
$K(x, x_i) = \sum_s \tfrac{\eta}{B} I_i(s)\,\Theta_{\theta_s}(x, x_i)$, here traced over
pixels (see `ntkode/studies/_closure/_kernels.py` for what tracing keeps and drops).

**What is exact and what is not.** The sum runs over the minibatches the run actually
drew, step by step (no sampling of steps, no expectation over minibatches), with
[`ntkode.ntk`][] between every query and the minibatch at the weights of that step. Each
step uses the tangent kernel at its start (the left end of the segment), not its average
along the segment (Bell et al. 2023's exact path kernel), so the identity holds only as
$\eta \to 0$: the run reports how well, as the relative residual of the change of every
query's outputs predicted by the per-step tangent features, $-\eta\sum_s J_s(x)\,g_s$ (one
JVP per step, $g_s$ the minibatch gradient), against the actual change. For a smooth
network the residual is $O(\eta)$; ReLU's and max pooling's kinks make it converge at about
half that order (the tests measure both). The kernel itself is traced over pixels, which the
per-step identity (a statement about the full kernel) does not see. There is no
augmentation in this run: Remark 5 is about the training images as given.
"""

import time
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._kernels import traced_ntk
from ._train import bce, predict_logits
from ._unet import UNet


class PathRun(NamedTuple):
    """A minibatch SGD run and its path kernel.

    **Fields:** `model` (the trained network); `kernel` `(q, n)` (the traced path kernel
    between the queries and the training images); `residual` (relative error of the
    first-order reconstruction of the queries' outputs, see the module notes); `history`
    (per epoch: `epoch`, `loss`); `steps`; `ntk_seconds` (in kernel evaluations);
    `seconds` (the whole run).
    """

    model: UNet
    kernel: np.ndarray
    residual: float
    history: list[dict[str, Any]]
    steps: int
    ntk_seconds: float
    seconds: float


@eqx.filter_jit
def _sgd_step(params, static, x, y, queries, learning_rate):
    def loss(p):
        return bce(jax.vmap(eqx.combine(p, static))(x), y)

    value, grads = eqx.filter_value_and_grad(loss)(params)
    # The first-order change of the queries' outputs: J(queries) · (-η g), one JVP.
    step = jax.tree.map(lambda g: -learning_rate * g, grads)
    out = lambda p: jax.vmap(eqx.combine(p, static))(queries)
    _, change = jax.jvp(out, (params,), (step,))
    return jax.tree.map(jnp.add, params, step), value, change


def sgd_path_kernel(
    model: UNet,
    x: Float[Array, "n 1 m m"],
    y: Float[Array, "n m m"],
    queries: Float[Array, "q 1 m m"],
    *,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    seed: int = 0,
    memory_gb: float = 4.0,
    progress: bool = True,
) -> PathRun:
    """Train `model` by minibatch SGD and accumulate its path kernel on `queries`.

    **Arguments:**

    - `model`: the [`UNet`][] at initialisation.
    - `x`, `y`: training images `(n, 1, m, m)` and 0/1 targets `(n, m, m)`.
    - `queries`: where the kernel is evaluated: the `n` training images first (the
      minibatches' kernels are taken against them), then any others (test images).
    - `learning_rate`, `epochs`, `batch_size`: plain SGD (no momentum, no augmentation);
      minibatches drawn without replacement, a fresh permutation per epoch.
    - `seed`: minibatch order.
    - `memory_gb`: for the per-image NTK features of each step.
    - `progress`: one line per epoch.

    **Returns:** a [`PathRun`][].
    """
    n, q = int(x.shape[0]), int(queries.shape[0])
    if q < n or not np.array_equal(np.asarray(queries[:n]), np.asarray(x)):
        raise ValueError(
            "`queries` must start with the training images `x` (then any others): the "
            "minibatches' kernels are taken against those rows."
        )
    batch = min(int(batch_size), n)
    per_epoch = n // batch
    say = print if progress else (lambda *a, **k: None)
    lr = float(learning_rate)
    if not lr > 0:
        raise ValueError(f"`learning_rate` must be positive, got {learning_rate}.")
    t_start = time.perf_counter()
    params, static = eqx.partition(model, eqx.is_inexact_array)
    kernel = np.zeros((q, n))
    change = jnp.zeros((q,) + x.shape[2:], queries.dtype)
    ntk_seconds, history = 0.0, []
    for epoch in range(int(epochs)):
        t_epoch, losses = time.perf_counter(), []
        order = np.random.default_rng([int(seed), epoch]).permutation(n)
        for i in range(per_epoch):
            idx = order[i * batch : (i + 1) * batch]
            current = eqx.combine(params, static)
            k, seconds = traced_ntk(current, queries, idx, memory_gb)
            ntk_seconds += seconds
            kernel[:, idx] += (lr / batch) * np.asarray(k, np.float64)
            params, value, delta = _sgd_step(params, static, x[idx], y[idx], queries, lr)
            change = change + delta
            losses.append(float(value))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(
                f"the SGD loss became {losses[-1]} at epoch {epoch + 1} of the path-kernel "
                "run: lower `path_learning_rate`."
            )
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        say(
            f"path kernel (SGD): epoch {epoch + 1}/{epochs}, loss {history[-1]['loss']:.4f} "
            f"({time.perf_counter() - t_epoch:.1f} s)",
            flush=True,
        )
    trained = eqx.combine(params, static)
    moved = predict_logits(trained, queries) - predict_logits(model, queries)
    err = np.linalg.norm(moved - np.asarray(change)) / max(np.linalg.norm(moved), 1e-30)
    return PathRun(
        trained, kernel, float(err), history, per_epoch * int(epochs), ntk_seconds,
        time.perf_counter() - t_start,
    )  # fmt: skip
