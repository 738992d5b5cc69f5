"""The one entry point for empirical NTKs."""

from collections.abc import Sequence
from typing import Any, Literal

import jax.numpy as jnp
from jaxtyping import Array, Float

from ._base import AbstractNTKImplementation
from ._dispatch import cached_call, compiled_call
from ._engine import replicate, resolve_devices
from ._jacobian import JacobianNTK
from ._ntvp import NTVPNTK
from ._reference import ntk_reference
from ._structured import StructuredNTK
from ._validate import check_block_size, check_inputs

_NAMES = ("auto", "structured", "jacobian", "ntvp", "reference")

# "auto": the structured path is the fastest wherever it applies (dense and conv layers),
# and it falls back to Jacobian contraction (the fastest general method for models with
# fewer examples than parameters) for everything else. Built once: the instances are part
# of the compiled-function cache's key.
_BY_NAME: dict[tuple[str, bool], AbstractNTKImplementation] = {
    (name, trace): impl
    for trace in (False, True)
    for name, impl in (
        ("auto", StructuredNTK(trace_hint=trace)),
        ("structured", StructuredNTK(trace_hint=trace)),
        ("jacobian", JacobianNTK()),
        ("ntvp", NTVPNTK()),
    )
}


def _resolve(implementation: Any, trace: bool) -> AbstractNTKImplementation | str:
    if isinstance(implementation, AbstractNTKImplementation):
        return implementation
    if implementation not in _NAMES:
        raise ValueError(
            f"Unknown `implementation` {implementation!r}; choose one of {list(_NAMES)} or "
            "pass an `AbstractNTKImplementation` instance."
        )
    if implementation == "reference":
        return "reference"
    return _BY_NAME[implementation, bool(trace)]


def engine_implementation(
    implementation: Any, trace: bool, where: str
) -> AbstractNTKImplementation:
    """The implementation object for a caller of the engine's features (not `"reference"`)."""
    impl = _resolve(implementation, trace)
    if isinstance(impl, str):
        raise ValueError(
            f"{where} uses the NTK engine's features, which implementation='reference' does not "
            "have; choose 'auto', 'structured', 'jacobian' or 'ntvp'."
        )
    return impl


def ntk(
    model: Any,
    x1: Float[Array, "n1 ..."],
    x2: Float[Array, "n2 ..."] | None = None,
    *,
    implementation: Literal["auto", "structured", "jacobian", "ntvp", "reference"]
    | AbstractNTKImplementation = "auto",
    trace: bool = False,
    block_size: int | None = None,
    devices: Sequence[Any] | Literal["local", "global"] | None = None,
) -> Float[Array, "n1 n2 k k"] | Float[Array, "n1 n2"]:
    r"""Empirical neural tangent kernel $\Theta(x_1, x_2) = J(x_1) J(x_2)^\top$ of a model.

    The kernel is taken with respect to every floating-point array in the model.

    **Arguments:**

    - `model`: an equinox module mapping one input to its outputs (flattened to `k`), or a
      function or flax model wrapped by [`ntkode.from_apply`][] / [`ntkode.from_flax`][].
    - `x1`, `x2`: batches of inputs `(n1, ...)`, `(n2, ...)`; `x2` defaults to `x1`.
    - `implementation`:
        - `"auto"` (default): the fastest applicable, which is `"structured"` (it falls
          back to `"jacobian"` by itself where it does not apply);
        - `"structured"`: per-layer Gram products $(s_w^2 A A^\top + s_b^2) \circ (B B^\top)$
          for dense layers (`eqx.nn.Linear`, every [`ntkode.AbstractDense`][] such as
          the layers of [`ntkode.MLP`][], flax's `Dense` and `nnx.Linear`) and local
          Jacobians for convolutions (`eqx.nn.Conv`, flax's `Conv`), Jacobian contraction
          for any other parameters; models it cannot tap (functions given to
          [`ntkode.from_apply`][]) fall back to `"jacobian"`;
        - `"jacobian"`: per-example Jacobians, contracted (any model);
        - `"ntvp"`: `jvp`s of per-example `vjp`s (any model; for few examples and very
          many parameters);
        - `"reference"`: the simple reference (no blocking or devices);
        - or an `AbstractNTKImplementation` instance.
    - `trace`: if `True`, sum over the output diagonal and return `(n1, n2)`.
    - `block_size`: compute the kernel `block_size` rows at a time, so that peak memory is
      `O(block_size × parameters + n1·n2)` instead of `O(n × parameters)`.
    - `devices`: spread row blocks over these devices with `jax.sharding`: a sequence of
      devices, `"local"` (this process's, `jax.local_devices()`) or `"global"` (every
      process's, after `jax.distributed.initialize()` in each; see `ntkode/_ntk/_engine.py`
      and the README's multi-process recipe); `None` uses the default device. The kernel is
      then a global `jax.Array` sharded by rows.

    **Returns:** the kernel, shape `(n1, n2, k, k)` (or `(n1, n2)` with `trace=True`).

    Reference: Novak, Sohl-Dickstein, Schoenholz (2022), "Fast finite width neural tangent
    kernel", ICML.
    """
    fast = _BY_NAME.get((implementation, bool(trace))) if isinstance(implementation, str) else None
    if fast is not None and devices is None:
        # The common eager call: a cache hit skips validation (done when it was filled).
        out = cached_call(model, x1, x2, fast, trace, block_size, None)
        if out is not None:
            return out
    impl = _resolve(implementation, trace)
    check_block_size(block_size)
    x1, x2 = check_inputs(model, x1, x2)
    devices = resolve_devices(devices)
    if impl == "reference":
        if block_size is not None or devices is not None:
            raise ValueError(
                "implementation='reference' computes the kernel in one piece on one device; "
                "drop `block_size`/`devices` or choose another implementation."
            )
        k = ntk_reference(model, x1, x2)
        return jnp.trace(k, axis1=2, axis2=3) if trace else k
    # One device: the default one (as without `devices`).
    devices = tuple(devices) if devices is not None and len(devices) > 1 else None
    if devices is not None:  # several processes: inputs as replicated global arrays
        model, x1, x2 = replicate((model, x1, x2), devices)
    return compiled_call(model, x1, x2, impl, trace, block_size, devices)
