r"""Taps for flax models: the structured NTK's per-layer Gram products on linen and nnx layers.

The structured NTK ([`ntkode.StructuredNTK`][], `ntkode/_ntk/_structured.py`) needs, for every
dense layer $y = W a + b$, its input $a$ and the back-propagated signal $B = \partial f/\partial
y$ of each call; then $\Theta_{W,b} = (a\cdot a' + 1)(B\cdot B')$ and the layer's Jacobian is
never formed (Novak et al. 2022, "Fast finite width neural tangent kernel"). For equinox
models a layer is replaced by a tap in the model pytree; a flax model is reached through
flax's own mechanisms instead:

- **linen**: `flax.linen.intercept_methods` intercepts every module call. A first trace of
  one example lists the `nn.Dense` and `nn.Conv` calls and their scope paths; in the tapped
  model the interceptor answers those calls itself (`call_tap`: weights from the tap context,
  input recorded, zero perturbation added) and never lets the layer read its parameters, which
  are removed from the parameter dict.
- **nnx**: `nnx.iter_graph` lists the `nnx.Linear` and `nnx.Conv` nodes (no trace needed);
  the tapped model merges the module and replaces those nodes by taps before calling it.
  Layers or variables shared between places of the graph (`nnx.find_duplicates`) are left
  alone.

A dense layer is recognised only with flax's default dot product and dtype promotion and no
computation dtype (`dot_general`, `promote_dtype`, `dtype` unset), so that it computes exactly
$x W + b$; it then takes the Gram route (or the local-Jacobian route when it is called many
times per example, e.g. on a sequence). Convolutions, whatever their options, take the local
Jacobian route through flax's own forward pass. Code that reads a tapped layer's parameters
directly (weight tying) finds them missing, fails while tracing, and the model falls back to
Jacobian contraction, as equinox models do.
"""

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core._adapters import LinenApply, ModelAdapter, NNXApply
from ._layers import AbstractDense, dense_scales
from ._structured import call_tap


class _FlaxDense(AbstractDense):
    """A flax dense layer as the structured NTK sees it: `weight` is the kernel transposed."""

    weight: Any
    bias: Any

    @property
    def scales(self) -> tuple[float, float]:
        return 1.0, 1.0


class _FlaxLayer(eqx.Module):
    """A flax layer (a convolution) with its weights as fields, applied by flax itself."""

    weight: Any
    bias: Any
    forward: Callable[[Any, Any, Any], Any] = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        return self.forward(self.weight, self.bias, x)


def _dense_call(index: int, layer: _FlaxDense, x):
    """A dense layer on `(..., in)`: one tapped call per row (flax applies it to the last axis)."""
    if x.ndim == 1:
        return call_tap(index, layer, x)
    rows = x.reshape(-1, x.shape[-1])
    ys = [call_tap(index, layer, rows[r]) for r in range(rows.shape[0])]
    return jnp.stack(ys).reshape(x.shape[:-1] + ys[0].shape)


def _name(key) -> Any:
    """The plain name in one entry of a jax key path."""
    tu = jax.tree_util
    if isinstance(key, tu.DictKey | tu.FlattenedIndexKey):
        return key.key
    if isinstance(key, tu.GetAttrKey):
        return key.name
    if isinstance(key, tu.SequenceKey):
        return key.idx
    return str(key)


def _leaf_paths(tree, strip_value: bool) -> dict[tuple, int]:
    """Position of each leaf of `tree` by its path of names (nnx: without the final `.value`)."""
    out = {}
    for i, (path, _) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
        names = tuple(_name(k) for k in path)
        if strip_value and names and names[-1] == "value":
            names = names[:-1]
        out[names] = i
    return out


class _Found(NamedTuple):
    """One recognised layer: where it is, which parameter leaves it owns, its holed layer."""

    path: tuple
    kernel: int
    bias: int | None
    layer: Any  # _FlaxDense or _FlaxLayer, holed
    dense: bool


