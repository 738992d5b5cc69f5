"""Domingos reconstruction residual of the path kernel: against solver tolerance (flow),
against Gauss–Legendre nodes per step (gradient descent), and the kernel-machine comparison.

Problem: sine data (32 train / 32 test, dim 3), MLP 3→32→32→1, float64, mean MSE.
Run: `PYTHONPATH=. python benchmarks/path_kernel_residual.py` (a few minutes on 2 cores).

`--speed` instead times one traced gradient-descent path kernel of a small CNN with one
output per pixel (the closure study's network, 16×16 images, float32), through the NTK
engine (`implementation="auto"`: structured) and through per-example Jacobians
(`implementation="jacobian"`, the formulation the engine replaced), and checks that the two
agree.
"""

import argparse
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import ntkode as nk  # noqa: E402


def problem(activation, t1, lr):
    data = nk.datasets.sine(32, 32, 3, key=jax.random.key(0))
    model = eqx.nn.MLP(3, 1, 32, 2, activation=activation, key=jax.random.key(1))
    return nk.GradientFlowProblem(model, data, tspan=(0.0, t1), learning_rate=lr)


def speed(n_train=16, n_test=16, size=16, steps=5):
    from ntkode._core._model import num_params
    from ntkode.studies import ClosureCNN

    data = nk.datasets.closure(n_train, n_test, size, seed=0, dtype=jnp.float32)
    model = ClosureCNN(4, key=jax.random.key(1), dtype=jnp.float32)
    p = nk.GradientFlowProblem(model, data, tspan=(0.0, float(steps)), learning_rate=0.003)
    q = jnp.concatenate([data.x_train, data.x_test])
    method = nk.PathGradientDescent(steps, nodes=1, chunk=steps)
    print(
        f"traced GD path kernel: closure CNN ({num_params(model)} weights, "
        f"{size * size} outputs), {n_train} train + {n_test} test images, {steps} steps"
    )
    out = {}
    for impl in ("auto", "jacobian"):
        run = lambda: nk.path_kernel(p, q, method, trace=True, implementation=impl)
        t = time.perf_counter()
        first = jax.block_until_ready(run())
        compile_and_run = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(run())
        seconds = time.perf_counter() - t
        out[impl] = first
        print(
            f"  {impl:9s} {seconds:7.2f} s per run ({seconds / steps * 1e3:7.1f} ms per step; "
            f"first call {compile_and_run:.2f} s)  residual {float(first.residual):.1e}"
        )
    a, b = out["auto"].kernel, out["jacobian"].kernel
    print(f"  max |K_auto - K_jac| / max |K| = {float(jnp.max(jnp.abs(a - b)) / jnp.max(b)):.1e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speed", action="store_true", help="time the CNN path kernel only")
    if ap.parse_args().speed:
        speed()
        return
    p = problem(jnp.tanh, 20.0, 1.0)
    q = jnp.concatenate([p.data.x_train, p.data.x_test])
    print("gradient flow, tanh, t in [0, 20], eta = 1: residual, output-error estimate and the")
    print("actual error of f(theta_T) against an independent Dopri8 solve at rtol 1e-13")
    truth = nk.solve(p, diffrax.Dopri8(), saveat=2, rtol=1e-13, atol=1e-15, save_weights=True)
    w_star = jax.tree.map(lambda a: a[-1], truth.weights)
    _, static = eqx.partition(p.model, eqx.is_inexact_array)
    f_star = jax.vmap(eqx.combine(w_star, static))(q).reshape(q.shape[0], -1)
    print(
        f"{'rtol':>8} {'atol':>8} {'residual':>10} {'estimate':>10} {'actual':>10} "
        f"{'steps':>6} {'time s':>7}"
    )
    for rtol in (1e-4, 1e-6, 1e-7, 1e-8, 1e-10):
        t = time.perf_counter()
        pk = nk.path_kernel(p, q, nk.PathFlow(rtol=rtol, atol=rtol * 1e-2))
        pk.residual.block_until_ready()
        seconds = time.perf_counter() - t
        moved = jnp.linalg.norm(pk.outputs - pk.bias)
        actual = float(jnp.linalg.norm(pk.outputs - f_star) / moved)
        print(
            f"{rtol:8.0e} {rtol * 1e-2:8.0e} {float(pk.residual):10.2e} "
            f"{float(pk.output_error):10.2e} {actual:10.2e} "
            f"{int(pk.stats['num_steps']):6d} {seconds:7.2f}"
        )
    print("\ngradient descent, 20 steps of eta = 1: residual vs Gauss-Legendre nodes per step")
    for act in (jnp.tanh, jax.nn.relu):
        pa = problem(act, 20.0, 1.0)
        row = []
        for nodes in (1, 2, 4, 8):
            pk = nk.path_kernel(pa, q, nk.PathGradientDescent(nodes=nodes))
            row.append(f"{nodes}: {float(pk.residual):.2e}")
        print(f"  {act.__name__:5s} " + "  ".join(row))
    print("\nkernel machines vs the trained network (test inputs), tanh, eta = 1")
    for method in (nk.PathFlow(rtol=1e-8, atol=1e-10), nk.PathGradientDescent(nodes=8)):
        comp = nk.compare_kernels(p, method, ridge=1e-10)
        print(f"  {type(method).__name__}: residual {float(comp.path_kernel.residual):.1e}")
        for name, e in comp.errors().items():
            print(
                f"    {name:10s} test MSE {e['test_mse']:.4f}  "
                f"|f - f_net|/|f_net| {e['vs_network']:.3f}"
            )


if __name__ == "__main__":
    main()
