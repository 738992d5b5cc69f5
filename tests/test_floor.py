"""The floor study's measurements: activation flips, kernel jumps vs drift, window-averaged
kernels, the NTK velocity excess, the softplus-β family, and the study end to end."""

import json
import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import rel_max, small_data

import ntkode as nk
from ntkode.studies import SoftplusBeta, floor_study, sine_problem
from ntkode.studies._floor._kernels import RunKernels, kernel_motion
from ntkode.studies._floor._measures import error_curve, save_times, velocity_excess
from ntkode.studies._floor._patterns import hidden_preactivations, record_patterns


def _stack(states):
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


def _params(model):
    return eqx.partition(model, eqx.is_inexact_array)[0]


# ---------------------------------------------------------------- softplus(βx)/β


def test_softplus_beta_tends_to_relu():
    x = jnp.linspace(-3.0, 3.0, 2001)
    relu = jax.nn.relu(x)
    for beta in (1.0, 4.0, 16.0, 64.0):
        gap = SoftplusBeta(beta)(x) - relu
        # softplus(βx)/β − relu(x) lies in (0, log 2/β] (0 after round-off far from the kink),
        # with the maximum at x = 0: uniform convergence to ReLU at rate 1/β.
        assert float(gap.min()) >= 0
        np.testing.assert_allclose(float(gap.max()), math.log(2) / beta, rtol=1e-12)
        centred = SoftplusBeta(beta, centred=True)
        assert float(centred(jnp.zeros(()))) == pytest.approx(0.0, abs=1e-15)
        # Same gates: the derivative is the sigmoid σ(βx) either way.
        grad = jax.vmap(jax.grad(centred))(x)
        np.testing.assert_allclose(grad, jax.nn.sigmoid(beta * x), rtol=1e-12, atol=1e-15)
    assert bool(jnp.all(SoftplusBeta(math.inf)(x) == relu))
    np.testing.assert_allclose(SoftplusBeta(1.0)(x), jax.nn.softplus(x), rtol=1e-14)


def test_softplus_beta_by_name_and_bad_names():
    problem = sine_problem(width=8, n_train=4, n_test=2, dim=2, activation="softplus_beta:16")
    assert problem.model.activation == SoftplusBeta(16.0)
    centred = sine_problem(width=8, n_train=4, n_test=2, dim=2,
                           activation="softplus_beta:4:centred")  # fmt: skip
    assert centred.model.activation == SoftplusBeta(4.0, centred=True)
    relu = sine_problem(width=8, n_train=4, n_test=2, dim=2, activation="softplus_beta:inf")
    assert math.isinf(relu.model.activation.beta)
    for bad in ("softplus_beta:0", "softplus_beta:-2", "softplus_beta:x", "softplus_beta:4:up"):
        with pytest.raises(ValueError, match="softplus_beta"):
            sine_problem(width=8, n_train=4, n_test=2, dim=2, activation=bad)
    with pytest.raises(ValueError, match="beta"):
        SoftplusBeta(float("nan"))


# ---------------------------------------------------------------- activation patterns


def _two_unit_path(T: int):
    """A 1 → 2 → 1 ReLU MLP on inputs x = 1, 2 whose pre-activations are known in closed form.

    Unit 0: z = x + (t − 1.5), so the pair (x=1, unit 0) crosses zero once, at t = 0.5.
    Unit 1: z = −x + 1 + (−1)^k·1e-3 at sample k, so (x=1, unit 1) chatters: its sign
    alternates every sample; (x=2, unit 1) stays negative.
    """
    model = eqx.nn.MLP(1, 1, 2, 1, key=jax.random.key(0))
    t = np.linspace(0.0, 1.0, T)
    states = []
    w = jnp.array([[1.0], [-1.0]])
    for k, tk in enumerate(t):
        b = jnp.array([tk - 1.5, 1.0 + (-1.0) ** k * 1e-3])
        where = lambda m: (m.layers[0].weight, m.layers[0].bias)
        states.append(_params(eqx.tree_at(where, model, (w, b))))
    return model, _stack(states), t, jnp.array([[1.0], [2.0]])