class _TappedAdapter(eqx.Module):
    """An adapted flax model whose recognised layers are taps (their parameters removed)."""

    leaves: list  # the adapter's parameter leaves, `None` where a tapped layer's were
    treedef: Any = eqx.field(static=True)
    flavour: LinenApply | NNXApply = eqx.field(static=True)
    taps: tuple = eqx.field(static=True)  # (scope or graph path, tap index, dense?)
    layers: list  # holed layers, by tap index

    @property
    def params(self) -> Any:
        return jax.tree.unflatten(self.treedef, self.leaves)

    def __call__(self, x, *, key=None):
        if isinstance(self.flavour, LinenApply):
            return _run_linen(self, x)
        return _run_nnx(self, x)


def _assemble(adapter: ModelAdapter, found: list[_Found], weights: list):
    """The tapped model (parameters of tapped layers removed), weights, and holed layers."""
    leaves, treedef = jax.tree.flatten(adapter.params)
    for f in found:
        leaves[f.kernel] = None
        if f.bias is not None:
            leaves[f.bias] = None
    layers = [f.layer for f in found]
    taps = tuple((f.path, i, f.dense) for i, f in enumerate(found))
    tapped = _TappedAdapter(leaves, treedef, adapter.apply, taps, layers)
    return tapped, weights, [(layer, dense_scales(layer)) for layer in layers]


# ---------------------------------------------------------------- linen


def _default(cls, field: str) -> Any:
    return cls.__dataclass_fields__[field].default


def _linen_dense_ok(m, linen) -> bool:
    return (
        m.dot_general is None
        and m.dot_general_cls is None
        and m.dtype is None
        and m.promote_dtype is _default(linen.Dense, "promote_dtype")
    )


def _run_linen(tapped: "_TappedAdapter", x):
    from flax import linen

    by_path = {path: (i, d) for path, i, d in tapped.taps}

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        hit = None
        if context.method_name == "__call__" and type(m) in (linen.Dense, linen.Conv):
            hit = by_path.get(m.path)
        if hit is None:
            return next_fun(*args, **kwargs)
        i, dense = hit
        if kwargs or len(args) != 1:
            raise TypeError("tapped flax layers take one positional input")
        layer = tapped.layers[i]
        return _dense_call(i, layer, args[0]) if dense else call_tap(i, layer, args[0])

    with linen.intercept_methods(interceptor):
        return tapped.flavour(tapped.params, x)


def _conv_forward(module):
    clone = module.clone(parent=None)

    def forward(w, b, x):
        p = {"kernel": w} if b is None else {"kernel": w, "bias": b}
        return clone.apply({"params": p}, x)

    return forward


def _tap_linen(adapter: ModelAdapter, example: jax.ShapeDtypeStruct):
    from flax import linen

    calls: dict[tuple, tuple[Any, tuple]] = {}

    def interceptor(next_fun, args, kwargs, context):
        m = context.module
        if context.method_name == "__call__" and type(m) in (linen.Dense, linen.Conv):
            if len(args) == 1 and not kwargs:
                calls.setdefault(m.path, (m, tuple(args[0].shape)))
        return next_fun(*args, **kwargs)

    def probe(params, x):  # a fresh function: a cached trace would run no interceptor
        with linen.intercept_methods(interceptor):
            return adapter.apply(params, x)

    try:
        jax.eval_shape(probe, adapter.params, example)
    except Exception:  # noqa: BLE001 - the model's own error surfaces on the general path
        return adapter, [], []
    index = _leaf_paths(adapter.params, strip_value=False)
    leaves = jax.tree.leaves(adapter.params)
    found, weights = [], []
    for path, (m, in_shape) in calls.items():
        k, b = index.get(path + ("kernel",)), index.get(path + ("bias",))
        if k is None or (b is None) == m.use_bias:
            continue  # parameters elsewhere (lifted transforms, shared scopes): leave them
        kernel, bias = leaves[k], None if b is None else leaves[b]
        if type(m) is linen.Dense:
            if not _linen_dense_ok(m, linen) or kernel.shape != (in_shape[-1], m.features):
                continue
            found.append(_Found(path, k, b, _FlaxDense(None, None), True))
            weights.append((kernel.T, bias))
        else:
            found.append(_Found(path, k, b, _FlaxLayer(None, None, _conv_forward(m)), False))
            weights.append((kernel, bias))
    return _assemble(adapter, found, weights)


