"""The closure data set: parity labels against a flood fill, determinism, bad input."""

import jax
import numpy as np
import pytest

import ntkode as nk
from ntkode.datasets._closure import (
    _well_separated,
    closure_images,
    flood_fill_interior,
    parity_labels,
    rasterise,
)


@pytest.mark.parametrize(
    "size,kind,shapes,n",
    [
        (16, "smooth", 1, 100),
        (16, "polygon", 1, 100),
        (32, "smooth", 2, 40),
        (32, "polygon", 3, 40),
        (64, "mixed", 2, 10),
    ],
)
def test_parity_labels_equal_flood_fill(size, kind, shapes, n):
    curves, inside, _ = closure_images(n, size, shapes=shapes, kind=kind, seed=size + shapes)
    for c, i in zip(curves, inside, strict=True):
        # Two independent rules: crossings of the continuous polygon from pixel centres,
        # and a 4-connected flood fill of the raster from the border. Exact agreement.
        np.testing.assert_array_equal(i, flood_fill_interior(c))
    assert inside.any(axis=(1, 2)).all(), "every image has an inside"
    assert not (inside & curves).any(), "labels exclude the curve pixels"


def test_pinched_curve_breaks_flood_fill_and_is_rejected():
    # A square with a 0.3-px slit leading to an outside chamber: the raster closes the slit,
    # so the flood fill calls the chamber inside while parity (correctly) says outside.
    # This is why the generator keeps only well-separated curves.
    poly = np.array(
        [[3, 3], [13, 3], [13, 7.85], [10, 7.85], [10, 6.5], [6, 6.5], [6, 9.5], [10, 9.5],
         [10, 8.15], [13, 8.15], [13, 13], [3, 13]], float,
    )  # fmt: skip
    curve = rasterise([poly], 16)
    parity = parity_labels([poly], 16) & ~curve
    assert (parity != flood_fill_interior(curve)).sum() > 0
    assert not _well_separated(poly, 2.5)


def test_parity_rule_through_vertices():
    # A diamond whose vertices sit exactly on pixel-centre rows: rays through vertices and
    # tangent rays must count correctly. Inside ⇔ |x-8| + |y-8| < 5 at pixel centres.
    poly = np.array([[8.5, 3.5], [13.5, 8.5], [8.5, 13.5], [3.5, 8.5]])
    inside = parity_labels([poly], 16)
    yc, xc = np.mgrid[0:16, 0:16] + 0.5
    expected = np.abs(xc - 8.5) + np.abs(yc - 8.5) < 5
    on_edge = np.abs(xc - 8.5) + np.abs(yc - 8.5) == 5
    np.testing.assert_array_equal(inside[~on_edge], expected[~on_edge])
    curve = rasterise([poly], 16)
    np.testing.assert_array_equal(inside & ~curve, flood_fill_interior(curve))


def test_dataset_layout_and_determinism():
    d = nk.datasets.closure(5, 3, 16, seed=7)
    assert d.x_train.shape == (5, 1, 16, 16) and d.y_train.shape == (5, 256)
    assert d.x_test.shape == (3, 1, 16, 16) and d.name == "closure"
    assert set(np.unique(np.asarray(d.y_train))) <= {0.0, 1.0}
    again = nk.datasets.closure(5, 3, 16, seed=7)
    np.testing.assert_array_equal(d.x_train, again.x_train)
    np.testing.assert_array_equal(d.y_test, again.y_test)
    other = nk.datasets.closure(5, 3, 16, seed=8)
    assert not np.array_equal(d.x_train, other.x_train)
    k1 = nk.datasets.closure(2, 0, 16, key=jax.random.key(1))
    k2 = nk.datasets.closure(2, 0, 16, key=jax.random.key(1))
    np.testing.assert_array_equal(k1.x_train, k2.x_train)
    # Test images may hold more shapes than training images (generalisation to several).
    multi = nk.datasets.closure(2, 2, 32, shapes=1, test_shapes=3, seed=0)
    assert multi.x_test.shape == (2, 1, 32, 32)


def test_bad_sizes():
    with pytest.raises(ValueError, match="size"):
        nk.datasets.closure(2, 0, 6)
    with pytest.raises(ValueError, match="cannot fit"):
        nk.datasets.closure(2, 0, 16, shapes=9)
    with pytest.raises(ValueError, match="radius"):
        nk.datasets.closure(2, 0, 16, min_radius=7.0, max_radius=4.0)
    with pytest.raises(ValueError, match="radius"):
        nk.datasets.closure(2, 0, 16, max_radius=20.0)
    with pytest.raises(ValueError, match="kind"):
        nk.datasets.closure(2, 0, 16, kind="blob")
    with pytest.raises(ValueError, match="n_train"):
        nk.datasets.closure(0, 1, 16)
    with pytest.raises(ValueError, match="not both"):
        nk.datasets.closure(1, 0, 16, seed=1, key=jax.random.key(0))
