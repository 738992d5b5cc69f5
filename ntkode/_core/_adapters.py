r"""Models that are not equinox modules: `apply(params, x)` functions and flax modules.

Every entry point of ntkode that takes a model (`ntk`, `ntk_vp`, `GradientFlowProblem`,
`KernelFlowProblem.from_model`, `KernelGrid`, `path_kernel`, `tune_grid`) treats it as an
equinox module whose floating-point arrays are the trained weights. A
[`ntkode.ModelAdapter`][] is such a module for a model written another way: it holds the
parameter pytree as its only array field and a static rule that applies it to one input.

- `from_apply(apply, params)`: a pure function `apply(params, x)`, as written with
  `jax.example_libraries.stax`, haiku's `transform` or by hand.
- `from_flax(module, variables)`: a flax linen module and the variables `module.init`
  returned; trains the `"params"` collection, holds the others (batch statistics) fixed.
- `from_flax(module)`: a flax nnx module, split with `nnx.split` into its `nnx.Param`s
  (trained) and the rest of its state (fixed), merged back with `nnx.merge` on every call.

flax is an optional dependency (`pip install "ntkode[flax]"`), imported by `from_flax` only.
Models are applied in evaluation mode: state a call would update (batch statistics in
training mode, random-number counters) is held fixed.
"""

import abc
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree


class Frozen:
    """A pytree of arrays held as a constant: hashed and compared by content.

    Used for state that a model reads but ntkode does not train (flax's non-`params`
    collections, nnx's non-`Param` state). As a static field it is no floating-point leaf of
    the adapter, so that the adapter's leaves are exactly its trained parameters.
    """

    def __init__(self, tree: Any):
        self.tree = tree
        leaves, treedef = jax.tree.flatten(tree)
        parts = []
        for leaf in leaves:
            if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            a = np.asarray(leaf)
            parts.append((a.shape, a.dtype.str, a.tobytes()))
        self._key = (treedef, tuple(parts))
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, Frozen) and self._key == other._key)

    def __repr__(self) -> str:
        return f"Frozen({jax.tree.map(lambda a: jnp.shape(a), self.tree)})"


class AbstractApply(eqx.Module):
    """How a [`ntkode.ModelAdapter`][] applies its parameters to one input (static, hashable).

    `batched` says whether the underlying model is given a batch of one (`True`) or the
    example itself (`False`).
    """

    batched: eqx.AbstractVar[bool]

    @abc.abstractmethod
    def __call__(self, params: PyTree[Array], x: Array) -> Array:
        """The model's outputs for one input `x` (no batch axis)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What the model is, for error messages (e.g. "`apply`", "the flax linen module")."""


class FunctionApply(AbstractApply):
    """A user's `apply(params, x)`; with `batched=True` it is given a batch of one.

    `treedef` is the structure of the user's parameters: the adapter holds them with empty
    containers (stax's `()` for parameter-free layers) as `None`, which diffrax's solvers
    accept as part of an ODE state where they refuse empty tuples; `apply` gets the original.
    """

    fn: Callable[..., Any] = eqx.field(static=True)
    treedef: Any = eqx.field(static=True)
    batched: bool = eqx.field(static=True, default=False)

    def __call__(self, params, x):
        params = jax.tree.unflatten(self.treedef, jax.tree.leaves(params))
        return self.fn(params, x[None])[0] if self.batched else self.fn(params, x)

    def describe(self) -> str:
        return "`apply`"


class LinenApply(AbstractApply):
    """`module.apply({"params": params, **constants}, x)` for a flax linen module."""

    module: Any = eqx.field(static=True)
    constants: Frozen = eqx.field(static=True)
    batched: bool = eqx.field(static=True, default=False)

    def __call__(self, params, x):
        variables = {"params": params, **self.constants.tree}
        if self.batched:
            return self.module.apply(variables, x[None])[0]
        return self.module.apply(variables, x)

    def describe(self) -> str:
        return f"the flax linen module {type(self.module).__name__}"


class NNXApply(AbstractApply):
    """`nnx.merge(graphdef, params, constants)(x)` for a flax nnx module."""

    graphdef: Any = eqx.field(static=True)
    constants: Frozen = eqx.field(static=True)
    batched: bool = eqx.field(static=True, default=False)

    def merge(self, params: Any) -> Any:
        """The nnx module with these parameters (a fresh object)."""
        from flax import nnx

        return nnx.merge(self.graphdef, params, self.constants.tree)

    def __call__(self, params, x):
        module = self.merge(params)
        return module(x[None])[0] if self.batched else module(x)

    def describe(self) -> str:
        return "the flax nnx module"


class ModelAdapter(eqx.Module):
    r"""A model given as parameters and a rule applying them, as an equinox module.

    Its only array field is `params`, so its floating-point leaves are exactly the trained
    parameters; `apply` is static. Calling it on one input `x` (no batch axis) returns
    `apply(params, x)`. Build one with [`ntkode.from_apply`][] or [`ntkode.from_flax`][].

    **Fields:**

    - `params`: the parameter pytree (for nnx, an `nnx.State` of the module's `nnx.Param`s).
    - `apply`: an [`ntkode.AbstractApply`][]: how `params` meet one input.
    """

    params: PyTree[Array]
    apply: AbstractApply = eqx.field(static=True)

    def __call__(self, x: Float[Array, " ..."], *, key: Any = None) -> Array:
        del key  # deterministic, accepted like equinox's layers
        try:
            return self.apply(self.params, x)
        except Exception as err:  # noqa: BLE001 - re-raised with what to do next
            hint = (
                "; if it needs a batch axis, build the adapter with `batched=True`"
                if not self.apply.batched
                else ""
            )
            raise ValueError(
                f"{self.apply.describe()} failed on one example of shape {tuple(x.shape)}: "
                f"{type(err).__name__}: {err}. ntkode applies models to single examples "
                f"(no batch axis){hint}."
            ) from err


