r"""The closure study: does a small CNN trained on Jordan curves act like its kernel machines?

A small dilated CNN is trained by full-batch gradient descent on 16×16 closure images
(ntkode.datasets.closure); along the run the exact per-step path kernel is accumulated
([`ntkode.PathGradientDescent`][]), and three kernel machines (NTK at initialisation, NTK at the
end, path kernel; [`ntkode.compare_kernels`][]) predict the insides of held-out curves.
Per-pixel IoU of the four predictors, the Domingos reconstruction residual, a table, a
figure of example predictions and `results.json` come out.

With 256 outputs per image the kernels are traced over outputs (one image-to-image kernel
shared by every pixel, as neural-tangents' `trace_axes` does): a kernel machine then
predicts each held-out map as the network at initialisation plus a combination of the
training label maps.
"""

import os
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from ..._core._gradient_flow import GradientFlowProblem
from ..._core._losses import mse
from ..._core._model import num_params
from ..._core._records import write_json
from ..._path._machines import compare_kernels
from ..._path._methods import PathGradientDescent
from ..._plot import pyplot
from ...datasets._closure import closure


class ClosureCNN(eqx.Module):
    """A small fully convolutional network: 3×3 convolutions with growing dilation, tanh.

    With dilations `(1, 2, 4, 8)` the receptive field is 31 pixels, the whole of a 16×16
    image, so the network could in principle see a whole curve. Input `(1, m, m)`, output
    the `m·m` per-pixel scores (row-major).
    """

    convs: list[eqx.nn.Conv2d]

    def __init__(self, width: int = 4, dilations=(1, 2, 4, 8), *, key: Array, dtype=None):
        keys = jax.random.split(key, len(dilations) + 1)
        dtype = jnp.result_type(float) if dtype is None else dtype
        convs, cin = [], 1
        for d, k in zip(dilations, keys, strict=False):
            convs.append(eqx.nn.Conv2d(cin, width, 3, padding=d, dilation=d, key=k, dtype=dtype))
            cin = width
        convs.append(eqx.nn.Conv2d(cin, 1, 1, key=keys[-1], dtype=dtype))
        self.convs = convs

    def __call__(self, x):
        for conv in self.convs[:-1]:
            x = jnp.tanh(conv(x))
        return self.convs[-1](x).reshape(-1)


def iou(scores: Array, labels: Array, threshold: float = 0.5) -> float:
    """Per-pixel intersection over union of `scores > threshold` with binary `labels`.

    Pooled over all pixels of all images: $|P \\cap Y| / |P \\cup Y|$ (1 when both are empty).
    """
    labels_np = np.asarray(labels)
    if not np.all((labels_np == 0) | (labels_np == 1)):
        bad = np.unique(labels_np[(labels_np != 0) & (labels_np != 1)])[:5]
        raise ValueError(
            f"`labels` must be binary (0 or 1 per pixel); found values such as {bad.tolist()}. "
            "Pass inside/outside masks, e.g. ntkode.datasets.closure(...).y_test."
        )
    scores_np = np.asarray(scores)
    if scores_np.shape != labels_np.shape:
        raise ValueError(f"`scores` {scores_np.shape} and `labels` {labels_np.shape} must match.")
    pred = scores_np > threshold
    truth = labels_np.astype(bool)
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def _save(out: str | None, results: dict) -> None:
    if out is not None:
        write_json(os.path.join(out, "results.json"), results)


_NAMES = ("network", "ntk_init", "ntk_final", "path")


