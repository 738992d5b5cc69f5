r"""Blocking and multi-device sharding, shared by every implementation.

**Blocking.** With `block_size = b`, rows of the kernel are computed `b` examples at a time
(`lax.map`, so one block is live at a time). The features of the columns are computed once,
blockwise, and kept when they are small (at most `b × P` numbers in all, e.g. the
activations and signals of the structured path); otherwise they are recomputed per row block.
Peak memory is `O(b × P + n1·n2)`: one block of per-example features plus the output.

**Devices.** Row blocks are spread over devices with `jax.shard_map` on a one-axis
`jax.sharding.Mesh`: each device gets a contiguous slice of `x1` rows (padded to a multiple of
the device count), the parameters and `x2` are replicated, and the result is a global
`jax.Array`, sharded by rows when the device count divides the number of rows (else
replicated: XLA gathers the rows to cut off the padding). No `pmap`.

**Several processes.** The same code runs on several hosts (JAX's multi-controller model):
call `jax.distributed.initialize()` at the start of every process, run the same script on
each, and pass `devices="global"` (every process's devices, `jax.devices()`). Inputs and
weights must be the same on every process; they are placed as replicated global arrays
(`jax.make_array_from_process_local_data`), the collectives are JAX's own (gloo on CPU, NCCL
on GPU), and the kernel comes back as a global array whose rows live on the processes that
computed them. Computations on it (a frozen-kernel solve) run on all processes alike; gather
it with `jax.experimental.multihost_utils.process_allgather` where one process needs all of
it (Bradbury et al., JAX; the multi-process guide of its documentation).
"""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._base import AbstractNTKImplementation
from ._validate import check_model_inputs


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    pad = (-x.shape[0]) % multiple
    if pad:  # repeat the first example: always a valid model input; rows are cut off later
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
    return x


def _size(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def blocked_kernel(
    impl: AbstractNTKImplementation,
    params: Any,
    static: Any,
    x1: jax.Array,
    x2: jax.Array | None,
    trace: bool,
    block: int | None,
) -> jax.Array:
    """The kernel between `x1` and `x2` (or `x1`), `block` rows at a time (inside `jit`)."""
    n1 = x1.shape[0]
    if block is None or (block >= n1 and (x2 is None or block >= x2.shape[0])):
        return impl.kernel(params, static, x1, x2, trace)
    xs2 = x1 if x2 is None else x2
    n2 = xs2.shape[0]
    b1, b2 = min(block, n1), min(block, n2)
    rows = _pad_rows(x1, b1).reshape((-1, b1) + x1.shape[1:])
    cols = _pad_rows(xs2, b2).reshape((-1, b2) + xs2.shape[1:])
    feat = lambda x: impl.features(params, static, x)
    per_example = _size(jax.eval_shape(feat, cols[0])) // b2
    keep_columns = per_example * n2 <= block * max(_size(params), 1)
    if keep_columns:
        f2 = jax.lax.map(feat, cols)
        f2 = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), f2)

        def row(xb):
            return impl.contract(params, static, feat(xb), f2, trace)
    else:

        def row(xb):
            f1 = feat(xb)
            out = jax.lax.map(lambda xc: impl.contract(params, static, f1, feat(xc), trace), cols)
            out = jnp.moveaxis(out, 0, 1)  # (b1, nb2, b2, ...)
            return out.reshape((b1, -1) + out.shape[3:])

    out = jax.lax.map(row, rows)
    out = out.reshape((-1,) + out.shape[2:])
    return out[:n1, :n2]


# Model/input compatibility is checked while tracing (a cache hit skips it for free).
@eqx.filter_jit
def _single(impl, params, static, x1, x2, trace, block):
    check_model_inputs(eqx.combine(params, static), x1)
    return blocked_kernel(impl, params, static, x1, x2, trace, block)


@eqx.filter_jit
def _sharded(impl, params, static, x1, x2, trace, block, mesh):
    check_model_inputs(eqx.combine(params, static), x1)
    n1 = x1.shape[0]
    x1p = _pad_rows(x1, mesh.size)
    xs2 = x1 if x2 is None else x2

    def local(p, xa, xb):
        return blocked_kernel(impl, p, static, xa, xb, trace, block)

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P("rows"), P()), out_specs=P("rows"), check_vma=False
    )
    return fn(params, x1p, xs2)[:n1]


def resolve_devices(devices: Any) -> list[Any] | None:
    """`None`, `"local"`, `"global"` or a sequence of devices, as a list of devices (or None)."""
    if devices is None:
        return None
    if isinstance(devices, str):
        if devices == "local":
            return list(jax.local_devices())
        if devices == "global":
            if not jax.distributed.is_initialized():
                raise RuntimeError(
                    "`devices='global'` spreads the kernel over the devices of every process, "
                    "but jax.distributed is not initialised in this process. Call "
                    "`jax.distributed.initialize(coordinator_address, num_processes, "
                    "process_id)` at the start of every process, before any other JAX call "
                    "(on SLURM or Kubernetes, with no arguments), and run the same script on "
                    "each; or pass devices='local' for this process's own devices."
                )
            return list(jax.devices())
        raise ValueError(
            f"`devices` must be 'local', 'global', a sequence of jax devices or None, got "
            f"{devices!r}."
        )
    devices = list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise TypeError(
            "`devices` must be a non-empty sequence of jax devices (e.g. jax.devices()), "
            f"'local', 'global' or None, got {devices!r}."
        )
    return devices


def _replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array of `tree` as a global array replicated over `mesh` (the same on every host)."""
    sharding = NamedSharding(mesh, P())
    several = jax.process_count() > 1

    def put(a):
        if not isinstance(a, jax.Array | np.ndarray):
            return a
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            return a  # already global (e.g. computed under this mesh)
        if several:  # each process holds the whole array: its slices fill its own devices
            return jax.make_array_from_process_local_data(sharding, np.asarray(a), a.shape)
        return jax.device_put(a, sharding)

    return jax.tree.map(put, tree)


def compute_kernel(
    impl: AbstractNTKImplementation,
    params: Any,
    static: Any,
    x1: jax.Array,
    x2: jax.Array | None,
    trace: bool,
    block: int | None,
    devices: Sequence[Any] | None,
) -> jax.Array:
    """Dispatch to one device or to a row-sharded computation over `devices`."""
    if devices is None or len(devices) <= 1:
        return _single(impl, params, static, x1, x2, trace, block)
    mesh = Mesh(np.asarray(devices), ("rows",))
    params, static, x1, x2 = _replicate((params, static, x1, x2), mesh)
    return _sharded(impl, params, static, x1, x2, trace, block, mesh)
