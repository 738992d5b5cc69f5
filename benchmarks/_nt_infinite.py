"""neural-tangents side of `benchmarks/infinite.py` (run with the neural-tangents venv).

Usage: `python _nt_infinite.py OUT.npz` — times `stax` analytic kernels on the infinite-width
rows of `../shared/anchors/nt_bench.py` (ReLU and Erf, depth 3, Dense(512, W_std=sqrt(2),
b_std=0.1), readout Dense(1, W_std=1, b_std=0.1), n = 1024 and 4096, inputs
`normal(PRNGKey(2), (n, 8))`, float32) and prints one JSON line per case; saves the n = 1024
kernels to OUT.npz so the caller can check that both libraries compute the same numbers.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.environ.get("NTKODE_ANCHORS", "/work/shared/anchors"))
# isort: off
# ntshim stubs TensorFlow-only modules; it must run before neural_tangents is imported.
from ntshim import nt  # noqa: E402, F401
import jax  # noqa: E402
import numpy as np  # noqa: E402
from neural_tangents import stax  # noqa: E402
# isort: on


def best(fn, *a, k=3):
    jax.block_until_ready(fn(*a))
    ts = []
    for _ in range(k):
        t = time.perf_counter()
        jax.block_until_ready(fn(*a))
        ts.append(time.perf_counter() - t)
    return min(ts)


def main(out):
    saved = {}
    for name, act in (("relu", stax.Relu), ("erf", stax.Erf)):
        layers = []
        for _ in range(3):
            layers += [stax.Dense(512, W_std=np.sqrt(2.0), b_std=0.1), act()]
        _, _, kfn = stax.serial(*layers, stax.Dense(1, W_std=1.0, b_std=0.1))
        fn = jax.jit(lambda a, kfn=kfn: kfn(a, None, ("nngp", "ntk")))
        for n in (1024, 4096):
            x = jax.random.normal(jax.random.PRNGKey(2), (n, 8))
            seconds = best(fn, x)
            if n == 1024:
                nngp, ntk = fn(x)
                saved[f"{name}_nngp"], saved[f"{name}_ntk"] = np.asarray(nngp), np.asarray(ntk)
                saved["x"] = np.asarray(x)
            print(json.dumps({"activation": name, "n": n, "seconds": seconds}), flush=True)
    np.savez(out, **saved)


if __name__ == "__main__":
    main(sys.argv[1])
