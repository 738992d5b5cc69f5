r"""Kernels along a true-flow run, built from its saved states in four ways.

Write $J_t$ for the train Jacobian $\partial f(\theta_t, X)/\partial\theta$ at saved state $t$,
so that the NTK is $\Theta_t = J_t J_t^\top$ and, by the chain rule, the true outputs obey
$du/dt = J_t\,\dot\theta_t = -\eta\,\Theta_t \nabla_u L$ wherever the flow is differentiable.

- **point-sampled** $\Theta_t = J_t J_t^\top$ (what [`ntkode.KernelGrid.from_solution`][] builds);
- **window-mean kernel** $\frac1M\sum_m J_{t_m} J_{t_m}^\top$ over the saved states $t_m$ of a
  window around a node;
- **window-mean Jacobian** $\bar J \bar J^\top$ with $\bar J = \frac1M \sum_m J_{t_m}$. On a
  sliding mode of a ReLU network (an (input, unit) pair whose pre-activation is held at its
  kink, see `_patterns.py`) the flow moves with a convex combination $\lambda f_+ + (1-\lambda)
  f_-$ of the one-sided gradients (Filippov 1988), and the outputs with the *relaxed*
  Jacobian $J_\lambda = \lambda J_+ + (1-\lambda) J_-$: the effective kernel is $J_\lambda
  J_\lambda^\top$, whereas sampled kernels average to $\lambda J_+J_+^\top + (1-\lambda)
  J_-J_-^\top = J_\lambda J_\lambda^\top + \lambda(1-\lambda)(J_+ - J_-)(J_+ - J_-)^\top$, too
  large by a PSD term that no grid refinement removes. Averaging Jacobians over the window
  estimates $J_\lambda$ by the fraction of samples on each side;
- **soft-gated**: the NTK of the same weights with $\operatorname{softplus}(\beta z)/\beta$ in
  place of ReLU, whose gate $\sigma(\beta z) \approx \frac12$ on a kink relaxes every pinned pair
  at once ("smoothing the network only inside the surrogate").

Mixed products $J_{t_m} J_{t_{m'}}^\top$ come from [`ntkode.StructuredNTK`][]'s per-example
features of each state, contracted pairwise (the features of a dense layer are its inputs and
back-propagated signals, and the contraction of two states' features is their cross kernel).
"""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ... import StructuredNTK
from .._problems import SoftplusBeta


