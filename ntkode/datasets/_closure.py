r"""The **closure** task (Courtois, Arias and Morel, "Can a neural network learn
planar topology?", 2021): inside/outside of rasterised Jordan curves.

Each image holds one or several random Jordan curves, drawn as the pixels they pass
through; the targets mark the pixels strictly inside a curve. Four families of curves:

- `"smooth"`: smooth star-shaped curves (random Fourier radius functions);
- `"polygon"`: random star-shaped polygons;
- `"grown"`: polygons grown cell by cell on a coarse lattice (polyominoes grown at their
  tips, corners jittered): reflex vertices, arms, U-, S- and spiral-like shapes, mostly
  not star-shaped;
- `"folded"`: smooth tubes around a bending centre line: C-shaped, S-shaped and spiral
  blobs, never star-shaped.

Star-shaped curves can be filled by a shortcut ("inside = between the curve and its
centre"); the last two families need the parity rule itself.

Labels come from the crossing-parity rule of the seed ("the parity of the number of
crossings on a horizontal half-line starting from each pixel"), applied robustly: the
half-line from each pixel *centre* is intersected with the polygon's edges in continuous
coordinates, with the half-open rule $y_j \le y < y_{j+1}$ so that a ray through a vertex,
or tangent to the curve, counts correctly. A pixel that no curve passes through lies wholly
on one side of every curve, so its centre decides it.

For the raster to have the topology of the curve (no pockets of outside cut off by a
narrow neck, no interior split in two) the generator only keeps curves whose parts are at
least `separation` pixels apart wherever they are far apart along the curve; the tests
check the parity labels against a 4-connected flood fill from the border.

Rasterising and labelling are vectorised over all images at once (one `bincount` each);
only the drawing of the curves' vertices is a Python loop per shape.
"""

from collections import deque
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from .._core._data import Dataset
from ._closure_shapes import FAMILY_MIN_RADIUS, densify, draw, well_separated

FAMILIES = ("smooth", "polygon", "grown", "folded")
_KINDS = {"mixed": FAMILIES, "star": ("smooth", "polygon"), **{f: (f,) for f in FAMILIES}}
_MARGIN = 1.5  # pixels between a curve's bounding disk and the image border
_GAP = 3.0  # pixels between the bounding disks of two shapes in one image
_MIN_RADIUS = 3.0  # smallest bounding radius: anything smaller has (almost) no interior


class ClosureImages(NamedTuple):
    """Closure images as numpy arrays, with the curves they were drawn from.

    **Fields:** `curves` `(n, size, size)` bool (pixels the curves pass through); `inside`
    `(n, size, size)` bool (pixels strictly inside a curve); `polygons` (per image, the
    list of its closed polygons `(V, 2)` in pixel coordinates `(x, y)`); `families` (per
    image, the family of each of its shapes).
    """

    curves: np.ndarray
    inside: np.ndarray
    polygons: list[list[np.ndarray]]
    families: list[list[str]]


def _rasterise_images(images: list[list[np.ndarray]], size: int) -> np.ndarray:
    """`(n, size, size)` bool: the pixels that each image's closed polygons pass through."""
    n = len(images)
    img = np.zeros(n * size * size, bool)
    chunk = 512  # images at a time: 0.05-px marks cost ~2,000 points per curve
    for lo in range(0, n, chunk):
        part = images[lo : lo + chunk]
        polys = [p for im in part for p in im]
        which = np.repeat(np.arange(lo, lo + len(part)), [len(im) for im in part])
        pts, owner = densify(polys, 0.05)
        c = np.clip(np.floor(pts[:, 0]).astype(int), 0, size - 1)
        r = np.clip(np.floor(pts[:, 1]).astype(int), 0, size - 1)
        img[(which[owner] * size + r) * size + c] = True
    return img.reshape(n, size, size)


