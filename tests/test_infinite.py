"""Infinite-width NNGP/NTK: analytic cases, the two-layer mean-over-neurons formula, quadrature vs
closed forms, Monte-Carlo averages of finite networks, convergence in width, blocking, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_norm as _rel

import ntkode as nk

SQRT2 = math.sqrt(2.0)


def _x(n, d, seed=0, dtype=jnp.float64):
    return jax.random.normal(jax.random.key(seed), (n, d), dtype)


# -- analytic ----------------------------------------------------------------------------


def test_linear_network_matches_hand_recursion():
    # With the identity activation E[φφ] = Σ and E[φ'φ'] = 1, so the recursion is affine and can
    # be written out by hand. Gauss–Hermite is exact for polynomials, so agreement is to rounding.
    x = _x(6, 3)
    W, b, Wo, bo = 1.3, 0.4, 0.7, 0.2
    s0 = np.asarray(x @ x.T / 3)
    s1 = W**2 * s0 + b**2
    t1 = s1
    s2 = W**2 * s1 + b**2
    t2 = s2 + W**2 * t1
    nngp = Wo**2 * s2 + bo**2
    ntk = nngp + Wo**2 * t2
    k = nk.InfiniteMLP(2, "identity", W, b, Wo, bo)(x)
    np.testing.assert_allclose(k.nngp, nngp, rtol=1e-12)
    np.testing.assert_allclose(k.ntk, ntk, rtol=1e-12)
    # Standard parameterisation: a weight's gradient is the layer input itself (fan_in · Σ),
    # a bias's gradient is 1 (neural-tangents' convention).
    k = nk.InfiniteMLP(2, "identity", W, b, Wo, bo, parameterization="standard", widths=5)(x)
    t1 = 3 * s0 + 1
    t2 = 5 * s1 + 1 + W**2 * t1
    np.testing.assert_allclose(k.ntk, 5 * s2 + 1 + Wo**2 * t2, rtol=1e-12)


def _seed004_closed_form(x):
    """Seed 004: K = K^a + K^b, K^a = (x·x') E[σ'σ'], K^b = E[σ(aᵀx)σ(aᵀx')] for ReLU."""
    x = np.asarray(x)
    norms = np.linalg.norm(x, axis=1)
    dots = x @ x.T
    cos = np.clip(dots / np.outer(norms, norms), -1, 1)
    np.fill_diagonal(cos, 1.0)  # exactly: arccos would turn rounding ε into an angle √(2ε)
    theta = np.arccos(cos)
    ka = dots * (np.pi - theta) / (2 * np.pi)
    kb = np.outer(norms, norms) * (np.sin(theta) + (np.pi - theta) * cos) / (2 * np.pi)
    return ka + kb


def _seed004_net(d, m, seed):
    # f(x) = m^{-1/2} Σ_i b_i σ(a_iᵀx), a_i ~ N(0, I_d), b_i ~ N(0, 1), no biases: in ntkode's
    # NTK parameterisation that is W_std = √d (cancelling the 1/√d) and out_W_std = 1.
    return nk.MLP(d, 1, m, 1, "relu", math.sqrt(d), None, 1.0, None, key=jax.random.key(seed))


@pytest.mark.parametrize("m", [512, 32768])
def test_seed004_two_layer_relu_ntk_approaches_closed_form(m):
    d = 4
    x = _x(6, d, seed=1)
    net = _seed004_net(d, m, seed=2)
    emp = nk.ntk(net, x)[:, :, 0, 0]
    # The empirical NTK is the mean over neurons of i.i.d. terms T_i (the two-layer sum); rebuild
    # them from the weights: its mean must *equal* ntkode's ntk (agreement) ...
    a, v = net.layers[0].weight, net.layers[1].weight[0]
    pre = np.asarray(x @ a.T)  # (n, m)
    act, gate = np.maximum(pre, 0), (pre > 0).astype(float)
    xx = np.asarray(x @ x.T)
    terms = (
        np.asarray(v)[None, None, :] ** 2 * gate[:, None, :] * gate[None, :, :] * xx[:, :, None]
        + act[:, None, :] * act[None, :, :]
    )
    np.testing.assert_allclose(emp, terms.mean(-1), rtol=1e-10, atol=1e-12)
    # ... and by the central limit theorem lie within 5 standard errors of the limit, with the
    # standard error estimated from the m samples themselves (it shrinks like m^{-1/2}).
    closed = _seed004_closed_form(x)
    se = terms.std(-1, ddof=1) / math.sqrt(m)
    assert np.all(np.abs(np.asarray(emp) - closed) <= 5 * se + 1e-12)
    if m == 32768:
        assert _rel(emp, closed) < 0.02  # ~1/√m · O(1) spread: a 2% budget at m = 32768
    # The library's recursion reproduces the seed's formula for this network exactly.
    np.testing.assert_allclose(net.infinite().ntk(x), closed, rtol=1e-12)


# -- quadrature against the closed forms --------------------------------------------------


def test_quadrature_equals_erf_closed_form():
    x = _x(8, 5)
    exact = nk.InfiniteMLP(3, "erf")(x)
    errs = []
    for degree in (64, 192):
        quad = nk.InfiniteMLP(3, nk.Elementwise(jax.scipy.special.erf, degree=degree))(x)
        errs.append(max(_rel(quad.nngp, exact.nngp), _rel(quad.ntk, exact.ntk)))
    # erf is smooth, so Gauss–Hermite converges geometrically: measured on these inputs (NTK,
    # the harder of the two) 1e-2, 2.4e-4, 1.5e-7, 1e-10 at degrees 32, 64, 128, 192. A wrong
    # closed form would stall at its own error instead of vanishing.
    assert errs[0] < 1e-3
    assert errs[1] < 1e-9
    assert errs[1] < errs[0] / 1e4


def test_quadrature_converges_to_relu_closed_form():
    x = _x(8, 5)
    exact = nk.InfiniteMLP(2, "relu")(x)
    errs = {}
    for degree in (32, 128):
        quad = nk.InfiniteMLP(2, nk.Elementwise(jax.nn.relu, degree=degree))(x)
        errs[degree] = (_rel(quad.nngp, exact.nngp), _rel(quad.ntk, exact.ntk))
    # The kink makes the rule converge only algebraically (≈ degree^-1 for the NNGP, a little
    # slower for the NTK's step-function derivative): 4× the points must cut the error ≥ 2.5×,
    # and at 128 points the quadrature is within 1% of the arc-cosine formula.
    for i in (0, 1):
        assert errs[128][i] < errs[32][i] / 2.5
        assert errs[128][i] < 1e-2


# -- finite networks converge to the limit ---------------------------------------------------


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_monte_carlo_average_equals_analytic_kernel(parameterization):
    # One hidden layer: E over initialisations of the empirical NTK (and of f(x) f(x')) equals
    # the analytic kernel at *any* width, so only sampling error remains. Tolerance: 4.5
    # standard errors of the mean over S inits, per entry (P(any of 15 entries exceeds) ~ 1e-4).
    d, m, S = 3, 32, 96
    x = _x(5, d, seed=3)
    emp, out = [], []
    for s in range(S):
        net = nk.MLP(d, 1, m, 1, "erf", parameterization=parameterization, key=jax.random.key(s))
        emp.append(np.asarray(nk.ntk(net, x)[:, :, 0, 0]))
        out.append(np.asarray(jax.vmap(net)(x))[:, 0])
    emp, out = np.stack(emp), np.stack(out)
    products = out[:, :, None] * out[:, None, :]
    spec = nk.InfiniteMLP(1, "erf", parameterization=parameterization, widths=m)(x)
    for samples, limit in ((emp, spec.ntk), (products, spec.nngp)):
        se = samples.std(0, ddof=1) / math.sqrt(S)
        assert np.all(np.abs(samples.mean(0) - np.asarray(limit)) <= 4.5 * se)


def test_monte_carlo_average_deep_relu():
    # Depth 2: E[Θ_emp] differs from Θ_∞ by O(1/width) (~0.2% at width 512), far below the
    # standard error of S = 24 samples (~1-2%), so the same 4.5-SE test applies.
    x = _x(4, 3, seed=4)
    emp = np.stack(
        [
            np.asarray(nk.ntk(nk.MLP(3, 1, 512, 2, "relu", key=jax.random.key(s)), x)[:, :, 0, 0])
            for s in range(24)
        ]
    )
    limit = np.asarray(nk.InfiniteMLP(2, "relu").ntk(x))
    se = emp.std(0, ddof=1) / math.sqrt(emp.shape[0])
    assert np.all(np.abs(emp.mean(0) - limit) <= 4.5 * se)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_empirical_ntk_converges_at_rate_one_over_sqrt_width(parameterization):
    x = _x(8, 4, seed=5)
    widths = (64, 256, 1024)
    errs = []
    for w in widths:
        e = []
        for s in range(3):
            net = nk.MLP(4, 1, w, 2, "relu", parameterization=parameterization,
                         key=jax.random.key(s))  # fmt: skip
            e.append(_rel(nk.ntk(net, x)[:, :, 0, 0], net.infinite().ntk(x)))
        errs.append(np.mean(e))
    slope = np.polyfit(np.log(widths), np.log(errs), 1)[0]
    # Theory: -1/2 (fluctuations of a sum of `width` weakly dependent terms); three seeds leave
    # noise of about ±0.15 on the fitted slope.
    assert -0.8 < slope < -0.3, (errs, slope)


# -- precision and blocking -----------------------------------------------------------------


@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_float32_agrees_with_float64(activation):
    x = _x(40, 8)
    spec = nk.InfiniteMLP(3, activation)
    k64 = spec(x)
    k32 = spec(x.astype(jnp.float32))
    assert k32.ntk.dtype == jnp.float32
    # float32 rounding (1.2e-7) amplified by a few operations per layer over 4 layers.
    for name in ("nngp", "ntk"):
        np.testing.assert_allclose(getattr(k32, name), getattr(k64, name), rtol=2e-5, atol=1e-6)


def test_relu_diagonal_is_exact_in_float32():
    # On K(X, X)'s diagonal the correlation is exactly 1 and E[φ'φ'] = 1/2; recomputing it as
    # s/√(q q) would leave a rounding error ε that arccos turns into √(2ε) ≈ 5e-4 (float32).
    x = _x(300, 8).astype(jnp.float32)
    k = nk.InfiniteMLP(3, "relu")(x)
    q = np.sum(np.asarray(x, np.float64) ** 2, 1) / 8
    t = 0.0
    for _ in range(3):
        q = 2 * q + 0.01
        t = (q + 2 * t) * 0.5
        q = q / 2
    diag = q + 0.01 + t
    np.testing.assert_allclose(np.diag(k.ntk), diag, rtol=2e-6)


def test_blocked_paths_agree():
    x = _x(300, 6)
    x_copy = x + 0.0  # a different array: the non-symmetric (row-block) path
    for act in ("erf", "relu"):
        whole = nk.InfiniteMLP(2, act)(x)  # symmetric tiles (n >= 256)
        rows = nk.InfiniteMLP(2, act, block_size=3000)(x, x_copy)  # 10 rows per block
        single = nk.InfiniteMLP(2, act)(x, x_copy)  # one block
        off = ~np.eye(300, dtype=bool)
        for name in ("nngp", "ntk"):
            a, b, c = (np.asarray(getattr(k, name)) for k in (whole, rows, single))
            np.testing.assert_allclose(b, c, rtol=1e-14)
            np.testing.assert_allclose(a[off], c[off], rtol=1e-13)
            # ReLU's diagonal differs by design (exact ρ = 1 on the symmetric path): ~√ε.
            np.testing.assert_allclose(np.diag(a), np.diag(c), rtol=1e-7)


@pytest.mark.slow
def test_ten_thousand_inputs():
    x = _x(10_000, 8).astype(jnp.float32)
    spec = nk.InfiniteMLP(3, "relu")
    k = spec(x)
    assert k.ntk.shape == (10_000, 10_000)
    assert bool(jnp.all(jnp.isfinite(k.ntk))) and bool(jnp.all(jnp.isfinite(k.nngp)))
    for r0 in (0, 5000, 9950):
        part = spec(x[r0 : r0 + 50] + 0.0, x)
        off = np.ones((50, 10_000), bool)
        off[np.arange(50), r0 + np.arange(50)] = False
        np.testing.assert_allclose(np.asarray(k.ntk[r0 : r0 + 50])[off], np.asarray(part.ntk)[off],
                                   rtol=1e-5)  # fmt: skip


# -- bad input -------------------------------------------------------------------------------


def test_unknown_activation_name():
    with pytest.raises(ValueError, match="Unknown `activation` 'relux'"):
        nk.InfiniteMLP(2, "relux")
    with pytest.raises(ValueError, match="Unknown `activation`"):
        nk.MLP(3, 1, 8, 1, "swishy", key=jax.random.key(0))
    with pytest.raises(TypeError, match="activation"):
        nk.InfiniteMLP(2, 3.0)


@pytest.mark.parametrize("name", ["W_std", "b_std", "out_W_std", "out_b_std"])
def test_negative_variances(name):
    with pytest.raises(ValueError, match=f"`{name}`.*non-negative"):
        nk.InfiniteMLP(2, "relu", **{name: -0.5})
    with pytest.raises(ValueError, match=f"`{name}`.*non-negative"):
        nk.MLP(3, 1, 8, 1, "relu", **{name: -0.5}, key=jax.random.key(0))
    with pytest.raises(ValueError, match="non-negative"):
        nk.InfiniteMLP(2, "relu", **{name: float("nan")})


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_depth_below_one(depth):
    with pytest.raises(ValueError, match="`depth` must be an integer >= 1"):
        nk.InfiniteMLP(depth, "relu")
    with pytest.raises(ValueError, match="`depth`"):
        nk.MLP(3, 1, 8, depth, "relu", key=jax.random.key(0))


def test_input_dimension_mismatch():
    spec = nk.InfiniteMLP(2, "relu")
    with pytest.raises(ValueError, match="Input dimension mismatch: `x1` has 3.*`x2` has 4"):
        spec(_x(5, 3), _x(5, 4))
    net = nk.MLP(3, 1, 8, 1, "relu", key=jax.random.key(0))
    with pytest.raises(ValueError, match="`x1` has 4 features.*in_size=3"):
        net.infinite()(_x(5, 4))
    with pytest.raises(ValueError, match="input size"):
        nk.ntk(net, _x(5, 4))
    with pytest.raises(ValueError, match=r"matrix of inputs \(n, d\)"):
        spec(jnp.ones((5,)))


def test_other_bad_configuration():
    with pytest.raises(ValueError, match="standard parameterisation.*widths"):
        nk.InfiniteMLP(2, "relu", parameterization="standard")
    with pytest.raises(ValueError, match="parameterization"):
        nk.InfiniteMLP(2, "relu", parameterization="mup")
    with pytest.raises(ValueError, match="`widths`"):
        nk.InfiniteMLP(2, "relu", widths=(4, 4, 4))
