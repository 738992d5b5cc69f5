"""The data container every problem accepts."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._errors import check_finite, check_nonempty, is_concrete


def _as_targets(name: str, y) -> Array:
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.inexact):
        y = y.astype(jnp.result_type(float))
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(
            f"`{name}` must have shape (n,) or (n, k) (one row of k targets per example), "
            f"got shape {y.shape}."
        )
    return y


class Dataset(eqx.Module):
    """Train and test inputs with their targets.

    Targets are stored as `(n, k)` arrays (a `(n,)` vector becomes `(n, 1)`); for
    classification, pass one-hot (or probability) rows. Inputs keep their own shape
    `(n, *features)` (vectors, images, ...). The test split may be empty.

    **Arguments:**

    - `x_train`, `y_train`: training inputs `(n, ...)` and targets `(n,)` or `(n, k)`.
    - `x_test`, `y_test`: held-out inputs and targets (optional; default empty).
    - `name`: a label used in tables and file names.
    """

    x_train: Float[Array, "n ..."]
    y_train: Float[Array, "n k"]
    x_test: Float[Array, "m ..."]
    y_test: Float[Array, "m k"]
    name: str = eqx.field(static=True, default="data")

    def __init__(self, x_train, y_train, x_test=None, y_test=None, name: str = "data"):
        x_train = jnp.asarray(x_train)
        y_train = _as_targets("y_train", y_train)
        if (x_test is None) != (y_test is None):
            raise ValueError("Pass both `x_test` and `y_test`, or neither.")
        if x_test is None:
            x_test = jnp.zeros((0,) + x_train.shape[1:], x_train.dtype)
            y_test = jnp.zeros((0, y_train.shape[1]), y_train.dtype)
        x_test = jnp.asarray(x_test)
        y_test = _as_targets("y_test", y_test)
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.name = name

    def __check_init__(self):
        if not is_concrete(self.x_train):
            return
        check_nonempty("x_train", self.x_train)
        if self.x_train.shape[0] != self.y_train.shape[0]:
            raise ValueError(
                f"`x_train` has {self.x_train.shape[0]} examples but `y_train` has "
                f"{self.y_train.shape[0]}; they must match along the first axis."
            )
        if self.x_test.shape[0] != self.y_test.shape[0]:
            raise ValueError(
                f"`x_test` has {self.x_test.shape[0]} examples but `y_test` has "
                f"{self.y_test.shape[0]}; they must match along the first axis."
            )
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(
                f"`x_test` examples have shape {self.x_test.shape[1:]} but `x_train` "
                f"examples have shape {self.x_train.shape[1:]}; they must match."
            )
        if self.y_test.shape[1] != self.y_train.shape[1]:
            raise ValueError(
                f"`y_test` has {self.y_test.shape[1]} outputs per example but `y_train` "
                f"has {self.y_train.shape[1]}; they must match."
            )
        for name in ("x_train", "y_train", "x_test", "y_test"):
            check_finite(name, getattr(self, name))

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]

    @property
    def n_outputs(self) -> int:
        return self.y_train.shape[1]

    def astype(self, dtype) -> "Dataset":
        """The same data cast to floating dtype `dtype` (e.g. `jnp.float64`)."""
        c = lambda a: np.asarray(a).astype(dtype)
        return Dataset(
            c(self.x_train), c(self.y_train), c(self.x_test), c(self.y_test), name=self.name
        )
