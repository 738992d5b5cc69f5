"""Several processes against one: the NTK and a frozen-kernel solve on `jax.distributed`.

Runs `examples/multiprocess.py` (the same script users run on several hosts) on this
machine in four layouts: 1 process × 1 device, 1 process × 2 devices, 2 processes × 1
device and 2 processes × 2 devices (CPU; simulated devices; gloo collectives between the
processes). Rounds interleave the layouts so that machine load affects them alike. Printed
per layout, medians over rounds: the wall time of the whole run (start-up, JAX's
`jax.distributed` handshake, compilation), the steady-state kernel time (median of
`--repeat` compiled calls of `ntk(..., devices="global")`) and the steady-state solve time,
with each one's ratio to 1 process × 1 device taken within the round, and the load average.

    python benchmarks/distributed.py [--rounds 3] [--n-train 1024] [--width 512] [--out f.json]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "examples", "multiprocess.py")
LAYOUTS = [(1, 1), (1, 2), (2, 1), (2, 2)]  # (processes, devices per process)


def one_run(processes, devices, args):
    cmd = [sys.executable, SCRIPT, "--local", str(processes), "--cpu-devices", str(devices)]
    cmd += ["--n-train", str(args.n_train), "--n-test", str(args.n_test)]
    cmd += ["--width", str(args.width), "--repeat", str(args.repeat), "--no-check"]
    cmd += ["--out", os.path.join(args.tmp, f"p{processes}d{devices}.npz")]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{processes}x{devices} failed:\n{proc.stderr[-3000:]}")
    (line,) = [s for s in proc.stdout.splitlines() if s.startswith("result:")]
    record = json.loads(line.removeprefix("result:"))
    record["wall_seconds"] = wall
    return record


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-train", type=int, default=1024)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out")
    args = p.parse_args()
    import tempfile

    args.tmp = tempfile.mkdtemp()
    keys = ("wall_seconds", "kernel_seconds", "solve_seconds")
    runs = {layout: [] for layout in LAYOUTS}
    loads = []
    for r in range(args.rounds):
        for layout in LAYOUTS:
            loads.append(os.getloadavg()[0])
            runs[layout].append(one_run(*layout, args))
            rec = runs[layout][-1]
            print(
                f"round {r} {layout[0]} proc x {layout[1]} dev: "
                + "  ".join(f"{k}={rec[k]:.3f}" for k in keys)
                + f"  load {loads[-1]:.1f}",
                flush=True,
            )
    print(f"\nsine MLP 8-{args.width}-{args.width}-1, n_train={args.n_train}, float32, CPU;")
    print(f"load average {min(loads):.1f}-{max(loads):.1f}; medians over {args.rounds} rounds")
    print("layout              wall s (ratio)     kernel s (ratio)    solve s (ratio)")
    table = {}
    base = runs[(1, 1)]
    for layout, recs in runs.items():
        cells, row = [], {}
        for k in keys:
            vals = np.asarray([rec[k] for rec in recs])
            ratio = float(np.median(vals / np.asarray([b[k] for b in base])))
            row[k], row[f"{k}_ratio"] = float(np.median(vals)), ratio
            cells.append(f"{np.median(vals):8.3f} ({ratio:4.2f}x)")
        table[f"{layout[0]}x{layout[1]}"] = row
        print(f"{layout[0]} proc x {layout[1]} dev     " + "  ".join(cells))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"layouts": table, "load": [min(loads), max(loads)]}, fh, indent=1)


if __name__ == "__main__":
    main()
