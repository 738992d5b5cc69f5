r"""Structured NTK: per-layer Gram products instead of Jacobians for dense and convolutional layers.

A dense layer $y = s_w W a + s_b b$ called once per example has the per-example Jacobian
$\partial f / \partial W = s_w B \otimes a$ with back-propagated signal
$B = \partial f/\partial y$ (`(k, out)`), so its NTK contribution needs no Jacobian at all:

$$\Theta_{W,b}(x, x')_{ab} = (s_w^2\, a \cdot a' + s_b^2)\, (B_a \cdot B'_b), \qquad
\Theta = \sum_l (s_{w,l}^2 A_l A_l^\top + s_{b,l}^2) \circ (B_l B_l^\top).$$

(`eqx.nn.Linear` has $s_w = s_b = 1$; layers declaring [`ntkode.AbstractDense`][], such as
the NTK-parameterised layers of [`ntkode.MLP`][], carry their own.) A layer called `C` times
per example (shared weights; a convolution is a dense layer shared over patches) gives
$\sum_{c,d} (s_w^2 a_c \cdot a'_d + s_b^2)(B_c \cdot B'_d)$; when that costs more than forming
the layer's Jacobian (convolutions: `C²` positions), the layer's per-example weight gradient
is built locally from `(a, B)` — no pass through the rest of the network — and contracted.
(Novak et al. 2022, "Fast finite width neural tangent kernel", structured derivatives.)

**How `a` and `B` are found, for any model built from equinox layers.** Every dense layer
and every `eqx.nn.Conv` (`Conv1d/2d/3d`) in the model pytree is replaced by a *tap* that
records its input `a` and adds a zero perturbation `δ` to its output; then `∂f/∂δ = B`. One
`vmap(jacrev)` over examples returns all `B`s, all `a`s (as auxiliary output) and the
ordinary Jacobian of any remaining parameters (layer norms, custom modules), which are
contracted as in the Jacobian implementation. A tap holds no weights in the model pytree:
code that reads a tapped layer's weights directly (weight tying, `eqx.nn.Shared`, layers
applied under an inner `vmap` or `scan`) fails while tracing, and the whole model falls back
to Jacobian contraction — correct, only slower.
"""

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core._adapters import ModelAdapter
from .._core._model import apply_one
from ._base import AbstractNTKImplementation, contract_jacobians, weight_jacobians
from ._jacobian import per_example_jacobian
from ._layers import dense_scales, fill, is_tappable, local_jacobian

# Active tap contexts. Tracing is synchronous Python, so a stack is enough.
_CONTEXTS: list["_Context"] = []


class _Context:
    """What the taps read (weights, perturbations) and write (inputs, output shapes)."""

    def __init__(self, weights, deltas):
        self.weights = weights
        self.deltas = deltas
        self.inputs = [[] for _ in weights]
        self.out_shapes = [[] for _ in weights]


def call_tap(index: int, layer: Any, x: Any) -> Any:
    """One call of tapped layer `index` (`layer`: holed) on `x`, inside an active tap context.

    Computes the layer's output with the weights the context holds, records the input and
    adds the call's zero perturbation. Every tap (equinox layers here, flax layers in
    `ntkode/_ntk/_flax.py`) goes through this function.
    """
    ctx = _CONTEXTS[-1]
    y = fill(layer, *ctx.weights[index])(x)
    calls = ctx.inputs[index]
    c = len(calls)
    calls.append(x)
    if ctx.deltas is None:
        ctx.out_shapes[index].append(jax.ShapeDtypeStruct(y.shape, y.dtype))
    else:
        y = y + ctx.deltas[index][c]
    return y


class _Tap(eqx.Module):
    """Stands in for a layer: records its input, adds a zero perturbation to its output."""

    layer: Any  # the original layer with weight and bias removed
    index: int = eqx.field(static=True)

    def __call__(self, x, *, key=None):
        return call_tap(self.index, self.layer, x)