def closure_study(
    *,
    n_train: int = 16,
    n_test: int = 16,
    size: int = 16,
    steps: int = 150,
    learning_rate: float = 0.003,
    width: int = 4,
    nodes: int = 1,
    stride: int = 1,
    ridge: float = 1e-6,
    seed: int = 0,
    out: str | None = None,
    progress: bool = True,
    dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """Run the closure study and return its results (also written to `out/results.json`).

    **Arguments:**

    - `n_train`, `n_test`, `size`: closure images (one curve each, smooth or polygonal).
    - `steps`, `learning_rate`: full-batch gradient descent on the mean-MSE loss.
    - `width`: channels of the [`ClosureCNN`][].
    - `nodes`, `stride`: Gauss–Legendre nodes per integrated step, and integrate one step
      in `stride` (see [`ntkode.PathGradientDescent`][]). The default `stride=1, nodes=1`
      (segment midpoints) reconstructs the network to about 1e-6; `nodes≥4` is exact to
      rounding. Either way every step costs a Jacobian of every image, about 40 ms per
      16×16 image on one core. Do not raise `stride` at learning rates near the edge of
      stability: steps then alternate in sign and a strided sum misses them entirely.
    - `ridge`: relative ridge of the kernel machines.
    - `seed`: data and initialisation; the study is deterministic in it.
    - `out`: folder for `results.json` and `closure.png` (`None`: nothing written).
    - `progress`: print progress.
    - `dtype`: floating dtype of data and weights.

    **Returns:** a dict with `iou` (per predictor), `test_mse`, `vs_network`,
    `path_kernel_residual`, `config` and `timings`.
    """
    if int(steps) < 1:
        raise ValueError(f"`steps` must be at least 1, got {steps}.")
    say = print if progress else (lambda *a, **k: None)
    t_start = time.perf_counter()
    config = dict(
        n_train=n_train, n_test=n_test, size=size, steps=steps, learning_rate=learning_rate,
        width=width, nodes=nodes, stride=stride, ridge=ridge, seed=seed,
        dtype=jnp.dtype(dtype).name,
    )  # fmt: skip
    results: dict[str, Any] = {"study": "closure", "config": config, "timings": {}}
    data = closure(n_train, n_test, size, seed=seed, dtype=dtype)
    model = ClosureCNN(width, key=jax.random.key(seed + 1), dtype=dtype)
    results["config"]["num_params"] = num_params(model)
    results["data"] = {
        "inside_fraction_test": float(jnp.mean(data.y_test)),
        "curve_fraction_test": float(jnp.mean(data.x_test)),
    }
    _save(out, results)
    say(
        f"closure: {n_train}+{n_test} images {size}×{size}, CNN with {num_params(model)} "
        f"weights, {steps} gradient-descent steps (η={learning_rate}), path kernel with "
        f"{nodes} node(s) on one step in {stride}"
    )
    problem = GradientFlowProblem(
        model, data, loss=mse, tspan=(0.0, float(steps)), learning_rate=learning_rate
    )
    t0 = time.perf_counter()
    method = PathGradientDescent(int(steps), nodes, stride, progress=progress)
    comp = compare_kernels(problem, method, trace=True, ridge=ridge)
    results["timings"]["train_and_kernels_s"] = time.perf_counter() - t0
    pk = comp.path_kernel
    results["path_kernel_residual"] = float(pk.residual)
    errs = comp.errors()
    preds = comp.predictions()
    results["iou"] = {name: iou(preds[name], data.y_test) for name in _NAMES}
    results["iou_train"] = {name: iou(comp.train[name], data.y_train) for name in _NAMES}
    results["test_mse"] = {name: errs[name]["test_mse"] for name in _NAMES}
    results["vs_network"] = {name: errs[name]["vs_network"] for name in _NAMES}
    results["baseline_iou_all_inside"] = iou(np.ones_like(data.y_test), data.y_test)
    results["timings"]["total_s"] = time.perf_counter() - t_start
    _save(out, results)
    say(table(results))
    if out is not None:
        _figure(os.path.join(out, "closure.png"), data, preds)
        say(f"wrote {os.path.join(out, 'results.json')} and closure.png")
    return results


def table(results: dict[str, Any]) -> str:
    """The study's results as a plain-text table."""
    rows = [f"{'predictor':<12}{'IoU test':>10}{'IoU train':>11}{'test MSE':>11}{'vs net':>9}"]
    for name in _NAMES:
        rows.append(
            f"{name:<12}{results['iou'][name]:>10.3f}{results['iou_train'][name]:>11.3f}"
            f"{results['test_mse'][name]:>11.3f}{results['vs_network'][name]:>9.3f}"
        )
    rows.append(f"all-inside baseline IoU: {results['baseline_iou_all_inside']:.3f}")
    rows.append(
        f"Domingos reconstruction residual (per-step path kernel): "
        f"{results['path_kernel_residual']:.2e}"
    )
    return "\n".join(rows)


def _figure(path: str, data, preds: dict[str, Array], examples: int = 4) -> None:
    plt = pyplot()

    m = data.x_test.shape[-1]
    examples = min(examples, data.n_test)
    cols = ["curve", "truth", *_NAMES]
    fig, axes = plt.subplots(examples, len(cols), figsize=(1.6 * len(cols), 1.6 * examples))
    axes = np.atleast_2d(axes)
    for r in range(examples):
        imgs = [np.asarray(data.x_test[r, 0]), np.asarray(data.y_test[r]).reshape(m, m)]
        imgs += [np.asarray(preds[name][r]).reshape(m, m) for name in _NAMES]
        for c, (img, title) in enumerate(zip(imgs, cols, strict=True)):
            ax = axes[r, c]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
