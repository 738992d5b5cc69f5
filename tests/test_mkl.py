"""Gated-ReLU NTK as multiple kernel learning, and the optimal weights (Dwaraknath, Ergen and
Pilanci 2023, "Fixing the NTK: from neural network linearizations to exact convex programs")."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkode as nk
from ntkode.datasets._uci import sign_targets
from ntkode.studies._cli import build_parser
from ntkode.studies._mkl import _cli as _cli_mkl


def _points(n, d, seed=0):
    return jax.random.normal(jax.random.key(seed), (n, d), jnp.float64)


# -- item 2: the NTK is an MKL kernel --------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(jnp.float64, 1e-12), (jnp.float32, 1e-5)])
def test_frozen_readout_ntk_equals_masked_kernel(dtype, tol):
    # With |v_j| = 1 frozen, Θ = (1/m) Σ_j D_j X Xᵀ D_j = Σ_i η̂_i D_i X Xᵀ D_i exactly,
    # η̂ = pattern frequencies of the gates: only rounding separates the two (tol ~ 100 eps).
    x = _points(25, 4).astype(dtype)
    model = nk.GatedReLU(4, 1, 300, key=jax.random.key(1), train_readout=False, dtype=dtype)
    theta = nk.ntk(model, x)[:, :, 0, 0]
    family = nk.MaskedKernels.from_gates(x, model.gates)
    eta, _ = nk.ntk_weights(family, method="counts")
    k_eta = family.kernel(eta)
    assert family.num_patterns < model.width  # duplicates really were merged
    scale = float(jnp.max(jnp.abs(theta)))
    assert float(jnp.max(jnp.abs(theta - k_eta))) <= tol * scale
    assert k_eta.dtype == dtype


def test_trained_readout_ntk_is_masked_kernel_plus_readout_term():
    # Training v adds (1/m) Σ_j D_j (X u_j)(X u_j)ᵀ D_j; with v_j = ±1 the u-part is K_η̂.
    x = _points(20, 3)
    model = nk.GatedReLU(3, 1, 200, key=jax.random.key(2))
    theta = nk.ntk(model, x)[:, :, 0, 0]
    family = nk.MaskedKernels.from_gates(x, model.gates)
    eta, _ = nk.ntk_weights(family, method="counts")
    masks = (x @ model.gates.T >= 0).astype(x.dtype)  # (n, m)
    h = masks * (x @ model.u.T)
    readout = h @ h.T / model.width
    assert jnp.allclose(theta, family.kernel(eta) + readout, rtol=0, atol=1e-12)


def test_exact_weights_in_2d_give_the_closed_form():
    # In d = 2 patterns are arcs of the circle: η_i = arc/2π exactly, and Σ η_i D_i X Xᵀ D_i
    # is the linear kernel times (π − θ)/2π (half the degree-0 arc-cosine kernel).
    x = _points(15, 2, seed=3)
    family = nk.MaskedKernels.enumerate(x)
    assert family.num_patterns == 2 * 15  # Cover's count for n lines in general position
    eta, stderr = nk.ntk_weights(family, method="exact")
    assert float(jnp.max(stderr)) == 0.0
    assert abs(float(eta.sum()) - 1.0) < 1e-12
    closed = nk.gated_relu_ntk_infinite(x)
    assert float(jnp.max(jnp.abs(family.kernel(eta) - closed))) < 1e-12


def test_monte_carlo_weights_match_closed_form_within_their_error():
    # Entry (a, b) of K_η̂ is G_ab p̂_ab with p̂_ab a Monte Carlo frequency of
    # P(g·x_a ≥ 0, g·x_b ≥ 0): its z-score must be O(1). 5 standard errors over 78 entries
    # fails by chance with probability < 1e-4.
    n, d, num = 12, 4, 40_000
    x = _points(n, d, seed=4)
    family = nk.MaskedKernels.enumerate(x)
    assert family.num_patterns == 2 * sum(math.comb(n - 1, i) for i in range(d))
    eta, stderr = nk.ntk_weights(family, method="monte_carlo", num_samples=num)
    assert 0 < float(jnp.max(stderr)) < 0.01
    gram = x @ x.T
    prob = nk.gated_relu_ntk_infinite(x) / jnp.where(gram == 0, 1.0, gram)
    se = jnp.sqrt(prob * (1 - prob) / num)
    z = jnp.abs(family.kernel(eta) - nk.gated_relu_ntk_infinite(x)) / (jnp.abs(gram) * se)
    iu = jnp.triu_indices(n, 1)
    assert float(jnp.max(z[iu])) < 5.0
    # And the error is real: it is not identically zero (the check can fail).
    assert float(jnp.max(z[iu])) > 0.0


def test_empirical_ntk_converges_to_infinite_width():
    # Both parts of the full NTK converge to the closed form (total 2K) at rate m^{-1/2}:
    # 64× the width should cut the error about 8×; require 4×.
    x = _points(10, 3, seed=5)
    target = nk.gated_relu_ntk_infinite(x, train_readout=True)
    errs = []
    for m in (250, 16_000):
        model = nk.GatedReLU(3, 1, m, key=jax.random.key(6), readout="normal")
        errs.append(float(jnp.linalg.norm(nk.ntk(model, x)[:, :, 0, 0] - target)))
    assert errs[1] < errs[0] / 4


# -- kernels, objective, solvers --------------------------------------------------------------


def test_masked_kernels_are_psd():
    x = _points(40, 5, seed=7)
    family = nk.MaskedKernels.from_gates(x, _points(200, 5, seed=8))
    eta = jax.random.dirichlet(jax.random.key(9), jnp.ones(family.num_patterns))
    k = family.kernel(eta)
    ev = jnp.linalg.eigvalsh(k)
    assert jnp.allclose(k, k.T, atol=1e-14)
    assert float(ev[0]) >= -1e-12 * float(ev[-1])  # PSD up to rounding of the largest
    assert family.kernel(eta, _points(7, 5, seed=10)).shape == (7, 40)


@pytest.fixture(scope="module")
def small_problem():
    x = _points(30, 3, seed=11)
    y = jnp.sin(x.sum(1))
    return nk.MaskedKernels.enumerate(x), y


@pytest.mark.parametrize("accelerate", [False, True])
def test_reweighting_objective_never_increases(small_problem, accelerate):
    family, y = small_problem
    sol = nk.optimal_mkl(family, y, 0.3, max_iter=60, rtol=0.0, accelerate=accelerate)
    j, p = np.asarray(sol.objective), np.asarray(sol.primal)
    # J(η_{t+1}) ≤ P(W_t) ≤ J(η_t) in exact arithmetic; allow rounding (1e-12 relative).
    assert np.all(np.diff(j) <= 1e-12 * j[:-1])
    assert np.all(p <= j * (1 + 1e-12))
    assert np.all(j[1:] <= p[:-1] * (1 + 1e-12))
    assert j[-1] < 0.9 * j[0]  # and it does move
    # The dual values are lower bounds of every objective value.
    assert np.max(sol.dual) <= j[-1] * (1 + 1e-12)


def test_reweighting_in_float32(small_problem):
    # float32 keeps the monotone decrease up to its own rounding (1e-5 relative, ~100 eps)
    # and lands within 1e-4 of the float64 run after the same number of steps.
    family, y = small_problem
    f32 = jax.tree.map(lambda a: a.astype(jnp.float32), family)
    sol32 = nk.optimal_mkl(f32, y.astype(jnp.float32), 0.3, max_iter=40, rtol=0.0)
    sol64 = nk.optimal_mkl(family, y, 0.3, max_iter=40, rtol=0.0)
    j32 = np.asarray(sol32.objective)
    assert sol32.eta.dtype == jnp.float32
    assert np.all(np.diff(j32) <= 1e-5 * j32[:-1])
    assert abs(j32[-1] - float(sol64.objective[-1])) <= 1e-4 * float(sol64.objective[-1])


def test_reweighting_agrees_with_direct_group_lasso(small_problem):
    family, y = small_problem
    reg = 1.0
    sol = nk.optimal_mkl(family, y, reg, max_iter=400, rtol=1e-4)
    assert sol.converged  # certified: J − D ≤ 1e-4 J (measured: after about 250 steps)
    lower, j = float(np.max(sol.dual)), float(sol.objective[-1])
    gl = nk.group_lasso(family, y, reg, max_iter=5000)
    p_direct = float(gl.objective[-1])
    # Both solve one convex program, whose optimum lies in [D, J]. FISTA (converged by 5,000
    # steps: the value at 20,000 differs by 3e-15) may not beat the dual bound, and must agree
    # with reweighting to within the certified gap (measured |P − J| / J = 3e-6).
    assert p_direct >= lower * (1 - 1e-12)
    assert abs(p_direct - j) <= (j - lower) + 1e-12 * j
    # The objective is J(η) = (λ/2) yᵀ(K_η + λI)⁻¹y, as the public function says.
    assert abs(float(nk.mkl_objective(family, sol.eta, y, reg)) - j) <= 1e-12 * j


@pytest.mark.parametrize("name", ["iris", "wine", "diabetes"])
def test_optimal_mkl_objective_at_most_ntk(name):
    # The paper's claim on real data: min_η J(η) ≤ J(η_NTK), certified from a uniform start
    # (so the inequality is not just monotonicity from the NTK's weights).
    data = nk.datasets.uci(name, max_examples=120)
    x = jnp.concatenate([data.x_train, jnp.ones((data.n_train, 1))], axis=1).astype(jnp.float64)
    y = data.y_train.astype(jnp.float64)
    family = nk.MaskedKernels.from_gates(x, _points(150, x.shape[1], seed=12))
    eta_ntk, _ = nk.ntk_weights(family)
    reg = 0.1 * float(jnp.mean(jnp.diag(family.kernel(eta_ntk))))
    j_ntk = float(nk.kernel_ridge(family, y, reg, eta_ntk).objective[-1])
    sol = nk.optimal_mkl(family, y, reg, max_iter=400, rtol=1e-3)
    lower = float(np.max(sol.dual))
    assert lower <= float(sol.objective[-1]) <= j_ntk
    assert float(sol.objective[-1]) < 0.99 * j_ntk  # strictly better on these data


# -- study and CLI ----------------------------------------------------------------------------


def test_cli_quick(tmp_path):
    parser = build_parser.__globals__["argparse"].ArgumentParser()
    _cli_mkl.add_arguments(parser)
    args = parser.parse_args(["--quick", "--datasets", "iris", "--out", str(tmp_path)])
    assert _cli_mkl.run(args) == 0
    res = json.loads((tmp_path / "results.json").read_text())["results"]
    assert [r["name"] for r in res] == ["iris"]
    r = res[0]
    assert r["objective_mkl"] <= r["objective_ntk"]
    assert 0.0 <= r["ntk"]["test"] <= 1.0 and 0.0 <= r["mkl"]["test"] <= 1.0
    assert (tmp_path / "mkl.png").stat().st_size > 0


# -- bad input --------------------------------------------------------------------------------


def test_gates_of_wrong_dimension():
    x = _points(10, 3)
    with pytest.raises(ValueError, match="gates"):
        nk.MaskedKernels.from_gates(x, _points(5, 4))
    with pytest.raises(ValueError, match="gates"):
        nk.GatedReLU(3, 1, key=jax.random.key(0), gates=_points(5, 2))
    with pytest.raises(ValueError, match="x1"):
        nk.MaskedKernels.from_gates(x, _points(5, 3)).masks_at(_points(4, 2))


def test_weights_off_the_simplex():
    family = nk.MaskedKernels.from_gates(_points(10, 3), _points(40, 3, seed=1))
    p = family.num_patterns
    bad_sign = jnp.full((p,), 1.0 / (p - 2)).at[0].set(-1.0 / (p - 2))
    with pytest.raises(ValueError, match="negative"):
        family.kernel(bad_sign)
    with pytest.raises(ValueError, match="simplex"):
        family.kernel(jnp.full((p,), 2.0 / p))
    with pytest.raises(ValueError, match="shape"):
        family.kernel(jnp.full((p + 1,), 1.0 / (p + 1)))
    with pytest.raises(ValueError, match="eta0"):
        nk.optimal_mkl(family, jnp.ones(10), 1.0, eta0=jnp.full((p,), 2.0 / p))


def test_single_class_data():
    with pytest.raises(ValueError, match="single class"):
        sign_targets(np.array([3, 3, 3]))
    with pytest.raises(ValueError, match="single class"):
        nk.datasets.uci("iris", classes=[1])
    x = np.asarray(_points(12, 3))
    data = nk.Dataset(x[:8], np.ones((8, 1)), x[8:], np.ones((4, 1)))
    with pytest.raises(ValueError, match="single class"):
        nk.mkl_compare(data)


def test_other_bad_input():
    x = _points(10, 3)
    with pytest.raises(ValueError, match="reg"):
        nk.optimal_mkl(nk.MaskedKernels.from_gates(x, _points(8, 3)), jnp.ones(10), -1.0)
    with pytest.raises(ValueError, match="rank"):
        nk.MaskedKernels.enumerate(jnp.concatenate([x[:, :2], x[:, :1]], axis=1))
    with pytest.raises(ValueError, match="exact"):
        fam = nk.MaskedKernels.from_gates(x, _points(8, 3))
        nk.ntk_weights(fam, method="exact")


@pytest.mark.slow
def test_example_runs(capsys):
    # The example prints the NTK = K_η check and both objectives; ~6 s of CPU.
    import runpy
    from pathlib import Path

    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "gated_relu_mkl.py"))
    out = capsys.readouterr().out
    assert "max |NTK − K_η_NTK|" in out and "optimal MKL" in out