# ---------------------------------------------------------------- nnx


def _nnx_default(cls, arg: str) -> Any:
    return inspect.signature(cls.__init__).parameters[arg].default


def _nnx_linear_ok(node, nnx) -> bool:
    return (
        node.dot_general is jax.lax.dot_general
        and node.dtype is None
        and node.preferred_element_type is None
        and node.promote_dtype is _nnx_default(nnx.Linear, "promote_dtype")
    )


def _get(parent, key):
    return parent[key] if isinstance(key, int) or isinstance(parent, dict) else getattr(parent, key)


def _set(parent, key, value) -> None:
    if isinstance(key, int) or isinstance(parent, dict):
        parent[key] = value
    else:
        setattr(parent, key, value)


class _NNXTap:
    """Stands in for an `nnx.Linear`/`nnx.Conv` node of a merged module."""

    def __init__(self, index: int, layer: Any, dense: bool):
        self.index, self.layer, self.dense = index, layer, dense

    def __call__(self, inputs, out_sharding=None):
        if out_sharding is not None:
            raise TypeError("tapped nnx layers take no out_sharding")
        if self.dense:
            return _dense_call(self.index, self.layer, inputs)
        return call_tap(self.index, self.layer, inputs)


def _run_nnx(tapped: "_TappedAdapter", x):
    flavour = tapped.flavour
    assert isinstance(flavour, NNXApply)
    module = flavour.merge(tapped.params)
    for path, i, dense in tapped.taps:
        parent = module
        for p in path[:-1]:
            parent = _get(parent, p)
        _set(parent, path[-1], _NNXTap(i, tapped.layers[i], dense))
    return module(x[None])[0] if flavour.batched else module(x)


def _nnx_conv_forward(node, nnx):
    graphdef, state = nnx.split(node)
    index = _leaf_paths(state, strip_value=True)
    leaves, treedef = jax.tree.flatten(state)
    if set(index) - {("kernel",), ("bias",)}:
        return None  # a convolution with more state than its weights: leave it alone
    k, b = index[("kernel",)], index.get(("bias",))

    def forward(w, bias, x):
        new = list(leaves)
        new[k] = w
        if b is not None:
            new[b] = bias
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, new))(x)

    return forward


def _tap_nnx(adapter: ModelAdapter, example: jax.ShapeDtypeStruct):
    from flax import nnx

    flavour = adapter.apply
    assert isinstance(flavour, NNXApply)
    module = flavour.merge(adapter.params)
    shared = {p for paths in nnx.find_duplicates(module) for p in paths}
    index = _leaf_paths(adapter.params, strip_value=True)
    leaves = jax.tree.leaves(adapter.params)
    found, weights = [], []
    for path, node in nnx.iter_graph(module):
        if type(node) not in (nnx.Linear, nnx.Conv) or not path:
            continue
        if {path, path + ("kernel",), path + ("bias",)} & shared:
            continue
        k, b = index.get(path + ("kernel",)), index.get(path + ("bias",))
        if k is None or (b is None) == (node.bias is not None):
            continue
        kernel, bias = leaves[k], None if b is None else leaves[b]
        if type(node) is nnx.Linear:
            if not _nnx_linear_ok(node, nnx) or kernel.ndim != 2:
                continue
            found.append(_Found(path, k, b, _FlaxDense(None, None), True))
            weights.append((kernel.T, bias))
        else:
            forward = _nnx_conv_forward(node, nnx)
            if forward is None:
                continue
            found.append(_Found(path, k, b, _FlaxLayer(None, None, forward), False))
            weights.append((kernel, bias))
    return _assemble(adapter, found, weights)


def tap_adapter(adapter: ModelAdapter, example: jax.ShapeDtypeStruct):
    """`(tapped model, weights, [(holed layer, scales)])` for an adapted model.

    Models given as functions (`from_apply`) are opaque: no taps, and the structured NTK
    uses Jacobian contraction for them.
    """
    if isinstance(adapter.apply, LinenApply):
        return _tap_linen(adapter, example)
    if isinstance(adapter.apply, NNXApply):
        return _tap_nnx(adapter, example)
    return adapter, [], []
