"""Empirical-NTK speed: ntkode against neural-tangents 0.6.5 and against this machine's GEMM rate.

Cases are those of `../shared/anchors/nt_bench.py` (same shapes, standard parameterisation,
no biases, float32). For each, ntkode's best and median of 5 steady-state calls (after one
warm-up) are printed for the **eager public call** `nk.ntk(model, x)` with
`implementation="auto"` (structured) and `"jacobian"` (the general path), and for the same
call under `eqx.filter_jit` (`jit`, what a user writes; it re-partitions the model on every
call) and under `jax.jit` of the model's arrays split once outside the timed calls
(`jax.jit`: the least dispatch there is; the eager call should cost no more than 10% over
it), and the microseconds an eager cache hit spends outside the kernel (split, key, lookup).

**Roofline.** Per case, the floating-point operations the structured path must do are
counted from the layer shapes (`structured_flops`: forward pass, backward pass for the
signals, local convolution Jacobians, Gram products / Jacobian contraction on the blocks it
computes), and the rate of one plain `jnp.dot` doing the same work with the kernel's output
shape is measured in the same run; the achieved fraction of that rate is printed, for the
whole call and for its two parts compiled and timed alone: the per-example features (forward,
backward signals, local convolution Jacobians: convolution-shaped on the CNN) and the
contraction (Gram products / Jacobian contraction: GEMM-shaped).

When the neural-tangents virtualenv exists (`$NT_PYTHON`, `../../ntvenv/bin/python` or
`~/.cache/ntvenv/bin/python`, built by `setup_ntvenv.sh`), `nt_bench.py` runs as a subprocess
in the same run, case by case right after ntkode's (so the two never compete for cores and
see about the same load), its times (best of 5) are parsed, and the ratios

- `auto / NT best`: ntkode's default (eager, best of 5) against neural-tangents' fastest
  implementation (jitted, best of 5),
- `jacobian / NT jac`: ntkode's general path against neural-tangents' Jacobian contraction,

are printed (< 1 means ntkode is faster), with the load average beside every figure.
Machines are noisy: compare ratios from one run.

    python benchmarks/ntk.py [--quick] [--out results.json] [--cases cnn] [--nt-impls 1,3]
        [--large 20000]

`--large N` instead measures one blocked train kernel of the **sine** MLP (8→512→512→1)
with N examples, in a subprocess, and prints its time and peak resident memory.
"""

import argparse
import ast
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import ntkode as nk  # noqa: E402
from ntkode._core._model import partition  # noqa: E402
from ntkode._ntk._api import engine_implementation  # noqa: E402
from ntkode._ntk._base import _MIN_SYMMETRIC_BLOCK, symmetric_contract  # noqa: E402
from ntkode._ntk._dispatch import _BY_ID, _CACHE, _key, _split  # noqa: E402

NT_PYTHON = next(
    (
        p
        for p in (
            os.environ.get("NT_PYTHON", ""),
            os.path.normpath(os.path.join(HERE, "..", "..", "ntvenv", "bin", "python")),
            os.path.expanduser("~/.cache/ntvenv/bin/python"),
        )
        if p and os.path.exists(p)
    ),
    os.path.expanduser("~/.cache/ntvenv/bin/python"),
)
NT_BENCH = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "anchors", "nt_bench.py"))


