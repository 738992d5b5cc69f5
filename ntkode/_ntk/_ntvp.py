r"""NTK-vector products $\Theta v = J (J^\top v)$: a `jvp` of a `vjp`, never forming $\Theta$.

Two uses:

- the `"ntvp"` implementation forms the kernel column by column: for every example of `x2`
  and output `b`, the gradient $\nabla_\theta f_b(x'_j)$ (a `vjp`) is pushed forward through
  the batch `x1` (a `jvp` of the linearised batch function). Works for any model; its cost
  grows like `n1·n2·k` forward passes, so it pays off only when parameters vastly outnumber
  examples (Novak et al. 2022, §3.2);
- `ntk_vp`, the matrix-free product $\Theta(X_1, X_2)\, v$ for large-n function-space
  right-hand sides such as $-\eta\,\Theta\,\nabla_u L$: memory `O(n k + P)`, time of about
  three passes through the batch.
"""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
from jaxtyping import Array, Float

from .._core._model import apply_one, num_outputs, partition
from ._base import AbstractNTKImplementation
from ._validate import check_block_size, check_inputs, check_model_inputs


def _batch_fn(static: Any, x: Array):
    return lambda p: jax.vmap(lambda xi: apply_one(eqx.combine(p, static), xi))(x)


class NTVPNTK(AbstractNTKImplementation):
    """Kernel columns from `jvp`s of per-example `vjp`s; applies to every model.

    Features are `(x, w)`: the inputs themselves (all the work happens per pair of batches)
    and the output weights of `weight_outputs` (`None`: every output, unweighted).
    """

    contract_uses_params = True

    def features(self, params, static, x):
        return x, None

    def weight_outputs(self, features, weights):
        x, w = features
        # (b, 1, k): the cotangent that pulls back w_i · f(x_i), one per example.
        w = weights[:, None] if w is None else jnp.einsum("bmk,bm->bk", w, weights)[:, None]
        return x, w

    def contract(self, params, static, f1, f2, trace):
        (x1, w1), (x2, w2) = f1, f2
        _, jvp1 = jax.linearize(_batch_fn(static, x1), params)

        def column(x2j, cot):
            out, vjp = jax.vjp(lambda p: apply_one(eqx.combine(p, static), x2j), params)
            cot = jnp.eye(out.shape[0], dtype=out.dtype) if cot is None else cot
            grads = jax.vmap(lambda e: vjp(e)[0])(cot)  # (m_b, params...)
            return jax.vmap(jvp1)(grads)  # (m_b, n1, k_a)

        if w2 is None:
            cols = jax.vmap(lambda xj: column(xj, None))(x2)
        else:
            cols = jax.vmap(column)(x2, w2)  # (n2, m_b, n1, k_a)
        k = jnp.transpose(cols, (2, 0, 3, 1))
        if w1 is not None:
            k = jnp.einsum("ijab,ima->ijmb", k, w1)
        return jnp.trace(k, axis1=2, axis2=3) if trace else k


