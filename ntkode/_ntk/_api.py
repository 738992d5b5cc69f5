"""The one entry point for empirical NTKs."""

from typing import Any

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._reference import ntk_reference

_IMPLEMENTATIONS = {"reference": ntk_reference}


def ntk(
    model: Any,
    x1: Float[Array, "n1 ..."],
    x2: Float[Array, "n2 ..."] | None = None,
    *,
    implementation: str = "auto",
    trace: bool = False,
) -> Float[Array, "n1 n2 k k"] | Float[Array, "n1 n2"]:
    r"""Empirical neural tangent kernel $\Theta(x_1, x_2) = J(x_1) J(x_2)^\top$ of an equinox model.

    **Arguments:**

    - `model`: an equinox module mapping one input to its outputs; the kernel is taken with
      respect to all of its floating-point arrays.
    - `x1`, `x2`: batches of inputs `(n1, ...)`, `(n2, ...)`; `x2` defaults to `x1`.
    - `implementation`: `"auto"` (the fastest applicable) or one of the registered names
      (`"reference"`: per-example Jacobians, contracted).
    - `trace`: if `True`, sum over the output diagonal and return `(n1, n2)`.

    **Returns:** the kernel, shape `(n1, n2, k, k)` (or `(n1, n2)` with `trace=True`).
    """
    if implementation == "auto":
        implementation = "reference"
    if implementation not in _IMPLEMENTATIONS:
        raise ValueError(
            f"Unknown `implementation` {implementation!r}; choose 'auto' or one of "
            f"{sorted(_IMPLEMENTATIONS)}."
        )
    k = _IMPLEMENTATIONS[implementation](model, x1, x2)
    return jnp.trace(k, axis1=2, axis2=3) if trace else k
