r"""`KernelGrid`: neural tangent kernels at the nodes $s_1 < \dots < s_G$ of a schedule.

Each node holds the train kernel $\Theta_g(X, X)$ and the test kernel $\Theta_g(X_*, X)$,
flat as `(n·k, n·k)` and `(m·k, n·k)` like [`ntkode.KernelFlowProblem`][]. Storage is dense,
or low-rank (the top-`r` eigenpairs of each train kernel and the test kernel projected on
them), which is what lets many kernels of a large training set fit in memory; the
compression error is kept beside them.
"""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PyTree

from .._core._data import Dataset
from .._core._errors import is_concrete
from .._core._kernel_flow import flatten_kernel
from .._core._model import apply, partition
from ._schedule import AbstractSchedule, Time


def _check_nodes(nodes) -> None:
    if not is_concrete(nodes):
        return
    a = np.asarray(nodes)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"`nodes` must be a non-empty 1-D array, got shape {a.shape}.")
    if not np.all(np.isfinite(a)):
        raise ValueError("`nodes` contains non-finite values; pass finite scheduling values.")
    d = np.diff(a)
    if np.any(d == 0):
        i = int(np.flatnonzero(d == 0)[0])
        raise ValueError(
            f"`nodes` has a repeated value {a[i]!r} (positions {i} and {i + 1}); each node "
            "needs its own scheduling value. Drop the duplicate kernel or move the node."
        )
    if np.any(d < 0):
        raise ValueError(
            "`nodes` must be strictly increasing; sort them (and their kernels) first, e.g. "
            "`order = jnp.argsort(nodes)`, or use KernelGrid.from_solution, which sorts."
        )


def _check_kernels(name: str, k: Any, G: int, psd_tol: float | None) -> Array:
    """Finite, symmetric within tolerance (then symmetrised), PSD within tolerance."""
    if not is_concrete(k):
        return 0.5 * (k + jnp.swapaxes(k, -1, -2)) if psd_tol is not None else k
    a = np.asarray(k)
    if not np.all(np.isfinite(a)):
        bad = [g for g in range(G) if not np.all(np.isfinite(a[g]))]
        raise ValueError(
            f"`{name}` has non-finite entries (NaN or infinity) at node(s) {bad}; recompute "
            "those kernels (a diverged reference run is the usual cause)."
        )
    if psd_tol is None:
        return k
    scale = max(float(np.max(np.abs(a))), np.finfo(a.dtype).tiny)
    asym = float(np.max(np.abs(a - np.swapaxes(a, -1, -2))))
    if asym > 1e-4 * scale + 10 * psd_tol * scale:
        raise ValueError(
            f"`{name}` is not symmetric (max |K - Kᵀ| = {asym:.3g}, max |K| = {scale:.3g}); "
            "a train kernel Θ(X, X) is symmetric. Did you pass a test kernel Θ(X*, X)?"
        )
    sym = 0.5 * (a + np.swapaxes(a, -1, -2))
    lam = np.linalg.eigvalsh(sym)
    lo, hi = lam[:, 0], np.max(np.abs(lam), axis=1)
    bad = np.flatnonzero(lo < -psd_tol * np.maximum(hi, np.finfo(a.dtype).tiny))
    if bad.size:
        g = int(bad[np.argmin(lo[bad])])
        raise ValueError(
            f"`{name}` is not positive semi-definite: node {g} has eigenvalue {lo[g]:.6g} "
            f"(largest |eigenvalue| {hi[g]:.6g}; tolerance {psd_tol:.1g} relative). Neural "
            "tangent kernels are Gram matrices J Jᵀ; check how the kernel was built, or pass "
            "`psd_tol=None` to skip this check."
        )
    return jnp.asarray(sym, dtype=a.dtype)


def _default_tol(dtype) -> float:
    # Round-off in J Jᵀ gives eigenvalues of order sqrt(eps)·λ_max at worst in practice.
    return float(np.sqrt(np.finfo(dtype).eps))


