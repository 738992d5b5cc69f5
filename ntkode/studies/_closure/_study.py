r"""The closure study: can a U-Net learn planar topology, and is it its own kernel machine?

Courtois, Arias and Morel ("Can a neural network learn planar topology?", 2021) train a
U-Net to fill the inside of rasterised Jordan curves, find good masks on one shape and on
two or three shapes, and then argue through Domingos' theorem ("Every model learned by
gradient descent is approximately a kernel machine", 2020) that the network is a kernel
machine that has not learnt the two-line parity algorithm. This study repeats the
experiment at a size two CPU cores can run, and asks the second question with numbers:

1. A U-Net (`ntkode/studies/_closure/_unet.py`) is trained by minibatch Adam (or Ranger)
   on single-shape `size × size` images of all four curve families, with the square's
   symmetries as augmentation, checkpointed every epoch (an interrupted run resumes), and
   saved (`network/`, loadable with [`load_closure_network`][]).
2. It is scored (pooled IoU, per-image median and 10th percentile) on held-out images of
   (a) the training distribution, (b) two and (c) three shapes per image, (d) images twice
   the size, and on each family, beside the exact parity algorithm, "fill the convex hull"
   and "all inside".
3. Learning curves at `kernel_size` (`ntkode/studies/_closure/_curves.py`): the network
   and its kernel machines (NTK at initialisation, NTK after training, path kernel of a
   minibatch SGD run) against the number of training images.

Outputs in `out`: `results.json`, `examples.png`, `kernel_examples.png`,
`learning_curves.png`, `training.png`, `network/`, and checkpoints.
"""

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..._core._records import write_json
from ...datasets._closure import FAMILIES, closure_images
from ._curves import learning_curves
from ._figures import example_figure, kernel_example_figure, learning_curve_figure, training_figure
from ._metrics import (
    all_inside_predict,
    convex_hull_predict,
    iou_summary,
    parity_predict,
)
from ._optimisers import optimiser_from
from ._saved import save_closure_network
from ._summary import answer, table
from ._train import predict_logits, train
from ._unet import build_unet

TEST_SETS = ("same", "two_shapes", "three_shapes", "double_size")
BASELINES = {
    "parity": parity_predict,
    "convex_hull": convex_hull_predict,
    "all_inside": all_inside_predict,
}


def _images(n, size, shapes, kind, seed, dtype):
    d = closure_images(n, size, shapes=shapes, kind=kind, seed=seed)
    return d, jnp.asarray(d.curves[:, None], dtype)


