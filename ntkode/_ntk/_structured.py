r"""Structured NTK: per-layer Gram products instead of Jacobians for dense and convolutional layers.

A dense layer $y = W a + b$ called once per example has the per-example Jacobian
$\partial f / \partial W = B \otimes a$ with back-propagated signal $B = \partial f/\partial y$
(`(k, out)`), so its NTK contribution needs no Jacobian at all:

$$\Theta_{W,b}(x, x')_{ab} = (a \cdot a' + 1)\, (B_a \cdot B'_b), \qquad
\Theta = \sum_l (A_l A_l^\top + 1) \circ (B_l B_l^\top).$$

A layer called `C` times per example (shared weights; a convolution is a dense layer shared
over patches) gives $\sum_{c,d} (a_c \cdot a'_d + 1)(B_c \cdot B'_d)$; when that costs more
than forming the layer's Jacobian (convolutions: `C²` positions), the layer's per-example
weight gradient is built locally from `(a, B)` by the layer's own `vjp` — no pass through the
rest of the network — and contracted. (Novak et al. 2022, "Fast finite width neural tangent
kernel", structured derivatives.)

**How `a` and `B` are found, for any model built from equinox layers.** Every
`eqx.nn.Linear` and `eqx.nn.Conv` (`Conv1d/2d/3d`) in the model pytree is replaced by a *tap*
that records its input `a` and adds a zero perturbation `δ` to its output; then
`∂f/∂δ = B`. One `vmap(jacrev)` over examples returns all `B`s, all `a`s (as auxiliary
output) and the ordinary Jacobian of any remaining parameters (layer norms, custom modules),
which are contracted as in the Jacobian implementation. A tap holds no weights in the model
pytree: code that reads a tapped layer's weights directly (weight tying, `eqx.nn.Shared`,
layers applied under an inner `vmap` or `scan`) fails while tracing, and the whole model falls
back to Jacobian contraction — correct, only slower.
"""

import itertools
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core._model import apply_one
from ._base import AbstractNTKImplementation, contract_jacobians
from ._jacobian import per_example_jacobian

# Active tap contexts. Tracing is synchronous Python, so a stack is enough.
_CONTEXTS: list["_Context"] = []


class _Context:
    """What the taps read (weights, perturbations) and write (inputs, output shapes)."""

    def __init__(self, weights, deltas):
        self.weights = weights
        self.deltas = deltas
        self.inputs = [[] for _ in weights]
        self.out_shapes = [[] for _ in weights]


def _is_tappable(v: Any) -> bool:
    if isinstance(v, eqx.nn.Linear):
        return eqx.is_inexact_array(v.weight) and v.weight.ndim == 2
    if isinstance(v, eqx.nn.Conv):
        return eqx.is_inexact_array(v.weight) and v.weight.ndim == v.num_spatial_dims + 2
    return False


def _fill(layer, weight, bias):
    return eqx.tree_at(
        lambda m: (m.weight, m.bias), layer, (weight, bias), is_leaf=lambda v: v is None
    )


class _Tap(eqx.Module):
    """Stands in for a layer: records its input, adds a zero perturbation to its output."""

    layer: Any  # the original layer with weight and bias removed
    index: int = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        ctx = _CONTEXTS[-1]
        y = _fill(self.layer, *ctx.weights[self.index])(x)
        calls = ctx.inputs[self.index]
        c = len(calls)
        calls.append(x)
        if ctx.deltas is None:
            ctx.out_shapes[self.index].append(jax.ShapeDtypeStruct(y.shape, y.dtype))
        else:
            y = y + ctx.deltas[self.index][c]
        return y


class _Plan(NamedTuple):
    """The tapped model and, per tapped layer, how its contribution is computed."""

    rest: Any  # parameters outside tapped layers
    rest_static: Any
    weights: list
    layers: list  # holed layers (static information)
    out_shapes: list  # per layer, per call
    gram: list  # per layer: True = Gram route, False = local Jacobian route


def _tap(model):
    leaves, treedef = jax.tree_util.tree_flatten(model, is_leaf=_is_tappable)
    weights, layers, new = [], [], []
    for leaf in leaves:
        if _is_tappable(leaf):
            holed = _fill(leaf, None, None)
            new.append(_Tap(holed, len(weights)))
            weights.append((leaf.weight, leaf.bias))
            layers.append(holed)
        else:
            new.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, new), weights, layers


