r"""The four curve families of the closure task, and the separation rule they must pass.

Each generator returns one closed polygon `(V, 2)` of `(x, y)` pixel coordinates inside the
disk of `radius` about `centre` (or `None` when a draw does not fit; the caller draws
again). See `ntkode/datasets/_closure.py` for the task and its labels.
"""

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

# Smallest bounding radius at which a family can draw its shapes with a `separation` of
# 2.5 px: a lattice of at least 2×2 cells of 3 px, a tube that can bend back on itself.
FAMILY_MIN_RADIUS = {"smooth": 3.0, "polygon": 3.0, "grown": 4.5, "folded": 5.0}


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


def _simple_cells(grid: np.ndarray) -> bool:
    """Whether the boundary of the cell set `grid` (padded by empty cells) is one simple loop.

    It is when no 2×2 window is a checkerboard (cells, or holes, touching only at a corner)
    and the empty cells are all 4-connected to the border (no holes).
    """
    a, b, c, d = grid[:-1, :-1], grid[:-1, 1:], grid[1:, :-1], grid[1:, 1:]
    if np.any((a & d & ~b & ~c) | (b & c & ~a & ~d)):
        return False
    return ndimage.label(~grid)[1] == 1


def _boundary_loop(grid: np.ndarray) -> np.ndarray | None:
    """The boundary of a simple cell set as a polygon of lattice corners `(x, y)`."""
    nxt = {}
    up, down = np.roll(grid, 1, 0), np.roll(grid, -1, 0)
    left, right = np.roll(grid, 1, 1), np.roll(grid, -1, 1)
    # Each cell's sides, clockwise on screen (y down); sides shared by two cells cancel.
    for i, j in zip(*np.nonzero(grid), strict=True):
        i, j = int(i), int(j)
        if not up[i, j]:
            nxt[(j, i)] = (j + 1, i)
        if not right[i, j]:
            nxt[(j + 1, i)] = (j + 1, i + 1)
        if not down[i, j]:
            nxt[(j + 1, i + 1)] = (j, i + 1)
        if not left[i, j]:
            nxt[(j, i + 1)] = (j, i)
    start = next(iter(nxt))
    loop, v = [start], nxt[start]
    while v != start:
        loop.append(v)
        v = nxt[v]
    if len(loop) != len(nxt):
        return None
    pts = np.array(loop, float)
    a, b = pts - np.roll(pts, 1, 0), np.roll(pts, -1, 0) - pts
    turn = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
    return pts[turn != 0]  # corners only


