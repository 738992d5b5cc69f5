r"""Intersection over union, pooled and per image, and the three baselines of the closure study.

A prediction is a boolean mask "inside a curve" per pixel. *Pooled* IoU counts the pixels of
all images together ($\sum |P \cap Y| / \sum |P \cup Y|$, dominated by large shapes);
*per-image* IoU is $|P_j \cap Y_j| / |P_j \cup Y_j|$ for each image $j$ (1 when both are
empty), whose median and 10th percentile show the typical and the bad images.

Baselines, all from the curve pixels alone:

- `parity`: the exact algorithm, inside = the non-curve pixels not 4-connected to the
  border ([`ntkode.datasets`][]' `fill_interior`; on these rasters it equals the
  crossing-parity labels, so its IoU is 1 by construction, and its run time is the point);
- `convex_hull`: fill the convex hull of each 8-connected piece of curve: right on convex
  shapes, wrong in every bay of a non-convex one (what a shortcut gets);
- `all_inside`: every pixel inside.
"""

import numpy as np
from jaxtyping import ArrayLike
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from ...datasets._closure import fill_interior


def _binary(name: str, labels: ArrayLike) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype == bool:
        return arr
    ok = (arr == 0) | (arr == 1)
    if not np.all(ok):
        bad = np.unique(arr[~ok])[:5]
        raise ValueError(
            f"`{name}` must be binary (0 or 1 per pixel); found values such as {bad.tolist()}. "
            "Pass inside/outside masks, e.g. ntkode.datasets.closure(...).y_test."
        )
    return arr.astype(bool)


def _masks(scores: ArrayLike, labels: ArrayLike, threshold: float):
    truth = _binary("labels", labels)
    scores_np = np.asarray(scores)
    if scores_np.shape != truth.shape:
        raise ValueError(f"`scores` {scores_np.shape} and `labels` {truth.shape} must match.")
    pred = scores_np if scores_np.dtype == bool else scores_np > threshold
    return pred, truth


def iou(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> float:
    """Pooled intersection over union of `scores > threshold` with binary `labels`.

    Over all pixels of all images: $|P \\cap Y| / |P \\cup Y|$ (1 when both are empty).
    Boolean `scores` are taken as the predicted masks themselves.
    """
    pred, truth = _masks(scores, labels, threshold)
    union = np.count_nonzero(pred | truth)
    return 1.0 if union == 0 else np.count_nonzero(pred & truth) / union


def iou_per_image(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> np.ndarray:
    """Per-image IoU `(n,)` of `scores > threshold` with `labels`, both `(n, ...)`.

    The first axis indexes images; an image with nothing inside and nothing predicted has
    IoU 1.
    """
    pred, truth = _masks(scores, labels, threshold)
    if pred.ndim < 2:
        raise ValueError(f"`scores` must be a batch of images (n, ...), got shape {pred.shape}.")
    pred, truth = pred.reshape(pred.shape[0], -1), truth.reshape(truth.shape[0], -1)
    inter = np.count_nonzero(pred & truth, axis=1)
    union = np.count_nonzero(pred | truth, axis=1)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def iou_summary(scores: ArrayLike, labels: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """`{"iou_pooled", "iou_median", "iou_p10"}`: pooled IoU and per-image quantiles."""
    per = iou_per_image(scores, labels, threshold)
    return {
        "iou_pooled": float(iou(scores, labels, threshold)),
        "iou_median": float(np.median(per)),
        "iou_p10": float(np.percentile(per, 10)),
    }


def parity_predict(curves: ArrayLike) -> np.ndarray:
    """The exact algorithm on the raster: `(n, m, m)` curve pixels → inside masks."""
    return fill_interior(_binary("curves", curves))


def convex_hull_predict(curves: ArrayLike) -> np.ndarray:
    """Inside = the convex hull of each 8-connected piece of curve, minus the curve pixels."""
    curves = _binary("curves", curves)
    if curves.ndim != 3:
        raise ValueError(f"`curves` must have shape (n, m, m), got {curves.shape}.")
    out = np.zeros_like(curves)
    eight = np.ones((3, 3), bool)
    for j, img in enumerate(curves):
        labels = ndimage.label(img, eight)[0]
        for piece, box in enumerate(ndimage.find_objects(labels), start=1):
            pts = np.argwhere(labels[box] == piece).astype(float)
            try:
                hull = ConvexHull(pts)
            except QhullError:  # a straight piece: no area to fill
                continue
            grid = np.argwhere(np.ones(labels[box].shape, bool)).astype(float)
            inside = np.all(grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 1e-9, 1)
            out[j][box] |= inside.reshape(labels[box].shape)
    return out & ~curves


def all_inside_predict(curves: ArrayLike) -> np.ndarray:
    """Every pixel inside."""
    return np.ones(np.shape(curves), bool)