def _forward(plan_rest_static, weights, rest, deltas, x):
    ctx = _Context(weights, deltas)
    _CONTEXTS.append(ctx)
    try:
        out = apply_one(eqx.combine(rest, plan_rest_static), x)
    finally:
        _CONTEXTS.pop()
    return out, ctx


def _make_plan(params, static, example: jax.ShapeDtypeStruct, trace: bool) -> _Plan | None:
    """Tap the model and trace it once; `None` if the structured path does not apply."""
    tapped, weights, layers = _tap(eqx.combine(params, static))
    if not weights:
        return None
    rest, rest_static = eqx.partition(tapped, eqx.is_inexact_array)
    box = {}

    def probe(r, xi):
        out, ctx = _forward(rest_static, weights, r, None, xi)
        box["ctx"] = ctx
        return out

    try:
        out = jax.eval_shape(probe, rest, example)
    except Exception:  # noqa: BLE001 - any failure to trace taps means: use the general path
        return None
    ctx = box["ctx"]
    if not any(ctx.out_shapes):
        return None
    k = max(1, out.size)
    gram = []
    for layer, calls in zip(layers, ctx.out_shapes, strict=True):
        c = len(calls)
        if isinstance(layer, eqx.nn.Linear) and c:
            w = weights[len(gram)][0]
            n_out, n_in = w.shape
            kk = k if trace else k * k
            gram_cost = c * c * (n_in + 1 + kk * n_out)
            jac_cost = kk * n_out * (n_in + 1)
            gram.append(gram_cost <= jac_cost)
        else:
            gram.append(False)
    plan = _Plan(rest, rest_static, weights, layers, ctx.out_shapes, gram)
    try:  # the differentiated pass traces the same code; make sure it does
        jax.eval_shape(lambda xi: _per_example(plan, xi), example)
    except Exception:  # noqa: BLE001
        return None
    return plan


def _per_example(plan: _Plan, x):
    deltas = [[jnp.zeros(s.shape, s.dtype) for s in calls] for calls in plan.out_shapes]

    def f(rest, deltas):
        out, ctx = _forward(plan.rest_static, plan.weights, rest, deltas, x)
        return out, ctx.inputs

    (j_rest, b), a = jax.jacrev(f, argnums=(0, 1), has_aux=True)(plan.rest, deltas)
    return j_rest, b, a


def _patch_views(layer, x):
    """For each kernel offset, the input values it multiplies: `(in, positions)` arrays.

    Strided slices of the zero-padded input; together they are the im2col patches, without
    stacking them into one array (XLA:CPU's `conv_general_dilated_patches`, a convolution
    with a one-hot kernel, is several times slower still).
    """
    spatial = x.shape[1:]
    window = [(k - 1) * d + 1 for k, d in zip(layer.kernel_size, layer.dilation, strict=True)]
    pads = layer.padding
    if isinstance(pads, str):
        pads = jax.lax.padtype_to_pads(spatial, window, layer.stride, pads)
    xp = jnp.pad(x, [(0, 0)] + [tuple(p) for p in pads])
    out = [
        (s + lo + hi - w) // st + 1
        for s, (lo, hi), w, st in zip(spatial, pads, window, layer.stride, strict=True)
    ]
    for offset in itertools.product(*[range(k) for k in layer.kernel_size]):
        start = [0] + [o * d for o, d in zip(offset, layer.dilation, strict=True)]
        limit = [x.shape[0]] + [
            b + (n - 1) * st + 1 for b, n, st in zip(start[1:], out, layer.stride, strict=True)
        ]
        view = jax.lax.slice(xp, start, limit, [1] + list(layer.stride))
        yield view.reshape(x.shape[0], -1)


