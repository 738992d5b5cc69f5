"""Small shared builders for tests."""

import equinox as eqx
import jax
import jax.numpy as jnp

import ntkode as nk


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
    data = nk.datasets.sine(n_train, n_test, dim, key=jax.random.key(seed), dtype=dtype)
    model = eqx.nn.MLP(
        dim, out, width, 2, activation=jnp.tanh, key=jax.random.key(seed + 1), dtype=dtype
    )
    return model, data
