"""The data container every problem accepts."""

import equinox as eqx
import jax
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


def _is_labels(y) -> bool:
    return y is not None and jnp.ndim(y) == 1 and jnp.issubdtype(jnp.asarray(y).dtype, jnp.integer)


def _count_classes(y_train, y_test, num_classes) -> int:
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
            raise TypeError(f"`num_classes` must be an int, got {num_classes!r}.")
        if num_classes < 2:
            raise ValueError(f"`num_classes` must be at least 2, got {num_classes}.")
        return int(num_classes)
    if not (is_concrete(y_train) and (y_test is None or is_concrete(y_test))):
        raise ValueError(
            "Integer labels inside jax.jit need `num_classes` (the number of classes cannot "
            "be read from traced labels); pass Dataset(..., num_classes=C)."
        )
    top = max(int(np.max(y_train)), -1 if y_test is None or not np.size(y_test) else
              int(np.max(y_test)))  # fmt: skip
    return max(top + 1, 2)


def _one_hot(name: str, labels, num_classes: int, dtype) -> Array:
    if is_concrete(labels):
        a = np.asarray(labels)
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(
                f"`{name}` holds integer class labels in [{a.min()}, {a.max()}] but there are "
                f"{num_classes} classes; labels must be 0, ..., {num_classes - 1}."
            )
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


class Dataset(eqx.Module):
    """Train and test inputs with their targets.

    Targets are stored as `(n, k)` floating arrays: a real `(n,)` vector becomes `(n, 1)`.
    **Class labels**: an *integer* `(n,)` array is read as class labels and stored as one-hot
    rows `(n, C)`, with `C = num_classes` (default: the largest label in the train and test
    splits plus one); `Dataset.num_classes` then says `C`, and
    `jnp.argmax(data.y_train, axis=-1)` gives the labels back. Such data suit
    [`ntkode.losses.cross_entropy`][] (softmax over `C` outputs) and one-hot regression with
    [`ntkode.losses.mse`][]; the model needs `C` outputs. (Integer-valued regression targets
    must be passed as floats, e.g. `y.astype(float)`.) Inputs keep their own shape
    `(n, *features)` (vectors, images, ...). The test split may be empty.

    **Arguments:**

    - `x_train`, `y_train`: training inputs `(n, ...)` and targets `(n,)` or `(n, k)`, or
      integer class labels `(n,)`.
    - `x_test`, `y_test`: held-out inputs and targets (optional; default empty).
    - `name`: a label used in tables and file names.
    - `num_classes`: the number of classes of integer labels (default: read from them).
    """

    x_train: Float[Array, "n ..."]
    y_train: Float[Array, "n k"]
    x_test: Float[Array, "m ..."]
    y_test: Float[Array, "m k"]
    name: str = eqx.field(static=True, default="data")
    num_classes: int | None = eqx.field(static=True, default=None)

    def __init__(
        self,
        x_train,
        y_train,
        x_test=None,
        y_test=None,
        name: str = "data",
        num_classes: int | None = None,
    ):
        x_train = jnp.asarray(x_train)
        if (x_test is None) != (y_test is None):
            raise ValueError("Pass both `x_test` and `y_test`, or neither.")
        if _is_labels(y_train) or _is_labels(y_test):
            if not (_is_labels(y_train) and (y_test is None or _is_labels(y_test))):
                raise ValueError(
                    "Pass integer class labels (n,) for both `y_train` and `y_test`, or "
                    "targets of the same kind for both."
                )
            num_classes = _count_classes(y_train, y_test, num_classes)
            dtype = jnp.result_type(float)
            y_train = _one_hot("y_train", y_train, num_classes, dtype)
            if y_test is not None:
                y_test = _one_hot("y_test", y_test, num_classes, dtype)
        elif num_classes is not None and jnp.shape(y_train)[-1:] != (num_classes,):
            raise ValueError(
                f"`num_classes`={num_classes} applies to integer class labels (n,) or one-hot "
                f"rows of {num_classes} columns; `y_train` has shape {jnp.shape(y_train)}."
            )
        y_train = _as_targets("y_train", y_train)
        if x_test is None:
            x_test = jnp.zeros((0,) + x_train.shape[1:], x_train.dtype)
            y_test = jnp.zeros((0, y_train.shape[1]), y_train.dtype)
        x_test = jnp.asarray(x_test)
        y_test = _as_targets("y_test", y_test)
        self.x_train, self.y_train, self.x_test, self.y_test = x_train, y_train, x_test, y_test
        self.name = name
        self.num_classes = None if num_classes is None else int(num_classes)

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
            c(self.x_train),
            c(self.y_train),
            c(self.x_test),
            c(self.y_test),
            name=self.name,
            num_classes=self.num_classes,
        )