def _parity_images(images: list[list[np.ndarray]], size: int) -> np.ndarray:
    """`(n, size, size)` bool: pixel centres with an odd number of crossings to their right.

    Every crossing of an edge with a pixel-centre row $y_c = r + 1/2$ (half-open: exactly one
    end point has $y > y_c$) at abscissa $x$ counts for the pixels with centre $x_c < x$,
    i.e. columns `c < ceil(x - 1/2)`; one `bincount` marks the last such column of every
    crossing, and a reversed cumulative sum along each row counts them.
    """
    n = len(images)
    polys = [p for im in images for p in im]
    if not polys:
        return np.zeros((n, size, size), bool)
    which = np.repeat(np.arange(n), [len(im) for im in images])
    p = np.concatenate(polys)
    q = np.concatenate([np.roll(poly, -1, axis=0) for poly in polys])
    owner = which[np.repeat(np.arange(len(polys)), [len(poly) for poly in polys])]
    lo, hi = np.minimum(p[:, 1], q[:, 1]), np.maximum(p[:, 1], q[:, 1])
    r0 = np.ceil(lo - 0.5).astype(int)
    rows = np.maximum(0, np.ceil(hi - 0.5).astype(int) - r0)  # rows with lo <= r + 1/2 < hi
    edge = np.repeat(np.arange(len(p)), rows)
    r = r0[edge] + np.arange(edge.size) - np.repeat(np.cumsum(rows) - rows, rows)
    pe, qe = p[edge], q[edge]
    x = pe[:, 0] + (r + 0.5 - pe[:, 1]) * (qe[:, 0] - pe[:, 0]) / (qe[:, 1] - pe[:, 1])
    cols = np.clip(np.ceil(x - 0.5).astype(int), 0, size)
    keep = (cols > 0) & (r >= 0) & (r < size)
    flat = (owner[edge] * size + r) * size + cols - 1
    counts = np.bincount(flat[keep], minlength=n * size * size).reshape(n, size, size)
    return (np.cumsum(counts[:, :, ::-1], axis=2)[:, :, ::-1] % 2).astype(bool)


def rasterise(polygons: list[np.ndarray], size: int) -> np.ndarray:
    """Boolean `(size, size)` image of the pixels the closed polygons pass through.

    Pixel `(row, col)` covers $[col, col+1) \\times [row, row+1)$. Points every 0.05 px
    along each edge mark their pixel; consecutive marks are 8-neighbours, so the drawn curve
    is an 8-connected closed chain that blocks any 4-connected path across it. A pixel the
    curve only clips within 0.05 px of a corner may stay unmarked; its centre is then still
    on the side of its unclipped bulk.
    """
    return _rasterise_images([list(polygons)], int(size))[0]


def parity_labels(polygons: list[np.ndarray], size: int) -> np.ndarray:
    """Boolean `(size, size)`: pixel centres with an odd number of crossings to the right.

    Crossings of the half-line $\\{(x, y_c) : x > x_c\\}$ from each pixel centre with every
    polygon edge, in continuous coordinates. An edge counts when exactly one of its end
    points has $y > y_c$ (half-open), so vertices on the ray and horizontal edges count
    once or not at all, never twice.
    """
    return _parity_images([list(polygons)], int(size))[0]


def flood_fill_interior(curve: np.ndarray) -> np.ndarray:
    """Pixels not on the curve and not 4-connected to the border through non-curve pixels.

    A plain breadth-first search, one image at a time: the independent check of the labels.
    """
    size_r, size_c = curve.shape
    outside = np.zeros_like(curve, bool)
    todo = deque()
    for r in range(size_r):
        for c in range(size_c):
            if (r in (0, size_r - 1) or c in (0, size_c - 1)) and not curve[r, c]:
                outside[r, c] = True
                todo.append((r, c))
    while todo:
        r, c = todo.popleft()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < size_r and 0 <= cc < size_c and not curve[rr, cc] and not outside[rr, cc]:
                outside[rr, cc] = True
                todo.append((rr, cc))
    return ~curve & ~outside


def fill_interior(curves: np.ndarray) -> np.ndarray:
    """The inside of rasterised curves `(n, m, m)`, from the pixels alone: the exact algorithm.

    Non-curve pixels not 4-connected to the image border (connected components of the
    complement, `scipy.ndimage.label`). On the rasters this module draws it equals the
    crossing-parity labels (the tests check it), so it predicts them with IoU 1.
    """
    curves = np.asarray(curves).astype(bool)
    if curves.ndim != 3 or curves.shape[1] != curves.shape[2]:
        raise ValueError(f"`curves` must have shape (n, m, m), got {curves.shape}.")
    free = np.pad(~curves, ((0, 0), (1, 1), (1, 1)), constant_values=True)
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # 4-connected, within each image
    labels = ndimage.label(free, structure)[0]
    outside = labels == labels[:, :1, :1]  # the padded ring is each image's outside
    return (free & ~outside)[:, 1:-1, 1:-1]


