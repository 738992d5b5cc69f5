"""Several processes on `jax.distributed`: the kernel and a frozen-kernel solve equal one process.

Two processes on localhost, two simulated CPU devices each (JAX's gloo collectives), run
`examples/multiprocess.py`; this process computes the same things alone, in float32.
Evidence: the kernels agree to float32 round-off (1e-6); the frozen-kernel solve on the
multi-process kernel equals the one-process solve on that same kernel (1e-6); and the
end-to-end outputs differ by no more than the solve's first-order sensitivity to the kernel
difference, $\\|\\delta u(t)\\| \\le \\eta t \\|\\delta\\Theta\\|_2 \\|r_0\\| / n$.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkode as nk

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "multiprocess.py"
SIZES = dict(n_train=32, n_test=12, dim=4, width=32)
T_END = 5.0


def _example():
    spec = importlib.util.spec_from_file_location("multiprocess_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_processes_equal_one_process(tmp_path):
    out = tmp_path / "two.npz"
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in SIZES.items()]
    argv += ["--local", "2", "--cpu-devices", "2", "--t-end", str(T_END), "--repeat", "0"]
    argv += ["--out", str(out), "--no-check"]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [s for s in proc.stdout.splitlines() if s.startswith("result:")]
    record = json.loads(line.removeprefix("result:"))
    assert record["processes"] == 2 and record["devices"] == 4
    assert record["kernel_sharding"] == "P('rows',)"  # 32 rows over 4 devices: still sharded
    got = np.load(out)

    model, data = _example().problem(**SIZES, dtype=jnp.float32)
    frozen = nk.KernelFlowProblem.from_model(model, data, tspan=(0.0, T_END))
    ts = jnp.asarray(got["t"], jnp.float32)
    one = nk.solve(frozen, saveat=ts)
    kernel = np.asarray(nk.ntk(model, data.x_train))
    assert kernel.dtype == np.float32
    rel = lambda a, b: float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    # The kernels: float32 round-off only (the blocks are summed in another order).
    assert rel(got["kernel"], kernel) < 1e-6
    assert rel(got["kernel_test"], np.asarray(frozen.kernel_test)) < 1e-6

    # The distributed solve, isolated: the same kernel solved in this one process.
    same = nk.KernelFlowProblem(
        jnp.asarray(got["kernel"]),
        data,
        tspan=(0.0, T_END),
        kernel_test=jnp.asarray(got["kernel_test"]),
        u0_train=frozen.u0_train,
        u0_test=frozen.u0_test,
    )
    alone = nk.solve(same, saveat=ts)
    assert rel(got["train"], np.asarray(alone.train)) < 1e-6
    assert rel(got["test"], np.asarray(alone.test)) < 1e-6

    # End to end: within the first-order sensitivity of the flow to the kernel difference.
    n = data.n_train
    d_kernel = np.linalg.norm(got["kernel"][:, :, 0, 0] - kernel[:, :, 0, 0], 2)
    r0 = float(np.linalg.norm(np.asarray(frozen.u0_train - data.y_train)))
    bound = T_END * d_kernel / n * r0 + 1e-6 * r0
    diff = np.linalg.norm(got["train"] - np.asarray(one.train), axis=(1, 2))
    assert float(np.max(diff)) <= 2 * bound, (float(np.max(diff)), bound)


def test_global_devices_need_jax_distributed():
    model = eqx.nn.MLP(2, 1, 4, 1, key=jax.random.key(0))
    x = jnp.ones((3, 2))
    assert not jax.distributed.is_initialized()
    with pytest.raises(RuntimeError, match=r"jax.distributed is not initialised.*initialize"):
        nk.ntk(model, x, devices="global")
    with pytest.raises(RuntimeError, match="devices='global'"):
        nk.KernelFlowProblem.from_model(model, _data(), devices="global")
    with pytest.raises(ValueError, match="'local', 'global'"):
        nk.ntk(model, x, devices="all")
    # "local" is this process's devices: one CPU device here, the unsharded path.
    np.testing.assert_allclose(nk.ntk(model, x, devices="local"), nk.ntk(model, x))


def _data():
    x = jnp.ones((3, 2))
    return nk.Dataset(x, jnp.zeros((3, 1)), x, jnp.zeros((3, 1)))
