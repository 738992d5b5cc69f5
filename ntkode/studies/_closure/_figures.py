"""Figures of the closure study: example predictions, learning curves, training curves.

Example rows are chosen by the network's per-image IoU: the image at the median and the
image at the 10th percentile (the edge of the worst decile) of each test set, so the
figure shows a typical case and a bad one rather than the best.
"""

from typing import Any

import numpy as np

from ..._plot import pyplot, save
from ._metrics import convex_hull_predict, iou_per_image, parity_predict

_TITLES = {
    "same": "one shape",
    "two_shapes": "two shapes",
    "three_shapes": "three shapes",
    "double_size": "twice the size",
}
_LABELS = {
    "network": "network (Adam)",
    "ntk_init": "NTK at init",
    "ntk_final": "NTK after training",
    "path": "path kernel (SGD run)",
    "network_sgd": "network of the SGD run",
}
_SHORT = {
    "network": "network\n(Adam)",
    "ntk_init": "NTK\nat init",
    "ntk_final": "NTK after\ntraining",
    "path": "path kernel\n(SGD run)",
    "network_sgd": "network\n(SGD run)",
}


def _quantile_rows(per_image: np.ndarray) -> list[tuple[str, int]]:
    """Indices of the median and 10th-percentile images of `per_image` IoU."""
    order = np.argsort(per_image, kind="stable")
    pick = lambda q: int(order[min(len(order) - 1, int(q * (len(order) - 1) + 0.5))])
    return [("median", pick(0.5)), ("10th pct", pick(0.1))]


def _panel(ax, img, title: str | None, label: str | None = None) -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title is not None:
        ax.set_title(title, fontsize=7.5)
    if label is not None:
        ax.set_ylabel(label, fontsize=7.5)


def _show(curve: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Curve pixels white, inside grey, outside black."""
    return np.where(curve, 1.0, np.where(inside, 0.55, 0.0))


def example_figure(path: str, sets: dict[str, Any], masks: dict[str, np.ndarray]) -> None:
    """The network and the baselines on median and worst-decile images of each test set."""
    plt = pyplot()
    rows = []
    for name, (d, _) in sets.items():
        per = iou_per_image(masks[name], d.inside)
        for which, j in _quantile_rows(per):
            rows.append((name, which, d, j))
    cols = ["input", "truth", "network", "convex hull", "parity"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.35 * len(cols), 1.4 * len(rows)))
    axes = np.atleast_2d(axes)
    for r, (name, which, d, j) in enumerate(rows):
        curve, truth = d.curves[j], d.inside[j]
        preds = {
            "network": masks[name][j],
            "convex hull": convex_hull_predict(curve[None])[0],
            "parity": parity_predict(curve[None])[0],
        }
        _panel(axes[r, 0], curve, None, f"{_TITLES[name]}\n{which}")
        _panel(axes[r, 1], _show(curve, truth), None)
        for c, col in enumerate(cols[2:], start=2):
            score = iou_per_image(preds[col][None], truth[None])[0]
            _panel(axes[r, c], _show(curve, preds[col]), f"IoU {score:.2f}")
    for c, col in enumerate(cols):
        axes[0, c].set_title(col if c < 2 else f"{col}\n{axes[0, c].get_title()}", fontsize=7.5)
    fig.suptitle(
        "Closure: U-Net vs convex hull vs the parity algorithm (white: curve, grey: inside)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    save(fig, path)


def kernel_example_figure(path: str, d, preds: dict[str, np.ndarray], curves: dict) -> None:
    """The network and its kernel machines (largest `n` each) on the same held-out images."""
    plt = pyplot()
    names = [k for k in ("network", "ntk_init", "ntk_final", "path", "network_sgd") if k in preds]
    ref = "network" if "network" in preds else names[0]
    # Only images every machine predicted (the path machine sees the first few).
    count = min(len(preds[k]) for k in names)
    per = iou_per_image(preds[ref][:count], d.inside[:count])
    rows = [*_quantile_rows(per), ("worst", int(np.argmin(per)))]
    cols = ["input", "truth", *names, "parity"]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.5 * len(cols), 1.6 * len(rows)))
    axes = np.atleast_2d(axes)
    largest = {k: curves[k][-1]["n"] for k in names}
    for r, (which, j) in enumerate(rows):
        curve, truth = d.curves[j], d.inside[j]
        _panel(axes[r, 0], curve, "input" if r == 0 else None, f"{which}\n(by {ref})")
        _panel(axes[r, 1], _show(curve, truth), "truth" if r == 0 else None)
        shown = {**{k: preds[k][j] for k in names}, "parity": parity_predict(curve[None])[0]}
        for c, col in enumerate(cols[2:], start=2):
            score = iou_per_image(shown[col][None], truth[None])[0]
            head = f"{_SHORT[col]}, n={largest[col]}\n" if r == 0 and col in largest else ""
            head = head or ("parity\n" if r == 0 else "")
            _panel(axes[r, c], _show(curve, shown[col]), f"{head}IoU {score:.2f}")
    fig.suptitle(
        f"Closure at {d.curves.shape[-1]}×{d.curves.shape[-1]}: the network vs its kernel "
        "machines (white: curve, grey: predicted inside)",
        fontsize=9,
    )
    save(fig, path)


def learning_curve_figure(path: str, curves: dict[str, Any]) -> None:
    """Pooled and 10th-percentile IoU against training images, network and kernel machines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.6), sharex=True)
    styles = {
        "network": ("C0", "o", "-"),
        "ntk_init": ("C1", "s", "--"),
        "ntk_final": ("C2", "^", "--"),
        "path": ("C3", "D", ":"),
        "network_sgd": ("C4", "v", ":"),
    }
    for name, (color, marker, line) in styles.items():
        rows = curves.get(name)
        if not rows:
            continue
        n = [r["n"] for r in rows]
        for ax, key in zip(axes, ("iou_pooled", "iou_p10"), strict=True):
            ax.plot(
                n, [r[key] for r in rows], line, color=color, marker=marker, label=_LABELS[name]
            )
    ns = sorted({r["n"] for name in styles for r in curves.get(name, [])})
    for ax, what in zip(axes, ("pooled IoU", "per-image IoU, 10th percentile"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlabel("training images n")
        ax.set_ylabel(what)
        ax.set_ylim(-0.02, 1.02)
        ax.axhline(1.0, color="k", lw=0.8, alpha=0.5)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), bbox_to_anchor=(0.5, -0.02))
    m = curves["size"]
    fig.suptitle(
        f"Closure at {m}×{m}: the network against kernel regression with its own kernels "
        f"({curves['n_test']} held-out images; parity algorithm = 1)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    save(fig, path)


def training_figure(path: str, history: list[dict[str, Any]]) -> None:
    """Training loss and IoU per epoch of the main network."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.0))
    epochs = [h["epoch"] for h in history]
    axes[0].semilogy(epochs, [h["loss"] for h in history], "o-", color="C0")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("binary cross-entropy (training, mean)")
    axes[1].plot(
        epochs, [h["train_iou"] for h in history], "o-", label="running (augmented batches)"
    )
    if all("val_iou" in h for h in history):
        axes[1].plot(epochs, [h["val_iou"] for h in history], "s--", label="validation images")
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("pooled IoU")
    axes[1].set_ylim(-0.02, 1.02)
    axes[1].legend(loc="lower right")
    fig.suptitle("Training the closure U-Net", fontsize=9)
    save(fig, path)
