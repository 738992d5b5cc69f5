r"""Masked linear kernels: the multiple-kernel-learning (MKL) view of gated-ReLU networks.

A gate $g$ splits the training inputs by the hyperplane $g^\top x = 0$; its *arrangement
pattern* is the diagonal mask $D = \mathrm{diag}(\mathbb 1[X g \ge 0])$. Finitely many patterns
$D_1, \dots, D_p$ exist. For weights $\eta$ on the simplex, the MKL kernel is

$$K_\eta = \sum_i \eta_i D_i X X^\top D_i = (X X^\top) \circ (M^\top \mathrm{diag}(\eta) M),$$

with $M$ the $p \times n$ 0/1 mask matrix. The gated-ReLU NTK is $K_\eta$ with $\eta_i$ the
probability that a random gate produces pattern $i$ (Dwaraknath, Ergen & Pilanci 2023);
[`ntkode.ntk_weights`][] estimates it. Kernel ridge regression with $K_\eta$ has
training objective $J(\eta) = \frac\lambda2 \mathrm{tr}\, Y^\top (K_\eta + \lambda I)^{-1} Y$,
the optimum of the weighted group-ridge program in [`ntkode.mkl_objective`][].
"""

import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._core._errors import check_finite, check_positive
from .._core._regression import ridge_solve
from ._network import _check_gates

# Exact enumeration visits C(n, d-1)·2^d candidate gates; beyond this it is not "small".
_MAX_ENUMERATION = 400_000


def _check_inputs(x, name: str = "x") -> Array:
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"`{name}` must be a non-empty matrix (n, d), got shape {x.shape}.")
    check_finite(name, x)
    return x


def _masks(x: Array, gates: Array) -> Array:
    """0/1 masks `(p, n)`: `masks[i, a] = 1[x_a · g_i ≥ 0]`."""
    return (gates @ x.T >= 0).astype(x.dtype)


