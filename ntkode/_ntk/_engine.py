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

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._base import AbstractNTKImplementation


def _pad_rows(x: jax.Array, multiple: int) -> jax.Array:
    pad = (-x.shape[0]) % multiple
    if pad:  # repeat the first example: always a valid model input; rows are cut off later
        x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])])
    return x


def _size(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _starts(n: int, b: int) -> np.ndarray:
    """Starts of the blocks of `b` rows covering `[0, n)`; the last one ends at `n`.

    The last block may overlap the one before it (entries there are written twice, with the
    same values): no padded rows, so the output needs no cutting, which would copy it.
    """
    return np.minimum(np.arange(-(-n // b)) * b, n - b).astype(np.int32)


def _rows(tree: Any, start: Any, size: int) -> Any:
    return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), tree)


def _swap(k: jax.Array) -> jax.Array:
    r"""The kernel block of the swapped pair: $\Theta_{ji,ba} = \Theta_{ij,ab}$."""
    return jnp.swapaxes(jnp.swapaxes(k, 0, 1), 2, 3) if k.ndim == 4 else k.T


def _put(out: jax.Array, k: jax.Array, i: Any, j: Any) -> jax.Array:
    at = (i, j) + (jnp.zeros_like(i),) * (k.ndim - 2)
    return jax.lax.dynamic_update_slice(out, k.astype(out.dtype), at)


def _all_features(feat, x: jax.Array, b: int) -> Any:
    """Features of every example of `x`, computed `b` examples at a time."""
    blocks = _pad_rows(x, b).reshape((-1, b) + x.shape[1:])
    f = jax.lax.map(feat, blocks)
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[: x.shape[0]], f)


def blocked_kernel(
    impl: AbstractNTKImplementation,
    params: Any,
    static: Any,
    x1: jax.Array,
    x2: jax.Array | None,
    trace: bool,
    block: int | None,
) -> jax.Array:
    """The kernel between `x1` and `x2` (or `x1`), `block` rows at a time (inside `jit`).

    With `x2=None` only the blocks on and above the diagonal are computed (`m(m+1)/2` of
    `m²`), each written together with its mirror image.
    """
    n1 = x1.shape[0]
    if block is None or (block >= n1 and (x2 is None or block >= x2.shape[0])):
        return impl.kernel(params, static, x1, x2, trace)
    symmetric = x2 is None
    xs2 = x1 if x2 is None else x2
    n2 = xs2.shape[0]
    b1, b2 = min(block, n1), min(block, n2)
    s1, s2 = _starts(n1, b1), _starts(n2, b2)
    feat = lambda x: impl.features(params, static, x)
    contract = lambda f1, f2: impl.contract(params, static, f1, f2, trace)
    f_shape = jax.eval_shape(feat, xs2[:b2])
    keep = _size(f_shape) // b2 * n2 <= block * max(_size(params), 1)
    k_shape = jax.eval_shape(lambda a, c: contract(feat(a), feat(c)), x1[:b1], xs2[:b2])
    out = jnp.zeros((n1, n2) + k_shape.shape[2:], k_shape.dtype)
    f2 = _all_features(feat, xs2, b2) if keep else None
    if keep and not symmetric:
        # Small column features: each row block against all columns in one contraction.
        def row(out, s):
            rows = jax.lax.dynamic_slice_in_dim(x1, s, b1)
            return _put(out, contract(feat(rows), f2), s, jnp.zeros_like(s)), None

        return jax.lax.scan(row, out, jnp.asarray(s1))[0]
    # Block pairs in row-major order (symmetric: j >= i only); a row's features are computed
    # when the row starts (or sliced from the kept ones) and carried along it.
    m1, m2 = len(s1), len(s2)
    pairs = [(i, j) for i in range(m1) for j in range(i if symmetric else 0, m2)]
    ii, jj = (np.asarray(v, np.int32) for v in zip(*pairs, strict=True))
    fresh = jj == (ii if symmetric else 0)

    def block_features(x, f, s, b):
        return _rows(f, s, b) if f is not None else feat(jax.lax.dynamic_slice_in_dim(x, s, b))

    row0 = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(feat, x1[:b1]))
    s1, s2 = jnp.asarray(s1), jnp.asarray(s2)

    def step(carry, pair):
        out, fi = carry
        i, j, new_row = pair
        fi = jax.lax.cond(new_row, lambda: block_features(x1, f2, s1[i], b1), lambda: fi)
        k = contract(fi, block_features(xs2, f2, s2[j], b2))
        if symmetric:
            # Diagonal blocks made exactly symmetric, so the whole kernel is.
            k = jnp.where(i == j, 0.5 * (k + _swap(k)), k)
            out = _put(_put(out, k, s1[i], s2[j]), _swap(k), s2[j], s1[i])
        else:
            out = _put(out, k, s1[i], s2[j])
        return (out, fi), None

    pairs = tuple(jnp.asarray(a) for a in (ii, jj, fresh))
    return jax.lax.scan(step, (out, row0), pairs)[0][0]


def sharded_kernel(impl, params, static, x1, x2, trace, block, devices):
    """The kernel with rows of `x1` spread over `devices` (inside `jit`)."""
    mesh = Mesh(np.asarray(devices), ("rows",))
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


def replicate(tree: Any, devices: Sequence[Any]) -> Any:
    """Every array of `tree` as a global array replicated over `devices` (the same on every
    host): the inputs of the sharded kernel."""
    sharding = NamedSharding(Mesh(np.asarray(devices), ("rows",)), P())
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
