"""The **sine** reference problem: `x ~ N(0, I_d)`, `y = sin(Σ x)`."""

import jax
import jax.numpy as jnp

from .._core._data import Dataset


def sine(
    n_train: int = 256,
    n_test: int = 256,
    dim: int = 8,
    *,
    key: jax.Array | None = None,
    noise: float = 0.0,
    dtype=None,
) -> Dataset:
    """Synthetic regression: inputs `x ~ N(0, I_dim)`, targets `y = sin(Σ_j x_j) + noise·ε`.

    **Arguments:**

    - `n_train`, `n_test`: number of train and test points (`n_test` may be 0).
    - `dim`: input dimension.
    - `key`: a `jax.random.key`; defaults to `jax.random.key(0)`, so the data are seeded.
    - `noise`: standard deviation of Gaussian label noise on the *training* targets.
    - `dtype`: floating dtype (default: JAX's default float).

    **Returns:** a [`ntkode.Dataset`][] with targets of shape `(n, 1)`.
    """
    if int(n_train) < 1:
        raise ValueError(f"`n_train` must be at least 1, got {n_train}.")
    if int(n_test) < 0:
        raise ValueError(f"`n_test` must be non-negative, got {n_test}.")
    if int(dim) < 1:
        raise ValueError(f"`dim` must be at least 1, got {dim}.")
    if noise < 0:
        raise ValueError(f"`noise` must be non-negative, got {noise}.")
    key = jax.random.key(0) if key is None else key
    dtype = jnp.result_type(float) if dtype is None else dtype
    kx, kt, kn = jax.random.split(key, 3)
    x_train = jax.random.normal(kx, (n_train, dim), dtype)
    x_test = jax.random.normal(kt, (n_test, dim), dtype)
    y_train = jnp.sin(x_train.sum(axis=1, keepdims=True))
    y_train = y_train + noise * jax.random.normal(kn, y_train.shape, dtype)
    y_test = jnp.sin(x_test.sum(axis=1, keepdims=True))
    return Dataset(x_train, y_train, x_test, y_test, name="sine")
