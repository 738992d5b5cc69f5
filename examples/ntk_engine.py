"""The fast NTK engine on the sine MLP: implementations, blocking and matrix-free products.

Run: `python examples/ntk_engine.py` (about 10 seconds on 2 CPU cores).
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx

import ntkode as nk

data = nk.datasets.sine(n_train=512, n_test=64, dim=8, key=jax.random.key(0))
model = eqx.nn.MLP(8, 1, 512, 2, activation=jax.nn.relu, key=jax.random.key(1))
x = data.x_train


def timed(fn):
    jax.block_until_ready(fn())  # compile
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t


# The default ("auto") uses per-layer Gram products for the dense layers.
k_auto, t_auto = timed(lambda: nk.ntk(model, x, trace=True))
# The same kernel, 128 rows at a time (peak memory O(128 × parameters + n²)).
k_block, t_block = timed(lambda: nk.ntk(model, x, trace=True, block_size=128))
# Kernel between test and train inputs.
k_test = nk.ntk(model, data.x_test, x, trace=True)
print(f"train kernel {k_auto.shape}: {t_auto * 1e3:.1f} ms; blocked: {t_block * 1e3:.1f} ms")
err = jnp.max(jnp.abs(k_block - k_auto)) / jnp.max(k_auto)
print(f"max |blocked - unblocked| / max |Θ| = {err:.1e}")
print(f"test-train kernel {k_test.shape}")

# Matrix-free: the function-space velocity -Θ ∇_u L without forming Θ.
u = nk.losses.mse.grad(jax.vmap(model)(x), data.y_train)
velocity = -nk.ntk_vp(model, x, u)
dense = -k_auto @ u
print(f"matrix-free Θ·v vs formed kernel: max error {jnp.max(jnp.abs(velocity - dense)):.1e}")

# A lineax solve with the kernel as an operator: kernel ridge regression, matrix-free.
ridge = 1.0
op = nk.ntk_operator(model, x) + ridge * lx.IdentityLinearOperator(jax.eval_shape(lambda: u[:, 0]))
op = lx.TaggedLinearOperator(op, lx.positive_semidefinite_tag)
y = data.y_train[:, 0]
alpha = lx.linear_solve(op, y, lx.CG(rtol=1e-3, atol=1e-3, max_steps=5000)).value
resid = jnp.linalg.norm(k_auto @ alpha + ridge * alpha - y) / jnp.linalg.norm(y)
print(f"kernel ridge solve by CG: relative residual {resid:.1e}")
