r"""The **closure** task (Courtois, Arias and Morel, "Can a neural network learn
planar topology?", 2021): inside/outside of rasterised Jordan curves.

Each image holds one or several random Jordan curves, drawn as the pixels they pass
through; the targets mark the pixels strictly inside a curve. Labels come from the
crossing-parity rule of the seed ("the parity of the number of crossings on a horizontal
half-line starting from each pixel"), applied robustly: the half-line from each pixel
*centre* is intersected with the polygon's edges in continuous coordinates, with the
half-open rule $y_j \le y < y_{j+1}$ so that a ray through a vertex, or tangent to the
curve, counts correctly. A pixel that no curve passes through lies wholly on one side of
every curve, so its centre decides it.

For the raster to have the topology of the curve (no pockets of outside cut off by a
narrow neck, no interior split in two) the generator only keeps curves whose parts are at
least `separation` pixels apart wherever they are far apart along the curve; the tests
check the parity labels against a 4-connected flood fill from the border on many curves.
"""

from collections import deque

import jax
import jax.numpy as jnp
import numpy as np

from .._core._data import Dataset

_KINDS = ("mixed", "smooth", "polygon")
_MARGIN = 1.5  # pixels between a curve's bounding disk and the image border
_GAP = 3.0  # pixels between the bounding disks of two shapes in one image
_MIN_RADIUS = 3.0  # smallest bounding radius: anything smaller has (almost) no interior


def smooth_curve(rng: np.random.Generator, centre, radius: float, modes: int = 3) -> np.ndarray:
    r"""A smooth random star-shaped closed curve, as a dense polygon `(N, 2)` of `(x, y)`.

    Radius function $r(\phi) = 1 + \sum_{j \le \text{modes}} (a_j\cos j\phi + b_j\sin j\phi)$,
    $a_j, b_j \sim \mathcal N(0, (0.25/j)^2)$, clipped below at 0.35 and rescaled so that
    $\max r = $ `radius`.
    """
    n = max(64, int(16 * radius))
    phi = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    j = np.arange(1, modes + 1)[:, None]
    a, b = rng.normal(0.0, 0.25 / j, (2, modes, 1))
    r = 1.0 + np.sum(a * np.cos(j * phi) + b * np.sin(j * phi), axis=0)
    r = np.maximum(r, 0.35)
    r = r * radius / r.max()
    return np.stack([centre[0] + r * np.cos(phi), centre[1] + r * np.sin(phi)], axis=1)


def random_polygon(rng: np.random.Generator, centre, radius: float) -> np.ndarray:
    """A random simple polygon `(V, 2)`: 5–9 vertices at sorted random angles, random radii.

    Star-shaped with respect to `centre` by construction, hence simple (a Jordan curve).
    """
    v = int(rng.integers(5, 10))
    gaps = rng.uniform(0.5, 1.5, v)
    phi = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.cumsum(gaps) / gaps.sum()
    r = rng.uniform(0.45, 1.0, v)
    r = r * radius / r.max()
    return np.stack([centre[0] + r * np.cos(phi), centre[1] + r * np.sin(phi)], axis=1)


def _densify(poly: np.ndarray, spacing: float) -> np.ndarray:
    """Points along the closed polygon at most `spacing` apart (vertices included)."""
    nxt = np.roll(poly, -1, axis=0)
    pts = []
    for p, q in zip(poly, nxt, strict=True):
        m = max(1, int(np.ceil(np.linalg.norm(q - p) / spacing)))
        s = np.arange(m)[:, None] / m
        pts.append(p + s * (q - p))
    return np.concatenate(pts)


def rasterise(polygons: list[np.ndarray], size: int) -> np.ndarray:
    """Boolean `(size, size)` image of the pixels the closed polygons pass through.

    Pixel `(row, col)` covers $[col, col+1) \\times [row, row+1)$. Points every 0.05 px
    along each edge mark their pixel; consecutive marks are 8-neighbours, so the drawn curve
    is an 8-connected closed chain that blocks any 4-connected path across it. A pixel the
    curve only clips within 0.05 px of a corner may stay unmarked; its centre is then still
    on the side of its unclipped bulk.
    """
    img = np.zeros((size, size), bool)
    for poly in polygons:
        pts = _densify(poly, 0.05)
        c = np.clip(np.floor(pts[:, 0]).astype(int), 0, size - 1)
        r = np.clip(np.floor(pts[:, 1]).astype(int), 0, size - 1)
        img[r, c] = True
    return img


def parity_labels(polygons: list[np.ndarray], size: int) -> np.ndarray:
    """Boolean `(size, size)`: pixel centres with an odd number of crossings to the right.

    Crossings of the half-line $\\{(x, y_c) : x > x_c\\}$ from each pixel centre with every
    polygon edge, in continuous coordinates. An edge counts when exactly one of its end
    points has $y > y_c$ (half-open), so vertices on the ray and horizontal edges count
    once or not at all, never twice.
    """
    yc, xc = np.mgrid[0:size, 0:size] + 0.5
    xc, yc = xc.reshape(-1, 1), yc.reshape(-1, 1)
    odd = np.zeros(size * size, bool)
    for poly in polygons:
        p, q = poly, np.roll(poly, -1, axis=0)
        straddle = (p[None, :, 1] > yc) != (q[None, :, 1] > yc)
        dy = np.where(q[:, 1] == p[:, 1], 1.0, q[:, 1] - p[:, 1])
        x_cross = p[None, :, 0] + (yc - p[None, :, 1]) * (q[None, :, 0] - p[None, :, 0]) / dy
        odd ^= (np.count_nonzero(straddle & (x_cross > xc), axis=1) % 2).astype(bool)
    return odd.reshape(size, size)