def _conv_jacobian(layer, inputs, signals):
    """Per-example Jacobian of a convolution from its inputs and signals: GEMMs, no autodiff.

    $\\partial f_a / \\partial W_{o,i,\\delta} = \\sum_c B_{a,o,c}\\, x_{i, c+\\delta}$ over output
    positions `c`, one matrix product per kernel offset `δ`. The order of the parameters need
    not match the weight's layout: only inner products of Jacobians enter the kernel.
    """
    jac, bias = 0.0, 0.0
    for x, b_c in zip(inputs, signals, strict=True):
        sig = b_c.reshape(b_c.shape[0], b_c.shape[1], -1)  # (k, out, positions)
        # Both operands contracted on their last axis: the layout XLA:CPU's batched GEMM
        # runs fastest (several times faster than "aoc,qc->aoq").
        per_offset = [jnp.einsum("qc,aoc->aqo", v, sig) for v in _patch_views(layer, x)]
        jac = jac + jnp.stack(per_offset, axis=1)
        bias = bias + jnp.sum(sig, axis=2)
    out = [jac.reshape(jac.shape[0], -1)]
    return out + ([bias] if layer.use_bias else [])


def _local_jacobian(layer, weight, bias, inputs, signals):
    """Per-example weight (and bias) Jacobian of one layer from its inputs and signals."""
    params = (weight, bias)

    def one_call(x, b_c):  # b_c: (k, *out_shape)
        _, vjp = jax.vjp(lambda p: _fill(layer, *p)(x), params)
        return jax.vmap(lambda e: vjp(e)[0])(b_c)

    grads = [one_call(x, bc) for x, bc in zip(inputs, signals, strict=True)]
    total = jax.tree.map(lambda *g: sum(g), *grads)
    return [g.reshape(g.shape[0], -1) for g in jax.tree.leaves(total)]


class StructuredNTK(AbstractNTKImplementation):
    """Gram products for `eqx.nn.Linear`/`Conv` layers, Jacobians for the rest.

    Falls back to Jacobian contraction for models whose layers cannot be tapped.
    """

    trace_hint: bool = eqx.field(static=True, default=False)

    def features(self, params, static, x):
        example = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
        plan = _make_plan(params, static, example, self.trace_hint)
        if plan is None:
            return [], per_example_jacobian(params, static, x)

        def one(xi):
            j_rest, b, a = _per_example(plan, xi)
            grams, jacs = [], []
            for i, layer in enumerate(plan.layers):
                calls = len(plan.out_shapes[i])
                if not calls:
                    continue
                if plan.gram[i]:
                    acts = jnp.stack([ai.reshape(-1) for ai in a[i]])  # (C, in)
                    if layer.use_bias:  # (a·a' + 1): the bias as a constant input
                        acts = jnp.concatenate([acts, jnp.ones_like(acts[:, :1])], axis=1)
                    sig = jnp.stack([bi.reshape(bi.shape[0], -1) for bi in b[i]], axis=1)
                    grams.append((acts, sig))  # (C, in+1), (k, C, out)
                elif (
                    isinstance(layer, eqx.nn.Conv)
                    and layer.groups == 1
                    and layer.padding_mode == "ZEROS"
                ):
                    jacs += _conv_jacobian(layer, a[i], b[i])
                else:
                    w, bias = plan.weights[i]
                    jacs += _local_jacobian(layer, w, bias, a[i], b[i])
            jacs += [j.reshape(j.shape[0], -1) for j in jax.tree.leaves(j_rest)]
            return grams, jacs

        return jax.vmap(one)(x)

    def contract(self, params, static, f1, f2, trace):
        (g1, j1), (g2, j2) = f1, f2
        out = contract_jacobians(j1, j2, trace) if j1 else None
        for (a1, s1), (a2, s2) in zip(g1, g2, strict=True):
            if a1.shape[1] == 1:  # one call per example: two plain Gram matrices
                ga = a1[:, 0] @ a2[:, 0].T
                if trace:
                    term = ga * jnp.einsum("iaq,jaq->ij", s1[:, :, 0], s2[:, :, 0])
                else:
                    term = ga[:, :, None, None] * jnp.einsum(
                        "iaq,jbq->ijab", s1[:, :, 0], s2[:, :, 0]
                    )
            else:
                ga = jnp.einsum("icp,jdp->ijcd", a1, a2)
                spec = "ijcd,iacq,jadq->ij" if trace else "ijcd,iacq,jbdq->ijab"
                term = jnp.einsum(spec, ga, s1, s2)
            out = term if out is None else out + term
        return out