def timings(fn, *args, k=5):
    """`(best, median)` seconds of `k` steady-state calls, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(k):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def load() -> float:
    """The one-minute load average (the machine may be shared)."""
    return round(os.getloadavg()[0], 2)


def mlp(d, width, depth):
    return lambda key: eqx.nn.MLP(
        d, 1, width, depth, activation=jax.nn.relu, use_bias=False, use_final_bias=False, key=key
    )


def cnn(ch):
    def build(key):
        k1, k2, k3 = jax.random.split(key, 3)
        conv = lambda cin, k: eqx.nn.Conv2d(cin, ch, 3, padding="SAME", use_bias=False, key=k)
        return eqx.nn.Sequential(
            [
                conv(1, k1),
                eqx.nn.Lambda(jax.nn.relu),
                conv(ch, k2),
                eqx.nn.Lambda(jax.nn.relu),
                eqx.nn.Lambda(jnp.ravel),
                eqx.nn.Linear(ch * 16 * 16, 1, use_bias=False, key=k3),
            ]
        )

    return build


def ntkode_mlp(d, width, depth):
    # ntkode's own NTK-parameterised MLP (biases on): its layers are tapped as AbstractDense.
    return lambda key: nk.MLP(d, 1, width, depth, "relu", key=key)


# Layer shapes for the FLOP count: ("dense", inputs, outputs) or
# ("conv", in channels, out channels, kernel offsets, output positions).
def dense_layers(d, width, depth, bias=False):
    dims = [d] + [width] * depth + [1]
    return [("dense", a + int(bias), b) for a, b in zip(dims[:-1], dims[1:], strict=True)]


CNN_LAYERS = [("conv", 1, 32, 9, 256), ("conv", 32, 32, 9, 256), ("dense", 32 * 256, 1)]

# (name as printed by nt_bench.py, input shape for equinox (CHW for images), model, ns, layers)
CASES = [
    ("mlp 8-512-512-1", (8,), mlp(8, 512, 2), [256, 1024], dense_layers(8, 512, 2)),
    ("mlp 784-1024x3-1", (784,), mlp(784, 1024, 3), [256], dense_layers(784, 1024, 3)),
    ("cnn 16x16x1 conv32x2 dense1", (1, 16, 16), cnn(32), [256], CNN_LAYERS),
]
# ntkode-only cases (no neural-tangents counterpart: their ratios print as "-").
OWN_CASES = [
    (
        "nk.MLP 8-512-512-1 ntk",
        (8,),
        ntkode_mlp(8, 512, 2),
        [256, 1024],
        dense_layers(8, 512, 2, bias=True),
    )
]


def symmetric_fraction(n: int) -> float:
    """Share of the `n²` kernel entries the unblocked `x2=None` path computes: with `m`
    row blocks (`ntkode/_ntk/_base.py`, `symmetric_contract`), `m(m+1)/2` of `m²` blocks."""
    m = min(4, n // _MIN_SYMMETRIC_BLOCK)
    return 1.0 if m < 2 else (m + 1) / (2 * m)


def structured_flops(layers, n: int, k: int = 1) -> dict:
    """Floating-point operations of `implementation="structured"` for the full `x2=None` kernel.

    Per example: the forward pass (`2·in·out` per dense layer, `2·in·out·offsets·positions`
    per convolution), the backward pass for the `k` output signals (the same per layer above
    the first, once per output), and per convolution its local weight Jacobian (one GEMM of
    `k·out × positions` by `positions × in·offsets`). Per pair of examples (times the share of
    blocks computed): the Gram products of dense layers (`2·in` for the inputs,
    `2·k²·out` for the signals) and the Jacobian contraction of convolutions (`2·k²·params`).
    """
    forward = backward = local = pair = 0
    for i, layer in enumerate(layers):
        if layer[0] == "dense":
            _, a, b = layer
            mults = a * b
            pair += 2 * a + 2 * k * k * b
        else:
            _, a, b, offsets, positions = layer
            mults = a * b * offsets * positions
            local += 2 * k * mults
            pair += 2 * k * k * a * b * offsets
        forward += 2 * mults
        backward += 2 * k * mults if i > 0 else 0
    frac = symmetric_fraction(n)
    parts = {
        "forward": n * forward,
        "backward_signals": n * backward,
        "local_jacobians": n * local,
        "contraction": int(frac * n * n * pair),
    }
    parts["total"] = sum(parts.values())
    return parts


def gemm_rate(n: int, flops: float, dtype=jnp.float32) -> dict:
    """Measured rate of one plain `jnp.dot` `(n, K) @ (K, n)` doing about `flops` operations.

    `K = flops / 2n²`, clipped to `[16, 16384]`: the same work as the case, as one GEMM with
    the kernel's output shape. Best of 5 compiled calls.
    """
    inner = int(min(max(round(flops / (2 * n * n)), 16), 16384))
    a = jax.random.normal(jax.random.key(3), (n, inner), dtype)
    b = jax.random.normal(jax.random.key(4), (inner, n), dtype)
    dot = jax.jit(jnp.dot)
    t, _ = timings(dot, a, b)
    return {"shape": [n, inner, n], "seconds": t, "gflops": 2 * n * n * inner / t / 1e9}


def parts_rates(model, x, fl) -> dict:
    """The roofline per part: the per-example features (forward, backward signals, local
    convolution Jacobians: convolution-shaped on a CNN) and the contraction (Gram products /
    Jacobian contraction: GEMM-shaped), each compiled and timed alone (best of 5), with its
    counted FLOPs and the rate of a same-work `jnp.dot` measured beside it."""
    impl = engine_implementation("auto", False, "benchmarks/ntk.py")
    params, static = partition(model)
    features = jax.jit(lambda p, x: impl.features(p, static, x))
    contract = jax.jit(
        lambda p, f: symmetric_contract(lambda a, b: impl.contract(p, static, a, b, False), f)
    )
    f = jax.block_until_ready(features(params, x))
    out = {}
    for part, fn, args, flops in (
        ("features", features, (params, x), fl["total"] - fl["contraction"]),
        ("contraction", contract, (params, f), fl["contraction"]),
    ):
        seconds, _ = timings(fn, *args)
        rate = gemm_rate(x.shape[0], flops)
        achieved = flops / seconds / 1e9
        out[part] = {
            "flops": flops,
            "seconds": seconds,
            "achieved_gflops": achieved,
            "gemm": rate,
            "fraction_of_gemm": achieved / rate["gflops"],
        }
    return out


def eager_overhead(model, x, repeats=2000) -> dict:
    """Microseconds of what an eager cache hit does besides the kernel: for a model object
    seen before, the identity lookup; for a new object of a known structure, splitting it into
    array leaves and structure, building and hashing the cache key, the lookup."""
    fast = engine_implementation("auto", False, "benchmarks/ntk.py")
    start = time.perf_counter()
    for _ in range(repeats):
        arrays, structure = _split(model)
        _CACHE.get(_key(structure, fast, False, None, None, None))
    split = (time.perf_counter() - start) / repeats * 1e6
    start = time.perf_counter()
    for _ in range(repeats):
        seen = _BY_ID.get((id(model), id(fast), False, None, True))
        assert seen is not None and seen[0]() is model
    same = (time.perf_counter() - start) / repeats * 1e6
    return {"split_key_lookup_us": split, "identity_lookup_us": same}


def time_ntkode(quick, cases):
    rows = {}
    for name, shape, build, ns, layers in cases:
        model = build(jax.random.key(1))
        for n in [32] if quick else ns:
            x = jax.random.normal(jax.random.key(0), (n,) + shape)
            row = {"load_before": load()}
            for impl in ("auto", "jacobian"):
                row[impl], row[impl + "_median"] = timings(
                    lambda x, i=impl: nk.ntk(model, x, implementation=i), x
                )
            # The same public call under `eqx.filter_jit` (what a user writes; it re-partitions
            # the model and hashes its static part on every call), and under `jax.jit` of the
            # model's arrays split once outside the timed calls: the compiled kernel with the
            # least dispatch, which the eager call is measured against (target: within 10%).
            jitted = eqx.filter_jit(lambda m, x: nk.ntk(m, x))
            row["auto_jit"], row["auto_jit_median"] = timings(jitted, model, x)
            arrays, static = eqx.partition(model, eqx.is_array)
            compiled = jax.jit(lambda a, x: nk.ntk(eqx.combine(a, static), x))
            row["auto_compiled"], row["auto_compiled_median"] = timings(compiled, arrays, x)
            row.update(eager_overhead(model, x))
            fl = structured_flops(layers, n)
            rate = gemm_rate(n, fl["total"])
            row["flops"] = fl
            row["gemm"] = rate
            row["achieved_gflops"] = fl["total"] / row["auto"] / 1e9
            row["fraction_of_gemm"] = row["achieved_gflops"] / rate["gflops"]
            row["parts"] = parts_rates(model, x, fl)
            row["load_after"] = load()
            rows[(name, n)] = row
            print(
                f"ntkode  {name:30s} n={n:5d} auto={row['auto']:.5f}s "
                f"(median {row['auto_median']:.5f}) filter_jit={row['auto_jit']:.5f}s "
                f"jax.jit={row['auto_compiled']:.5f}s "
                f"eager/filter_jit={row['auto'] / row['auto_jit']:.2f} "
                f"eager/jax.jit={row['auto'] / row['auto_compiled']:.2f} "
                f"(outside the kernel: same model {row['identity_lookup_us']:.1f} us, new "
                f"object {row['split_key_lookup_us']:.0f} us) "
                f"jacobian={row['jacobian']:.5f}s | "
                f"{fl['total'] / 1e9:.3f} GFLOP, {row['achieved_gflops']:.1f} GFLOP/s = "
                f"{row['fraction_of_gemm']:.0%} of jnp.dot {rate['shape']} "
                f"({rate['gflops']:.1f} GFLOP/s) | load {row['load_before']}-{row['load_after']}",
                flush=True,
            )
            for part, r in row["parts"].items():
                print(
                    f"        {part:12s} {r['flops'] / 1e9:.3f} GFLOP in {r['seconds']:.5f}s = "
                    f"{r['achieved_gflops']:.1f} GFLOP/s = {r['fraction_of_gemm']:.0%} of "
                    f"jnp.dot {r['gemm']['shape']} ({r['gemm']['gflops']:.1f} GFLOP/s)",
                    flush=True,
                )
    return rows


def _nt_command(only, impls):
    """`nt_bench.py`'s source restricted to the cases named in `only` and to `impls`."""
    src = open(NT_BENCH).read()
    src = src.replace("os.path.dirname(os.path.abspath(__file__))", repr(os.path.dirname(NT_BENCH)))
    src = src.replace(
        "\nfor name, shape, build, ns in cases:",
        f"\ncases = [c for c in cases if any(s in c[0] for s in {only!r})]"
        "\nfor name, shape, build, ns in cases:",
        1,
    )
    src = src.replace("for impl in (1, 2, 3):", f"for impl in {tuple(impls)!r}:", 1)
    return [NT_PYTHON, "-c", src]


