r"""The per-step contraction certificate of gradient descent on a scheduled MSE surrogate.

For mean MSE the train residual $r_k = u_k - Y$ of [`ntkode.ScheduledDescentProblem`][]
obeys $r_{k+1} = (I - \eta_k\Theta(s_k)/n)\,r_k$. With convex weights
$\Theta(s) = \sum_g w_g\Theta_g$ and $\sum_g w_g = 1$,

$$I - \tfrac{\eta_k}{n}\Theta(s_k) = \sum_g w_g\,(I - \tfrac{\eta_k}{n}\Theta_g), \qquad
\|r_{k+1}\| \le \rho_k\,\|r_k\|, \quad
\rho_k = \max_{g\ \text{active}} \max\bigl(|1 - \eta_k\lambda_{\min,g}/n|,\
|1 - \eta_k\lambda_{\max,g}/n|\bigr)$$

by the triangle inequality (each $I - \eta\Theta_g/n$ is symmetric, with that spectral norm).
Hence the certified bounds $\|r_K\| \le \|r_0\|\prod_{k<K}\rho_k$ and
$L_K \le L_0 \prod_{k<K}\rho_k^2$ after $K$ steps, from the node spectra alone. $\rho_k < 1$
needs $\lambda_{\min,g} > 0$ and the stability limit $\eta_k\lambda_{\max,g}/n < 2$ at every
active node: the discrete-time counterpart of [`ntkode.certify`][] (whose common quadratic
Lyapunov function $\|r\|^2$ is the same).

[`ntkode.step_certificate`][] evaluates $\rho_k$ along any run, the surrogate's own (where
the bound is a theorem) or the real network's, with $s_k$ read from the network's outputs
(where it is a prediction, to be checked).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._core._losses import MSE
from .._scheduled._certify import Certificate, certify
from ._descent import Descent, scheduled_values
from ._surrogate import ScheduledDescentProblem


class StepCertificate(eqx.Module):
    r"""The per-step certificate along one run, and how the run compares with it.

    **Fields:**

    - `rho`: $\rho_k$, `(K,)`.
    - `stability`: $\eta_k \max_{\text{active}}\lambda_{\max,g}/n$ (stable below 2), `(K,)`.
    - `residual`: $\|r_k\|$ of the run, `(K+1,)`.
    - `bound`: $\|r_0\|\prod_{j<k}\rho_j$, `(K+1,)`; `loss_bound`: $\text{bound}^2/(2n)$,
      the certified mean-MSE train loss.
    - `ratio`: the run's $\|r_{k+1}\|/\|r_k\|$, `(K,)`.
    - `holds`: where $\|r_{k+1}\| \le \rho_k\|r_k\|$ (up to `slack`), `(K,)`.
    - `slack`: the relative round-off allowance used by `holds` (a few ulps of the
      run's precision times the step's size).

    `certified` says whether every step contracts ($\rho_k < 1$); `fraction_held` is the
    share of steps where the run obeyed its bound.
    """

    rho: Float[Array, " K"]
    stability: Float[Array, " K"]
    residual: Float[Array, " K+1"]
    bound: Float[Array, " K+1"]
    loss_bound: Float[Array, " K+1"]
    ratio: Float[Array, " K"]
    holds: Bool[Array, " K"]
    slack: Float[Array, " K"]

    @property
    def certified(self) -> bool:
        """Whether $\\rho_k < 1$ at every step (a strict contraction throughout)."""
        return bool(np.all(np.asarray(self.rho) < 1))

    @property
    def stable(self) -> bool:
        """Whether every step satisfied the stability limit at its active nodes."""
        return bool(np.all(np.asarray(self.stability) < 2))

    @property
    def fraction_held(self) -> float:
        """The share of steps with $\\|r_{k+1}\\| \\le \\rho_k\\|r_k\\|$."""
        return float(np.mean(np.asarray(self.holds)))

    @property
    def worst_violation(self) -> float:
        """$\\max_k \\|r_{k+1}\\| / (\\rho_k\\|r_k\\|)$: at most 1 where the bound held."""
        return float(np.max(np.asarray(self.ratio) / np.asarray(self.rho)))

    def summary(self) -> dict[str, float | bool]:
        return {
            "certified": self.certified,
            "stable": self.stable,
            "fraction_held": self.fraction_held,
            "worst_violation": self.worst_violation,
            "max_stability": float(np.max(np.asarray(self.stability))),
            "final_loss_bound": float(self.loss_bound[-1]),
        }


def step_certificate(
    problem: ScheduledDescentProblem, run: Descent, spectra: Certificate | None = None
) -> StepCertificate:
    r"""The per-step contraction certificate of `problem` evaluated along `run`.

    **Arguments:**

    - `problem`: the surrogate plant (mean MSE, convex interpolation) whose grid certifies.
    - `run`: a [`ntkode.Descent`][] on the same training set: the surrogate's own run, or
      the network's under the same policy (its scheduling values are read from its outputs).
    - `spectra`: the grid's node spectra (`ntkode.certify(problem.grid)`), to reuse them
      across runs; computed when `None`.

    **Returns:** a [`ntkode.StepCertificate`][].
    """
    if not isinstance(problem, ScheduledDescentProblem):
        raise TypeError(
            "`problem` must be an ntkode.ScheduledDescentProblem (the surrogate whose grid "
            f"certifies), got {type(problem).__name__}."
        )
    if not isinstance(run, Descent):
        raise TypeError(f"`run` must be an ntkode.Descent (from descend), not {type(run)}.")
    if not isinstance(problem.loss, MSE):
        raise ValueError(
            "The per-step certificate holds for mean MSE (the residual then moves linearly); "
            f"this problem's loss is {problem.loss.name!r}."
        )
    if not problem.interpolation.convex:
        raise ValueError(
            "The per-step certificate needs convex interpolation weights (all of "
            "ntkode.schedules are); this interpolation's are not."
        )
    y = problem.data.y_train
    if run.y_train.shape != y.shape or not bool(jnp.allclose(run.y_train, y)):
        raise ValueError(
            "`run` was trained on other targets than `problem`'s; certify a run on the same "
            "training set."
        )
    if spectra is None:
        spectra = certify(problem.grid, 1.0, problem.interpolation)
    return _certificate(problem, run, spectra.lambda_min, spectra.lambda_max)


@eqx.filter_jit
def _certificate(problem, run, lam_min, lam_max) -> StepCertificate:
    y = problem.data.y_train
    n = problem.data.n_train
    nodes = problem.grid.nodes
    s = scheduled_values(problem.schedule, run)[:-1]
    eta = run.eta

    def at(s_k, eta_k):
        idx, w = problem.interpolation.local(s_k, nodes)
        active = w > 0
        lo = jnp.abs(1 - eta_k * lam_min[idx] / n)
        hi = jnp.abs(1 - eta_k * lam_max[idx] / n)
        rho = jnp.max(jnp.where(active, jnp.maximum(lo, hi), 0.0))
        stability = jnp.max(jnp.where(active, eta_k * lam_max[idx] / n, 0.0))
        return rho, stability

    rho, stability = jax.vmap(at)(s, eta)
    r = (run.train - y).reshape(run.train.shape[0], -1)
    residual = jnp.linalg.norm(r, axis=1)
    bound = residual[0] * jnp.concatenate([jnp.ones((1,), rho.dtype), jnp.cumprod(rho)])
    ratio = residual[1:] / residual[:-1]
    # Round-off of one step: a few ulps of the step's size relative to the residual.
    eps = float(jnp.finfo(run.train.dtype).eps)
    slack = 64 * eps * (1 + eta * jnp.max(lam_max) / n)
    holds = residual[1:] <= rho * residual[:-1] * (1 + slack)
    return StepCertificate(
        rho=rho,
        stability=stability,
        residual=residual,
        bound=bound,
        loss_bound=bound**2 / (2 * n),
        ratio=ratio,
        holds=holds,
        slack=slack,
    )


__all__ = ["StepCertificate", "step_certificate"]
