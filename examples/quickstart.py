"""Quick start: the true gradient flow of a small MLP vs its frozen-NTK surrogate.

Run: python examples/quickstart.py   (about 20 seconds on 2 cores)
"""

import equinox as eqx
import jax
import jax.numpy as jnp

import ntkode as nk

data = nk.datasets.sine(n_train=64, n_test=64, dim=4, key=jax.random.key(0))
model = eqx.nn.MLP(4, 1, 128, 2, activation=jax.nn.relu, key=jax.random.key(1))

true = nk.GradientFlowProblem(model, data, loss=nk.losses.mse, tspan=(0.0, 20.0))
sol = nk.solve(true, saveat=jnp.linspace(0.0, 20.0, 81), rtol=1e-5, progress=False)
print("true flow:", sol.message, f"({sol.num_steps} steps)")
print("train loss", float(sol.train_loss[0]), "->", float(sol.train_loss[-1]))
print("outputs at t=7.3 (interpolated):", sol(7.3).train[:3, 0])

frozen = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, 20.0))
lazy = nk.solve(frozen, saveat=sol.t)  # MSE: exact closed form, no ODE steps

comparison = nk.compare(sol, frozen=lazy)
print(comparison.table())
