r"""Learning curves of the closure network and of its kernel machines, on the same images.

For each number of training images $n$, a U-Net (the study's architecture and
initialisation) is trained on the first $n$ images of one pool, *without* augmentation and
for the same number of optimiser steps whatever $n$ (so that the curve measures data, not
compute), and scored on one held-out set. On the first $n$ of the same images the kernel
machines of `ntkode/studies/_closure/_kernels.py` are built: the NTK at initialisation (one
kernel, sliced for every $n$), the NTK of the network trained on those $n$ images, and the
path kernel of a minibatch SGD run on them (`ntkode/studies/_closure/_path.py`), whose own
network is scored too (`network_sgd`). Everything is at one image size, chosen apart from
the main network's because exact kernels cost a Jacobian of every image (`m²` backward
passes each).
"""

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._kernels import kernel_machine, ntk_machines, peak_rss_gb, traced_ntk
from ._metrics import iou_summary
from ._optimisers import AbstractOptimiser
from ._path import sgd_path_kernel
from ._train import predict_logits, train
from ._unet import UNet, build_unet


def learning_curves(
    *,
    architecture: dict[str, Any],
    pool: tuple[jax.Array, np.ndarray],
    test: tuple[jax.Array, np.ndarray],
    curve_n: list[int],
    kernel_n: list[int],
    path_n: list[int],
    steps: int,
    batch_size: int,
    optimiser: AbstractOptimiser,
    path_options: dict[str, Any],
    path_test: int,
    seed: int,
    folder: str | None,
    memory_gb: float,
    progress: bool,
) -> dict[str, Any]:
    """Network and kernel-machine IoU against the number of training images.

    **Arguments:** `architecture` (the [`UNet`][] arguments); `pool` (training images
    `(N, 1, m, m)` and masks `(N, m, m)`; the first `n` are used); `test` (held-out images
    and masks); `curve_n` (sizes for the network), `kernel_n` (for the NTK machines),
    `path_n` (for the path kernel); `steps` and `batch_size` (each network's training);
    `optimiser`; `path_options` (`learning_rate`, `epochs`, `batch_size` of the SGD runs);
    `path_test` (the path machine is scored on the first `path_test` test images: every
    SGD step costs a Jacobian of every query); `seed`; `folder` (checkpoints per size);
    `memory_gb` (for the NTK's per-image features); `progress`.

    **Returns:** a dict with, per predictor, one row per `n` (`n`, the IoU summary, and
    for kernel machines the ridge, leave-one-out IoU, NTK and solve seconds), plus the test
    predictions at the largest `n` of each predictor (`predictions`, not for JSON).
    """
    say = print if progress else (lambda *a, **k: None)
    x_pool, y_pool = pool
    x_test, y_test = test
    truth = np.asarray(y_test, bool)
    m = x_pool.shape[-1]
    init = build_unet(**architecture, key=jax.random.key(seed))
    init.check_size(m, "kernel images")
    rows: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("network", "ntk_init", "ntk_final", "path", "network_sgd")
    }
    preds: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    networks: dict[int, UNet] = {}
    shape = {k: v for k, v in architecture.items() if k != "dtype"}
    for n in sorted(set(curve_n) | set(kernel_n)):
        x, y = x_pool[:n], jnp.asarray(y_pool[:n], x_pool.dtype)
        epochs = max(1, round(steps * min(batch_size, n) / n))
        say(f"learning curve: network on {n} images {m}×{m} ({epochs} epochs)", flush=True)
        run = train(
            init, x, y, optimiser=optimiser, epochs=epochs, batch_size=batch_size,
            augment=False, seed=seed, validation=None,
            folder=None if folder is None else os.path.join(folder, f"n{n}"),
            settings={"purpose": f"learning curve, n={n}", "architecture": shape},
            progress=False,
        )  # fmt: skip
        networks[n] = run.model
        logits = predict_logits(run.model, x_test)
        if n in curve_n:
            last = run.history[-1]
            rows["network"].append(
                {"n": n, **iou_summary(logits > 0, truth),
                 "steps": epochs * (n // min(batch_size, n)),
                 "train_loss": float(last["loss"]), "train_iou": float(last["train_iou"])}
            )  # fmt: skip
            say(
                f"  n={n}: training loss {last['loss']:.4f}, running training IoU "
                f"{last['train_iou']:.3f} (last epoch); held-out IoU "
                f"{rows['network'][-1]['iou_pooled']:.3f} ({run.seconds:.0f} s)",
                flush=True,
            )
            preds["network"] = logits > 0
        timings[f"network_n{n}_s"] = run.seconds
    if kernel_n:
        big = max(kernel_n)
        say(f"NTK at initialisation: {big} + {x_test.shape[0]} images", flush=True)
        k0, t0 = traced_ntk(init, jnp.concatenate([x_pool[:big], x_test]), big, memory_gb)
        timings[f"ntk_init_n{big}_s"] = t0
        say(f"NTK at initialisation: {t0:.1f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)
        for n in sorted(kernel_n):
            k_init = (k0[:n, :n], k0[big:, :n])
            out = ntk_machines(
                init, networks[n], x_pool[:n], np.asarray(y_pool[:n]), x_test,
                memory_gb=memory_gb, init_kernel=k_init,
            )  # fmt: skip
            out["ntk_init"]["ntk_seconds"] = t0 if n == big else 0.0
            for name in ("ntk_init", "ntk_final"):
                rows[name].append(_machine_row(n, out[name], truth))
                preds[name] = out[name]["machine"].test.reshape(truth.shape) > 0
            solves = sum(out[k]["machine"].solve_seconds for k in ("ntk_init", "ntk_final"))
            say(
                f"kernel machines at n={n}: NTK after training "
                f"{out['ntk_final']['ntk_seconds']:.1f} s, solves {solves:.1f} s, peak RSS "
                f"{peak_rss_gb():.2f} GB",
                flush=True,
            )
    x_path, truth_path = x_test[:path_test], truth[:path_test]
    for n in sorted(path_n):
        x, y = x_pool[:n], jnp.asarray(y_pool[:n], x_pool.dtype)
        queries = jnp.concatenate([x, x_path])
        say(f"path kernel: SGD on {n} images, {n} + {x_path.shape[0]} queries", flush=True)
        t = time.perf_counter()
        runp = sgd_path_kernel(
            init, x, y, queries, seed=seed, memory_gb=memory_gb, progress=progress,
            **path_options,
        )  # fmt: skip
        f0 = predict_logits(init, queries).reshape(queries.shape[0], -1)
        machine = kernel_machine(
            runp.kernel[:n], runp.kernel[n:], np.asarray(y_pool[:n], bool).reshape(n, -1),
            f0[:n], f0[n:], symmetric=False,
        )  # fmt: skip
        row = _machine_row(n, {"machine": machine, "ntk_seconds": runp.ntk_seconds}, truth_path)
        rows["path"].append(
            {**row, "n_test": int(x_path.shape[0]), "steps": runp.steps,
             "reconstruction_residual": runp.residual}
        )  # fmt: skip
        preds["path"] = machine.test.reshape(truth_path.shape) > 0
        sgd = predict_logits(runp.model, x_path) > 0
        rows["network_sgd"].append(
            {"n": n, **iou_summary(sgd, truth_path), "n_test": int(x_path.shape[0]),
             "steps": runp.steps}
        )  # fmt: skip
        preds["network_sgd"] = sgd
        timings[f"path_n{n}_s"] = time.perf_counter() - t
    timings["peak_rss_gb"] = peak_rss_gb()
    return {
        "size": int(m),
        "n_test": int(x_test.shape[0]),
        "steps": int(steps),
        **{k: v for k, v in rows.items() if v},
        "timings": timings,
        "predictions": preds,
    }


def _machine_row(n: int, out: dict[str, Any], truth: np.ndarray) -> dict[str, Any]:
    machine = out["machine"]
    return {
        "n": n,
        **iou_summary(machine.test.reshape(truth.shape) > 0, truth),
        "ridge": machine.ridge,
        "loo_iou": machine.loo_iou,
        "ntk_seconds": out["ntk_seconds"],
        "solve_seconds": machine.solve_seconds,
    }
