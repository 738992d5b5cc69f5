r"""Activation patterns along a training run: which hidden units are on, and how often they switch.

For an MLP with hidden pre-activations $z_{l}(x_i) = W_l h_{l-1}(x_i) + b_l$, the *pattern* of
layer $l$ at time $t$ is the sign array $\mathbb 1[z_l(x_i) > 0]$ over training inputs $i$
and units. A ReLU network's NTK is piecewise constant in the pattern (its gates
$\operatorname{relu}'(z) = \mathbb 1[z > 0]$ enter every Jacobian), so every flip of an
(input, unit) pair makes the kernel jump. Patterns are stored packed, eight pairs a byte.

Two ways a pair can flip along a gradient flow: it *crosses* (its pre-activation passes
through zero once and moves on), or it *chatters*: gradient flow of a loss with kinks can
slide along a kink, where the flow on either side pushes the pre-activation back to zero
(a Filippov sliding mode; Filippov 1988, *Differential Equations with Discontinuous Righthand
Sides*), and an adaptive solver then steps back and forth across it. Crossings are counted
once however finely the run is sampled; chattering pairs are counted more the finer one
samples, and their pre-activations stay pinned near zero. `flip_rate` at several sampling
intervals and `pinned_ratio` tell the two apart.
"""

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

# Set bits in each byte value: the popcount of packed patterns.
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def hidden_preactivations(model: eqx.nn.MLP, x: Float[Array, "n d"]) -> list[Float[Array, "n w"]]:
    """Pre-activations of every hidden layer of an `equinox.nn.MLP` on a batch `x`.

    **Returns:** one `(n, width)` array per hidden layer, in order.
    """
    if not isinstance(model, eqx.nn.MLP):
        raise TypeError(
            f"Activation patterns are read from an equinox.nn.MLP, got {type(model).__name__}."
        )
    layers = model.layers
    if not all(isinstance(layer, eqx.nn.Linear) and layer.weight.ndim == 2 for layer in layers):
        raise ValueError(
            "This MLP stacks its hidden layers (`scan=True`); build it with `scan=False` to read "
            "its activation patterns."
        )
    zs = []
    h = x
    for layer in layers[:-1]:
        z = jax.vmap(layer)(h)
        zs.append(z)
        h = jax.vmap(jax.vmap(model.activation))(z)
    return zs


class Patterns(eqx.Module):
    """Packed activation patterns of each hidden layer at the sample times of a run.

    **Fields:**

    - `t`: sample times `(T,)`.
    - `packed`: per hidden layer, `(T, n, ceil(width/8))` bytes (`numpy.packbits` of
      $\\mathbb 1[z > 0]$ over units).
    - `width`: units per hidden layer.
    """

    t: np.ndarray
    packed: tuple[np.ndarray, ...]
    width: tuple[int, ...] = eqx.field(static=True)

    @property
    def pairs(self) -> tuple[int, ...]:
        """(input, unit) pairs per layer: `n · width`."""
        return tuple(p.shape[1] * w for p, w in zip(self.packed, self.width, strict=True))

    def flips(self, stride: int = 1) -> list[np.ndarray]:
        """Per layer, the number of pairs whose sign differs between samples `k·stride` and
        `(k+1)·stride`: `(⌈T/stride⌉ - 1,)` counts."""
        if int(stride) < 1:
            raise ValueError(f"`stride` must be a positive integer, got {stride!r}.")
        out = []
        for p in self.packed:
            q = p[:: int(stride)]
            out.append(_POPCOUNT[np.bitwise_xor(q[1:], q[:-1])].sum(axis=(1, 2)))
        return out

    def flip_rate(self, stride: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
        """Fraction of (input, unit) pairs that flip per unit time, sampled every `stride`
        samples: `(midpoints of the intervals, [rate per layer])`."""
        t = self.t[:: int(stride)]
        dt = np.diff(t)
        rates = [f / n / dt for f, n in zip(self.flips(stride), self.pairs, strict=True)]
        return 0.5 * (t[1:] + t[:-1]), rates

    def pair_flips(self) -> list[np.ndarray]:
        """Per layer, how often each (input, unit) pair flipped over the run, `(n, width)`."""
        out = []
        for p, w in zip(self.packed, self.width, strict=True):
            x = np.bitwise_xor(p[1:], p[:-1])
            counts = np.zeros(p.shape[1:2] + (p.shape[2] * 8,), np.int64)
            for k in range(x.shape[0]):  # one sample at a time: (T, n, w) bits would not fit
                counts += np.unpackbits(x[k], axis=-1)
            out.append(counts[:, :w])
        return out


def record_patterns(model: eqx.nn.MLP, weights, t, x: Float[Array, "n d"]) -> Patterns:
    """Activation patterns of `model` with the parameter states `weights` (stacked along a
    leading time axis, as `ntkode.Solution.weights`) on inputs `x`."""
    static = eqx.partition(model, eqx.is_inexact_array)[1]

    @jax.jit
    def signs(p):
        return [z > 0 for z in hidden_preactivations(eqx.combine(p, static), x)]

    T = int(np.shape(t)[0])
    packed = None
    for k in range(T):
        s = signs(jax.tree.map(lambda a: a[k], weights))
        if packed is None:
            packed = [np.empty((T, si.shape[0], (si.shape[1] + 7) // 8), np.uint8) for si in s]
        for store, si in zip(packed, s, strict=True):
            store[k] = np.packbits(np.asarray(si), axis=-1)
    assert packed is not None
    widths = tuple(int(layer.weight.shape[0]) for layer in model.layers[:-1])
    return Patterns(np.asarray(t, float), tuple(packed), widths)


def pinned_ratio(
    model: eqx.nn.MLP, weights, x: Float[Array, "n d"], chattering: list[np.ndarray]
) -> list[float]:
    """Per layer: median $|z|$ of the `chattering` pairs (boolean `(n, width)` masks) over the
    given states, divided by the median $|z|$ of all pairs. Far below 1: those pairs sit on
    their kink. NaN for a layer without chattering pairs."""
    static = eqx.partition(model, eqx.is_inexact_array)[1]
    zf = jax.jit(lambda p: hidden_preactivations(eqx.combine(p, static), x))
    T = jax.tree.leaves(weights)[0].shape[0]
    mine = [[] for _ in chattering]
    every = [[] for _ in chattering]
    for k in range(T):
        zs = zf(jax.tree.map(lambda a: a[k], weights))
        for store, rest, z, mask in zip(mine, every, zs, chattering, strict=True):
            a = np.abs(np.asarray(z))
            store.append(a[mask])
            rest.append(np.median(a))
    out = []
    for store, rest in zip(mine, every, strict=True):
        values = np.concatenate(store)
        out.append(float(np.median(values) / np.median(rest)) if values.size else float("nan"))
    return out


__all__ = ["Patterns", "hidden_preactivations", "pinned_ratio", "record_patterns"]