def closure_study(
    *,
    size: int = 32,
    n_train: int = 4096,
    n_test: int = 256,
    epochs: int = 8,
    batch_size: int = 32,
    optimiser: str = "adam",
    learning_rate: float = 3e-3,
    scales: int = 4,
    channels: int = 8,
    growth: float = 1.0,
    norm: str = "none",
    kind: str = "mixed",
    kernel_size: int = 16,
    curve_channels: int | None = None,
    curve_n: tuple[int, ...] = (64, 256, 1024, 4096),
    kernel_n: tuple[int, ...] = (64, 256),
    path_n: tuple[int, ...] = (64,),
    kernel_test: int = 128,
    curve_steps: int = 2000,
    path_epochs: int = 10,
    path_batch_size: int = 32,
    path_learning_rate: float = 1.0,
    path_test: int = 16,
    memory_gb: float = 2.0,
    seed: int = 0,
    out: str | None = "closure-results",
    progress: bool = True,
    dtype: Any = jnp.float32,
) -> dict[str, Any]:
    """Run the closure study; return its results (also written to `out/results.json`).

    **Arguments:**

    - `size`, `n_train`, `n_test`: the main network's image side, training images, and
      images per test set.
    - `epochs`, `batch_size`, `optimiser` (`"adam"` or `"ranger"`), `learning_rate`: its
      training (warm-up, then cosine decay).
    - `scales`, `channels`, `growth`, `norm`: the [`UNet`][].
    - `kind`: curve families (see [`ntkode.datasets.closure`][]; default all four).
    - `kernel_size`: image side of the learning curves and kernel machines.
    - `curve_channels`: finest-scale channels of the learning-curve networks (default
      `channels`; the other [`UNet`][] settings are the main network's). A traced NTK costs
      about `channels²` per image pair, so `curve_channels=4` makes kernel machines at
      `n = 1024` four times cheaper; the curve then answers the kernel question for that
      network.
    - `curve_n`, `kernel_n`, `path_n`: training-set sizes for the networks, the NTK
      machines and the path kernel; `kernel_test`: their held-out images.
    - `curve_steps`: optimiser steps of each learning-curve network, the same for every
      `n` (2,000 by default: 1,000 epochs of 64 images, 16 of 4,096); its last epoch's
      training loss and running IoU are recorded beside its held-out IoU, to show
      whether it converged.
    - `path_epochs`, `path_batch_size`, `path_learning_rate`: the SGD run of the path
      kernel; `path_test`: held-out images of its kernel machine (the first of the
      learning curves' `kernel_test`; each SGD step costs a Jacobian of every one, so 16
      by default: the path run is the default study's most expensive stage).
    - `memory_gb`: memory for the traced NTK's per-pixel-block Jacobian features (the
      block is as many pixels as fit; every backward pass is computed once whatever it is).
      The process's peak resident memory is recorded (`timings`).
    - `seed`: data, initialisation and minibatches; the study is deterministic in it.
    - `out`: output folder (`None`: nothing written, no checkpoints).
    - `progress`: print progress (a bar on a terminal).
    - `dtype`: floating dtype of data and weights (float32 by default).

    **Returns:** the dict written to `results.json`: per predictor, per test set,
    `{"iou_pooled", "iou_median", "iou_p10"}`; `families` (per family, on the `same` set);
    `learning_curves`; `timings`; `summary` (the answer, in words); `settings`.
    """
    _check(
        size=size, n_train=n_train, n_test=n_test, epochs=epochs, batch_size=batch_size,
        kernel_size=kernel_size, kernel_test=kernel_test, curve_steps=curve_steps,
        path_epochs=path_epochs, path_batch_size=path_batch_size, path_test=path_test,
        **({} if curve_channels is None else {"curve_channels": curve_channels}),
    )  # fmt: skip
    for name, sizes in (("curve_n", curve_n), ("kernel_n", kernel_n), ("path_n", path_n)):
        if any(int(n) < 1 for n in sizes):
            raise ValueError(f"`{name}` must hold positive numbers of images, got {sizes}.")
    if not set(kernel_n) <= set(curve_n):
        raise ValueError(
            f"every `kernel_n` {tuple(kernel_n)} must also be in `curve_n` {tuple(curve_n)}: "
            "the machine after training needs the network trained on those images."
        )
    say = print if progress else (lambda *a, **k: None)
    t_start = time.perf_counter()
    settings = dict(
        size=size, n_train=n_train, n_test=n_test, epochs=epochs, batch_size=batch_size,
        optimiser=optimiser, learning_rate=learning_rate, scales=scales, channels=channels,
        growth=growth, norm=norm, kind=kind, kernel_size=kernel_size,
        curve_channels=channels if curve_channels is None else int(curve_channels),
        curve_n=list(curve_n),
        kernel_n=list(kernel_n), path_n=list(path_n), kernel_test=kernel_test,
        curve_steps=curve_steps, path_epochs=path_epochs, path_batch_size=path_batch_size,
        path_learning_rate=path_learning_rate, path_test=path_test, memory_gb=memory_gb,
        seed=seed,
        dtype=jnp.dtype(dtype).name,
    )  # fmt: skip
    arch = dict(scales=scales, channels=channels, growth=growth, norm=norm, dtype=dtype)
    model = build_unet(**arch, key=jax.random.key(seed))
    model.check_size(int(size), "size")
    model.check_size(int(kernel_size), "kernel_size")
    opt = optimiser_from(optimiser, learning_rate)
    timings: dict[str, float] = {}
    results: dict[str, Any] = {"study": "closure", "settings": settings, "timings": timings}

    # Data: one seed per set, so that changing one size leaves the others as they were.
    t = time.perf_counter()
    seeds = np.random.SeedSequence(seed).spawn(8)
    train_d, x_train = _images(n_train, size, 1, kind, seeds[0], dtype)
    val_d, x_val = _images(min(128, n_test), size, 1, kind, seeds[1], dtype)
    sets = {
        "same": _images(n_test, size, 1, kind, seeds[2], dtype),
        "two_shapes": _images(n_test, size, 2, kind, seeds[3], dtype),
        "three_shapes": _images(n_test, size, 3, kind, seeds[4], dtype),
        "double_size": _images(n_test, 2 * size, 1, kind, seeds[5], dtype),
    }
    n_images = n_train + len(val_d.curves) + 4 * n_test
    timings["data_s"] = time.perf_counter() - t
    timings["data_images_per_s"] = n_images / timings["data_s"]
    say(
        f"closure: {n_images} images ({n_train} for training, {size}×{size}, families "
        f"{kind}) in {timings['data_s']:.1f} s ({timings['data_images_per_s']:.0f} images/s)",
        flush=True,
    )

    # Baselines, from the curve pixels alone.
    hull = {}
    for name, fn in BASELINES.items():
        results[name] = {}
        for set_name, (d, _) in sets.items():
            t = time.perf_counter()
            pred = fn(d.curves)
            timings[f"{name}_{set_name}_s"] = time.perf_counter() - t
            results[name][set_name] = iou_summary(pred, d.inside)
            if name == "convex_hull":
                hull[set_name] = pred

    # The network.
    say(
        f"U-Net: {scales} scales, channels {model.widths}, norm {norm}, "
        f"{sum(v.size for v in jax.tree.leaves(model) if isinstance(v, jax.Array))} weights; "
        f"{opt.settings()['optimiser']} (lr {learning_rate}), {epochs} epochs of {n_train} "
        f"images, batch {batch_size}",
        flush=True,
    )
    trained = train(
        model, x_train, jnp.asarray(train_d.inside, dtype), optimiser=opt, epochs=epochs,
        batch_size=batch_size, augment=True, seed=seed, validation=(x_val, val_d.inside),
        folder=None if out is None else os.path.join(out, "checkpoint"),
        settings={"kind": str(kind)}, progress=progress,
    )  # fmt: skip
    timings["train_s"] = trained.seconds
    results["training"] = trained.history
    if out is not None:
        save_closure_network(
            os.path.join(out, "network"), trained.model,
            {"trained_on": {"size": size, "n_train": n_train, "kind": kind, "seed": seed},
             "training": {**opt.settings(), "epochs": epochs, "batch_size": batch_size},
             "history": trained.history},
        )  # fmt: skip
    results["network"], masks = {}, {}
    for set_name, (d, x) in sets.items():
        t = time.perf_counter()
        masks[set_name] = predict_logits(trained.model, x) > 0
        timings[f"network_{set_name}_s"] = time.perf_counter() - t
        results["network"][set_name] = iou_summary(masks[set_name], d.inside)
    same = sets["same"][0]
    results["families"] = {}
    for family in FAMILIES:
        pick = np.array([f == [family] for f in same.families])
        if pick.any():
            results["families"][family] = {
                name: iou_summary(pred[pick], same.inside[pick])
                for name, pred in (("network", masks["same"]), ("convex_hull", hull["same"]))
            } | {"images": int(pick.sum())}
    _save(out, results)

    # Learning curves and kernel machines at `kernel_size`.
    pool_n = max([*curve_n, *kernel_n, *path_n, 1])
    pool_d, x_pool = _images(pool_n, kernel_size, 1, kind, seeds[6], dtype)
    ktest_d, x_ktest = _images(kernel_test, kernel_size, 1, kind, seeds[7], dtype)
    curves = learning_curves(
        architecture=arch | {"channels": settings["curve_channels"]},
        pool=(x_pool, pool_d.inside), test=(x_ktest, ktest_d.inside),
        curve_n=list(curve_n), kernel_n=list(kernel_n), path_n=list(path_n),
        steps=curve_steps, batch_size=batch_size, optimiser=opt,
        path_options=dict(learning_rate=path_learning_rate, epochs=path_epochs,
                          batch_size=path_batch_size),
        path_test=path_test, seed=seed, folder=None if out is None else os.path.join(out, "curves"),
        memory_gb=memory_gb, progress=progress,
    )  # fmt: skip
    kernel_preds = curves.pop("predictions")
    timings.update({f"curves_{k}": v for k, v in curves.pop("timings").items()})
    results["learning_curves"] = curves
    if kernel_size == size:
        # The kernel machines' test images are a fresh draw of the training distribution.
        for name in ("ntk_init", "ntk_final", "path"):
            if name in curves:
                results[name] = {"same": {k: curves[name][-1][k] for k in _IOU}}
    timings["total_s"] = time.perf_counter() - t_start
    results["summary"] = answer(results)
    _save(out, results)
    say(table(results))
    say(results["summary"])
    if out is not None:
        example_figure(os.path.join(out, "examples.png"), sets, masks)
        kernel_example_figure(
            os.path.join(out, "kernel_examples.png"), ktest_d, kernel_preds, curves
        )
        learning_curve_figure(os.path.join(out, "learning_curves.png"), curves)
        training_figure(os.path.join(out, "training.png"), trained.history)
        say(f"wrote {out}/results.json, examples.png, kernel_examples.png, "
            "learning_curves.png, training.png and network/", flush=True)  # fmt: skip
    return results


_IOU = ("iou_pooled", "iou_median", "iou_p10")


def _check(**values: int) -> None:
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"`{name}` must be at least 1, got {value}.")


def _save(out: str | None, results: dict) -> None:
    if out is not None:
        write_json(os.path.join(out, "results.json"), results)
