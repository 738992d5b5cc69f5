"""Infinite-width kernels in four steps: analytic NTK, a wide network converging to it, and the
kernel predictor that the wide network's training approaches (Jacot et al. 2018; Lee et al.
2019). Run: `python examples/infinite_width.py` (a few seconds)."""

import jax
import jax.numpy as jnp

import ntkode as nk

data = nk.datasets.sine(n_train=64, n_test=64, dim=8, key=jax.random.key(0))

# 1. The analytic kernels of a depth-2 ReLU network (neural-tangents' conventions).
spec = nk.InfiniteMLP(2, "relu", W_std=2**0.5, b_std=0.1, out_W_std=1.0, out_b_std=0.1)
k_inf = spec.ntk(data.x_train)

# 2. Finite NTK-parameterised networks with the same hyperparameters: the relative distance
#    of their empirical NTK to the limit falls like width^-1/2.
for width in (64, 256, 1024):
    net = nk.MLP(8, 1, width, 2, "relu", parameterization="ntk", key=jax.random.key(width))
    k_emp = nk.ntk(net, data.x_train)[:, :, 0, 0]
    err = jnp.linalg.norm(k_emp - k_inf) / jnp.linalg.norm(k_inf)
    print(f"width {width:5d}: |Θ_emp - Θ_∞| / |Θ_∞| = {float(err):.3f}")

# 3. Kernel regression with the NTK: the t → ∞ mean prediction of an infinitely wide network.
pred = nk.kernel_regression(k_inf, spec.ntk(data.x_test, data.x_train), data.y_train, ridge=1e-6)
print(f"NTK regression test loss: {float(nk.losses.mse(pred.test, data.y_test)):.4f}")

# 4. The same kernel as a frozen-kernel flow: solve it like any other problem.
problem = nk.infinite_width_problem(spec, data, tspan=(0.0, 100.0))
sol = nk.solve(problem, saveat=jnp.array([0.0, 10.0, 100.0]))
print("infinite-width flow: train loss", [round(float(v), 4) for v in sol.train_loss])