def _place(rng, size, shapes, families, radii, separation, tries):
    """Shapes one by one at random free places; `None` if the image got too full."""
    placed: list[tuple[np.ndarray, float]] = []
    polys, fams = [], []
    for _ in range(tries):
        if len(polys) == shapes:
            break
        family = families[int(rng.integers(len(families)))]
        radius = rng.uniform(max(radii[0], FAMILY_MIN_RADIUS[family]), radii[1])
        lo, hi = _MARGIN + radius, size - _MARGIN - radius
        centre = rng.uniform(lo, hi, 2)
        if any(np.linalg.norm(centre - c) < radius + r + _GAP for c, r in placed):
            continue
        poly = draw(rng, family, centre, radius)
        if poly is None or not well_separated(poly, separation):
            continue
        placed.append((centre, radius))
        polys.append(poly)
        fams.append(family)
    return (polys, fams) if len(polys) == shapes else None


def _families(kind) -> tuple[str, ...]:
    if isinstance(kind, str):
        if kind in _KINDS:
            return _KINDS[kind]
    elif all(isinstance(k, str) and k in FAMILIES for k in kind) and len(kind):
        return tuple(kind)
    raise ValueError(
        f"`kind` must be one of {tuple(_KINDS)} or a sequence of families from {FAMILIES}, "
        f"got {kind!r}."
    )


def default_radii(size: int, shapes: int) -> tuple[float, float]:
    """The default range of bounding radii: from `max(3, size/8)` to what `shapes` allow."""
    g = int(np.ceil(np.sqrt(shapes)))  # room for a g×g arrangement of the shapes
    hi = (size - 2 * _MARGIN - (g - 1) * _GAP) / (2 * g)
    return max(_MIN_RADIUS, min(size / 8, hi)), max(_MIN_RADIUS, hi)


def closure_images(
    n: int,
    size: int = 16,
    *,
    shapes: int = 1,
    kind="mixed",
    seed: int | np.random.SeedSequence = 0,
    min_radius: float | None = None,
    max_radius: float | None = None,
    separation: float = 2.5,
) -> ClosureImages:
    """`n` closure images as numpy arrays (a [`ClosureImages`][]); deterministic in `seed`.

    Arguments as in [`ntkode.datasets.closure`][], plus `separation`: the smallest distance
    (pixels) between parts of a curve that are far apart along it.
    """
    size, shapes, n = int(size), int(shapes), int(n)
    if size < 8:
        raise ValueError(
            f"`size` must be at least 8 pixels for a curve with an inside, got {size}."
        )
    if n < 0:
        raise ValueError(f"the number of images must be non-negative, got {n}.")
    if shapes < 1:
        raise ValueError(f"`shapes` must be at least 1, got {shapes}.")
    families = _families(kind)
    lo, hi = default_radii(size, shapes)
    min_radius = lo if min_radius is None else float(min_radius)
    max_radius = max(hi, min_radius) if max_radius is None else float(max_radius)
    largest = (size - 2 * _MARGIN) / 2
    if not (_MIN_RADIUS <= min_radius <= max_radius <= largest):
        raise ValueError(
            f"curve radii must satisfy {_MIN_RADIUS} ≤ min_radius ≤ max_radius ≤ {largest:g} "
            f"on a {size}×{size} grid (border margin {_MARGIN} px); got min_radius="
            f"{min_radius}, max_radius={max_radius}."
        )
    fits = shapes * (2 * min_radius + _GAP) ** 2 <= (size - 2 * _MARGIN + _GAP) ** 2
    if not fits:
        raise ValueError(
            f"{shapes} shapes of radius ≥ {min_radius} cannot fit on a {size}×{size} grid; "
            "use fewer `shapes`, a smaller `min_radius` or a larger `size`."
        )
    for f in families:
        if FAMILY_MIN_RADIUS[f] > max_radius:
            raise ValueError(
                f"the {f!r} family needs shapes of radius ≥ {FAMILY_MIN_RADIUS[f]} px, but "
                f"{shapes} shape(s) on a {size}×{size} grid allow at most {max_radius:g}; use "
                "a larger `size`, fewer `shapes` or another `kind`."
            )
    rng = np.random.default_rng(seed)
    radii = (min_radius, max_radius)
    polys, fams = [None] * n, [None] * n
    curves = np.zeros((n, size, size), bool)
    inside = np.zeros((n, size, size), bool)
    todo = np.arange(n)
    for _ in range(20):
        for i in todo:
            polys[i], fams[i] = _image(rng, size, shapes, families, radii, separation)
        curves[todo] = _rasterise_images([polys[i] for i in todo], size)
        inside[todo] = _parity_images([polys[i] for i in todo], size) & ~curves[todo]
        # Keep an image only if its raster has the topology of its curves (a narrow bay
        # closed by the raster would make a pocket of outside look inside): rare, after
        # the separation rule, and then the image is drawn again.
        todo = todo[np.any(inside[todo] != fill_interior(curves[todo]), axis=(1, 2))]
        if not todo.size:
            return ClosureImages(curves, inside, polys, fams)
    raise AssertionError(  # pragma: no cover - a redraw succeeds with probability > 0.9
        "closure images whose raster kept losing the curves' topology after 20 redraws"
    )


