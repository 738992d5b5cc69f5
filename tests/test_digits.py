"""The digits reference problem, classification metrics and the classification study rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkode as nk
from ntkode.studies import classification_study, compare_study, digits_data, digits_problem

# ---------------------------------------------------------------- data and problem


def test_digits_split_is_fixed_by_seed_and_nested():
    a = digits_data(n_train=100, seed=0, images=False)
    b = digits_data(n_train=300, seed=0, images=False)
    c = digits_data(n_train=100, seed=1, images=False)
    assert a.x_train.shape == (100, 64) and a.y_train.shape == (100, 10)
    assert a.n_test == b.n_test == 360
    # Smaller training sets are prefixes of larger ones (up to the centring by the train mean)
    # and every n_train is tested on the same images.
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.y_train, b.y_train[:100])
    np.testing.assert_allclose(a.x_train - a.x_train[0], b.x_train[:100] - b.x_train[0], atol=1e-6)
    assert not np.array_equal(a.y_test, c.y_test)
    # One-hot rows; the 1,797 images are all used, none twice.
    np.testing.assert_array_equal(np.sum(a.y_train, 1), 1.0)
    full = digits_data(images=True)
    assert full.x_train.shape == (1437, 1, 8, 8) and full.n_test == 360
    assert abs(float(jnp.mean(full.x_train))) < 1e-6  # centred by the training mean


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_digits_problem_outputs_ten_class_scores(model):
    p = digits_problem(model=model, n_train=20, channels=2, width=8)
    u = nk._core._model.apply(p.model, p.data.x_train)
    assert u.shape == (20, 10)
    assert p.loss is nk.losses.cross_entropy
    # At initialisation the loss is near log 10 (small logits on ten classes).
    assert abs(float(p.loss(u, p.data.y_train)) - np.log(10)) < 0.5


def test_bad_digits_arguments():
    with pytest.raises(ValueError, match="n_train.*1437"):
        digits_data(n_train=1500)
    with pytest.raises(ValueError, match="n_train"):
        digits_data(n_train=0)
    with pytest.raises(ValueError, match="model.*'cnn' or 'mlp'"):
        digits_problem(model="resnet")
    with pytest.raises(ValueError, match="channels"):
        digits_problem(channels=0)
    with pytest.raises(ValueError, match="problem_name.*'sine' or 'digits'"):
        compare_study(problem_name="mnist", out=None)
    with pytest.raises(ValueError, match="tune_nodes='schedule'"):
        compare_study(problem_name="digits", tune=True, tune_nodes="time", out=None)


def test_cli_refuses_an_unknown_problem(capsys):
    from ntkode.studies._cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--problem", "mnist"])
    assert "invalid choice: 'mnist'" in capsys.readouterr().err


# ---------------------------------------------------------------- metrics


def test_accuracy_and_agreement_by_hand():
    y = jnp.asarray([0, 2, 1, 1])
    onehot = jax.nn.one_hot(y, 3)
    u = jnp.asarray([[2.0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])  # 3 of 4 right
    v = jnp.asarray([[0.0, 2, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])  # differs from u on one
    assert float(nk.accuracy(u, y)) == 0.75
    assert float(nk.accuracy(u, onehot)) == 0.75
    np.testing.assert_allclose(nk.accuracy(jnp.stack([u, v]), y), [0.75, 0.5])
    assert float(nk.class_agreement(u, v)) == 0.75
    # One output: the sign is the class (±1 targets).
    assert float(nk.accuracy(jnp.asarray([[1.0], [-2.0]]), jnp.asarray([[1.0], [1.0]]))) == 0.5


def test_bad_metric_input():
    u = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match="0..2.*from 0 to 3"):
        nk.accuracy(u, jnp.asarray([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="non-integer"):
        nk.accuracy(u, jnp.asarray([0.5, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"k = 3 columns.*\(n, 3\)"):
        nk.accuracy(u, jnp.zeros((4, 10)))
    with pytest.raises(ValueError, match="4 examples"):
        nk.accuracy(jnp.zeros((5, 3)), jnp.asarray([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="same examples"):
        nk.class_agreement(u, jnp.zeros((4, 2)))


def test_classification_metrics_of_a_flow_against_itself_and_a_frozen_kernel():
    p = digits_problem(model="mlp", n_train=40, width=16, t_end=3.0)
    ts = jnp.linspace(0.0, 3.0, 11)
    true = nk.solve(p, saveat=ts)
    m = nk.classification_metrics(true, true)
    assert m["max_accuracy_gap"] == 0.0 and m["final_class_agreement"] == 1.0
    assert m["final_test_accuracy"] == float(nk.accuracy(true.test[-1], true.y_test))
    frozen = nk.solve(nk.KernelFlowProblem.from_model(p.model, p.data, p.loss, p.tspan), saveat=ts)
    f = nk.classification_metrics(frozen, true)
    gap = jnp.abs(nk.accuracy(frozen.test, true.y_test) - nk.accuracy(true.test, true.y_test))
    assert f["max_accuracy_gap"] == pytest.approx(float(jnp.max(gap)))
    assert 0.0 <= f["final_class_agreement"] <= 1.0


# ---------------------------------------------------------------- traced against full blocks


def test_traced_frozen_surrogate_is_the_full_flow_with_the_mean_diagonal_block():
    # Θ̄ ⊗ I_k is an exact kernel flow of its own: the ODE on a SharedKernelGrid must equal a
    # KernelFlowProblem handed the Kronecker kernel, and differ from the full-block one by
    # what the off-diagonal and unequal diagonal blocks contribute.
    p = digits_problem(model="mlp", n_train=24, width=16, t_end=2.0)
    params = jax.tree.map(lambda a: a[None], nk._core._model.partition(p.model)[0])
    shared = nk.KernelGrid.from_params(params, p.model, p.data, jnp.zeros(1), trace=True)
    full = nk.KernelGrid.from_params(params, p.model, p.data, jnp.zeros(1))
    ts = jnp.linspace(0.0, 2.0, 9)
    sched = nk.ScheduledKernelProblem(
        shared, p.data, nk.schedules.Time(), nk.schedules.PiecewiseConstant(), p.loss, p.tspan,
        u0_train=nk._core._model.apply(p.model, p.data.x_train),
        u0_test=nk._core._model.apply(p.model, p.data.x_test),
    )  # fmt: skip
    a = nk.solve(sched, saveat=ts, rtol=1e-10, atol=1e-12)
    k = p.data.n_outputs
    eye = jnp.eye(k)
    kron = lambda K: jnp.einsum("ij,cd->ijcd", K, eye)  # (n, n, k, k) blocks
    b = nk.solve(
        nk.KernelFlowProblem(
            kron(shared.kernel_train[0]), p.data, p.loss, p.tspan,
            kernel_test=kron(shared.kernel_test[0]), u0_train=a.train[0], u0_test=a.test[0],
        ),
        saveat=ts, rtol=1e-10, atol=1e-12,
    )  # fmt: skip
    np.testing.assert_allclose(a.train, b.train, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(a.test, b.test, rtol=1e-7, atol=1e-9)
    # The mean diagonal block of the full kernel is the traced one.
    kt = full.kernel_train[0].reshape(24, k, 24, k)
    np.testing.assert_allclose(
        jnp.einsum("iaja->ij", kt) / k, shared.kernel_train[0], rtol=1e-10, atol=1e-12
    )


# ---------------------------------------------------------------- the study


@pytest.mark.slow
def test_classification_study_rows_carry_the_metrics(tmp_path):
    cmp = classification_study(
        model="mlp", n_train=32, width=16, t_end=2.0, n_save=11, grid_sizes=(2,),
        schedules=("time",), out=str(tmp_path), progress=False, log=lambda s: None,
    )  # fmt: skip
    rows = cmp.rows
    assert {"true", "true_loose", "frozen", "frozen_full", "scheduled_time_G2"} <= set(rows)
    assert "scheduled_time_full_G2" in rows  # not quick: the full-block grid row fits
    for row in rows.values():
        for key in ("final_test_accuracy", "max_accuracy_gap", "final_class_agreement"):
            assert 0.0 <= row[key] <= 1.0, key
    assert rows["true"]["max_accuracy_gap"] == 0.0
    saved = nk._core._records.read_json(str(tmp_path / "results.json"))
    assert saved["status"] == "finished" and saved["settings"]["problem"] == "digits"
    frozen = saved["rows"]["frozen"]
    assert frozen["final_class_agreement"] == rows["frozen"]["final_class_agreement"]
    for figure in ("compare.png", "accuracy.png", "error_vs_G.png"):
        assert (tmp_path / figure).exists(), figure


@pytest.mark.slow
def test_classification_study_resumes_its_finished_rows(tmp_path, monkeypatch):
    # An interrupted run (here: the full-block frozen kernel fails) keeps its finished rows;
    # the rerun reads them back, computes only the rest, and other settings are refused.
    from ntkode.studies._compare import _classification as C

    said = []
    kw = dict(model="mlp", n_train=12, width=4, t_end=1.0, n_save=5, grid_sizes=(),
              rtol=1e-3, out=str(tmp_path), progress=False, log=said.append)  # fmt: skip

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(C.KernelFlowProblem, "from_model", broken)
        with pytest.raises(KeyboardInterrupt):
            classification_study(**kw)
    first = nk._core._records.read_json(str(tmp_path / "results.json"))
    assert first["status"] == "running" and list(first["rows"]) == ["true", "true_loose", "frozen"]

    solved = []
    timed_solve = C.timed_solve
    monkeypatch.setattr(C, "timed_solve", lambda p, **k: solved.append(p) or timed_solve(p, **k))
    cmp = classification_study(**kw)
    assert any("skipping 3 finished part(s) (true, true_loose, frozen)" in s for s in said)
    assert len(solved) == 1 and isinstance(solved[0], nk.KernelFlowProblem)  # frozen_full only
    saved = nk._core._records.read_json(str(tmp_path / "results.json"))
    assert saved["status"] == "finished" and list(saved["rows"]) == list(cmp.rows)
    assert saved["rows"]["true"] == first["rows"]["true"]  # read back as saved
    np.testing.assert_array_equal(cmp.solutions["frozen"].train, C.solution_from_arrays(
        dict(np.load(tmp_path / "parts" / "frozen.npz"))).train)  # fmt: skip
    assert (tmp_path / "accuracy.png").exists()
    with pytest.raises(ValueError, match="--resume: .*rtol: 0.001 → 0.01"):
        classification_study(**{**kw, "rtol": 1e-2}, resume=True)


@pytest.mark.slow
def test_full_block_grid_at_every_saved_time_converges_to_the_cnn_flow_and_traced_does_not():
    # Convergence evidence for the cross-entropy surrogates: full (n·k)² kernels at all 31
    # saved times, linearly interpolated, reproduce the true flow of the CNN (0.17% measured
    # in float64); the output-traced Θ̄ ⊗ I_k on the same nodes stays ~40% off: its
    # off-diagonal output blocks are not negligible for this network.
    from ntkode.studies._compare._classification import TracedKernelCache
    from ntkode.studies._compare._scheduled_rows import SCHEDULES

    p = digits_problem(model="cnn", n_train=16, channels=2, t_end=3.0, dtype=jnp.float64)
    ts = jnp.linspace(0.0, 3.0, 31)
    true = nk.solve(p, saveat=ts, rtol=1e-9, atol=1e-11, save_weights=True)
    errors = {}
    for full in (True, False):
        grid, _ = TracedKernelCache(true, p.model, p.data, full=full).grid(ts, SCHEDULES["time"])
        sp = nk.ScheduledKernelProblem(
            grid, p.data, SCHEDULES["time"], nk.schedules.Linear(), p.loss, p.tspan
        )
        sol = nk.solve(sp, saveat=ts, rtol=1e-9, atol=1e-11)
        errors[full] = nk.trajectory_errors(sol, true)["max_rel_train_error"]
    assert errors[True] < 0.01, errors
    assert errors[False] > 10 * errors[True], errors