class MaskedKernels(eqx.Module):
    r"""The family $\{D_i X X^\top D_i\}_{i=1}^p$ of masked linear kernels on training inputs.

    Build it with [`ntkode.MaskedKernels.from_gates`][] (sampled gates, duplicates merged) or
    [`ntkode.MaskedKernels.enumerate`][] (every arrangement pattern, small dimension). Each
    pattern keeps one *representative gate*, which defines its mask on new inputs.

    **Fields:**

    - `x`: training inputs `(n, d)`.
    - `gates`: one representative gate per pattern, `(p, d)`.
    - `masks`: the patterns on `x`, `(p, n)` with entries 0/1.
    - `counts`: how many sampled gates produced each pattern `(p,)` (zeros when enumerated).
    """

    x: Float[Array, "n d"]
    gates: Float[Array, "p d"]
    masks: Float[Array, "p n"]
    counts: Float[Array, " p"]

    @property
    def num_patterns(self) -> int:
        return self.masks.shape[0]

    @classmethod
    def from_gates(cls, x: Float[Array, "n d"], gates: Float[Array, "m d"]) -> "MaskedKernels":
        """The distinct patterns of sampled `gates` on `x`, with how often each occurred.

        **Arguments:**

        - `x`: training inputs `(n, d)`.
        - `gates`: gate vectors `(m, d)`, e.g. `jax.random.normal(key, (m, d))`.

        **Returns:** a `MaskedKernels` whose `counts` sum to `m` (in order of first occurrence).
        """
        x = _check_inputs(x)
        gates = _check_gates(gates, x.shape[1])
        masks = np.asarray(_masks(x, gates.astype(x.dtype))).astype(bool)
        _, first, inverse, counts = np.unique(
            masks, axis=0, return_index=True, return_inverse=True, return_counts=True
        )
        order = np.argsort(first)
        return cls(
            x,
            jnp.asarray(np.asarray(gates)[first[order]], x.dtype),
            jnp.asarray(masks[first[order]], x.dtype),
            jnp.asarray(counts[order], x.dtype),
        )

    @classmethod
    def enumerate(cls, x: Float[Array, "n d"]) -> "MaskedKernels":
        r"""Every arrangement pattern of $x$ (exact, for small dimension).

        In a central hyperplane arrangement of full rank, every region has an extreme ray on
        $d-1$ of the hyperplanes; perturbing each such ray towards the $2^{d-1}$ sign choices
        of those points visits every region. For points in general position this finds all
        $2\sum_{i<d} \binom{n-1}{i}$ patterns (Cover 1965).

        **Arguments:**

        - `x`: training inputs `(n, d)` of rank `d`, with `C(n, d-1)·2^d` at most 400,000.

        **Returns:** a `MaskedKernels` with one gate per pattern (`counts` all zero).
        """
        x = _check_inputs(x)
        xn = np.asarray(x, dtype=np.float64)
        n, d = xn.shape
        cost = math.comb(n, d - 1) * 2**d
        if cost > _MAX_ENUMERATION:
            raise ValueError(
                f"Enumerating the patterns of {n} points in dimension {d} needs {cost} candidate "
                f"gates (limit {_MAX_ENUMERATION}); use `MaskedKernels.from_gates` with sampled "
                "gates instead."
            )
        if np.linalg.matrix_rank(xn) < d:
            raise ValueError(
                f"`x` has rank {np.linalg.matrix_rank(xn)} < d = {d}; exact enumeration needs "
                "full column rank (drop redundant features first)."
            )
        if d == 1:
            gates = np.array([[1.0], [-1.0]])
        else:
            scale = np.max(np.abs(xn))
            signs = np.array(list(itertools.product([-1.0, 1.0], repeat=d - 1)))
            found = []
            for subset in itertools.combinations(range(n), d - 1):
                xs = xn[list(subset)]
                _, sv, vt = np.linalg.svd(xs)
                if sv[-1] <= 1e-10 * scale:
                    continue  # these d-1 points do not pin down a ray
                ray = vt[-1]
                # Points exactly on the ray's hyperplanes take their sign from the push.
                push = signs @ np.linalg.pinv(xs).T  # (2^(d-1), d): x_S · push = signs
                on_ray = np.abs(xn @ ray) <= 1e-10 * scale * np.linalg.norm(xn, axis=1)
                margin = np.abs(xn[~on_ray] @ ray)
                for s in (1.0, -1.0):
                    if margin.size:
                        shift = np.abs(xn[~on_ray] @ push.T)  # (n_off, 2^(d-1))
                        ratio = margin[:, None] / np.maximum(shift, 1e-300)
                        eps = np.minimum(0.5 * np.min(ratio, axis=0), 1.0)
                    else:
                        eps = np.ones(len(signs))
                    found.append(s * ray[None, :] + eps[:, None] * push)
            if not found:
                raise ValueError("`x` has no d-1 linearly independent rows to enumerate from.")
            gates = np.concatenate(found)
        fam = cls.from_gates(jnp.asarray(xn, x.dtype), jnp.asarray(gates, x.dtype))
        return eqx.tree_at(lambda f: f.counts, fam, jnp.zeros_like(fam.counts))

    def masks_at(self, x1: Float[Array, "n1 d"]) -> Float[Array, "p n1"]:
        """Each pattern's mask on new inputs `x1`, through its representative gate."""
        x1 = _check_inputs(x1, "x1")
        if x1.shape[1] != self.x.shape[1]:
            raise ValueError(
                f"`x1` has {x1.shape[1]} features but the kernels were built on {self.x.shape[1]}."
            )
        return _masks(x1.astype(self.x.dtype), self.gates)

    def kernel(
        self, eta: Float[Array, " p"], x1: Float[Array, "n1 d"] | None = None
    ) -> Float[Array, "n1 n"]:
        r"""$K_\eta(x_1, X) = \sum_i \eta_i D_i(x_1)\, x_1 X^\top D_i$ (`x1` defaults to `X`).

        **Arguments:**

        - `eta`: weights on the probability simplex, shape `(p,)`.
        - `x1`: optional new inputs `(n1, d)`; masks there come from the representative gates.

        **Returns:** the kernel matrix `(n1, n)`; with `x1=None` it is `(n, n)`, symmetric PSD.
        """
        eta = check_simplex(eta, self.num_patterns)
        return _kernel(self, eta, x1)