# ---------------------------------------------------------------- constructors


def _check_params(params: Any, name: str) -> PyTree[Array]:
    """Every leaf an array (Python and NumPy scalars refused), at least one floating."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    out = []
    for path, leaf in leaves:
        where = f"`{name}{jax.tree_util.keystr(path)}`"
        if isinstance(leaf, bool | int | float | complex | np.generic):
            raise TypeError(
                f"{where} is the Python/NumPy scalar {leaf!r}; parameters must be arrays so "
                "that they can be trained: store it as `jnp.asarray(...)`."
            )
        if not isinstance(leaf, jax.Array | np.ndarray):
            raise TypeError(
                f"{where} is a {type(leaf).__name__}, not an array: `{name}` must be a pytree "
                "(nested tuples, lists, dicts) whose leaves are jax or numpy arrays."
            )
        out.append(jnp.asarray(leaf))
    if not any(jnp.issubdtype(a.dtype, jnp.inexact) for a in out):
        raise ValueError(
            f"`{name}` holds no floating-point arrays, so there is nothing to train or to "
            "differentiate; pass the model's weights as float arrays."
        )
    return jax.tree.unflatten(treedef, out)


def from_apply(
    apply: Callable[[PyTree[Array], Array], Array], params: PyTree[Array], *, batched: bool = False
) -> ModelAdapter:
    """A model `x ↦ apply(params, x)` as an equinox module ntkode can train and differentiate.

    **Arguments:**

    - `apply`: a pure function of the parameters and one input, e.g. the `apply_fun` of
      `jax.example_libraries.stax.serial(...)` or the `apply` of `haiku.without_apply_rng(
      haiku.transform(f))`. It is traced by JAX; it must not depend on Python state.
    - `params`: its parameters, a pytree of arrays (the floating-point ones are trained).
    - `batched`: `True` if `apply` expects a batch axis (stax convolutions do): it is then
      called on a batch of one.

    **Returns:** a [`ntkode.ModelAdapter`][]. Its NTK comes from per-example Jacobians: a
    function is opaque, so the structured engine's per-layer Gram products do not apply.
    """
    if not callable(apply):
        raise TypeError(
            f"`apply` must be a function apply(params, x), got {type(apply).__name__}; "
            "call from_apply(apply, params) in that order."
        )
    params = _check_params(params, "params")
    empty = lambda v: isinstance(v, tuple | list | dict) and not jax.tree.leaves(v)
    held = jax.tree.map(lambda v: None if empty(v) else v, params, is_leaf=empty)
    return ModelAdapter(held, FunctionApply(apply, jax.tree.structure(params), bool(batched)))


def _import_flax():
    try:
        import flax  # noqa: F401
        import flax.linen
        from flax import nnx
    except ImportError as err:  # pragma: no cover - depends on the installation
        raise ImportError(
            'from_flax needs flax: install it with `pip install "ntkode[flax]"` '
            "(or `pip install flax`)."
        ) from err
    return flax.linen, nnx


def from_flax(module: Any, variables: Mapping[str, Any] | None = None, *, batched: bool = False):
    """A flax model as an equinox module ntkode can train and differentiate.

    **Arguments:**

    - `module`: a flax linen module (`flax.linen.Module`) or a flax nnx module
      (`flax.nnx.Module`).
    - `variables`: for linen, the variables `module.init(key, x)` returned (the
      `"params"` collection is trained; other collections, such as `"batch_stats"`, are held
      fixed); a bound linen module (`module.bind(variables)`) needs none. For nnx, leave it
      out: an nnx module holds its own state (its `nnx.Param`s are trained, the rest fixed).
    - `batched`: `True` if the module expects a batch axis: it is then called on a batch of
      one.

    **Returns:** a [`ntkode.ModelAdapter`][]. The structured NTK recognises flax `Dense`
    (linen) and `Linear` (nnx) layers with their default dot product (per-layer Gram
    products) and `Conv` layers (local Jacobians); anything else is differentiated as a whole.
    """
    linen, nnx = _import_flax()
    if isinstance(module, nnx.Module):
        if variables is not None:
            raise ValueError(
                "`variables` is for flax linen modules; an nnx module holds its own state: "
                "call from_flax(module) without it (use nnx.update(module, state) first to "
                "load other weights)."
            )
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        params = _check_params(params, "module's nnx.Param state")
        return ModelAdapter(params, NNXApply(graphdef, Frozen(rest), bool(batched)))
    if isinstance(module, linen.Module):
        if variables is None:
            if module.scope is None:
                raise ValueError(
                    f"The flax linen module {type(module).__name__} holds no weights: pass the "
                    "variables that `module.init(key, x)` returned, "
                    "from_flax(module, variables)."
                )
            module, variables = module.unbind()
        if not isinstance(variables, Mapping) or "params" not in variables:
            keys = list(variables) if isinstance(variables, Mapping) else type(variables)
            raise ValueError(
                f"`variables` must be the dict `module.init(key, x)` returns, with a "
                f"'params' collection; got {keys!r}. If you hold the parameters alone, pass "
                "{'params': params}."
            )
        variables = {name: value for name, value in variables.items()}
        params = _check_params(variables.pop("params"), "variables['params']")
        return ModelAdapter(params, LinenApply(module, Frozen(variables), bool(batched)))
    raise TypeError(
        f"`module` must be a flax linen or nnx module, got {type(module).__name__}; for a "
        "function apply(params, x) use ntkode.from_apply, and equinox modules need no adapter."
    )