def test_flip_counts_of_a_crossing_and_a_chattering_pair():
    T = 11
    model, weights, t, x = _two_unit_path(T)
    pats = record_patterns(model, weights, t, x)
    (counts,) = pats.pair_flips()
    # One crossing, T − 1 chatter flips, nothing else.
    np.testing.assert_array_equal(counts, [[1, T - 1], [0, 0]])
    (per_interval,) = pats.flips(1)
    assert per_interval.sum() == T
    # Sampled every second state the chattering pair looks still; the crossing is still seen.
    (coarse,) = pats.flips(2)
    assert coarse.sum() == 1
    mid, (rate,) = pats.flip_rate(1)
    np.testing.assert_allclose(mid, 0.5 * (t[1:] + t[:-1]))
    # 4 pairs, intervals of 0.1: one flip per interval is a rate of 1 / 4 / 0.1.
    assert rate.min() == pytest.approx(2.5)
    assert rate.max() == pytest.approx(5.0)  # the interval holding the crossing


def test_hidden_preactivations_reproduce_the_forward_pass():
    data = small_data(n=6, m=2, d=3)
    model = eqx.nn.MLP(3, 1, 7, 2, activation=SoftplusBeta(4.0), key=jax.random.key(2))
    z1, z2 = hidden_preactivations(model, data.x_train)
    h2 = SoftplusBeta(4.0)(z2)
    out = jax.vmap(model.layers[-1])(h2)
    np.testing.assert_allclose(out, jax.vmap(model)(data.x_train), rtol=1e-13)
    assert z1.shape == z2.shape == (6, 7)
    with pytest.raises(TypeError, match="equinox.nn.MLP"):
        hidden_preactivations(nk.MLP(3, 1, 7, 2, key=jax.random.key(0)), data.x_train)


# ---------------------------------------------------------------- kernels along a path


def _kink_path(activation, T=21, eps=1e-9):
    """A 2 → 16 → 1 MLP whose first 8 units sit exactly on their kink at one input each.

    The readout grows steadily, `W₂(t) = (1 + 0.01 t) W₂`, which scales the first layer's
    kernel term by `(1 + 0.01 t)²` (a smooth, nearly linear change), while those units'
    biases zigzag by ±`eps` between samples: ReLU gates flip at every sample, softplus gates
    move by O(eps).
    """
    data = small_data(n=8, m=3, d=2, key=3)
    model = eqx.nn.MLP(2, 1, 16, 1, activation=activation, key=jax.random.key(4))
    w = model.layers[0].weight
    b = model.layers[0].bias.at[:8].set(-jnp.sum(w[:8] * data.x_train[:8], axis=1))
    t = np.linspace(0.0, 1.0, T)
    states = []
    for k, tk in enumerate(t):
        zig = b.at[:8].add((-1.0) ** k * eps)
        m = eqx.tree_at(lambda m: (m.layers[0].bias, m.layers[1].weight), model,
                        (zig, (1 + 0.01 * tk) * model.layers[1].weight))  # fmt: skip
        states.append(_params(m))
    return model, data, _stack(states), t


def test_kernel_jumps_exceed_drift_only_with_relu_gates():
    ratios = {}
    for name, act in (("relu", jax.nn.relu), ("softplus", SoftplusBeta(1.0))):
        model, data, weights, t = _kink_path(act)
        motion = kernel_motion(RunKernels(model, data, weights, t), [0.0, 0.3], 0.05, 0.5)
        ratios[name] = np.asarray(motion["jump"]) / np.asarray(motion["drift"])
    # Softplus: only the first layer's term moves, as c(t) = (1 + 0.01 t)², so the ratio is
    # (c(t+δ) − c(t))/δ over (c(t+Δ) − c(t))/Δ, slightly below 1 by the curvature of c; the
    # zigzag moves softplus gates by O(eps) = 1e-9 only.
    for t0, ratio in zip((0.0, 0.3), ratios["softplus"], strict=True):
        slope = 2 * 0.01 * (1 + 0.01 * t0)
        expected = (slope + 1e-4 * 0.05) / (slope + 1e-4 * 0.5)
        assert ratio == pytest.approx(expected, rel=1e-4)
    # ReLU: each sample flips 8 gates, a jump that does not shrink with the lag.
    assert ratios["relu"].min() > 3.0


