r"""`AbstractKernelGrid`: neural tangent kernels at the nodes $s_1 < \dots < s_G$ of a schedule.

Each node holds the train kernel $\Theta_g(X, X)$ and the test kernel $\Theta_g(X_*, X)$,
flat as `(n·k, n·k)` and `(m·k, n·k)` like [`ntkode.KernelFlowProblem`][]. How they are
stored is a strategy: [`ntkode.KernelGrid`][] keeps them dense
(`ntkode/_scheduled/_dense.py`), [`ntkode.LowRankKernelGrid`][] keeps the top-`r`
eigenpairs of each train kernel and the test kernel projected on them
(`ntkode/_scheduled/_low_rank.py`), and [`ntkode.SharedKernelGrid`][] one `(n, n)` kernel
per node shared by the `k` outputs, $\bar\Theta \otimes I_k$
(`ntkode/_scheduled/_shared.py`); the last two are what let many kernels of a large
training set fit in memory. The surrogate, the exact solver, the certificate and grid
tuning only use the products and spectra declared here, so each storage answers for itself.

Grids from a network: [`AbstractKernelGrid.from_params`][] (kernels at given parameter
states) and [`AbstractKernelGrid.from_solution`][] (kernels at snapshots $\theta(t_g)$ of a
true-flow solution): a grid of local linearisations (Jacot et al. 2018; Lee et al. 2019), each
a linear time-invariant model, which the scheduled surrogate interpolates.
"""

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from .._core._data import Dataset
from .._core._errors import is_concrete
from .._core._kernel_flow import flatten_kernel
from .._core._model import partition
from .._core._solution import Solution
from .._ntk import AbstractNTKImplementation, ntk
from ._schedule import AbstractSchedule, Time

Implementation = Literal["auto", "structured", "jacobian", "ntvp", "reference"]


def check_finite_per_node(name: str, a: Any) -> None:
    """Refuse non-finite entries of a per-node array `(G, ...)` (checked if concrete)."""
    if not is_concrete(a):
        return
    v = np.asarray(a)
    if not np.all(np.isfinite(v)):
        bad = [g for g in range(v.shape[0]) if not np.all(np.isfinite(v[g]))]
        raise ValueError(
            f"`{name}` has non-finite entries (NaN or infinity) at node(s) {bad}; recompute "
            "those kernels (a diverged reference run is the usual cause)."
        )


def check_nodes(nodes: Any) -> None:
    """Nodes must be a non-empty, finite, strictly increasing 1-D array (checked if concrete)."""
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


def init_metadata(grid: Any, dtype: Any, times, u0_train, u0_test, n_outputs: int) -> None:
    """Set the fields every grid has besides its kernels (inside a grid's `__init__`)."""
    for name, value in (("times", times), ("u0_train", u0_train), ("u0_test", u0_test)):
        setattr(grid, name, None if value is None else jnp.asarray(value, dtype))
    grid.n_outputs = int(n_outputs)


def check_grid(grid: Any) -> None:
    """Refuse anything but a kernel grid, naming the two kinds."""
    if not isinstance(grid, AbstractKernelGrid):
        raise TypeError(
            "`grid` must be a kernel grid (ntkode.KernelGrid or ntkode.LowRankKernelGrid), "
            f"got {type(grid).__name__}."
        )