def grown_polygon(rng: np.random.Generator, centre, radius: float) -> np.ndarray:
    """A random polygon with reflex vertices, grown cell by cell on a coarse lattice.

    A polyomino is grown on an `L × L` lattice of cells (3–5 px) fitting in the disk of
    `radius` about `centre`, one cell at a time, preferring cells that touch the shape on a
    single side (so that it grows arms rather than a blob) and keeping its boundary one simple
    loop; its corners are then jittered by up to 15% of a cell. Arms a cell wide and one
    cell apart keep the curve's parts about a cell apart.
    """
    cell = float(np.clip(radius / 4.0, 3.0, 5.0))
    size = max(2, int(np.sqrt(2.0) * radius / cell))
    grid = np.zeros((size + 2, size + 2), bool)  # an empty ring of cells around the lattice
    inner = np.zeros_like(grid)
    inner[1:-1, 1:-1] = True
    grid[1 + int(rng.integers(size)), 1 + int(rng.integers(size))] = True
    target = int(rng.integers(max(3, size * size // 3), max(4, 2 * size * size // 3) + 1))
    count, attempts = 1, 0
    while count < target and attempts < 20 * size * size:
        attempts += 1
        # 4-neighbours of each cell (the empty ring keeps the lattice's cells inside).
        g = grid.astype(np.int8)
        touching = np.zeros(grid.shape, np.int8)
        touching[1:-1, 1:-1] = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
        cand = np.flatnonzero(inner & ~grid & (touching > 0))
        weight = np.choose(np.minimum(touching.flat[cand], 3), [0.0, 4.0, 1.0, 0.25])
        pick = np.unravel_index(rng.choice(cand, p=weight / weight.sum()), grid.shape)
        grid[pick] = True
        if _simple_cells(grid):
            count += 1
        else:
            grid[pick] = False
    loop = _boundary_loop(grid)
    if loop is None:  # pragma: no cover - excluded by `_simple_cells`
        raise AssertionError("a grown polygon's boundary is not one loop")
    loop = loop + rng.uniform(-0.15, 0.15, loop.shape)
    return np.asarray(centre) + (loop - (size + 2) / 2.0) * cell


# Smallest bounding radius (px) of each folded shape: an S needs room for two bends, a
# spiral for one turn with a tube, a gap and a tube again between its arms.
_FOLDS = (("C", 5.0), ("S", 7.5), ("spiral", 11.0))


def _bent_line(rng, shape: str) -> np.ndarray:
    r"""A unit-length centre line `(400, 2)` bent by its curvature $\kappa(s)$."""
    s = np.linspace(0.0, 1.0, 400)
    sign = rng.choice([-1.0, 1.0])
    if shape == "C":
        kappa = np.full_like(s, rng.uniform(1.1, 1.65) * np.pi) * sign
    else:
        kappa = rng.uniform(1.6, 2.4) * np.pi * np.sign(0.5 - s) * sign
    heading = rng.uniform(0, 2 * np.pi) + np.concatenate(
        [[0.0], np.cumsum(0.5 * (kappa[1:] + kappa[:-1]) * np.diff(s))]
    )
    step = np.stack([np.cos(heading), np.sin(heading)], 1)
    return np.concatenate([[[0.0, 0.0]], np.cumsum(0.5 * (step[1:] + step[:-1]), 0) / 399])


def _spiral_line(rng, radius: float, half: float) -> np.ndarray | None:
    r"""An Archimedean spiral $r = r_0 + g\phi/2\pi$ of 1–1.5 turns fitting `radius`."""
    r0 = rng.uniform(half + 1.5, half + 2.5)
    pitch = 2 * half + 3.5  # arm to arm: a tube, a gap of 3.5 - 2·0.5 px, a tube
    turns = min(rng.uniform(1.0, 1.5), (radius - half - r0) / pitch)
    if turns < 0.9:
        return None
    phi = np.linspace(0.0, 2 * np.pi * turns, int(200 * turns))
    r = r0 + pitch * phi / (2 * np.pi)
    phase, sign = rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0])
    return np.stack([r * np.cos(phase + sign * phi), r * np.sin(phase + sign * phi)], 1)


def folded_curve(rng: np.random.Generator, centre, radius: float) -> np.ndarray | None:
    r"""A smooth tube around a bending centre line: a C-, S- or spiral-shaped blob.

    The centre line bends by a constant curvature (a C, bent by 200–300°), by a curvature
    that changes sign halfway (an S, each half bent by 140–220°), or winds as an Archimedean
    spiral of 1–1.5 turns; the tube's half-width is 1.3–2.2 px (1.3–1.8 px for spirals)
    and it ends in round caps. It is scaled to fit the disk of `radius` about `centre`; an S
    needs a radius of 7.5 px and a spiral 11 px, so smaller shapes are C's. `None` when the
    tube's inner side would bend tighter than 1 px at that scale (the caller draws again).
    """
    shape = rng.choice([name for name, r in _FOLDS if r <= radius] or ["C"])
    half = rng.uniform(1.3, min(1.8 if shape == "spiral" else 2.2, max(1.3, radius / 4)))
    if shape == "spiral":
        line = _spiral_line(rng, radius, half)
        if line is None:
            return None
    else:
        line = _bent_line(rng, shape)
        line = line - 0.5 * (line.min(0) + line.max(0))
        line = line * (radius - half) / np.max(np.linalg.norm(line, axis=1))
    d1 = np.gradient(line, axis=0)
    d2 = np.gradient(d1, axis=0)
    speed = np.linalg.norm(d1, axis=1)
    kappa = np.abs(d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0]) / speed**3
    if np.max(kappa[2:-2]) * (half + 1.0) > 1.0:  # the inner side: radius ≥ 1 px
        return None
    tangent = d1 / speed[:, None]
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    cap = np.linspace(0.0, np.pi, 12)[1:-1, None]
    # Round caps: the normal turned through the tangent to minus itself.
    end = line[-1] + half * (np.cos(cap) * normal[-1] + np.sin(cap) * tangent[-1])
    start = line[0] - half * (np.cos(cap) * normal[0] + np.sin(cap) * tangent[0])
    poly = np.concatenate([line + half * normal, end, (line - half * normal)[::-1], start])
    return poly + np.asarray(centre)


def densify(polys: list[np.ndarray], spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Points along closed polygons at most `spacing` apart, and the polygon of each point."""
    if not polys:
        return np.zeros((0, 2)), np.zeros(0, int)
    p = np.concatenate(polys)
    q = np.concatenate([np.roll(poly, -1, axis=0) for poly in polys])
    owner = np.repeat(np.arange(len(polys)), [len(poly) for poly in polys])
    m = np.maximum(1, np.ceil(np.linalg.norm(q - p, axis=1) / spacing)).astype(int)
    edge = np.repeat(np.arange(len(p)), m)
    frac = (np.arange(edge.size) - np.repeat(np.cumsum(m) - m, m)) / m[edge]
    return p[edge] + frac[:, None] * (q[edge] - p[edge]), owner[edge]


def well_separated(poly: np.ndarray, separation: float) -> bool:
    """Parts of the curve far apart along it (arc length ≥ 3·separation) are ≥ separation apart."""
    pts, _ = densify([poly], 0.25)
    seg = np.linalg.norm(np.roll(pts, -1, axis=0) - pts, axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)[:-1]])
    total = seg.sum()
    pairs = cKDTree(pts).query_pairs(separation * (1 - 1e-9), output_type="ndarray")
    arc = np.abs(s[pairs[:, 0]] - s[pairs[:, 1]])
    return bool(np.all(np.minimum(arc, total - arc) < 3 * separation))


def draw(rng, family, centre, radius):
    if family == "smooth":
        return smooth_curve(rng, centre, radius)
    if family == "polygon":
        return random_polygon(rng, centre, radius)
    if family == "grown":
        return grown_polygon(rng, centre, radius)
    return folded_curve(rng, centre, radius)