def time_nt(timeout, cases, only, impls=(1, 2, 3)):
    """Run nt_bench.py; return {(case, n): {1: s, 2: s, 3: s}} for the lines it printed."""
    if not (os.path.exists(NT_PYTHON) and os.path.exists(NT_BENCH)):
        print(f"neural-tangents venv or nt_bench.py not found ({NT_PYTHON}); no ratios.")
        return {}
    out = {}
    pattern = re.compile(r"^(.*?)\s+n=\s*(\d+) seconds (\{.*\})\s*$")
    proc = subprocess.Popen(
        _nt_command(only, impls),
        cwd=os.path.dirname(NT_BENCH),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    start = time.time()
    try:
        for line in proc.stdout:
            m = pattern.match(line.rstrip())
            if m:
                out[(m.group(1).strip(), int(m.group(2)))] = ast.literal_eval(m.group(3))
                print(f"NT      {line.rstrip()}", flush=True)
            if len(out) >= sum(len(c[3]) for c in cases) or time.time() - start > timeout:
                break  # the infinite-width lines that follow belong to another benchmark
    finally:
        proc.kill()
        proc.wait()
    return out


def large(n):
    """One blocked train kernel of the sine MLP in a fresh process: time and peak memory."""
    code = f"""
import os, time, resource, jax, equinox as eqx, ntkode as nk
data = nk.datasets.sine(n_train={n}, n_test=1, dim=8, key=jax.random.key(0))
model = eqx.nn.MLP(8, 1, 512, 2, activation=jax.nn.relu, key=jax.random.key(1))
t, c = time.perf_counter(), time.process_time()
k = jax.block_until_ready(nk.ntk(model, data.x_train, block_size=1000))
dt, dc = time.perf_counter() - t, time.process_time() - c
print("shape", k.shape, "dtype", k.dtype, "seconds", round(dt, 2), "cpu_seconds", round(dc, 2),
      "peak_rss_GB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
      "load", os.getloadavg())
"""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    print(res.stdout.strip() or res.stderr[-2000:])
    kernel_gb = n * n * 4 / 2**30
    print(
        f"(the float32 kernel itself is {kernel_gb:.2f} GB; children peak RSS "
        f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20:.3f} GB)"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n=32 only, no neural-tangents run")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--nt-timeout", type=float, default=3600.0)
    ap.add_argument(
        "--nt-impls",
        default="1,2,3",
        help="neural-tangents implementations to time (1 Jacobian, 2 NTK-vector products, "
        "3 structured); 'NT best' is the best of those timed",
    )
    ap.add_argument("--large", type=int, default=None, help="time a blocked n×n sine kernel")
    ap.add_argument(
        "--cases", nargs="+", default=None, help="only cases whose name contains one of these"
    )
    args = ap.parse_args()
    if args.large:
        large(args.large)
        return
    print(f"devices: {jax.devices()}  cores: {os.cpu_count()}", flush=True)
    chosen = lambda c: args.cases is None or any(s in c[0] for s in args.cases)
    cases = [c for c in CASES if chosen(c)]
    impls = [int(i) for i in args.nt_impls.split(",")]
    ours, theirs = {}, {}
    # Case by case, neural-tangents right after ntkode: on a shared machine whose load
    # changes by the minute, the two halves of a ratio then see about the same machine.
    for case in cases:
        ours.update(time_ntkode(args.quick, [case]))
        if not args.quick:
            theirs.update(time_nt(args.nt_timeout, [case], [case[0]], impls))
    ours.update(time_ntkode(args.quick, [c for c in OWN_CASES if chosen(c)]))
    print(
        f"\n{'case':30s} {'n':>5s} {'auto s':>9s} {'jit s':>9s} {'jac s':>9s} {'NT best s':>10s} "
        f"{'NT jac s':>9s} {'auto/NT best':>12s} {'jac/NT jac':>10s} {'eager/jit':>9s} "
        f"{'eager/jax.jit':>13s} {'GFLOP/s':>8s} {'of dot':>7s} {'feat of dot':>11s} "
        f"{'contr of dot':>12s}"
    )
    results = []
    for (name, n), row in ours.items():
        nt = theirs.get((name, n))
        nt_best = min(nt.values()) if nt else None
        r1 = f"{row['auto'] / nt_best:12.2f}" if nt else f"{'-':>12s}"
        r2 = f"{row['jacobian'] / nt[1]:10.2f}" if nt and 1 in nt else f"{'-':>10s}"
        print(
            f"{name:30s} {n:5d} {row['auto']:9.5f} {row['auto_jit']:9.5f} {row['jacobian']:9.5f} "
            f"{(nt_best or float('nan')):10.5f} {(nt or {}).get(1, float('nan')):9.5f} {r1} {r2} "
            f"{row['auto'] / row['auto_jit']:9.2f} {row['auto'] / row['auto_compiled']:13.2f} "
            f"{row['achieved_gflops']:8.1f} {row['fraction_of_gemm']:7.0%} "
            f"{row['parts']['features']['fraction_of_gemm']:11.0%} "
            f"{row['parts']['contraction']['fraction_of_gemm']:12.0%}"
        )
        results.append(
            {
                "case": name,
                "n": n,
                "ntkode": row,
                "neural_tangents": nt,
                "auto_over_nt_best": row["auto"] / nt_best if nt else None,
                "jacobian_over_nt_jacobian": row["jacobian"] / nt[1] if nt and 1 in nt else None,
            }
        )
    print(f"load average now {os.getloadavg()}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"devices": str(jax.devices()), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