def flood_fill_interior(curve: np.ndarray) -> np.ndarray:
    """Pixels not on the curve and not 4-connected to the border through non-curve pixels."""
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


def _well_separated(poly: np.ndarray, separation: float) -> bool:
    """Parts of the curve far apart along it (arc length ≥ 3·separation) are ≥ separation apart."""
    pts = _densify(poly, 0.25)
    seg = np.linalg.norm(np.roll(pts, -1, axis=0) - pts, axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
    total = seg.sum()
    arc = np.abs(s[:, None] - s[None, :])
    arc = np.minimum(arc, total - arc)
    dist = np.linalg.norm(pts[:, None] - pts[None, :], axis=-1)
    return bool(np.all(dist[arc >= 3 * separation] >= separation))


def _image(rng, size, shapes, kind, radii, separation, restarts=20, tries=100):
    for _ in range(restarts):
        polys = _place(rng, size, shapes, kind, radii, separation, tries)
        if polys is not None:
            curve = rasterise(polys, size)
            interior = parity_labels(polys, size) & ~curve
            return curve, interior, polys
    raise ValueError(
        f"could not place {shapes} separated shapes on a {size}×{size} grid in "
        f"{restarts * tries} tries; ask for fewer `shapes`, a larger `size` or a smaller "
        "`max_radius`."
    )


def _place(rng, size, shapes, kind, radii, separation, tries):
    """Shapes one by one at random free places; `None` if the image got too full."""
    placed: list[tuple[np.ndarray, float]] = []
    polys = []
    for _ in range(tries):
        if len(polys) == shapes:
            return polys
        radius = rng.uniform(*radii)
        lo, hi = _MARGIN + radius, size - _MARGIN - radius
        centre = rng.uniform(lo, hi, 2)
        if any(np.linalg.norm(centre - c) < radius + r + _GAP for c, r in placed):
            continue
        this = kind if kind != "mixed" else ("smooth", "polygon")[int(rng.integers(2))]
        poly = (
            smooth_curve(rng, centre, radius)
            if this == "smooth"
            else random_polygon(rng, centre, radius)
        )
        if not _well_separated(poly, separation):
            continue
        placed.append((centre, radius))
        polys.append(poly)
    return polys if len(polys) == shapes else None


def closure_images(
    n: int,
    size: int = 16,
    *,
    shapes: int = 1,
    kind: str = "mixed",
    seed: int | np.random.SeedSequence = 0,
    min_radius: float = _MIN_RADIUS,
    max_radius: float | None = None,
    separation: float = 2.5,
) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]]]:
    """`n` closure images as numpy arrays: curves `(n, size, size)`, interiors, polygons.

    Arguments as in [`ntkode.datasets.closure`][]; deterministic in `seed`.
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
    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    largest = (size - 2 * _MARGIN) / 2
    if max_radius is None:
        # Room for a g×g arrangement of the shapes, g = ⌈√shapes⌉.
        g = int(np.ceil(np.sqrt(shapes)))
        max_radius = max(float(min_radius), (size - 2 * _MARGIN - (g - 1) * _GAP) / (2 * g))
    max_radius = float(max_radius)
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
    rng = np.random.default_rng(seed)
    curves = np.zeros((n, size, size), bool)
    inner = np.zeros((n, size, size), bool)
    polys = []
    for i in range(n):
        curves[i], inner[i], p = _image(
            rng, size, shapes, kind, (min_radius, max_radius), separation
        )
        polys.append(p)
    return curves, inner, polys


def closure(
    n_train: int = 256,
    n_test: int = 64,
    size: int = 16,
    *,
    shapes: int = 1,
    test_shapes: int | None = None,
    kind: str = "mixed",
    key: jax.Array | None = None,
    seed: int | None = None,
    min_radius: float = _MIN_RADIUS,
    max_radius: float | None = None,
    dtype=None,
) -> Dataset:
    """The Jordan-curve closure task: from the pixels of closed curves, find their insides.

    **Arguments:**

    - `n_train`, `n_test`: numbers of images (`n_test` may be 0).
    - `size`: images are `size × size` pixels (16, 32, 64, ...; at least 8).
    - `shapes`: curves per training image (disjoint, not nested); `test_shapes` per test
      image (default the same; more tests generalisation to several shapes).
    - `kind`: `"smooth"` (random Fourier radius functions), `"polygon"` (random simple
      polygons) or `"mixed"` (either, at random per shape).
    - `key` or `seed`: randomness (default seed 0); the data are a deterministic function
      of it.
    - `min_radius`, `max_radius`: range of the shapes' bounding radii in pixels.
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
    ctr, itr, _ = closure_images(n_train, size, shapes=shapes, seed=s_train, **common)
    cte, ite, _ = closure_images(n_test, size, shapes=test_shapes, seed=s_test, **common)
    dtype = jnp.result_type(float) if dtype is None else dtype
    x = lambda c: jnp.asarray(c[:, None], dtype)
    y = lambda i: jnp.asarray(i.reshape(i.shape[0], size * size), dtype)
    return Dataset(x(ctr), y(itr), x(cte), y(ite), name="closure")