def _split_blocks(x: Array, block: int) -> tuple[Array, int]:
    n = x.shape[0]
    nb = -(-n // block)
    pad = nb * block - n
    if pad:
        x = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
    return x.reshape((nb, block) + x.shape[1:]), n


def _vjp_sum(params, static, x2, v, block):
    """$J(X_2)^\top v$, summed over blocks of examples to bound memory."""
    if block is None:
        _, vjp = jax.vjp(_batch_fn(static, x2), params)
        return vjp(v)[0]
    xb, _ = _split_blocks(x2, block)
    vb, _ = _split_blocks(v, block)  # zero cotangents on padding: padded rows add nothing

    def step(acc, xv):
        _, vjp = jax.vjp(_batch_fn(static, xv[0]), params)
        return jax.tree.map(jnp.add, acc, vjp(xv[1])[0]), None

    zero = jax.tree.map(jnp.zeros_like, params)
    return jax.lax.scan(step, zero, (xb, vb))[0]


def _jvp_all(params, static, x1, g, block):
    if block is None:
        return jax.jvp(_batch_fn(static, x1), (params,), (g,))[1]
    xb, n1 = _split_blocks(x1, block)
    out = jax.lax.map(lambda xi: jax.jvp(_batch_fn(static, xi), (params,), (g,))[1], xb)
    return out.reshape((-1,) + out.shape[2:])[:n1]


@eqx.filter_jit
def _ntk_vp_jit(params, static, x1, x2, v, block):
    check_model_inputs(eqx.combine(params, static), x1)
    g = _vjp_sum(params, static, x1 if x2 is None else x2, v, block)
    return _jvp_all(params, static, x1, g, block)


def ntk_vp(
    model: Any,
    x1: Float[Array, "n1 ..."],
    v: Float[Array, "n2 k"],
    x2: Float[Array, "n2 ..."] | None = None,
    *,
    block_size: int | None = None,
) -> Float[Array, "n1 k"]:
    r"""Matrix-free NTK-vector product $\Theta(X_1, X_2)\, v$, without forming $\Theta$.

    Computes $J_1 (J_2^\top v)$ as a reverse-mode pass over `x2` followed by a forward-mode
    pass over `x1`: for `n` examples it costs about three batch passes and `O(n k + P)`
    memory, against `O(n^2 k^2)` memory and `n` backward passes for the formed kernel.
    Equal to `einsum("ijab,jb->ia", ntk(model, x1, x2), v)`.

    **Arguments:**

    - `model`: an equinox module mapping one input to its outputs.
    - `x1`: inputs `(n1, ...)` at which the product is evaluated.
    - `v`: the vector, shape `(n2, k)` (one row per example of `x2`).
    - `x2`: inputs `(n2, ...)`; defaults to `x1`.
    - `block_size`: if given, examples are processed this many at a time (memory
      `O(block_size × activations + P)`).

    **Returns:** $\Theta(X_1, X_2)\, v$, shape `(n1, k)`.
    """
    x1, x2 = check_inputs(model, x1, x2)
    check_block_size(block_size)
    k = num_outputs(model, x1, "x1")
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    v = jnp.asarray(v)
    if v.shape != (n2, k):
        raise ValueError(
            f"`v` must have shape (n2, k) = ({n2}, {k}) (one row of {k} output(s) per "
            f"example of {'x1' if x2 is None else 'x2'}), got {v.shape}."
        )
    params, static = partition(model)
    v = v.astype(jnp.result_type(*jax.tree.leaves(params)))
    return _ntk_vp_jit(params, static, x1, x2, v, block_size)


def ntk_operator(
    model: Any, x: Float[Array, "n ..."], *, block_size: int | None = None
) -> lx.FunctionLinearOperator:
    r"""The train kernel $\Theta(X, X)$ as a matrix-free, symmetric PSD `lineax` operator.

    Acts on flattened vectors of length `n·k` (example-major, like `flatten_kernel`), so it
    can be passed to `lineax.linear_solve` with `lineax.CG` or used in a function-space
    vector field without ever forming the `(n k)²` kernel.

    **Arguments:**

    - `model`: an equinox module mapping one input to its outputs.
    - `x`: inputs `(n, ...)`.
    - `block_size`: as in `ntk_vp`.

    **Returns:** a `lineax.FunctionLinearOperator` tagged symmetric and positive semidefinite.
    """
    x, _ = check_inputs(model, x, None, name1="x")
    check_block_size(block_size)
    k = num_outputs(model, x, "x")
    n = x.shape[0]
    params, static = partition(model)
    dtype = jnp.result_type(*jax.tree.leaves(params))

    def mv(flat):
        return _ntk_vp_jit(params, static, x, None, flat.reshape(n, k), block_size).reshape(-1)

    return lx.FunctionLinearOperator(
        mv,
        jax.ShapeDtypeStruct((n * k,), dtype),
        tags=(lx.symmetric_tag, lx.positive_semidefinite_tag),
    )
