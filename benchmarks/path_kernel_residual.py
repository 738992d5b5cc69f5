"""Domingos reconstruction residual of the path kernel: against solver tolerance (flow),
against Gauss–Legendre nodes per step (gradient descent), and the kernel-machine comparison.

Problem: sine data (32 train / 32 test, dim 3), MLP 3→32→32→1, float64, mean MSE.
Run: `PYTHONPATH=. python benchmarks/path_kernel_residual.py` (a few minutes on 2 cores).
"""

import time

import equinox as eqx
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import ntkode as nk  # noqa: E402


def problem(activation, t1, lr):
    data = nk.datasets.sine(32, 32, 3, key=jax.random.key(0))
    model = eqx.nn.MLP(3, 1, 32, 2, activation=activation, key=jax.random.key(1))
    return nk.GradientFlowProblem(model, data, tspan=(0.0, t1), learning_rate=lr)


def main():
    p = problem(jnp.tanh, 20.0, 1.0)
    q = jnp.concatenate([p.data.x_train, p.data.x_test])
    print("gradient flow, tanh, t in [0, 20], eta = 1: residual vs tolerance")
    print(f"{'rtol':>8} {'atol':>8} {'residual':>10} {'steps':>6} {'time s':>7}")
    for rtol in (1e-4, 1e-6, 1e-8, 1e-10, 1e-12):
        t = time.perf_counter()
        pk = nk.path_kernel(p, q, rtol=rtol, atol=rtol * 1e-2)
        pk.residual.block_until_ready()
        print(
            f"{rtol:8.0e} {rtol * 1e-2:8.0e} {float(pk.residual):10.2e} "
            f"{int(pk.stats['num_steps']):6d} {time.perf_counter() - t:7.2f}"
        )
    print("\ngradient descent, 20 steps of eta = 1: residual vs Gauss-Legendre nodes per step")
    for act in (jnp.tanh, jax.nn.relu):
        pa = problem(act, 20.0, 1.0)
        row = []
        for nodes in (1, 2, 4, 8):
            row.append(f"{nodes}: {float(nk.path_kernel_gd(pa, q, nodes=nodes).residual):.2e}")
        print(f"  {act.__name__:5s} " + "  ".join(row))
    print("\nkernel machines vs the trained network (test inputs), tanh, eta = 1")
    for method, kw in (("flow", dict(rtol=1e-8, atol=1e-10)), ("gd", dict(nodes=8))):
        comp = nk.compare_kernels(p, method=method, ridge=1e-10, **kw)
        print(f"  {method}: residual {float(comp.path_kernel.residual):.1e}")
        for name, e in comp.errors().items():
            print(
                f"    {name:10s} test MSE {e['test_mse']:.4f}  "
                f"|f - f_net|/|f_net| {e['vs_network']:.3f}"
            )


if __name__ == "__main__":
    main()
