"""NTK speed of the same network written in equinox, flax linen, flax nnx and as a function.

The **sine** MLP 8→512→512→1 (ReLU, float32, n = 256) and a small CNN (16×16×1 input, two
3×3 convolutions of 32 channels, a dense head), each with the same weights in every
flavour. Rounds interleave the flavours so that machine load affects them alike; each round
times every flavour (median of `--k` steady-state public calls after a compiled warm-up) and
the ratios to equinox are taken within the round. Printed: per flavour the median time over
rounds, the median ratio to equinox, and the load average beside them.

    python benchmarks/adapters.py [--rounds 5] [--k 5] [--cnn] [--out results.json]
"""

import argparse
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import equinox as eqx  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.example_libraries import stax  # noqa: E402

import ntkode as nk  # noqa: E402


def mlp_flavours(d=8, width=512):
    eqx_mlp = eqx.nn.MLP(d, 1, width, 2, activation=jax.nn.relu, key=jax.random.key(1))
    weights = [(layer.weight, layer.bias) for layer in eqx_mlp.layers]

    class LinenMLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = jax.nn.relu(nn.Dense(width)(x))
            x = jax.nn.relu(nn.Dense(width)(x))
            return nn.Dense(1)(x)

    variables = {
        "params": {f"Dense_{i}": {"kernel": w.T, "bias": b} for i, (w, b) in enumerate(weights)}
    }

    class NNXMLP(nnx.Module):
        def __init__(self):
            r = nnx.Rngs(0)
            self.l1, self.l2 = nnx.Linear(d, width, rngs=r), nnx.Linear(width, width, rngs=r)
            self.l3 = nnx.Linear(width, 1, rngs=r)

        def __call__(self, x):
            return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))

    module = NNXMLP()
    for layer, (w, b) in zip((module.l1, module.l2, module.l3), weights, strict=True):
        layer.kernel[...], layer.bias[...] = w.T, b
    layers = (stax.Dense(width), stax.Relu, stax.Dense(width), stax.Relu, stax.Dense(1))
    _, apply = stax.serial(*layers)
    params = [(weights[0][0].T, weights[0][1]), (), (weights[1][0].T, weights[1][1]), ()]
    params.append((weights[2][0].T, weights[2][1]))
    return {
        "equinox": eqx_mlp,
        "linen": nk.from_flax(LinenMLP(), variables),
        "nnx": nk.from_flax(module),
        "apply": nk.from_apply(apply, params),
    }, (d,)


def cnn_flavours(ch=32):
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    conv = lambda cin, k: eqx.nn.Conv2d(cin, ch, 3, padding="SAME", key=k)
    eqx_cnn = eqx.nn.Sequential(
        [
            conv(1, k1),
            eqx.nn.Lambda(jax.nn.relu),
            conv(ch, k2),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(ch * 16 * 16, 1, key=k3),
        ]
    )

    class LinenCNN(nn.Module):  # channels last: the flax convention
        @nn.compact
        def __call__(self, x):
            x = jax.nn.relu(nn.Conv(ch, (3, 3))(jnp.moveaxis(x, 0, -1)))
            x = jax.nn.relu(nn.Conv(ch, (3, 3))(x))
            return nn.Dense(1)(jnp.moveaxis(x, -1, 0).ravel())

    c1, c2, lin = eqx_cnn.layers[0], eqx_cnn.layers[2], eqx_cnn.layers[5]
    hwio = lambda w: jnp.transpose(w, (2, 3, 1, 0))  # (out, in, h, w) -> (h, w, in, out)
    variables = {
        "params": {
            "Conv_0": {"kernel": hwio(c1.weight), "bias": c1.bias.reshape(-1)},
            "Conv_1": {"kernel": hwio(c2.weight), "bias": c2.bias.reshape(-1)},
            "Dense_0": {"kernel": lin.weight.T, "bias": lin.bias},
        }
    }
    return {"equinox": eqx_cnn, "linen": nk.from_flax(LinenCNN(), variables)}, (1, 16, 16)


def median_time(fn, k):
    jax.block_until_ready(fn())
    times = []
    for _ in range(k):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(name, flavours, shape, n, rounds, k, implementations):
    x = jax.random.normal(jax.random.key(0), (n,) + shape)
    ref = nk.ntk(flavours["equinox"], x, implementation="jacobian")
    for f, model in flavours.items():  # the same kernel, whatever the flavour
        err = float(jnp.max(jnp.abs(nk.ntk(model, x) - ref)) / jnp.max(jnp.abs(ref)))
        assert err < 1e-4, (name, f, err)
    out = {}
    for impl in implementations:
        times = {f: [] for f in flavours}
        loads = []
        for _ in range(rounds):
            loads.append(os.getloadavg()[0])
            for f, model in flavours.items():
                times[f].append(median_time(lambda m=model: nk.ntk(m, x, implementation=impl), k))
        base = np.asarray(times["equinox"])
        for f, ts in times.items():
            ratio = float(np.median(np.asarray(ts) / base))
            out[f"{name} {impl} {f}"] = {"seconds": float(np.median(ts)), "ratio_to_equinox": ratio}
            print(
                f"{name:8s} {impl:10s} {f:8s} {np.median(ts) * 1e3:9.2f} ms   "
                f"{ratio:6.2f}x equinox   (load {min(loads):.1f}-{max(loads):.1f})",
                flush=True,
            )
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--cnn", action="store_true", help="also the CNN (linen Conv vs equinox)")
    p.add_argument("--out")
    args = p.parse_args()
    print(f"jax {jax.__version__}, devices {jax.devices()}")
    results = run("mlp", *mlp_flavours(), args.n, args.rounds, args.k, ("structured",))
    # Functions are opaque: their (Jacobian) time against equinox's Jacobian path, once.
    results.update(run("mlp", *mlp_flavours(), args.n, 1, 1, ("jacobian",)))
    if args.cnn:
        results.update(run("cnn", *cnn_flavours(), args.n, args.rounds, args.k, ("structured",)))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
