"""Tune the nodes of a scheduled-NTK grid against the true flow (grid placement by adjoints).

Run: python examples/tune_grid.py   (under a minute on 2 cores)
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx

import ntkode as nk

data = nk.datasets.sine(n_train=32, n_test=32, dim=3, key=jax.random.key(0))
model = eqx.nn.MLP(3, 1, 32, 2, activation=jax.nn.softplus, key=jax.random.key(1))
ts = jnp.linspace(0.0, 10.0, 51)
true = nk.GradientFlowProblem(model, data, tspan=(0.0, 10.0))
sol = nk.solve(true, saveat=ts, rtol=1e-6, save_weights=True)  # weights: for time nodes

# A uniform grid of 4 kernels on the true path, interpolated linearly in time.
grid = nk.KernelGrid.from_solution(sol, ts[jnp.array([0, 17, 34, 50])], model, data)
sched = nk.ScheduledKernelProblem(grid, data, tspan=(0.0, 10.0))

# Move the node positions (kernels fixed) with BFGS; gradients by diffrax adjoints.
res = nk.tune_grid(
    sched, sol, nodes=nk.tuning.ScheduleNodes(), optimiser=optx.BFGS(1e-6, 1e-8), steps=10
)
print(res.message)
print("nodes:", grid.nodes, "->", res.nodes)
print(f"J: {res.initial_objective:.4g} -> {res.objective:.4g} ({res.reduction:.2f}x smaller)")
errors = nk.compare(sol, uniform=nk.solve(sched, saveat=ts), tuned=nk.solve(res.problem, saveat=ts))
print(errors.table())
