"""Learning-rate control: discrete-time scheduled surrogate, policies, certificate, design."""

import json
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import Linearised, central_differences, psd_kernels, rel_max, small_data, small_sine

import ntkode as nk
from ntkode import policies as P, schedules as S


def _quiet():
    """Ignore range warnings where a test is about something else."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.simplefilter("ignore", S.ScheduleRangeWarning)
    return ctx


def _grid(data, G=3, key=1, nodes=None, shift=0.5):
    """Random PSD train kernels (positive definite: λ_min ≥ shift) and test kernels."""
    k1, k2 = jax.random.split(jax.random.key(key))
    kt = psd_kernels(k1, G, data.n_train, shift=shift)
    ks = jax.random.normal(k2, (G, data.n_test, data.n_train))
    nodes = jnp.linspace(0.0, 2.0, G) if nodes is None else nodes
    return nk.KernelGrid(nodes, kt, ks)


def _loss_grid(data, G=4, key=1):
    """A grid on the loss-level axis covering the losses of a run from u0 = 0."""
    L0 = float(nk.losses.mse(jnp.zeros_like(data.y_train), data.y_train))
    return _grid(data, G, key, nodes=jnp.linspace(np.log(L0) - 12.0, np.log(L0) + 0.1, G))


def _lam_max(grid):
    return np.asarray(nk.certify(grid).lambda_max)


# ---------------------------------------------------------------- agreement


@pytest.mark.parametrize(
    "policy",
    [P.Constant(0.7), P.Cosine(1.2, 25, warmup=5), P.PiecewiseConstant((5, 12), [0.3, 1.0, 0.5])],
)
def test_frozen_kernel_equals_linearised_network(policy):
    # Gradient descent on f_lin(θ) = f(θ0) + J0 (θ - θ0) moves its outputs by -η J0 J0ᵀ ∇L
    # exactly: the surrogate with the one kernel J0 J0ᵀ (Lee et al. 2019).
    model, data = small_sine()
    n, m = data.n_train, data.n_test
    kt = nk.ntk(model, data.x_train).reshape(1, n, n)
    ks = nk.ntk(model, data.x_test, data.x_train).reshape(1, m, n)
    net = nk.GradientDescentProblem(Linearised(model), data)
    sur = nk.ScheduledDescentProblem.from_problem(nk.KernelGrid(jnp.zeros(1), kt, ks), net)
    a, b = nk.descend(sur, policy, 25), nk.descend(net, policy, 25)
    # Two float64 evaluations of the same linear map: round-off only.
    assert rel_max(a.train, b.train) < 1e-10
    assert rel_max(a.test, b.test) < 1e-10
    np.testing.assert_allclose(a.eta, b.eta, rtol=1e-14)
    assert float(b.train_loss[-1]) < 0.5 * float(b.train_loss[0])  # it did train


@pytest.mark.parametrize("schedule", [S.Time(), S.LossLevel()])
def test_small_steps_approach_continuous_surrogate(schedule):
    # Explicit Euler with step h on the continuous field: first order in h.
    data = small_data()
    if isinstance(schedule, S.Time):
        grid = _grid(data, G=3, nodes=jnp.array([0.0, 0.6, 2.0]))
    else:
        grid = _loss_grid(data, G=3)
    T = 2.0
    flow = nk.ScheduledKernelProblem(grid, data, schedule, tspan=(0.0, T))
    ref = nk.solve(flow, saveat=jnp.array([0.0, T]), rtol=1e-11, atol=1e-13)
    sur = nk.ScheduledDescentProblem(grid, data, schedule)
    errors = []
    for h in (0.02, 0.01, 0.005):
        run = nk.descend(sur, P.Constant(h), int(round(T / h)))
        np.testing.assert_allclose(run.time[-1], T, rtol=1e-12)
        errors.append(rel_max(run.train[-1], ref.train[-1]))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    # Halving h halves the error (first order; a ratio of 4 would mean second order).
    assert np.all((ratios > 1.8) & (ratios < 2.2)), (errors, ratios)
    assert errors[-1] < 2e-2


def test_network_descent_is_gradient_descent_on_the_weights():
    # An independent loop: θ ← θ - η_k ∇θ L(θ), with η_k from the policy at the current loss.
    model, data = small_sine()
    L0 = float(nk.losses.mse(nk.KernelFlowProblem.from_model(model, data).u0_train, data.y_train))
    policy = P.GainScheduled(S.LossLevel(), jnp.log(jnp.array([L0 / 10, L0])), [0.4, 0.9])
    run = nk.descend(nk.GradientDescentProblem(model, data), policy, 12, save_params=(0, 5, 12))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss(p):
        return nk.losses.mse(jax.vmap(eqx.combine(p, static))(data.x_train), data.y_train)

    t = 0.0
    kept = []
    for k in range(12):
        if k in (0, 5):
            kept.append(params)
        u = jax.vmap(eqx.combine(params, static))(data.x_train)
        eta = policy(jnp.asarray(k), jnp.asarray(t), u, data.y_train, nk.losses.mse)
        np.testing.assert_allclose(run.eta[k], eta, rtol=1e-12)
        params = jax.tree.map(lambda a, g: a - eta * g, params, jax.grad(loss)(params))
        t += float(eta)
    kept.append(params)
    u = jax.vmap(eqx.combine(params, static))(data.x_train)
    assert rel_max(run.train[-1], u) < 1e-12
    np.testing.assert_allclose(run.time, np.concatenate([[0.0], np.cumsum(run.eta)]), rtol=1e-12)
    for i, p in enumerate(kept):
        saved = jax.tree.map(lambda a: a[i], run.params)
        for x, y in zip(jax.tree.leaves(saved), jax.tree.leaves(p), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- policies


def test_policies_give_their_rates():
    z = jnp.zeros((3, 1))
    at = lambda p, k: float(p(jnp.asarray(k), jnp.asarray(0.0), z, z, nk.losses.mse))
    pw = P.PiecewiseConstant((3, 7), [0.1, 0.2, 0.3])
    rates = [at(pw, k) for k in (0, 2, 3, 6, 7, 100)]
    assert rates == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.3, 0.3])
    cos = P.Cosine(1.0, 20, warmup=4, init=0.2, end=0.05)
    ref = optax.warmup_cosine_decay_schedule(0.2, 1.0, 4, 20, 0.05)
    np.testing.assert_allclose([at(cos, k) for k in range(21)], ref(jnp.arange(21)), rtol=1e-12)
    sw = P.Switched(P.Constant(3.0), P.Cosine(1.0, 10), at=4)
    assert [at(sw, k) for k in (0, 3)] == [3.0, 3.0]
    # `then` counts from the switch: step 4 is its step 0, at its peak.
    assert at(sw, 4) == pytest.approx(1.0)
    assert at(sw, 9) == pytest.approx(0.5)


def test_inverse_sharpness_reads_the_active_nodes():
    data = small_data()
    grid = _loss_grid(data, G=4)
    lam = _lam_max(grid)
    pol = P.InverseSharpness.from_grid(grid, 1.5, S.LossLevel())
    nodes = np.asarray(grid.nodes)
    for g in range(3):
        s = 0.5 * (nodes[g] + nodes[g + 1])
        expected = 1.5 * data.n_train / max(lam[g], lam[g + 1])
        np.testing.assert_allclose(pol.at(jnp.asarray(s)), expected, rtol=1e-12)
    # At a node only that node's kernel is active (its neighbour has weight 0).
    np.testing.assert_allclose(pol.at(grid.nodes[0]), 1.5 * data.n_train / lam[0], rtol=1e-12)


# ---------------------------------------------------------------- the certificate


@pytest.mark.parametrize(
    "schedule,interpolation",
    [
        (S.Time(), S.Linear()),
        (S.LossLevel(), S.Linear()),
        (S.LossLevel(), S.Smoothstep()),
        (S.ResidualNorm(), S.PiecewiseConstant()),
    ],
)
def test_certificate_holds_on_every_surrogate_trajectory(schedule, interpolation):
    data = small_data(n=10)
    ctx = _quiet()
    G = 4
    grid = _grid(data, G, nodes=jnp.linspace(0.0, 3.0, G)) if isinstance(schedule, S.Time) else None
    if grid is None:
        base = _loss_grid(data, G)
        grid = (
            base
            if isinstance(schedule, S.LossLevel)
            else base.with_nodes(jnp.linspace(-6.0, 1.5, G))
        )
    sur = nk.ScheduledDescentProblem(grid, data, schedule, interpolation)
    lam = _lam_max(grid)
    n = data.n_train
    policies = {
        "constant": P.Constant(1.9 * n / lam.max()),
        "beyond": P.Constant(2.3 * n / lam.max()),  # unstable: ρ > 1 on some steps
        "cosine": P.Cosine(1.8 * n / lam.max(), 30, warmup=5),
        "inverse": P.InverseSharpness.from_grid(grid, 1.9, schedule, interpolation),
        "switched": P.Switched(P.Constant(3.0 * n / lam.max()), P.Constant(n / lam.max()), 3),
    }
    for name, pol in policies.items():
        run = nk.descend(sur, pol, 30)
        cert = nk.step_certificate(sur, run)
        assert bool(jnp.all(cert.holds)), name
        slack = 1 + np.asarray(jnp.concatenate([jnp.zeros(1), jnp.cumsum(cert.slack)]))
        assert np.all(np.asarray(cert.residual) <= np.asarray(cert.bound) * slack), name
        if name in ("constant", "cosine", "inverse"):
            assert cert.certified and cert.stable, name
            assert float(jnp.max(cert.stability)) < 1.9 + 1e-12, name
        if name in ("beyond", "switched"):
            assert not cert.certified and not cert.stable, name
    ctx.__exit__(None, None, None)


def test_certificate_is_attained_on_extreme_eigenvectors():
    # One kernel: r along an eigenvector v moves by exactly 1 - ηλ/n per step, and ρ is the
    # larger of those factors at λ_min and λ_max: the bound is attained, not just respected.
    data = small_data(n=8)
    grid = _grid(data, G=1, nodes=jnp.zeros(1))
    lam, vec = np.linalg.eigh(np.asarray(grid.kernel_train[0]))
    n, y = data.n_train, data.y_train
    for eta_scale, which in ((1.0, 0), (2.5, -1)):  # inside the limit: λ_min; beyond: λ_max
        eta = eta_scale * n / lam[-1]
        u0 = y + jnp.asarray(vec[:, which])[:, None]
        sur = nk.ScheduledDescentProblem(grid, data, u0_train=u0)
        run = nk.descend(sur, P.Constant(eta), 6)
        cert = nk.step_certificate(sur, run)
        factor = abs(1 - eta * lam[which] / n)
        np.testing.assert_allclose(cert.rho, factor, rtol=1e-12)
        np.testing.assert_allclose(cert.ratio, factor, rtol=1e-9)
        assert cert.certified == (eta_scale < 2)


def test_certificate_reports_a_network_that_leaves_it():
    # A grid of the network's initial kernel only: the true network moves its kernel, so the
    # certificate evaluated along the network's own run is a prediction that can fail.
    model, data = small_sine(n_train=12, width=8)
    n = data.n_train
    kt = nk.ntk(model, data.x_train).reshape(1, n, n)
    net = nk.GradientDescentProblem(model, data)
    sur = nk.ScheduledDescentProblem.from_problem(nk.KernelGrid(jnp.zeros(1), kt), net)
    lam = _lam_max(sur.grid)
    run = nk.descend(net, P.Constant(1.0 * n / lam[-1]), 40)
    cert = nk.step_certificate(sur, run)
    assert 0.0 <= cert.fraction_held <= 1.0
    assert cert.worst_violation == pytest.approx(float(jnp.max(cert.ratio / cert.rho)))
    assert np.isfinite(cert.worst_violation)


# ---------------------------------------------------------------- design


def _design_problem():
    data = small_data(n=10, m=4)
    return nk.ScheduledDescentProblem(_loss_grid(data, G=4), data, S.LossLevel()), data


def test_design_gradient_matches_finite_differences():
    from ntkode._control._design import _Design, interval_cap

    sur, data = _design_problem()
    target = 0.1 * float(nk.losses.mse(sur.u0_train, data.y_train))
    d = _Design(sur, interval_cap(sur, 1.9), jnp.log(jnp.asarray(target)), 0.3, 25, True)
    z = jnp.array([0.3, -0.2, 0.8, 0.1])
    value = eqx.filter_jit(lambda zz: d.value(zz))
    grad = jax.grad(d.value)(z)
    np.testing.assert_allclose(grad, central_differences(value, z, h=1e-6), rtol=1e-5, atol=1e-8)


def test_certified_design_improves_and_stays_certified():
    sur, data = _design_problem()
    L0 = float(nk.losses.mse(sur.u0_train, data.y_train))
    target = 0.05 * L0
    ctx = _quiet()
    design = nk.design_policy(sur, 40, target=target, iterations=15, optimiser=optax.adam(0.2))
    assert design.success, design.message
    assert design.certified
    assert design.objective <= design.initial_objective
    from ntkode._control._design import interval_cap

    assert np.all(np.asarray(design.policy.values) <= np.asarray(interval_cap(sur, 1.9)))
    run = nk.descend(sur, design.policy, 40)
    cert = nk.step_certificate(sur, run)
    assert cert.certified and float(jnp.max(cert.stability)) < 1.9
    first = nk.descend(sur, design.initial_policy, 40).steps_to(target)
    assert run.steps_to(target) is not None and run.steps_to(target) <= first
    ctx.__exit__(None, None, None)


def test_uncertified_design_is_labelled_and_free():
    sur, data = _design_problem()
    ctx = _quiet()
    design = nk.design_policy(sur, 30, certified=False, iterations=5)
    assert not design.certified
    assert design.objective <= design.initial_objective
    ctx.__exit__(None, None, None)


# ---------------------------------------------------------------- divergence and bad input


def test_divergence_is_reported():
    # Far beyond the limit the surrogate's top mode grows by ~1e6 per step: overflow.
    data = small_data()
    grid = _grid(data, G=1, nodes=jnp.zeros(1))
    sur = nk.ScheduledDescentProblem(grid, data)
    run = nk.descend(sur, P.Constant(1e6 * data.n_train / _lam_max(grid)[-1]), 80)
    assert run.diverged and "diverged" in run.message
    assert run.steps_to(1e-30) is None


def test_bad_policies_are_refused():
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="`value` must be positive"):
            P.Constant(bad)
    with pytest.raises(ValueError, match="entry 1 is 0.0"):
        P.GainScheduled(S.LossLevel(), [0.0, 1.0], [0.1, 0.0])
    with pytest.raises(ValueError, match="one learning rate per node"):
        P.GainScheduled(S.LossLevel(), [0.0, 1.0], [0.1])
    with pytest.raises(ValueError, match="2 boundaries need 3 values"):
        P.PiecewiseConstant((2, 5), [0.1, 0.2])
    with pytest.raises(ValueError, match="strictly increasing"):
        P.PiecewiseConstant((5, 2), [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="`warmup` = 10 must be smaller"):
        P.Cosine(0.1, 10, warmup=10)
    with pytest.raises(ValueError, match="`end` must be finite and non-negative"):
        P.Cosine(0.1, 10, end=-0.1)
    with pytest.raises(ValueError, match="`c` must be positive"):
        P.InverseSharpness.from_grid(_grid(small_data()), 0.0)
    with pytest.raises(TypeError, match="learning-rate policy"):
        nk.descend(nk.ScheduledDescentProblem(_grid(small_data()), small_data()), 0.1, 5)


def test_bad_runs_and_targets_are_refused():
    data = small_data()
    sur = nk.ScheduledDescentProblem(_grid(data), data)
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError, match=r"`steps` \(K\) must be a positive integer"):
            nk.descend(sur, P.Constant(0.1), steps)
    with pytest.raises(ValueError, match="the surrogate has no parameters"):
        nk.descend(sur, P.Constant(0.1), 5, save_params=(1,))
    # A cosine shorter than the run gives η = 0 after its end: refused, naming the step.
    with pytest.raises(ValueError, match="learning rate 0.0 at step 5"):
        nk.descend(sur, P.Cosine(0.1, 5), 8)
    run = nk.descend(sur, P.Constant(0.1), 5)
    L0 = float(run.train_loss[0])
    with pytest.raises(ValueError, match="losses are non-negative"):
        run.steps_to(-0.1)
    with pytest.raises(ValueError, match="already reached at step 0"):
        run.steps_to(L0)
    with pytest.raises(ValueError, match="already reached at step 0"):
        nk.design_policy(sur, 5, target=2 * L0)
    with pytest.raises(ValueError, match=r"must lie in \(0, 2\)"):
        nk.design_policy(sur, 5, c_max=2.0)
    # A cross-entropy plant (two classes, kernels Θ ⊗ I_2) runs, but has no certificate.
    labels = lambda y: (y[:, 0] > 0).astype(jnp.int32)
    two = nk.Dataset(
        data.x_train, labels(data.y_train), data.x_test, labels(data.y_test), num_classes=2
    )
    g = _grid(data)
    blocks = lambda k: jnp.einsum("gij,ab->giajb", k, jnp.eye(2)).reshape(
        k.shape[0], 2 * k.shape[1], 2 * k.shape[2]
    )
    ce_grid = nk.KernelGrid(g.nodes, blocks(g.kernel_train), blocks(g.kernel_test), n_outputs=2)
    ce = nk.ScheduledDescentProblem(ce_grid, two, loss="cross_entropy")
    with pytest.raises(ValueError, match="mean MSE"):
        nk.step_certificate(ce, nk.descend(ce, P.Constant(0.1), 3))


def test_grid_that_does_not_cover_the_run_warns_once():
    data = small_data()
    # Nodes far from the clock's range [0, 5·0.7]: the run leaves the grid.
    grid = _grid(data, nodes=jnp.array([10.0, 10.5, 11.25]))
    sur = nk.ScheduledDescentProblem(grid, data)
    with pytest.warns(S.ScheduleRangeWarning, match="clamped"):
        nk.descend(sur, P.Constant(0.7), 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", S.ScheduleRangeWarning)
        nk.descend(sur, P.Constant(0.7), 5)  # the same grid range: no second warning


# ---------------------------------------------------------------- the study


@pytest.mark.slow
def test_control_study_records_replayable_policies(tmp_path):
    # A tiny run of the whole study (1 seed, width 16): the record has the fields users read,
    # and the η sequence recorded for a designed policy, replayed from the recorded
    # sine_problem arguments by a plain optax loop, reproduces the recorded final loss.
    from ntkode.studies._control._study import control_study

    out = tmp_path / "control"
    kw = dict(seeds=[0], width=16, n_train=16, n_test=8, steps=30, rates=[0.05, 0.3, 1.0])
    kw.update(design_iterations=2, segment=10, max_segments=8, dtype=jnp.float64, out=str(out))
    result = control_study(**kw)
    summary = result["summary"]
    for name in ("best_constant", "best_certified_constant", "cosine", "designed"):
        row = summary["policies"][name]
        for field in ("certified", "steps_to_target_network", "steps_to_target_surrogate"):
            assert field in row
        # The certified constant runs 4K steps (its baseline horizon), the others K.
        assert len(row["eta"]["0"]) == (120 if name == "best_certified_constant" else 30)
    assert summary["grid_search"]["network_runs"] == 3
    assert summary["problem"] == "sine" and summary["loss"] == "mse"
    # The prediction diagnosis: one LPV step with the true NTK at each saved step k < K,
    # and the error on grids identified on the policy's own run.
    inv = summary["policies"]["inverse_sharpness"]
    assert len(inv["one_step_residual_ratio"]) == len(inv["sharpness_steps"]) - 1
    assert all(0 < v < 2 for v in inv["one_step_residual_ratio"])
    ident = summary["targets"]["prediction_error_identified"]
    assert set(ident) == {"loss_level", "time"}
    assert inv["prediction_error_above_target"] <= inv["prediction_error"]
    # The same errors on the effective-time surrogate, for every certified policy.
    assert inv["prediction_error_time_above_target"] <= inv["prediction_error_time"]
    by_policy = summary["targets"]["prediction_error_by_certified_policy"]
    assert set(by_policy) == {"inverse_sharpness", "designed", "best_certified_constant"}
    assert by_policy["inverse_sharpness"]["time"] == inv["prediction_error_time"]
    assert summary["policies"]["designed"]["certified"] is True
    assert summary["policies"]["designed_uncertified"]["certified"] is False
    # Certified policies obey their certificate on every surrogate trajectory.
    for name in ("inverse_sharpness", "designed", "best_certified_constant"):
        assert summary["policies"][name]["certificate_fraction_held_surrogate"] == 1.0

    saved = json.loads((out / "results.json").read_text())
    assert saved["status"] == "finished"
    eta = np.asarray(saved["summary"]["policies"]["designed"]["eta"]["0"])
    problem = nk.sine_problem(**saved["summary"]["sine_problem"], seed=0, dtype=jnp.float64)
    params, static = eqx.partition(problem.model, eqx.is_inexact_array)
    data = problem.data

    def loss(p):
        u = jax.vmap(eqx.combine(p, static))(data.x_train)
        return nk.losses.mse(u, data.y_train)

    for rate in eta:
        opt = optax.sgd(float(rate))
        updates, _ = opt.update(jax.grad(loss)(params), opt.init(params), params)
        params = optax.apply_updates(params, updates)
    final = float(loss(params))
    recorded = saved["summary"]["policies"]["designed"]["final_train_loss_network"]
    # float64 on both sides; the two loops differ only in summation order.
    assert abs(final - recorded) <= 1e-9 * recorded
    # A rerun with the same settings resumes every part instead of recomputing it.
    lines = []
    control_study(**kw, log=lines.append)
    assert any("resuming" in line for line in lines)


def test_study_medians_count_never_as_slowest():
    # Steps to target are censored: "never" (None) is slower than any count, so the median
    # of three runs is None only when two of them never reached the target.
    from ntkode.studies._control._summary import _median, best_rate

    assert _median([120, None, 80]) == 120
    assert _median([None, None, 80]) is None
    assert _median([10, 30]) == 20
    row = lambda steps, loss: {"steps_to_target_network": steps, "final_train_loss_network": loss}
    rates = {
        0.1: [row(None, 0.2), row(300, 0.1)],  # median: never
        0.3: [row(150, 0.01), row(170, None)],  # a diverged final loss (null) still counts
        0.5: [row(150, 0.02), row(170, 0.01)],  # same median steps, lower median final loss
    }
    assert best_rate(rates) == 0.5


def test_digits_plant_has_ten_outputs_and_its_certificate_holds():
    # Digits in the study: an MLP on MSE to the one-hot labels (k = 10 outputs, the (nk)²
    # NTK). The λ_max the study measures on the network must be the grid's λ_max at the
    # same state (one flattening of the k outputs for both), and the certified policies
    # must obey the per-step certificate on the surrogate.
    from ntkode.studies._control._study import build_plant, lambda_max

    settings = dict(
        problem="digits",
        digits_problem=dict(model="mlp", width=8, depth=1, n_train=12),
        target_ratio=0.05,
        segment=5,
        max_segments=30,
        floor_ratio=0.5,
        c_ref=1.0,
        c_max=1.9,
    )
    plant = build_plant(settings, 0, jnp.float64)
    data = plant.net.data
    assert data.n_outputs == 10 and isinstance(plant.net.loss, nk.losses.MSE)
    lam0 = lambda_max(plant.net.model, data.x_train, 10)
    # The first node is the step-0 state: the highest loss level, the last node.
    assert rel_max(lam0, float(plant.spectra.lambda_max[-1])) < 1e-9
    ctx = _quiet()
    sur, n = plant.surrogate, data.n_train
    # The cap is the largest constant rate certified *until the target* (at the nodes a run
    # to the target activates); 1.9 n/λ_max(Θ(s)) is certified at every step.
    policies = (P.InverseSharpness.from_grid(sur.grid, 1.9, S.LossLevel()), P.Constant(plant.cap))
    for pol, until_target in zip(policies, (False, True), strict=True):
        run = nk.descend(sur, pol, 40)
        cert = nk.step_certificate(sur, run, plant.spectra)
        # Every step obeys ‖r_k+1‖ ≤ ρ_k ‖r_k‖. (ρ_k < 1 also needs λ_min > 0 at the active
        # nodes, which the (nk)² kernels of this tiny net need not have.)
        assert bool(jnp.all(cert.holds))
        k = run.steps_to(plant.target) if until_target else 40
        assert k is not None
        assert float(jnp.max(cert.stability[:k])) <= 1.9 * (1 + 1e-12)
    # Beyond the limit at step 0, the certificate must say so.
    beyond = P.Constant(2.5 * n / float(plant.spectra.lambda_max.max()))
    assert not nk.step_certificate(sur, nk.descend(sur, beyond, 40), plant.spectra).stable
    ctx.__exit__(None, None, None)


def _tiny_sine_plant():
    from ntkode.studies._control._study import build_plant

    settings = dict(
        problem="sine",
        sine_problem=dict(width=16, depth=2, n_train=10, n_test=6, dim=2, activation="relu"),
        target_ratio=0.2,
        segment=10,
        max_segments=30,
        floor_ratio=0.5,
        c_ref=1.0,
        c_max=1.9,
    )
    return build_plant(settings, 0, jnp.float64)


def test_effective_time_grid_holds_the_reference_kernels_at_their_clock():
    # The surrogate scheduled on the effective time τ_k = Σ_{j<k} η_j: the loss-level grid's
    # kernels, each at the clock of the reference run where it was measured.
    from ntkode.studies._control._study import lambda_max

    plant = _tiny_sine_plant()
    grid_l, grid_t = plant.surrogate.grid, plant.surrogate_time.grid
    times = np.asarray(plant.info["reference_times"])
    levels = np.asarray(plant.info["reference_loss_levels"])
    assert times[0] == 0 and np.all(np.diff(times) > 0) and np.all(np.diff(levels) < 0)
    np.testing.assert_array_equal(np.asarray(grid_t.nodes), times)
    for j, level in enumerate(levels):
        i = int(np.argmin(np.abs(np.asarray(grid_l.nodes) - np.log(level))))
        np.testing.assert_array_equal(grid_t.kernel_train[j], grid_l.kernel_train[i])
    # τ = 0 holds the initial network's NTK (measured here independently of the grid).
    lam0 = lambda_max(plant.net.model, plant.net.data.x_train, 1)
    assert rel_max(lam0, float(jnp.linalg.eigvalsh(grid_t.kernel_train[0])[-1])) < 1e-10
    # It reads the train loss only, and its train outputs are those of the full surrogate on
    # the same grid.
    assert plant.surrogate_time.data.n_test == 0
    full = nk.ScheduledDescentProblem.from_problem(grid_t, plant.net, schedule=S.Time())
    ctx = _quiet()
    pol = P.Constant(0.5 * plant.cap)
    a, b = nk.descend(plant.surrogate_time, pol, 30), nk.descend(full, pol, 30)
    np.testing.assert_allclose(a.train, b.train, rtol=0, atol=1e-13)
    # On τ a smaller rate traces the same path (a reparameterised flow, to first order in η):
    # at equal τ, halving η halves the gap.
    eta = 0.5 * plant.cap

    def gap(e, steps):  # both runs end at τ = steps·e
        coarse = nk.descend(plant.surrogate_time, P.Constant(e), steps).train[-1]
        fine = nk.descend(plant.surrogate_time, P.Constant(e / 2), 2 * steps).train[-1]
        return float(jnp.linalg.norm(coarse - fine))

    g1, g2 = gap(eta, 20), gap(eta / 2, 40)
    assert 0 < g2 < 0.6 * g1
    ctx.__exit__(None, None, None)


def test_policy_bank_runs_each_policy_as_itself():
    # The study runs every K-step policy of a seed as OneOf(bank, i), so that the runs compile
    # once per plant: each must give the same rates and the same run as the policy itself.
    from ntkode.studies._control._study import OneOf, policy_bank

    plant = _tiny_sine_plant()
    nodes = np.asarray(plant.surrogate.grid.nodes)
    designs = {
        name: {"nodes": nodes.tolist(), "node_values": (f * plant.cap + 0 * nodes).tolist()}
        for name, f in (("designed", 0.8), ("designed_uncertified", 1.3))
    }
    settings = {"steps": 30, "c_max": 1.9, "warmup": 5}
    bank = policy_bank(plant, settings, designs, 2.0 * plant.cap)
    ctx = _quiet()
    for i, (name, pol) in enumerate(bank.items()):
        for problem in (plant.net, plant.surrogate):
            a = nk.descend(problem, OneOf(tuple(bank.values()), i), 30)
            b = nk.descend(problem, pol, 30)
            np.testing.assert_array_equal(np.asarray(a.eta), np.asarray(b.eta), err_msg=name)
            np.testing.assert_allclose(a.train, b.train, rtol=0, atol=1e-12, err_msg=name)
    ctx.__exit__(None, None, None)