class _Plan(NamedTuple):
    """The tapped model and, per tapped layer, how its contribution is computed."""

    rest: Any  # parameters outside tapped layers
    rest_static: Any
    weights: list
    layers: list  # holed layers (static information)
    out_shapes: list  # per layer, per call
    scales: list  # per layer: (s_w, s_b) of the Gram route, or None for a Jacobian route


def _tap(model, example: jax.ShapeDtypeStruct):
    """The model with its tappable layers replaced by taps; their weights; their layers.

    Adapted models ([`ntkode.ModelAdapter`][]) find their own layers (flax `Dense`/`Linear`
    and `Conv`), by tracing one example.
    """
    if isinstance(model, ModelAdapter):
        from ._flax import tap_adapter

        return tap_adapter(model, example)
    leaves, treedef = jax.tree_util.tree_flatten(model, is_leaf=is_tappable)
    weights, layers, new = [], [], []
    for leaf in leaves:
        if is_tappable(leaf):
            holed = fill(leaf, None, None)
            new.append(_Tap(holed, len(weights)))
            weights.append((leaf.weight, leaf.bias))
            layers.append((holed, dense_scales(leaf)))
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
    tapped, weights, tapped_layers = _tap(eqx.combine(params, static), example)
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
    kk = k if trace else k * k
    scales = []
    for (_, dense), (w, _), calls in zip(tapped_layers, weights, ctx.out_shapes, strict=True):
        c = len(calls)
        gram = False
        if dense is not None and c:
            n_out, n_in = w.shape
            gram = c * c * (n_in + 1 + kk * n_out) <= kk * n_out * (n_in + 1)
        scales.append(dense if gram else None)
    layers = [holed for holed, _ in tapped_layers]
    plan = _Plan(rest, rest_static, weights, layers, ctx.out_shapes, scales)
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


class StructuredNTK(AbstractNTKImplementation):
    """Gram products for dense layers, local Jacobians for convolutions, Jacobians for the rest.

    Dense layers are `eqx.nn.Linear` and every [`ntkode.AbstractDense`][] (e.g. the layers of
    [`ntkode.MLP`][]); models whose layers cannot be tapped fall back to Jacobian contraction.
    Features are `(grams, jacobians)`: per Gram-route layer the scaled inputs `(b, C, in+1)`
    and signals `(b, k, C, out)`, and Jacobian leaves `(b, k, p)` for everything else.
    """

    contract_uses_params = False

    trace_hint: bool = eqx.field(static=True, default=False)

    def features(self, params, static, x):
        example = jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
        plan = _make_plan(params, static, example, self.trace_hint)
        if plan is None:
            return [], per_example_jacobian(params, static, x)
        # Signals and inputs of every tapped layer, per example (one backward pass each).
        j_rest, b, a = jax.vmap(lambda xi: _per_example(plan, xi))(x)
        n = x.shape[0]
        grams, jacs = [], []
        for i, layer in enumerate(plan.layers):
            if not plan.out_shapes[i]:
                continue
            w, bias = plan.weights[i]
            if plan.scales[i] is not None:
                sw, sb = plan.scales[i]
                acts = sw * jnp.stack([ai.reshape(n, -1) for ai in a[i]], axis=1)  # (n, C, in)
                if bias is not None:  # (s_w² a·a' + s_b²): the bias as a constant input
                    acts = jnp.concatenate([acts, jnp.full_like(acts[..., :1], sb)], axis=-1)
                sig = jnp.stack([bi.reshape(n, bi.shape[1], -1) for bi in b[i]], axis=2)
                grams.append((acts, sig))  # (n, C, in+1), (n, k, C, out)
            else:
                # Across the batch at once: convolutions are chunked GEMMs, not a vmap.
                jacs += local_jacobian(layer, w, bias, a[i], b[i])
        jacs += [j.reshape(n, j.shape[1], -1) for j in jax.tree.leaves(j_rest)]
        return grams, jacs

    def weight_outputs(self, features, weights):
        grams, jacs = features
        grams = [(a, jnp.einsum("bkcq,bk->bcq", s, weights)[:, None]) for a, s in grams]
        return grams, weight_jacobians(jacs, weights)

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
        assert out is not None, "a model with no parameters has no NTK"
        return out
