"""Input validation that names the argument and says what to do.

Checks run only on concrete values: inside `jit`/`vmap` the arrays are tracers and the
checks are skipped (they already ran when the object was first built outside).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when `x` holds actual numbers (not a JAX tracer)."""
    return not isinstance(x, jax.core.Tracer)


def check_finite(name: str, x: Any) -> None:
    """Raise `ValueError` if the array `x` (argument `name`) holds NaN or infinity."""
    if not is_concrete(x):
        return
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        # A global array spanning several processes (jax.distributed): count where it lives;
        # the count comes back replicated, readable by every process.
        bad = int(_count_nonfinite(x))
    else:
        arr = np.asarray(x)
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ValueError(
            f"`{name}` contains {bad} non-finite value(s) (NaN or infinity); "
            "remove or impute them before building the problem."
        )


@jax.jit
def _count_nonfinite(x):
    return jnp.sum(~jnp.isfinite(x))


def check_nonempty(name: str, x: Any) -> None:
    """Raise if `x` has no rows."""
    if jnp.ndim(x) == 0 or jnp.shape(x)[0] == 0:
        raise ValueError(
            f"`{name}` is empty (shape {jnp.shape(x)}); pass at least one example "
            "along the leading axis."
        )


def check_positive(name: str, value: Any) -> None:
    """Raise if a scalar is not strictly positive (and finite)."""
    if not is_concrete(value):
        return
    v = np.asarray(value)
    if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError(f"`{name}` must be positive and finite, got {value!r}.")


def check_tspan(tspan: Any) -> tuple[Any, Any]:
    """Validate `(t0, t1)`: two finite numbers with `t1 > t0`."""
    try:
        t0, t1 = tspan
    except (TypeError, ValueError):
        raise ValueError(f"`tspan` must be a pair (t0, t1), got {tspan!r}.") from None
    if is_concrete(t0) and is_concrete(t1):
        a, b = float(t0), float(t1)
        if not (np.isfinite(a) and np.isfinite(b)):
            raise ValueError(f"`tspan` must be finite, got {tspan!r}.")
        if b <= a:
            what = "empty" if b == a else "reversed"
            raise ValueError(
                f"`tspan` = ({a}, {b}) is {what}: training time runs forwards, so pass "
                "(t0, t1) with t1 > t0."
            )
    return t0, t1