def _image(rng, size, shapes, families, radii, separation):
    for _ in range(20):
        got = _place(rng, size, shapes, families, radii, separation, 100)
        if got is not None:
            return got
    raise ValueError(
        f"could not place {shapes} separated shapes on a {size}×{size} grid in 2,000 "
        "tries; ask for fewer `shapes`, a larger `size` or a smaller `max_radius`."
    )


def closure(
    n_train: int = 256,
    n_test: int = 64,
    size: int = 16,
    *,
    shapes: int = 1,
    test_shapes: int | None = None,
    kind="mixed",
    key: jax.Array | None = None,
    seed: int | None = None,
    min_radius: float | None = None,
    max_radius: float | None = None,
    dtype=None,
) -> Dataset:
    """The Jordan-curve closure task: from the pixels of closed curves, find their insides.

    **Arguments:**

    - `n_train`, `n_test`: numbers of images (`n_test` may be 0).
    - `size`: images are `size × size` pixels (16, 32, 64, 128, ...; at least 8).
    - `shapes`: curves per training image (disjoint, not nested); `test_shapes` per test
      image (default the same; more tests generalisation to several shapes).
    - `kind`: a family — `"smooth"` (star-shaped Fourier curves), `"polygon"` (star-shaped
      polygons), `"grown"` (lattice-grown polygons with reflex vertices), `"folded"` (C-,
      S- and spiral-shaped tubes) — or `"mixed"` (all four, one at random per shape),
      `"star"` (smooth and polygon) or a sequence of family names.
    - `key` or `seed`: randomness (default seed 0); the data are a deterministic function
      of it.
    - `min_radius`, `max_radius`: range of the shapes' bounding radii in pixels (default
      from `max(3, size/8)` to the largest that `shapes` shapes allow).
    - `dtype`: floating dtype (default: JAX's default float).

    **Returns:** a [`ntkode.Dataset`][] named `"closure"` with inputs `(n, 1, size, size)`
    (1 on curve pixels; one channel, as `eqx.nn.Conv2d` expects) and targets
    `(n, size·size)` (1 strictly inside a curve, row-major).
    """
    if key is not None and seed is not None:
        raise ValueError("Pass `key` or `seed`, not both.")
    if key is not None:
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    seed = 0 if seed is None else int(seed)
    if int(n_train) < 1:
        raise ValueError(f"`n_train` must be at least 1, got {n_train}.")
    if int(n_test) < 0:
        raise ValueError(f"`n_test` must be non-negative, got {n_test}.")
    test_shapes = shapes if test_shapes is None else test_shapes
    s_train, s_test = np.random.SeedSequence(seed).spawn(2)
    common = dict(kind=kind, min_radius=min_radius, max_radius=max_radius)
    tr = closure_images(n_train, size, shapes=shapes, seed=s_train, **common)
    te = closure_images(n_test, size, shapes=test_shapes, seed=s_test, **common)
    dtype = jnp.result_type(float) if dtype is None else dtype
    x = lambda c: jnp.asarray(c[:, None], dtype)
    y = lambda i: jnp.asarray(i.reshape(i.shape[0], size * size), dtype)
    return Dataset(x(tr.curves), y(tr.inside), x(te.curves), y(te.inside), name="closure")