class AbstractKernelGrid(eqx.Module):
    r"""Neural tangent kernels $\Theta_1, \dots, \Theta_G$ at nodes $s_1 < \dots < s_G$.

    **Fields** (every grid):

    - `nodes`: strictly increasing scheduling values, `(G,)`.
    - `times`: reference times at which the kernels were taken, `(G,)`, or `None`.
    - `u0_train`, `u0_test`: the reference run's initial outputs (`(n, k)`, `(m, k)`) or
      `None`; a [`ntkode.ScheduledKernelProblem`][] starts from them by default.
    - `n_outputs`: `k`.

    Subclasses say how the kernels are stored by implementing the products
    (`train_matvec`, `test_matvec`), the spectra (`spectral`, `eigenvalues`), the dense
    views (`dense_train`, `dense_test`), the sizes (`dim`, `n_test_outputs`, `rank`) and
    `with_zero_test`.
    """

    nodes: eqx.AbstractVar[Float[Array, " G"]]
    times: eqx.AbstractVar[Float[Array, " G"] | None]
    u0_train: eqx.AbstractVar[Float[Array, "n k"] | None]
    u0_test: eqx.AbstractVar[Float[Array, "m k"] | None]
    n_outputs: eqx.AbstractVar[int]

    # ---------------------------------------------------------------- sizes

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """`n·k`, the train-output dimension."""

    @property
    @abc.abstractmethod
    def n_test_outputs(self) -> int:
        """`m·k`, the test-output dimension (0 for a grid without test kernels)."""

    @property
    @abc.abstractmethod
    def rank(self) -> int:
        """Stored rank per node (`n·k` when dense)."""

    @property
    def size(self) -> int:
        """Number of nodes `G`."""
        return self.nodes.shape[-1]

    @property
    def n_train(self) -> int:
        """`n`, the number of train examples."""
        return self.dim // self.n_outputs

    @property
    def n_test(self) -> int:
        """`m`, the number of test examples (0 for a grid without test kernels)."""
        return self.n_test_outputs // self.n_outputs

    # ---------------------------------------------------------------- products and spectra

    @abc.abstractmethod
    def train_matvec(
        self, idx: Int[Array, " a"], w: Float[Array, " a"], v: Float[Array, " nk"]
    ) -> Float[Array, " nk"]:
        r"""$\sum_j w_j \Theta_{\text{idx}_j}(X, X)\, v$."""

    @abc.abstractmethod
    def test_matvec(
        self, idx: Int[Array, " a"], w: Float[Array, " a"], v: Float[Array, " nk"]
    ) -> Float[Array, " mk"]:
        r"""$\sum_j w_j \Theta_{\text{idx}_j}(X_*, X)\, v$."""

    def piece_operators(
        self, idx: Int[Array, " a"], w: Float[Array, " a"]
    ) -> tuple[Callable[[Array], Array], Callable[[Array], Array]]:
        r"""`(train, test)` products with the piece combination $\sum_j w_j \Theta_{\text{idx}_j}$.

        For many products with the same piece (a Lanczos basis takes `m` of them): grids
        whose kernels are stored dense form the combination once here, so each product is one
        pass over one matrix instead of a gather and a combination of `support` of them.
        """
        return (lambda v: self.train_matvec(idx, w, v), lambda v: self.test_matvec(idx, w, v))

    @abc.abstractmethod
    def spectral(
        self,
    ) -> tuple[Float[Array, "G r"], Float[Array, "G nk r"], Float[Array, "G mk r"]]:
        r"""`(eigvals, eigvecs, test_basis)` per node, eigenvalues ascending.

        `test_basis` is $\Theta_g(X_*, X) V_g$: with it, the exact solver never forms a test
        kernel.
        """

    @abc.abstractmethod
    def piece_spectral(
        self, idx: Int[Array, " a"], w: Float[Array, " a"]
    ) -> tuple[Float[Array, " r"], Float[Array, "nk r"], Float[Array, "mk r"]]:
        r"""`(eigvals, eigvecs, test_basis)` of the combination $\sum_j w_j \Theta_{\text{idx}_j}$.

        Eigenvalues ascending; `test_basis` is $\sum_j w_j \Theta_{\text{idx}_j}(X_*, X) V$. A
        piece of a piecewise-constant schedule carries such a combination
        (`ntkode/_scheduled/_exact.py`).
        """

    def piece_frame(
        self, idx: Int[Array, " a"], w: Float[Array, " a"]
    ) -> tuple[Float[Array, " r"], Float[Array, "q r"], Float[Array, "mk r"]]:
        r"""`piece_spectral` with eigenvectors in the piece's frame: `(eigvals, mix, test_basis)`.

        Without [`AbstractKernelGrid.frame_bases`][] (the default), `mix` is the eigenvectors
        themselves. A [`ntkode.LowRankKernelGrid`][] returns them as coordinates on the
        stacked bases of the piece's nodes, $V = [V_{\text{idx}_1} \dots V_{\text{idx}_a}]
        \,\text{mix}$, so the exact solver never forms the `(n·k, a·r)` eigenvectors.
        """
        return self.piece_spectral(idx, w)

    def frame_bases(self) -> Float[Array, "G nk r"] | None:
        """The node bases `(G, n·k, r)` that `piece_frame`'s `mix` multiplies, or `None`."""
        return None

    def piece_frames(self, idx: Int[Array, "P a"], w: Float[Array, "P a"]) -> tuple:
        """[`AbstractKernelGrid.piece_frame`][] of every piece, stacked along a piece axis.

        One piece at a time by default (a dense piece kernel is `(n·k)²` numbers); grids
        whose pieces share work (a low-rank grid's cross-Grams of neighbouring nodes) do it
        once here.
        """
        return jax.lax.map(lambda iw: self.piece_frame(*iw), (idx, w))

    @abc.abstractmethod
    def eigenvalues(self) -> Float[Array, "G nk"]:
        """All `n·k` train-kernel eigenvalues per node, ascending (unstored ones are 0)."""

    @abc.abstractmethod
    def dense_train(self) -> Float[Array, "G nk nk"]:
        """The train kernels as dense matrices."""

    @abc.abstractmethod
    def dense_test(self) -> Float[Array, "G mk nk"]:
        """The test kernels as dense matrices."""

    @abc.abstractmethod
    def with_zero_test(self, rows: int) -> "AbstractKernelGrid":
        """The same grid with zero test kernels of `rows` rows (test outputs then stay put)."""

    def with_nodes(self, nodes: Float[Array, " G"]) -> "AbstractKernelGrid":
        """The same kernels at other scheduling values (unchecked: for traced code)."""
        return eqx.tree_at(lambda g: g.nodes, self, jnp.asarray(nodes, self.nodes.dtype))

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_params(
        cls,
        params: PyTree[Array] | Sequence[PyTree[Array]],
        model: Any,
        data: Dataset,
        nodes: Float[ArrayLike, " G"],
        *,
        times: Float[ArrayLike, " G"] | None = None,
        rank: int | None = None,
        implementation: Implementation | AbstractNTKImplementation = "auto",
        u0_train: Float[ArrayLike, "n k"] | None = None,
        u0_test: Float[ArrayLike, "m k"] | None = None,
        trace: bool = False,
        block_size: int | None = None,
        landmarks: int | None = None,
        compress: dict[str, Any] | None = None,
    ) -> "AbstractKernelGrid":
        r"""Kernels of `model` at given parameter states.

        **Arguments:**

        - `params`: the floating-point parameter pytree (as `ntkode.Solution.weights`) stacked
          along a leading node axis, or a sequence of such pytrees, or of whole models.
        - `model`: supplies the non-float structure (`partition(model)[1]`).
        - `data`: train inputs (and test inputs, for the test kernels).
        - `nodes`: scheduling value of each state, strictly increasing.
        - `times`, `u0_train`, `u0_test`: kept on the grid (see the fields).
        - `rank`: if given, keep the top-`rank` eigenpairs (see [`KernelGrid.compress`][]).
          Each node's kernel is compressed as soon as it is built, so one dense kernel at a
          time is held, not `G`.
        - `compress`: keyword arguments of [`KernelGrid.compress`][] for `rank`
          (`krylov_dim`, or `sketch` and `power_iterations`; default: a full
          eigendecomposition per node).
        - `implementation`, `block_size`: passed to [`ntkode.ntk`][] (`block_size` bounds
          the memory of each kernel's computation).
        - `trace`: keep the mean diagonal output block $\bar\Theta = \operatorname{tr}_k
          \Theta / k$ of each kernel, shared by the `k` outputs, instead of the full
          `(n·k)²` blocks (a [`ntkode.SharedKernelGrid`][]: `k²` times less memory).
        - `landmarks`: if given, never form the `(n·k)²` kernels: a Nyström approximation
          from the kernel columns of that many landmark training points (a seeded uniform
          sample), `O(n·landmarks)` kernel entries per node, rank `landmarks·k`, with the
          compression error *estimated* from 64 sampled kernel rows
          (`ntkode/_scheduled/_nystrom.py`).

        The kernels are Gram matrices $J J^\top$ by construction: they are symmetrised but
        not eigen-checked (that check costs an $O((nk)^3)$ eigendecomposition per node).

        **Returns:** a dense [`ntkode.KernelGrid`][]; a [`ntkode.LowRankKernelGrid`][] when
        `rank` or `landmarks` is given (with `trace=True` and `rank`, that of
        [`ntkode.SharedKernelGrid.compress`][]); a [`ntkode.SharedKernelGrid`][] with
        `trace=True`.
        """
        # The storages are themselves built on this class.
        from ._dense import KernelGrid
        from ._shared import SharedKernelGrid

        if compress is not None and not isinstance(compress, dict):
            raise TypeError(
                "`compress` must be a dict of KernelGrid.compress options (e.g. "
                f"dict(sketch=288, power_iterations=1)), got {compress!r}."
            )
        if compress is not None and rank is None:
            raise ValueError(
                f"`compress` ({compress!r}) only applies with `rank`: pass the rank to keep, or "
                "drop `compress`."
            )
        if landmarks is not None and (trace or rank is not None):
            raise ValueError(
                "`landmarks` (a Nyström grid) does not combine with `trace=True` or `rank`: "
                "its rank is the number of landmarks (times the outputs); drop the others."
            )
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
        n, m, k = data.n_train, data.n_test, data.n_outputs
        kw = dict(implementation=implementation, trace=trace, block_size=block_size)
        meta = dict(n_outputs=k, times=times, u0_train=u0_train, u0_test=u0_test, psd_tol=None)
        if landmarks is not None:
            from ._nystrom import nystrom_grid

            nkw = dict(implementation=implementation, block_size=block_size)
            return nystrom_grid(states, static, data, nodes, landmarks, meta=meta, **nkw)

        def as_flat(a, rows):
            # Traced kernels sum the k diagonal blocks: divide by k for their mean.
            return a / k if trace else flatten_kernel(a, rows, n, k, "kernel")

        kts, kss, parts = [], [], []
        for i, p in enumerate(states):
            net = eqx.combine(p, static)
            kt = as_flat(ntk(net, data.x_train, **kw), n)
            kt = 0.5 * (kt + kt.T)
            if m:
                ks = as_flat(ntk(net, data.x_test, data.x_train, **kw), m)
            else:
                ks = jnp.zeros((0, kt.shape[1]), kt.dtype)
            if rank is None:
                kts.append(kt)
                kss.append(ks)
            else:  # this node alone, compressed before the next kernel is built
                cls = SharedKernelGrid if trace else KernelGrid
                node = cls(nodes[i : i + 1], kt[None], ks[None], n_outputs=k, psd_tol=None)
                parts.append(node.compress(rank, **(compress or {})))
                del kt, ks, node
        if rank is not None:
            from ._low_rank import stack_low_rank

            return stack_low_rank(parts, nodes, **{a: v for a, v in meta.items() if a != "psd_tol"})
        if trace:
            return SharedKernelGrid(nodes, jnp.stack(kts), jnp.stack(kss), **meta)
        return KernelGrid(nodes, jnp.stack(kts), jnp.stack(kss), **meta)

    @classmethod
    def from_solution(
        cls,
        sol: Solution,
        times: Float[ArrayLike, " G"],
        model: Any,
        data: Dataset,
        *,
        schedule: AbstractSchedule = Time(),
        rank: int | None = None,
        implementation: Implementation | AbstractNTKImplementation = "auto",
        trace: bool = False,
        block_size: int | None = None,
        landmarks: int | None = None,
        compress: dict[str, Any] | None = None,
    ) -> "AbstractKernelGrid":
        """Kernels along a true-flow solution, at the saved times nearest to `times`.

        The solution must carry weights: solve the [`ntkode.GradientFlowProblem`][] with
        `save_weights=True` and `saveat` containing `times`. Node values are
        `schedule(t_g, u(t_g))` (time by default; e.g. `schedules.LossLevel()` for a
        loss-scheduled grid), sorted increasingly. The grid remembers the run's initial
        outputs as the default starting point of a surrogate. `rank`, `compress`,
        `implementation`, `trace`, `block_size` and `landmarks` are as in
        [`AbstractKernelGrid.from_params`][].

        **Returns:** as [`AbstractKernelGrid.from_params`][].
        """
        if not isinstance(sol, Solution):
            raise TypeError(f"`sol` must be an ntkode.Solution, got {type(sol).__name__}.")
        if sol.weights is None:
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
            trace=trace,
            block_size=block_size,
            landmarks=landmarks,
            compress=compress,
        )

    @classmethod
    def from_linearised_steps(
        cls,
        problem: Any,
        times: Float[ArrayLike, " G"],
        *,
        substeps: int = 1,
        schedule: AbstractSchedule = Time(),
        piece_basis: Any = None,
        rank: int | None = None,
        krylov_dim: int | None = None,
        trace: bool = False,
        implementation: Implementation | AbstractNTKImplementation = "auto",
        block_size: int | None = None,
        landmarks: int | None = None,
    ) -> "AbstractKernelGrid":
        r"""Kernels at the states of a cheap run: exponential steps of the linearised network.

        No true flow is solved. From the problem's initial weights, each interval between
        consecutive `times` is crossed in `substeps` steps; a step of length $h$ from
        $\theta_j$ solves the linearised network's MSE flow exactly,
        $\theta_{j+1} = \theta_j - \tfrac{\eta}{n}J_j^\top\Phi_h r_j$,
        $\Phi_h = \int_0^h e^{-\eta\Theta_j s/n}ds$ (exponential Euler with the Gauss–Newton
        linearisation; Hochbruck & Ostermann 2010; Lee et al. 2019), so the step length is
        not limited by stiffness. Each step costs one kernel (which the grid keeps at the
        node times), one $\Phi_h r$ and one vector-Jacobian product. See
        `ntkode/_scheduled/_linearised.py`.

        **Arguments:**

        - `problem`: an [`ntkode.GradientFlowProblem`][] with mean MSE.
        - `times`: node times, strictly increasing, inside the problem's `tspan`.
        - `substeps`: steps per interval between node times (kernels at the extra steps
          are computed and dropped).
        - `schedule`: node values, as in [`AbstractKernelGrid.from_solution`][].
        - `piece_basis`: how each step applies $\Phi_h$: [`ntkode.EigenBasis`][] (default)
          or [`ntkode.KrylovBasis`][] (for large `n`).
        - `rank`, `krylov_dim`: keep a low-rank grid ([`KernelGrid.compress`][]).
        - `trace`, `implementation`, `block_size`: as in [`AbstractKernelGrid.from_params`][].
        - `landmarks`: Nyström kernels (as in [`AbstractKernelGrid.from_params`][]) for the
          steps and the grid: `O(n·landmarks)` kernel entries per step instead of `O(n²)`.
          Each step then moves the residual outside the kernels' span as if its eigenvalues
          were 0 (by $h\,r$), a good approximation only where the missing spectrum is small
          against $1/(ch)$.

        **Returns:** a kernel grid whose `times` are `times` and whose initial outputs are the
        problem's.
        """
        from ._basis import EigenBasis
        from ._linearised import linearised_grid

        return linearised_grid(
            problem,
            times,
            substeps=substeps,
            schedule=schedule,
            piece_basis=EigenBasis() if piece_basis is None else piece_basis,
            rank=rank,
            krylov_dim=krylov_dim,
            trace=trace,
            implementation=implementation,
            block_size=block_size,
            landmarks=landmarks,
        )


def _is_model(x) -> bool:
    return isinstance(x, eqx.Module) and not isinstance(x, jax.Array)


__all__ = ["AbstractKernelGrid", "check_grid", "check_nodes", "init_metadata"]
