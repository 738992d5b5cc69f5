"""Several processes, one kernel: the NTK and a frozen-kernel solve on `jax.distributed`.

Every process runs this same script. Kernel row blocks are spread over the devices of all
processes with `jax.sharding`; the kernel is a global array, and the frozen-kernel solve built
on it runs on every process alike (JAX's multi-controller model, no message passing of ours).

On several hosts (one process per host, all its GPUs), run on every host:

    python examples/multiprocess.py --coordinator HOST0:1234 --num-processes 4 --process-id I

(on SLURM or Kubernetes, `--cluster` lets `jax.distributed.initialize()` find the
coordinator, the process count and this process's id by itself).
On one machine, with no arguments, it launches two local CPU processes of two simulated
devices each and checks them against a single-process run (about a minute on 2 CPU cores):

    python examples/multiprocess.py            # = --local 2 --cpu-devices 2
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    who = p.add_argument_group("processes (default: --local 2)")
    who.add_argument("--local", type=int, metavar="N", help="launch N processes on this machine")
    who.add_argument("--coordinator", help="host:port of process 0")
    who.add_argument("--num-processes", type=int)
    who.add_argument("--process-id", type=int)
    who.add_argument("--cluster", action="store_true", help="SLURM/Kubernetes: auto-detect")
    who.add_argument("--cpu-devices", type=int, help="simulated CPU devices per process")
    what = p.add_argument_group("problem")
    what.add_argument("--n-train", type=int, default=256)
    what.add_argument("--n-test", type=int, default=64)
    what.add_argument("--dim", type=int, default=8)
    what.add_argument("--width", type=int, default=256)
    what.add_argument("--t-end", type=float, default=20.0)
    what.add_argument("--block-size", type=int, default=None)
    what.add_argument("--repeat", type=int, default=3, help="timed kernel computations")
    what.add_argument("--out", help="process 0 writes the gathered results here (.npz)")
    what.add_argument("--no-check", action="store_true", help="skip the one-process check")
    return p


def problem(n_train: int, n_test: int, dim: int, width: int, dtype=None):
    """The data and network, built identically on every process (same keys; float32)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    import ntkode as nk

    dtype = jnp.float32 if dtype is None else dtype
    data = nk.datasets.sine(n_train, n_test, dim, key=jax.random.key(0), dtype=dtype)
    model = eqx.nn.MLP(dim, 1, width, 2, activation=jax.nn.relu, key=jax.random.key(1), dtype=dtype)
    return model, data


def worker(args: argparse.Namespace) -> None:
    if args.cpu_devices:  # before JAX starts
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.cpu_devices}"
    import jax

    if args.cluster:
        jax.distributed.initialize()
    else:
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import multihost_utils

    import ntkode as nk

    model, data = problem(args.n_train, args.n_test, args.dim, args.width)
    timings = []
    for _ in range(args.repeat + 1):  # the first call compiles
        start = time.perf_counter()
        k = jax.block_until_ready(
            nk.ntk(model, data.x_train, devices="global", block_size=args.block_size)
        )
        timings.append(time.perf_counter() - start)
    frozen = nk.KernelFlowProblem.from_model(
        model, data, tspan=(0.0, args.t_end), devices="global", block_size=args.block_size
    )
    ts = jnp.linspace(0.0, args.t_end, 11)
    solve_seconds = []
    for _ in range(2):  # the first call compiles
        start = time.perf_counter()
        sol = jax.block_until_ready(nk.solve(frozen, saveat=ts))
        solve_seconds.append(time.perf_counter() - start)
    # Global arrays: every process holds its rows. Gather what process 0 reports.
    gathered = {
        name: np.asarray(multihost_utils.process_allgather(a, tiled=True))
        for name, a in (
            ("kernel", k),
            ("kernel_test", frozen.kernel_test),
            ("train", sol.train),
            ("test", sol.test),
        )
    }
    if jax.process_index() == 0:
        record = {
            "processes": jax.process_count(),
            "devices": len(jax.devices()),
            "kernel_rows_per_device": -(-args.n_train // len(jax.devices())),
            "kernel_sharding": (
                str(k.sharding.spec)
                if isinstance(k.sharding, jax.sharding.NamedSharding)
                else type(k.sharding).__name__  # one device: a single-device array
            ),
            "kernel_seconds_first": timings[0],
            "kernel_seconds": float(np.median(timings[1:])) if args.repeat else None,
            "solve_seconds_first": solve_seconds[0],
            "solve_seconds": solve_seconds[1],
            "final_train_loss": float(sol.train_loss[-1]),
        }
        print("result:", json.dumps(record), flush=True)
        if args.out:
            np.savez(args.out, t=np.asarray(ts), **gathered)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace, argv: list[str]) -> int:
    """Start `args.local` processes of this script on localhost; wait for all of them."""
    port = _free_port()
    base = [sys.executable, os.path.abspath(__file__), *argv]
    base += ["--coordinator", f"localhost:{port}", "--num-processes", str(args.local)]
    base += ["--cpu-devices", str(args.cpu_devices or 2)]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [
        subprocess.Popen(
            [*base, "--process-id", str(i)],
            env=env,
            stdout=None if i == 0 else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(args.local)
    ]
    codes, errors = [], []
    for proc in procs:
        _, err = proc.communicate()
        codes.append(proc.returncode)
        errors.append(err)
    for i, (code, err) in enumerate(zip(codes, errors, strict=True)):
        if code:
            print(f"process {i} exited with {code}:\n{err[-3000:]}", file=sys.stderr)
    return max(codes, key=abs)


def check(args: argparse.Namespace) -> None:
    """The multi-process results against the same computation in this one process."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import ntkode as nk

    model, data = problem(args.n_train, args.n_test, args.dim, args.width)
    got = np.load(args.out)
    frozen = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, args.t_end))
    sol = nk.solve(frozen, saveat=jnp.asarray(got["t"]))
    ref = {"kernel": nk.ntk(model, data.x_train), "kernel_test": frozen.kernel_test}
    ref.update(train=sol.train, test=sol.test)
    for name, value in ref.items():
        value = np.asarray(jax.device_get(value))
        err = float(np.max(np.abs(got[name] - value)) / np.max(np.abs(value)))
        print(f"{name:12s} max relative difference to one process: {err:.2e}")
        # Kernels agree to float32 round-off; the solve amplifies a kernel difference δΘ by
        # up to η·t·‖δΘ‖/n (its sensitivity), hence the looser bound on outputs.
        assert err < (1e-6 if name.startswith("kernel") else 1e-4), (name, err)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    if args.cluster or args.process_id is not None:
        worker(args)
        return 0
    # Local mode: launch the processes, then check them against this one process.
    args.local = args.local or 2
    if not args.out:
        import tempfile

        args.out = os.path.join(tempfile.mkdtemp(), "multiprocess.npz")
        argv = [*argv, "--out", args.out]
    code = launch(args, argv)
    if code == 0 and not args.no_check:
        check(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
