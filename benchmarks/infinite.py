"""Infinite-width NNGP + NTK: ntkode vs neural-tangents, same cases, same run.

The infinite-width rows of `../shared/anchors/nt_bench.py`: ReLU and Erf, depth 3,
`Dense(512, W_std=sqrt(2), b_std=0.1)` hidden layers, `Dense(1, W_std=1, b_std=0.1)` readout
(NTK parameterisation), n = 1024 and 4096 inputs `normal(PRNGKey(2), (n, 8))`, float32, both
kernels (`nngp`, `ntk`) of the n×n training set; best of 3 calls after a compiled warm-up.
When `~/.cache/ntvenv/bin/python` exists, neural-tangents runs in a subprocess
(`_nt_infinite.py`) first, then ntkode; the script prints both times, the ratio
ntkode/neural-tangents (target ≤ 1.0) and the largest relative difference between the two
libraries' kernels at n = 1024.

Run: `PYTHONPATH=. python benchmarks/infinite.py`
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

import ntkode as nk

NT_PYTHON = os.path.expanduser("~/.cache/ntvenv/bin/python")
HERE = os.path.dirname(os.path.abspath(__file__))


def best(fn, *a, k=3):
    jax.block_until_ready(fn(*a))
    ts = []
    for _ in range(k):
        t = time.perf_counter()
        jax.block_until_ready(fn(*a))
        ts.append(time.perf_counter() - t)
    return min(ts)


def run_nt():
    if not os.path.exists(NT_PYTHON):
        print(f"neural-tangents venv not found ({NT_PYTHON}): ntkode times only.")
        return {}, None
    out = os.path.join(tempfile.mkdtemp(), "nt.npz")
    proc = subprocess.run(
        [NT_PYTHON, os.path.join(HERE, "_nt_infinite.py"), out],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if proc.returncode != 0:
        print("neural-tangents run failed:\n" + proc.stderr[-2000:])
        return {}, None
    times = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            times[(r["activation"], r["n"])] = r["seconds"]
    return times, np.load(out)


def main():
    nt_times, nt_kernels = run_nt()
    print(f"{'case':28s} {'n':>5s} {'ntkode s':>10s} {'NT s':>10s} {'ratio':>7s}")
    for act in ("relu", "erf"):
        spec = nk.InfiniteMLP(3, act, W_std=2**0.5, b_std=0.1, out_W_std=1.0, out_b_std=0.1)
        for n in (1024, 4096):
            x = jax.random.normal(jax.random.PRNGKey(2), (n, 8))  # float32, as NT's run
            ours = best(spec, x)
            theirs = nt_times.get((act, n))
            ratio = f"{ours / theirs:7.2f}" if theirs else "    n/a"
            nt_s = f"{theirs:10.5f}" if theirs else "       n/a"
            print(f"infinite {act:5s} depth 3 {'':9s} {n:5d} {ours:10.5f} {nt_s} {ratio}")
            if n == 1024 and nt_kernels is not None:
                k = spec(nt_kernels["x"])
                for name in ("nngp", "ntk"):
                    ref = nt_kernels[f"{act}_{name}"]
                    diff = np.abs(np.asarray(getattr(k, name)) - ref).max() / np.abs(ref).max()
                    print(f"  {name} max |ntkode - NT| / max |NT| = {diff:.2e} (float32)")


if __name__ == "__main__":
    sys.exit(main())
