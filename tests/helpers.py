"""The test toolkit: small reference problems every test file uses, and comparisons with
explicit tolerances."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import ntkode as nk

# ---------------------------------------------------------------- comparisons


def rel_max(a, b) -> float:
    """Largest absolute difference relative to the largest entry of `b`."""
    return float(jnp.max(jnp.abs(jnp.asarray(a) - b)) / jnp.max(jnp.abs(b)))


def rel_norm(a, b) -> float:
    """`‖a − b‖ / ‖b‖` (Frobenius over all entries)."""
    return float(jnp.linalg.norm(jnp.asarray(a) - b) / jnp.linalg.norm(b))


def assert_trees_close(a, b, *, rtol: float, atol: float) -> None:
    """Same structure, and every array leaf of `a` close to `b`'s (numpy's tolerances)."""
    la, ta = jax.tree.flatten(eqx.filter(a, eqx.is_array))
    lb, tb = jax.tree.flatten(eqx.filter(b, eqx.is_array))
    assert ta == tb, f"tree structures differ:\n{ta}\n{tb}"
    for i, (x, y) in enumerate(zip(la, lb, strict=True)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"leaf {i}")


def central_differences(f: Callable, z, h: float = 1e-5) -> np.ndarray:
    """The gradient of the scalar `f` at the 1-D array `z` by central differences."""
    z = jnp.asarray(z)
    return np.array(
        [(float(f(z.at[i].add(h))) - float(f(z.at[i].add(-h)))) / (2 * h) for i in range(len(z))]
    )


# ---------------------------------------------------------------- reference problems


class Linearised(eqx.Module):
    r"""$f_{lin}(\theta, x) = f(\theta_0, x) + J(\theta_0, x)(\theta - \theta_0)$ (Lee et al. 2019).

    Only `delta` trains: the frozen copy of $\theta_0$ is behind `stop_gradient`.
    """

    base: eqx.Module
    delta: eqx.Module

    def __init__(self, model):
        self.base = model
        self.delta = jax.tree.map(
            lambda p: jnp.zeros_like(p) if eqx.is_inexact_array(p) else p, model
        )

    def __call__(self, x):
        p0, static = eqx.partition(self.base, eqx.is_inexact_array)
        p0 = jax.lax.stop_gradient(p0)
        dp, _ = eqx.partition(self.delta, eqx.is_inexact_array)
        f = lambda p: eqx.combine(p, static)(x)
        y, dy = jax.jvp(f, (p0,), (dp,))
        return y + dy


def small_sine(n_train=16, n_test=8, dim=3, width=16, out=1, seed=0, dtype=jnp.float64):
    """A tanh MLP `dim → width² → out` and a small **sine** data set."""
    data = nk.datasets.sine(n_train, n_test, dim, key=jax.random.key(seed), dtype=dtype)
    model = eqx.nn.MLP(
        dim, out, width, 2, activation=jnp.tanh, key=jax.random.key(seed + 1), dtype=dtype
    )
    return model, data


def small_data(n=8, m=5, d=3, key=0) -> nk.Dataset:
    """Gaussian inputs with targets `sin(Σx)` (float64 under the tests' x64 default)."""
    k1, k2 = jax.random.split(jax.random.key(key))
    x, xs = jax.random.normal(k1, (n, d)), jax.random.normal(k2, (m, d))
    return nk.Dataset(x, jnp.sin(x.sum(1)), xs, jnp.sin(xs.sum(1)))


def psd_kernels(key, G, n, rank=None, shift=0.0):
    """`G` random PSD `(n, n)` matrices `A Aᵀ + shift·I` (rank `rank` before the shift)."""
    a = jax.random.normal(key, (G, n, rank or n))
    return jnp.einsum("gir,gjr->gij", a, a) + shift * jnp.eye(n)


def random_grid(data, G=3, key=1, nodes=None) -> nk.KernelGrid:
    """A grid of `G` random PSD train kernels (and random test kernels) for `data`."""
    k1, k2 = jax.random.split(jax.random.key(key))
    kt = psd_kernels(k1, G, data.n_train, shift=0.1)
    ks = jax.random.normal(k2, (G, data.n_test, data.n_train))
    nodes = jnp.linspace(0.0, 2.0, G) if nodes is None else nodes
    return nk.KernelGrid(nodes, kt, ks)
