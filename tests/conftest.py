"""Numerical checks run in float64; float32 tests ask for float32 explicitly.

Test modules marked `strict_dtypes` run under `jax.numpy_dtype_promotion("strict")`, so that
an implicit promotion inside the package (float32 meeting float64, an integer array meeting a
float array) raises instead of silently upcasting.
"""

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
    if request.node.get_closest_marker("strict_dtypes") is None:
        yield
        return
    with jax.numpy_dtype_promotion("strict"):
        yield