class RunKernels:
    """Train and test kernels of a model at the saved states of a run.

    **Arguments:**

    - `model`: the network (its structure and activation; weights come from `weights`).
    - `data`: a [`ntkode.Dataset`][] (train inputs, and test inputs for the test kernels).
    - `weights`: parameter states stacked along a leading axis (`ntkode.Solution.weights`).
    - `t`: the time of each state.
    - `soften`: if given, the kernels of the same weights with the activation replaced by
      [`ntkode.studies.SoftplusBeta`][]`(soften)`.

    Kernels are returned as `(n, n, k, k)` and `(m, n, k, k)`, as [`ntkode.ntk`][] does.
    """

    def __init__(self, model: Any, data, weights, t, *, soften: float | None = None):
        if soften is not None:
            model = eqx.tree_at(lambda m: m.activation, model, SoftplusBeta(float(soften)))
        self.static = eqx.partition(model, eqx.is_inexact_array)[1]
        self.data = data
        self.weights = weights
        self.t = np.asarray(t, float)
        impl = StructuredNTK()
        static = self.static
        self._features = jax.jit(lambda p, x: impl.features(p, static, x))
        self._contract = jax.jit(lambda f1, f2: impl.contract(None, static, f1, f2, False))

    def index(self, time: float) -> int:
        """The saved state nearest to `time`."""
        return int(np.abs(self.t - time).argmin())

    def window(self, centre: float, half_width: float) -> np.ndarray:
        """Indices of the saved states within `half_width` of `centre` (at least the nearest)."""
        idx = np.flatnonzero(np.abs(self.t - centre) <= half_width * (1 + 1e-9))
        return idx if idx.size else np.array([self.index(centre)])

    def _state(self, i: int):
        return jax.tree.map(lambda a: jnp.asarray(a[i]), self.weights)

    def features(self, i: int):
        """Per-example features of state `i` on the train and the test inputs."""
        p = self._state(i)
        return self._features(p, self.data.x_train), self._features(p, self.data.x_test)

    def point(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """$J_t J_t^\\top$ and $J_{*,t} J_t^\\top$ at state `i`."""
        f, fs = self.features(i)
        return np.asarray(self._contract(f, f)), np.asarray(self._contract(fs, f))

    def train(self, i: int) -> np.ndarray:
        """The train kernel at state `i` (no test kernel)."""
        f = self._features(self._state(i), self.data.x_train)
        return np.asarray(self._contract(f, f))

    def window_means(self, idx: Sequence[int]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        r"""Over the states `idx`: the mean kernel $\frac1M\sum_m J_m J_m^\top$ (`"mean_kernel"`)
        and the kernel of the mean Jacobian $\bar J\bar J^\top$ (`"mean_jacobian"`), train and
        test. Costs `M` feature passes and about `1.5 M²` contractions."""
        feats = [self.features(int(i)) for i in idx]
        M = len(feats)
        c = self._contract
        diag = [c(f, f) for f, _ in feats]
        diag_test = [c(fs, f) for f, fs in feats]
        kt = sum(diag)
        ks = sum(diag_test)
        kt_mean, ks_mean = kt / M, ks / M
        swap = lambda k: jnp.swapaxes(jnp.swapaxes(k, 0, 1), 2, 3)
        for a in range(M):
            for b in range(M):
                if a == b:
                    continue
                ks = ks + c(feats[a][1], feats[b][0])
                if a < b:  # J_a J_bᵀ + J_b J_aᵀ: one product and its transpose
                    cross = c(feats[a][0], feats[b][0])
                    kt = kt + cross + swap(cross)
        return {
            "mean_kernel": (np.asarray(kt_mean), np.asarray(ks_mean)),
            "mean_jacobian": (np.asarray(kt / M**2), np.asarray(ks / M**2)),
        }


def relative_change(a: np.ndarray, b: np.ndarray) -> float:
    """$\\|b - a\\|_F / \\|a\\|_F$."""
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def kernel_motion(
    kernels: RunKernels, anchors: Sequence[float], small: float, large: float
) -> dict[str, list[float]]:
    r"""How the train kernel moves along the run, at each anchor time $t$:

    - `jump`: $\|\Theta(t+\delta) - \Theta(t)\|_F/\|\Theta(t)\|_F$ with $\delta$ = `small`;
    - `drift`: the same over $\Delta$ = `large`, times $\delta/\Delta$: the change per $\delta$
      that steady drift would give.

    For a differentiable kernel path the two agree as $\delta \to 0$; `jump ≫ drift` means
    the kernel jumps back and forth between neighbouring samples faster than it moves.
    Anchors are the run's saved times nearest to those given; lags are measured between
    saved times.
    """
    out: dict[str, list[float]] = {"t": [], "jump": [], "drift": [], "small": [], "large": []}
    t_end = kernels.t[-1]
    for a in anchors:
        i = kernels.index(a)
        j, k = kernels.index(kernels.t[i] + small), kernels.index(kernels.t[i] + large)
        if kernels.t[i] + large > t_end * (1 + 1e-9) or j == i or k <= j:
            continue
        k0, kj, kk = kernels.train(i), kernels.train(j), kernels.train(k)
        d_small, d_large = kernels.t[j] - kernels.t[i], kernels.t[k] - kernels.t[i]
        out["t"].append(float(kernels.t[i]))
        out["jump"].append(relative_change(k0, kj))
        out["drift"].append(relative_change(k0, kk) * d_small / d_large)
        out["small"].append(float(d_small))
        out["large"].append(float(d_large))
    return out


__all__ = ["RunKernels", "kernel_motion", "relative_change"]