def _kernel(family: MaskedKernels, eta: Array, x1: Array | None = None) -> Array:
    """`K_η` without validation (used inside solvers, where `eta` may be a tracer)."""
    m = family.masks
    if x1 is None:
        return (family.x @ family.x.T) * ((m.T * eta) @ m)
    m1 = _masks(x1.astype(family.x.dtype), family.gates)
    return (x1 @ family.x.T) * ((m1.T * eta) @ m)


def check_simplex(eta, p: int | None = None, name: str = "eta", atol: float = 1e-6) -> Array:
    """Validate weights on the probability simplex: shape `(p,)`, entries ≥ 0, sum 1.

    **Arguments:**

    - `eta`: the weights.
    - `p`: the expected number of entries (the number of kernels), if known.
    - `name`: the argument's name, for the message.
    - `atol`: tolerance on `|Σ η − 1|`.

    **Returns:** `eta` as an array.
    """
    eta = jnp.asarray(eta)
    if eta.ndim != 1 or (p is not None and eta.shape[0] != p):
        want = f"({p},)" if p is not None else "(p,)"
        raise ValueError(
            f"`{name}` must have shape {want} (one weight per kernel), got {eta.shape}."
        )
    check_finite(name, eta)
    if isinstance(eta, jax.core.Tracer):
        return eta
    arr = np.asarray(eta)
    if np.any(arr < 0):
        raise ValueError(
            f"`{name}` has {int(np.sum(arr < 0))} negative entries (smallest {arr.min():.3g}); "
            "kernel weights must be non-negative (clip them, or pass probabilities)."
        )
    if abs(float(arr.sum()) - 1.0) > atol:
        raise ValueError(
            f"`{name}` sums to {float(arr.sum()):.6g}, not 1: weights must lie on the "
            "probability simplex (divide by their sum)."
        )
    return eta


def ntk_weights(
    family: MaskedKernels,
    *,
    method: str = "auto",
    num_samples: int = 100_000,
    key: jax.Array | None = None,
) -> tuple[Float[Array, " p"], Float[Array, " p"]]:
    r"""The gated-ReLU NTK's weights: $\eta_i = P_{g \sim N(0, I)}(\mathbb 1[Xg \ge 0] = D_i)$.

    **Arguments:**

    - `family`: the masked kernels.
    - `method`: `"counts"` (frequencies of the sampled gates that built the family: then
      $K_\eta$ is *exactly* the empirical NTK of a gated-ReLU network with those gates, unit
      read-out and the read-out frozen), `"monte_carlo"` (fresh Gaussian gates), `"exact"`
      (arc lengths; `d ≤ 2` only), or `"auto"` (`counts` when the family was sampled, else
      `exact` in `d ≤ 2`, else `monte_carlo`).
    - `num_samples`, `key`: Monte Carlo sample size and key (default `jax.random.key(0)`).

    **Returns:** `(eta, stderr)`: weights on the simplex and their standard errors
    $\sqrt{\eta_i(1-\eta_i)/N}$ (zeros for `"exact"`).
    """
    x = np.asarray(family.x, np.float64)
    d = x.shape[1]
    sampled = float(jnp.sum(family.counts)) > 0
    if method == "auto":
        method = "counts" if sampled else ("exact" if d <= 2 else "monte_carlo")
    if method == "counts":
        if not sampled:
            raise ValueError(
                "`method='counts'` needs a family built by `MaskedKernels.from_gates`; this "
                "one was enumerated. Use method='monte_carlo' or 'exact'."
            )
        total = float(jnp.sum(family.counts))
        eta = family.counts / total
        return eta, jnp.sqrt(eta * (1 - eta) / total)
    if method == "monte_carlo":
        check_positive("num_samples", num_samples)
        key = jax.random.key(0) if key is None else key
        gates = np.asarray(jax.random.normal(key, (int(num_samples), d), family.x.dtype))
        hits = np.asarray(_masks(family.x, jnp.asarray(gates))).astype(bool)
        counts, missing = _match(family, hits, np.ones(len(hits)))
        if missing:
            raise ValueError(
                f"{missing} of {int(num_samples)} sampled gates produced patterns outside the "
                "family; build it with `MaskedKernels.enumerate` (or from more gates)."
            )
        eta = jnp.asarray(counts / counts.sum(), family.x.dtype)
        return eta, jnp.sqrt(eta * (1 - eta) / counts.sum())
    if method == "exact":
        if d > 2:
            raise ValueError(f"`method='exact'` is available for d ≤ 2, got d = {d}.")
        if d == 1:
            dirs = np.array([[1.0], [-1.0]])
            arcs = np.array([0.5, 0.5])
        else:
            # Boundaries of the 2n half-planes are the directions ±x_i^⊥; arcs between them.
            ang = np.arctan2(x[:, 1], x[:, 0])
            bounds = np.sort(np.mod(np.concatenate([ang + np.pi / 2, ang - np.pi / 2]), 2 * np.pi))
            nxt = np.concatenate([bounds[1:], bounds[:1] + 2 * np.pi])
            mid = 0.5 * (bounds + nxt)
            dirs = np.stack([np.cos(mid), np.sin(mid)], axis=1)
            arcs = (nxt - bounds) / (2 * np.pi)
        hits = np.asarray(_masks(family.x, jnp.asarray(dirs, family.x.dtype))).astype(bool)
        probs, missing = _match(family, hits, arcs)
        if missing:
            raise ValueError(
                "Some arrangement patterns are missing from the family; build it with "
                "`MaskedKernels.enumerate` for exact weights."
            )
        eta = jnp.asarray(probs, family.x.dtype)
        return eta, jnp.zeros_like(eta)
    raise ValueError(
        f"Unknown `method` {method!r}; choose 'auto', 'counts', 'monte_carlo' or 'exact'."
    )


