r"""Compiled kernels cached by structure, so that an eager `ntk(model, x)` costs what `jit` does.

An eager call pays, besides the kernel itself, for splitting the model into arrays and
structure, checking the arguments, and `eqx.filter_jit`'s own flattening and hashing: about
3 ms at n = 256 on two cores, where the kernel of the **sine** MLP takes 7 ms. Here the model
is flattened once per call (`jax.tree_util.tree_flatten`), its non-array leaves and tree
structure form the key of a small cache of `jax.jit` functions, and a hit calls the compiled
function on the array leaves directly: `jax.jit`'s C++ dispatch re-traces only when shapes or
dtypes change. A miss, or any argument that is not plainly valid (not an array, not hashable,
a bad `block_size`), takes the validating path of [`ntkode.ntk`][], which then fills the
cache.

Flattening and hashing still cost about 50–100 µs per call (an `eqx.nn.MLP`: its tree, and
the hash of the implementation module and the tree structure in the key). A model passed
again as the same object skips both: the last few models seen are remembered by identity
(held weakly, so a collected model's id reused by a new object never matches), with their
array leaves and compiled function. Equinox modules are immutable, so the same object has
the same leaves.
"""

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import equinox as eqx
import jax
import numpy as np

from .._core._model import partition
from ._base import AbstractNTKImplementation
from ._engine import blocked_kernel, sharded_kernel
from ._validate import check_model_inputs

# Compiled functions kept; each holds only static leaves (functions, numbers), not weights.
_CACHE_SIZE = 64
_CACHE: "OrderedDict[Hashable, Callable]" = OrderedDict()
# By model identity: (id(model), id(impl), trace, block, x2 given) -> (weak ref to the model,
# its array leaves, the compiled function). A few entries: it serves repeated calls.
_BY_ID: "OrderedDict[tuple, tuple[weakref.ref, list, Callable]]" = OrderedDict()
_BY_ID_SIZE = 8


def _remember(model, impl, trace, block, x2, arrays, fn) -> None:
    if any(isinstance(a, jax.core.Tracer) for a in arrays):
        return  # inside a trace: nothing to gain, and tracers must not outlive it
    key = (id(model), id(impl), trace, block, x2 is None)

    def forget(ref, key=key):
        if _BY_ID.get(key, (None,))[0] is ref:
            del _BY_ID[key]

    try:
        ref = weakref.ref(model, forget)
    except TypeError:  # not weakly referenceable (a plain function, a tuple): not remembered
        return
    _BY_ID[key] = (ref, arrays, fn)
    while len(_BY_ID) > _BY_ID_SIZE:
        _BY_ID.popitem(last=False)


def _split(model: Any) -> tuple[list, tuple]:
    """Array leaves of `model`, and what else identifies it: tree structure, other leaves."""
    leaves, treedef = jax.tree_util.tree_flatten(model)
    arrays, others, mask = [], [], []
    for leaf in leaves:
        if eqx.is_array(leaf):
            arrays.append(leaf)
            mask.append(True)
        else:
            others.append(leaf)
            mask.append(False)
    return arrays, (treedef, tuple(others), tuple(mask))


def _build(structure: tuple, impl: AbstractNTKImplementation, trace, block, devices) -> Callable:
    treedef, others, mask = structure

    def run(arrays, x1, x2):
        it_a, it_o = iter(arrays), iter(others)
        model = jax.tree_util.tree_unflatten(
            treedef, [next(it_a) if m else next(it_o) for m in mask]
        )
        # Model/input compatibility is checked while tracing (a cache hit skips it for free).
        check_model_inputs(model, x1)
        params, static = partition(model)
        if devices is None:
            return blocked_kernel(impl, params, static, x1, x2, trace, block)
        return sharded_kernel(impl, params, static, x1, x2, trace, block, devices)

    return jax.jit(run)


def _key(structure, impl, trace, block, devices, x2) -> Hashable | None:
    key = (structure, impl, bool(trace), block, devices, x2 is None)
    try:
        hash(key)
    except TypeError:  # an unhashable leaf (a list inside a layer, an array-holding impl)
        return None
    return key


def _plain_array(x: Any) -> bool:
    """An array of numbers with at least one example: what needs no further checking."""
    if not isinstance(x, jax.Array | np.ndarray):
        return False
    return x.ndim >= 1 and x.shape[0] > 0 and np.issubdtype(x.dtype, np.number)


def cached_call(
    model: Any,
    x1: Any,
    x2: Any,
    impl: AbstractNTKImplementation,
    trace: bool,
    block: int | None,
    devices: tuple | None,
):
    """The kernel from a cached compiled function, or `None` on a miss or unusual arguments."""
    if not _plain_array(x1):
        return None
    if x2 is not None and not (_plain_array(x2) and x2.shape[1:] == x1.shape[1:]):
        return None
    if block is not None and not (type(block) is int and block > 0):
        return None
    trace = bool(trace)
    if devices is None:
        seen = _BY_ID.get((id(model), id(impl), trace, block, x2 is None))
        if seen is not None and seen[0]() is model:
            return seen[2](seen[1], x1, x2)
    arrays, structure = _split(model)
    key = _key(structure, impl, trace, block, devices, x2)
    fn = None if key is None else _CACHE.get(key)
    if fn is None:
        return None
    _CACHE.move_to_end(key)
    if devices is None:
        _remember(model, impl, trace, block, x2, arrays, fn)
    return fn(arrays, x1, x2)


def compiled_call(
    model: Any,
    x1: jax.Array,
    x2: jax.Array | None,
    impl: AbstractNTKImplementation,
    trace: bool,
    block: int | None,
    devices: tuple | None,
):
    """The kernel from the cached compiled function for these arguments, built if missing.

    For validated arguments ([`ntkode.ntk`][] checks them first).
    """
    arrays, structure = _split(model)
    key = _key(structure, impl, trace, block, devices, x2)
    if key is None:  # not cacheable: one compiled function per call (equinox semantics)
        return _uncached(model, x1, x2, impl, trace, block, devices)
    fn = _CACHE.get(key)
    if fn is None:
        fn = _CACHE[key] = _build(structure, impl, trace, block, devices)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    if devices is None:
        _remember(model, impl, bool(trace), block, x2, arrays, fn)
    return fn(arrays, x1, x2)


@eqx.filter_jit
def _uncached(model, x1, x2, impl, trace, block, devices):
    check_model_inputs(model, x1)
    params, static = partition(model)
    if devices is None:
        return blocked_kernel(impl, params, static, x1, x2, trace, block)
    return sharded_kernel(impl, params, static, x1, x2, trace, block, devices)


__all__ = ["cached_call", "compiled_call"]