def test_window_means_agree_with_explicit_jacobians():
    model, data, weights, t = _kink_path(jax.nn.relu, T=5)
    kernels = RunKernels(model, data, weights, t)
    static = eqx.partition(model, eqx.is_inexact_array)[1]

    def jac(i, x):
        p = jax.tree.map(lambda a: a[i], weights)
        f = lambda q, xi: eqx.combine(q, static)(xi)[0]
        j = jax.vmap(jax.grad(f), in_axes=(None, 0))(p, x)
        return jnp.concatenate([a.reshape(x.shape[0], -1) for a in jax.tree.leaves(j)], 1)

    idx = [1, 2, 3]
    J = [jac(i, data.x_train) for i in idx]
    Js = [jac(i, data.x_test) for i in idx]
    means = kernels.window_means(idx)
    kt, ks = means["mean_kernel"]
    np.testing.assert_allclose(kt[:, :, 0, 0], sum(j @ j.T for j in J) / 3, rtol=1e-11)
    np.testing.assert_allclose(ks[:, :, 0, 0], sum(a @ j.T for a, j in zip(Js, J)) / 3,
                               rtol=1e-11)  # fmt: skip
    jbar, jsbar = sum(J) / 3, sum(Js) / 3
    kt, ks = means["mean_jacobian"]
    np.testing.assert_allclose(kt[:, :, 0, 0], jbar @ jbar.T, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(ks[:, :, 0, 0], jsbar @ jbar.T, rtol=1e-11, atol=1e-13)
    # The mean kernel exceeds the mean-Jacobian kernel by the Jacobians' covariance (PSD).
    gap = np.asarray(means["mean_kernel"][0] - means["mean_jacobian"][0])[:, :, 0, 0]
    assert np.linalg.eigvalsh(gap).min() > -1e-12
    point, _ = kernels.point(2)
    assert rel_max(point, nk.ntk(eqx.combine(jax.tree.map(lambda a: a[2], weights), static),
                                 data.x_train)) < 1e-12  # fmt: skip


def test_soft_gates_are_the_softplus_kernel_at_the_same_weights():
    model, data, weights, t = _kink_path(jax.nn.relu, T=3)
    soft = RunKernels(model, data, weights, t, soften=64.0)
    p = jax.tree.map(lambda a: a[1], weights)
    smooth = eqx.tree_at(lambda m: m.activation, model, SoftplusBeta(64.0))
    static = eqx.partition(smooth, eqx.is_inexact_array)[1]
    np.testing.assert_allclose(soft.point(1)[0], nk.ntk(eqx.combine(p, static), data.x_train),
                               rtol=1e-11)  # fmt: skip


# ---------------------------------------------------------------- velocity excess


def test_velocity_excess_is_zero_for_an_exact_velocity_and_sees_an_overshoot():
    t = np.linspace(0.0, 4.0, 801)
    u = np.stack([np.exp(-t), 2 * np.exp(-0.5 * t)], axis=1)
    du = np.stack([-np.exp(-t), -np.exp(-0.5 * t)], axis=1)
    exact = velocity_excess(t, u, du, 1.0)
    # Trapezoid rule with h = 0.005 on exponentials: relative error ~h²/12.
    assert np.max(np.abs(exact["excess"])) < 1e-5
    assert len(exact["t"]) == 4
    fast = velocity_excess(t, u, 1.1 * du, 1.0, t_min=1.0)
    np.testing.assert_allclose(fast["excess"], 0.1, atol=1e-5)
    assert fast["t"][0] == pytest.approx(1.5)


def test_error_curve_peaks_at_the_trajectory_error():
    problem = sine_problem(width=8, n_train=6, n_test=4, dim=2, t_end=2.0, dtype=jnp.float64)
    ref = nk.solve(problem, saveat=11, rtol=1e-8, atol=1e-10)
    lo = nk.solve(problem, saveat=11, rtol=1e-3, atol=1e-5)
    curve = error_curve(lo, ref)
    errs = nk.trajectory_errors(lo, ref)
    assert max(curve["train"]) == pytest.approx(errs["max_rel_train_error"], rel=1e-12)
    assert max(curve["test"]) == pytest.approx(errs["max_rel_test_error"], rel=1e-12)
    assert curve["train"][0] == 0.0


def test_save_times_and_bad_arguments():
    t = save_times(1.0, 0.25, [0.1, 0.5])
    np.testing.assert_allclose(t, [0.0, 0.1, 0.25, 0.5, 0.75, 1.0])
    with pytest.raises(ValueError, match="sample_dt"):
        save_times(1.0, 0.3)
    with pytest.raises(ValueError, match="grid_sizes"):
        floor_study(grid_sizes=(1, 8), out=None)
    with pytest.raises(ValueError, match="loose"):
        floor_study(loose=1.0, out=None)
    with pytest.raises(ValueError, match="soft_betas"):
        floor_study(soft_betas=(math.inf,), out=None)
    # `quick` sets the sizes: one given beside it is refused, not silently replaced.
    with pytest.raises(ValueError, match=r"`quick` sets `grid_sizes`, `window` itself"):
        floor_study(quick=True, window=0.3, grid_sizes=[2, 4], out=None)


# ---------------------------------------------------------------- the summary


def _record(point, mean_jacobian, excess):
    """A minimal floor-study record: train errors per G of two constructions, and the ReLU
    velocity excess (the smooth sweep entry has none)."""
    grid = lambda errs: {str(g): {"train_error": e} for g, e in errs.items()}
    return {
        "settings": dict(
            rtol=1e-5,
            loose_rtol=1e-4,
            sample_dt=0.1,
            chatter_flips=4,
            t_end=50.0,
            centred=True,
            window=0.5,
        ),  # fmt: skip
        "truth": {
            "uncertainty_train": 0.02,
            "uncertainty_test": 0.03,
            "reference": {"steps": 10},
            "loose": {"steps": 5},
        },  # fmt: skip
        "grids": {
            "point": grid(point),
            "mean_kernel": grid(point),
            "mean_jacobian": grid(mean_jacobian),
        },  # fmt: skip
        "patterns": {
            "mean_flip_rate": {"0.1": [0.001, 0.03]},
            "fine_window_flip_rate": {"0.0125": [0.005, 0.2], "0.1": [0.001, 0.03]},
            "fine_window": [20.0, 21.0],
            "pinned_ratio": [0.01, 0.04],
            "flips_by_chattering_pairs": [0.8, 0.9],
            "pairs_chattering": [0.001, 0.04],
        },
        "kernel_motion": {"jump": [0.012], "drift": [0.003], "lag_delta": 0.1, "lag_drift": 2.0},
        "jump_vs_lag": {"lag": [0.0125, 5.0], "change": [0.011, 0.19]},
        "velocity_excess": {"median": excess},
        "sweep": {
            "4": {
                "errors": {"8": {"train_error": 0.013}, "32": {"train_error": 0.003}},
                "uncertainty_train": 0.01,
                "velocity_excess": -0.001,
            },
            "inf": {
                "errors": {"8": {"train_error": point[8]}, "32": {"train_error": point[32]}},
                "uncertainty_train": 0.02,
                "velocity_excess": excess,
            },
        },  # fmt: skip
    }


def test_summary_claims_follow_the_numbers():
    from ntkode.studies._floor._study import summarise

    floor = {2: 0.17, 8: 0.044, 32: 0.041}
    text = " ".join(summarise(_record(floor, {2: 0.16, 8: 0.031, 32: 0.006}, 0.12)))
    assert "a floor." in text and "What explains the floor" in text
    assert "6.8× closer" in text  # 4.10% / 0.60%, quoted from the record
    assert "the pairs chatter" in text
    assert "At β = 4 the G = 32 grid is closer to the reference" in text
    # Without a velocity excess, or without a remedy that converges, no explanation is claimed.
    for record in (
        _record(floor, {2: 0.16, 8: 0.031, 32: 0.006}, 0.0005),
        _record(floor, {2: 0.16, 8: 0.040, 32: 0.035}, 0.12),
    ):
        text = " ".join(summarise(record))
        assert "does not support the sliding-mode explanation" in text
        assert "What explains the floor" not in text
    converging = " ".join(summarise(_record({2: 0.17, 8: 0.04, 32: 0.004},
                                            {2: 0.16, 8: 0.03, 32: 0.001}, 0.12)))  # fmt: skip
    assert "no floor at these sizes" in converging
    assert "does not support" in converging


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_floor_quick_end_to_end(tmp_path):
    from ntkode.studies._cli import main

    out = tmp_path / "floor"
    assert main(["floor", "--quick", "--out", str(out)]) == 0
    with open(out / "results.json") as f:
        result = json.load(f)
    for key in (
        "settings",
        "truth",
        "patterns",
        "kernel_motion",
        "jump_vs_lag",
        "velocity_excess",
        "grids",
        "sweep",
        "summary",
        "seconds",
        "load_average",
    ):
        assert key in result, key  # fmt: skip
    assert list(result["sweep"]) == ["4", "inf"]
    assert set(result["grids"]) == {"point", "soft_64", "mean_kernel", "mean_jacobian"}
    # The β = ∞ entry of the sweep is the ReLU run itself.
    assert result["sweep"]["inf"]["g8_train_error"] == result["grids"]["point"]["8"]["train_error"]
    # The summary quotes the record's numbers.
    g8 = result["grids"]["point"]["8"]["train_error"]
    assert f"{100 * g8:.2f}%" in " ".join(result["summary"])
    for name in ("flips.png", "kernel_motion.png", "error_vs_time.png", "error_vs_beta.png",
                 "remedies.png"):  # fmt: skip
        assert os.path.getsize(out / name) > 10_000


# ---------------------------------------------------------------- resuming


def test_floor_study_resumes_the_relu_part_and_each_finished_beta(tmp_path, monkeypatch):
    """An interrupted study keeps the ReLU part and the finished β; a rerun computes only
    the β that is missing (the heavy stages are replaced by stand-ins that count calls)."""
    from ntkode.studies._floor import _figures, _study

    calls = {"relu": 0, "beta": []}
    base = _record({2: 0.17, 8: 0.044, 32: 0.041}, {2: 0.16, 8: 0.031, 32: 0.006}, 0.12)
    for row in base["grids"]["point"].values():
        row["test_error"] = 2 * row["train_error"]
    base["truth"]["reference"]["success"] = base["truth"]["loose"]["success"] = True
    base["patterns"]["mean_flip_rate"]["0.2"] = [0.002, 0.05]  # at the sweep's spacing

    def relu_stages(relu, result, *args):
        calls["relu"] += 1
        part = {k: base[k] for k in _study.RELU_KEYS}
        result.update(part)
        return {**part, "coarse_velocity_excess": 0.1}

    def sweep_point(activation, *args):
        if activation.beta == 16.0 and calls["fail"]:
            raise RuntimeError("stopped")
        calls["beta"].append(activation.beta)
        point = {"train_error": 0.01 / activation.beta, "test_error": 0.02}
        return {**base["sweep"]["4"], "errors": {"8": point}, "flip_rate": [0.0, 0.0],
                "g8_train_error": point["train_error"], "g8_test_error": point["test_error"],
                "steps": 3, "success": True}  # fmt: skip

    monkeypatch.setattr(_study, "_relu_stages", relu_stages)
    monkeypatch.setattr(_study, "_sweep_point", sweep_point)
    monkeypatch.setattr(_figures, "plot_all", lambda result, out: [])
    kw = dict(width=4, n_train=4, n_test=4, dim=2, t_end=2.0, grid_sizes=(2, 8),
              betas=(4.0, 16.0, math.inf), soft_betas=(64.0,), out=str(tmp_path),
              log=lambda s: None)  # fmt: skip
    calls["fail"] = True
    with pytest.raises(RuntimeError, match="stopped"):
        floor_study(**kw)
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert set(saved["parts"]) == {"relu", "beta_4"} and saved["status"] == "running"
    calls["fail"] = False
    result = floor_study(**kw)
    assert calls["relu"] == 1 and calls["beta"] == [4.0, 16.0]  # β = 4 was not recomputed
    assert list(result["sweep"]) == ["4", "16", "inf"]
    assert result["sweep"]["16"]["g8_train_error"] == pytest.approx(0.01 / 16)
    assert result["grids"] == base["grids"]
    with open(tmp_path / "results.json") as f:
        assert json.load(f)["status"] == "finished"
    # Other settings start afresh: everything is recomputed.
    floor_study(**{**kw, "t_end": 3.0})
    assert calls["relu"] == 2 and calls["beta"] == [4.0, 16.0, 4.0, 16.0]