class KernelGrid(eqx.Module):
    r"""Neural tangent kernels $\Theta_1, \dots, \Theta_G$ at nodes $s_1 < \dots < s_G$.

    **Arguments:**

    - `nodes`: strictly increasing scheduling values, shape `(G,)`.
    - `kernel_train`: `(G, n·k, n·k)` or `(G, n, n, k, k)` train kernels $\Theta_g(X, X)$.
    - `kernel_test`: `(G, m·k, n·k)` or `(G, m, n, k, k)` test kernels $\Theta_g(X_*, X)$;
      default none (zero rows: test outputs then stay at their initial values).
    - `n_outputs`: `k`, needed to read flat kernels (default 1).
    - `times`: optional reference times at which the kernels were taken (metadata).
    - `u0_train`, `u0_test`: optional outputs at the reference run's start; a
      [`ntkode.ScheduledKernelProblem`][] starts from them by default.
    - `psd_tol`: relative tolerance of the symmetry/PSD check (default $\sqrt{\epsilon}$);
      `None` skips it.

    Other constructors: [`KernelGrid.from_solution`][], [`KernelGrid.from_params`][];
    [`KernelGrid.compress`][] turns a dense grid into a low-rank one.
    """

    nodes: Float[Array, " G"]
    kernel_train: Float[Array, "G nk nk"] | None
    kernel_test: Float[Array, "G mk nk"] | None
    eigvals: Float[Array, "G r"] | None
    eigvecs: Float[Array, "G nk r"] | None
    test_basis: Float[Array, "G mk r"] | None
    compression_error: Float[Array, "G 2"] | None
    times: Float[Array, " G"] | None
    u0_train: Float[Array, "n k"] | None
    u0_test: Float[Array, "m k"] | None
    n_outputs: int = eqx.field(static=True)

    def __init__(
        self,
        nodes,
        kernel_train,
        kernel_test=None,
        *,
        n_outputs: int = 1,
        times=None,
        u0_train=None,
        u0_test=None,
        psd_tol: float | None | str = "auto",
    ):
        nodes = jnp.asarray(nodes)
        if not jnp.issubdtype(nodes.dtype, jnp.inexact):
            nodes = nodes.astype(jnp.result_type(float))
        _check_nodes(nodes)
        G = nodes.shape[0]
        kt = jnp.asarray(kernel_train)
        if not jnp.issubdtype(kt.dtype, jnp.inexact):
            kt = kt.astype(jnp.result_type(float))
        if kt.ndim == 5:
            n, n2, k, k2 = kt.shape[1:]
            if n != n2 or k != k2:
                raise ValueError(
                    f"`kernel_train` has shape {kt.shape}; expected (G, n, n, k, k) for a train "
                    "kernel Θ(X, X)."
                )
            n_outputs = k
            kt = jax.vmap(lambda a: flatten_kernel(a, n, n, k, "kernel_train"))(kt)
        if kt.ndim != 3 or kt.shape[1] != kt.shape[2]:
            raise ValueError(
                f"`kernel_train` has shape {kt.shape}; expected (G, n·k, n·k) or (G, n, n, k, k)."
            )
        if kt.shape[0] != G:
            raise ValueError(
                f"`kernel_train` holds {kt.shape[0]} kernels but `nodes` has {G} values; "
                "pass one kernel per node."
            )
        nk = kt.shape[1]
        if nk % n_outputs:
            raise ValueError(
                f"`kernel_train` size {nk} is not a multiple of n_outputs={n_outputs}."
            )
        n = nk // n_outputs
        if kernel_test is None:
            ks = jnp.zeros((G, 0, nk), kt.dtype)
        else:
            ks = jnp.asarray(kernel_test, kt.dtype)
            if ks.ndim == 5:
                m = ks.shape[1]
                ks = jax.vmap(lambda a: flatten_kernel(a, m, n, n_outputs, "kernel_test"))(ks)
            if ks.ndim != 3 or ks.shape[0] != G or ks.shape[2] != nk or ks.shape[1] % n_outputs:
                raise ValueError(
                    f"`kernel_test` has shape {ks.shape}; expected ({G}, m·{n_outputs}, {nk}) or "
                    f"({G}, m, {n}, {n_outputs}, {n_outputs}) to match `kernel_train`."
                )
        tol = _default_tol(kt.dtype) if psd_tol == "auto" else psd_tol
        kt = _check_kernels("kernel_train", kt, G, tol)
        _check_kernels("kernel_test", ks, G, None)
        self.nodes = nodes.astype(kt.dtype)
        self.kernel_train = kt
        self.kernel_test = ks
        self.eigvals = self.eigvecs = self.test_basis = self.compression_error = None
        self.times = None if times is None else jnp.asarray(times, kt.dtype)
        self.u0_train = None if u0_train is None else jnp.asarray(u0_train, kt.dtype)
        self.u0_test = None if u0_test is None else jnp.asarray(u0_test, kt.dtype)
        self.n_outputs = int(n_outputs)

    # ---------------------------------------------------------------- sizes

    @property
    def size(self) -> int:
        """Number of nodes `G`."""
        return self.nodes.shape[-1]

    @property
    def low_rank(self) -> bool:
        return self.kernel_train is None

    @property
    def dim(self) -> int:
        """`n·k`, the train-output dimension."""
        src = self.eigvecs if self.low_rank else self.kernel_train
        return src.shape[-2]

    @property
    def n_test_outputs(self) -> int:
        """`m·k`, the test-output dimension (0 for a grid without test kernels)."""
        src = self.test_basis if self.low_rank else self.kernel_test
        return src.shape[-2]

    @property
    def n_train(self) -> int:
        return self.dim // self.n_outputs

    @property
    def n_test(self) -> int:
        return self.n_test_outputs // self.n_outputs

    @property
    def rank(self) -> int:
        """Stored rank per node (`n·k` when dense)."""
        return self.eigvals.shape[-1] if self.low_rank else self.dim

    # ---------------------------------------------------------------- products

    def train_matvec(
        self, idx: Int[Array, " a"], w: Float[Array, " a"], v: Float[Array, " nk"]
    ) -> Float[Array, " nk"]:
        r"""$\sum_j w_j \Theta_{\text{idx}_j}(X, X)\, v$."""
        if self.low_rank:
            lam, vec = self.eigvals[idx], self.eigvecs[idx]
            return jnp.einsum("a,air,ar,ajr,j->i", w, vec, lam, vec, v)
        return jnp.einsum("a,aij,j->i", w, self.kernel_train[idx], v)

    def test_matvec(
        self, idx: Int[Array, " a"], w: Float[Array, " a"], v: Float[Array, " nk"]
    ) -> Float[Array, " mk"]:
        r"""$\sum_j w_j \Theta_{\text{idx}_j}(X_*, X)\, v$."""
        if self.low_rank:
            return jnp.einsum("a,air,ajr,j->i", w, self.test_basis[idx], self.eigvecs[idx], v)
        return jnp.einsum("a,aij,j->i", w, self.kernel_test[idx], v)

    def spectral(self) -> tuple[Array, Array, Array]:
        """`(eigvals (G, r), eigvecs (G, nk, r), test_basis (G, mk, r))`, ascending order.

        Dense grids are diagonalised here (one `eigh` per node); low-rank grids return what
        they store. `test_basis = Θ_*(X_*, X) V`.
        """
        if self.low_rank:
            return self.eigvals, self.eigvecs, self.test_basis  # pyright: ignore[reportReturnType]
        lam, vec = jax.vmap(jnp.linalg.eigh)(self.kernel_train)
        return lam, vec, jnp.einsum("gij,gjr->gir", self.kernel_test, vec)

    def dense_train(self) -> Float[Array, "G nk nk"]:
        """Train kernels as dense matrices (reconstructed from eigenpairs if low-rank)."""
        if self.low_rank:
            return jnp.einsum("gir,gr,gjr->gij", self.eigvecs, self.eigvals, self.eigvecs)
        return self.kernel_train  # pyright: ignore[reportReturnType]

    def compress(self, rank: int) -> "KernelGrid":
        """A low-rank copy keeping the top-`rank` eigenpairs of each train kernel.

        The test kernels are projected on the same eigenvectors ($\\Theta_* V V^\\top$).
        `compression_error[:, 0]` and `[:, 1]` are the relative Frobenius errors of the train
        and test kernels at each node.
        """
        if self.low_rank:
            raise ValueError("This grid is already low-rank; compress the dense grid instead.")
        rank = int(rank)
        if not 1 <= rank <= self.dim:
            raise ValueError(f"`rank` must be between 1 and n·k = {self.dim}, got {rank}.")
        lam, vec = jax.vmap(jnp.linalg.eigh)(self.kernel_train)
        lam_r, vec_r = lam[:, -rank:], vec[:, :, -rank:]
        basis = jnp.einsum("gij,gjr->gir", self.kernel_test, vec_r)
        err_train = jnp.sqrt(jnp.sum(lam[:, :-rank] ** 2, axis=1) / jnp.sum(lam**2, axis=1))
        approx = jnp.einsum("gir,gjr->gij", basis, vec_r)
        norm = jnp.sqrt(jnp.sum(self.kernel_test**2, axis=(1, 2)))
        err_test = jnp.sqrt(jnp.sum((self.kernel_test - approx) ** 2, axis=(1, 2))) / jnp.where(
            norm > 0, norm, 1.0
        )
        err = jnp.stack([err_train, err_test], axis=1)
        return eqx.tree_at(
            lambda g: (
                g.kernel_train,
                g.kernel_test,
                g.eigvals,
                g.eigvecs,
                g.test_basis,
                g.compression_error,
            ),
            self,
            (None, None, lam_r, vec_r, basis, err),
            is_leaf=lambda x: x is None,
        )

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_params(
        cls,
        params: PyTree[Array] | Sequence[PyTree[Array]],
        model: Any,
        data: Dataset,
        nodes,
        *,
        times=None,
        rank: int | None = None,
        implementation: str = "auto",
        u0_train=None,
        u0_test=None,
    ) -> "KernelGrid":
        """Kernels of `model` at given parameter states.

        **Arguments:**

        - `params`: the floating-point parameter pytree (as `ntkode.Solution.weights`) stacked
          along a leading node axis, or a sequence of such pytrees, or of whole models.
        - `model`: supplies the non-float structure (`partition(model)[1]`).
        - `data`: train inputs (and test inputs, for the test kernels).
        - `nodes`: scheduling value of each state, strictly increasing.
        - `rank`: if given, compress to the top-`rank` eigenpairs (see `compress`).
        - `implementation`: passed to [`ntkode.ntk`][].

        **Returns:** a `KernelGrid`.
        """
        from .._ntk import ntk

        static = partition(model)[1]
        if isinstance(params, list | tuple):
            states = [partition(p)[0] if _is_model(p) else p for p in params]
        else:
            leaves = jax.tree.leaves(params)
            if not leaves:
                raise ValueError("`params` holds no arrays.")
            count = leaves[0].shape[0]
            states = [jax.tree.map(lambda a, i=i: a[i], params) for i in range(count)]
        nodes = jnp.asarray(nodes, dtype=jnp.result_type(float))
        if len(states) != nodes.shape[0]:
            raise ValueError(
                f"{len(states)} parameter states but {nodes.shape[0]} nodes; pass one node each."
            )
        k = data.n_outputs
        kts, kss = [], []
        for p in states:
            m = eqx.combine(p, static)
            kt = ntk(m, data.x_train, implementation=implementation)
            kts.append(flatten_kernel(kt, data.n_train, data.n_train, k, "kernel_train"))
            if data.n_test:
                ks = ntk(m, data.x_test, data.x_train, implementation=implementation)
                kss.append(flatten_kernel(ks, data.n_test, data.n_train, k, "kernel_test"))
            else:
                kss.append(jnp.zeros((0, data.n_train * k), kts[-1].dtype))
        grid = cls(
            nodes,
            jnp.stack(kts),
            jnp.stack(kss),
            n_outputs=k,
            times=times,
            u0_train=u0_train,
            u0_test=u0_test,
        )
        return grid if rank is None else grid.compress(rank)

    @classmethod
    def from_solution(
        cls,
        sol: Any,
        times,
        model: Any,
        data: Dataset,
        *,
        schedule: AbstractSchedule = Time(),
        rank: int | None = None,
        implementation: str = "auto",
    ) -> "KernelGrid":
        """Kernels along a true-flow solution, at the saved times nearest to `times`.

        The solution must carry weights: solve the [`ntkode.GradientFlowProblem`][] with
        `save_weights=True` and `saveat` containing `times`. Node values are
        `schedule(t_g, u(t_g))` (time by default; e.g. `schedules.LossLevel()` for a
        loss-scheduled grid), sorted increasingly. The grid remembers the run's initial
        outputs as the default starting point of a surrogate.

        **Returns:** a `KernelGrid`.
        """
        if getattr(sol, "weights", None) is None:
            raise ValueError(
                "`sol` carries no weights: solve the GradientFlowProblem with "
                "`save_weights=True` and `saveat` containing the node times."
            )
        if sol.t.ndim != 1:
            raise ValueError("Pass a single trajectory (index ensemble solutions: `sol[i]`).")
        ts = np.asarray(sol.t)
        req = np.atleast_1d(np.asarray(times, dtype=float))
        span = max(float(ts[-1] - ts[0]), 1.0)
        idx = np.abs(ts[None, :] - req[:, None]).argmin(axis=1)
        # Saved times carry the solution's precision (float32 times are ~1e-7 relative).
        tol = max(1e-9, 10 * float(np.finfo(ts.dtype).eps)) * span
        far = np.abs(ts[idx] - req) > tol
        if np.any(far):
            raise ValueError(
                f"`times` {req[far].tolist()} are not among the solution's saved times; solve "
                "with `saveat` containing them, e.g. `saveat=jnp.union1d(ts, times)`."
            )
        if len(set(idx.tolist())) != len(idx):
            raise ValueError("`times` contains repeated times; pass each node time once.")
        nodes = np.asarray(
            [float(schedule(sol.t[i], sol.train[i], sol.y_train, sol.loss)) for i in idx]
        )
        order = np.argsort(nodes, kind="stable")
        idx, nodes = idx[order], nodes[order]
        if np.any(np.diff(nodes) == 0):
            raise ValueError(
                "Two node times give the same scheduling value (the schedule did not change "
                "between them, e.g. a loss plateau); choose other times or another schedule."
            )
        params = jax.tree.map(lambda a: a[jnp.asarray(idx)], sol.weights)
        return cls.from_params(
            params,
            model,
            data,
            nodes,
            times=ts[idx],
            rank=rank,
            implementation=implementation,
            u0_train=sol.train[0],
            u0_test=sol.test[0],
        )


def _is_model(x) -> bool:
    return isinstance(x, eqx.Module) and not isinstance(x, jax.Array)


def initial_outputs(model: Any, data: Dataset) -> tuple[Array, Array]:
    """The model's outputs on the train and test inputs (a surrogate's starting point)."""
    return apply(model, data.x_train), apply(model, data.x_test)


__all__ = ["KernelGrid", "initial_outputs"]