def _match(family: MaskedKernels, hits: np.ndarray, weights: np.ndarray):
    """Accumulate `weights` of each row of `hits` onto the family's pattern index."""
    index = {row.tobytes(): i for i, row in enumerate(np.asarray(family.masks).astype(bool))}
    out = np.zeros(family.num_patterns)
    missing = 0
    for row, w in zip(hits, weights, strict=True):
        i = index.get(row.tobytes())
        if i is None:
            missing += 1
        else:
            out[i] += w
    return out, missing


def _ridge_solve(kernel: Array, y: Array, reg) -> Array:
    """`(K + λI)^{-1} Y` (K + λI is SPD): ntkode's one ridge solve, factorised once."""
    return ridge_solve(kernel, y, jnp.asarray(reg, kernel.dtype))


def _as_targets(y, n: int) -> Array:
    y = jnp.asarray(y)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n:
        raise ValueError(f"`y` must have shape ({n},) or ({n}, k), got {y.shape}.")
    check_finite("y", y)
    return y


def mkl_objective(
    family: MaskedKernels, eta: Float[Array, " p"], y: Float[Array, "n k"], reg: float
) -> Float[Array, ""]:
    r"""Kernel-ridge training objective of the MKL kernel $K_\eta$.

    $J(\eta) = \min_{W} \tfrac12 \|Y - \sum_i D_i X W_i\|^2 + \tfrac\lambda2 \sum_i
    \|W_i\|^2/\eta_i = \tfrac\lambda2 \mathrm{tr}\, Y^\top (K_\eta + \lambda I)^{-1} Y$.
    Its minimum over the simplex equals the squared group lasso
    $\min_W \tfrac12\|Y - \sum_i D_i X W_i\|^2 + \tfrac\lambda2 (\sum_i \|W_i\|)^2$, the
    convex program of the gated-ReLU network (Dwaraknath et al. 2023).

    **Arguments:**

    - `family`: the masked kernels; `eta`: weights on the simplex; `y`: targets `(n,)` or
      `(n, k)`; `reg`: the ridge parameter `λ > 0`.

    **Returns:** the scalar $J(\eta)$.
    """
    eta = check_simplex(eta, family.num_patterns)
    check_positive("reg", reg)
    y = _as_targets(y, family.x.shape[0])
    alpha = _ridge_solve(_kernel(family, eta), y, reg)
    return 0.5 * reg * jnp.sum(y * alpha)
