"""The closure study: IoU, baselines, the U-Net, training and resuming, the saved network,
kernel machines, the path kernel, bad input, and `ntkode closure --quick` end to end."""

import argparse
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ntkode as nk
from ntkode.datasets._closure import closure_images
from ntkode.studies import _cli
from ntkode.studies._closure import _cli as _cli_closure, _train
from ntkode.studies._closure._kernels import kernel_machine, loo_residuals, traced_ntk
from ntkode.studies._closure._metrics import (
    all_inside_predict,
    convex_hull_predict,
    iou_summary,
    parity_predict,
)
from ntkode.studies._closure._optimisers import Adam, Ranger
from ntkode.studies._closure._path import _sgd_step, sgd_path_kernel
from ntkode.studies._closure._saved import save_closure_network
from ntkode.studies._closure._unet import build_unet


def _data(n=16, size=16, seed=1):
    d = closure_images(n, size, seed=seed)
    return d, jnp.asarray(d.curves[:, None], float), jnp.asarray(d.inside, float)


def _tiny(seed=0, **kw):
    return build_unet(**({"scales": 2, "channels": 3} | kw), key=jax.random.key(seed))


def test_iou_values():
    labels = np.array([[1, 1, 0, 0]])
    assert nk.iou(np.array([[0.9, 0.2, 0.8, 0.1]]), labels) == pytest.approx(1 / 3)
    assert nk.iou(labels.astype(float), labels) == 1.0
    assert nk.iou(np.zeros((1, 4)), np.zeros((1, 4))) == 1.0  # nothing inside, none predicted
    # Per image: 1/3 and 1 (empty and empty); pooled counts pixels, not images.
    per = nk.iou_per_image(np.array([[0.9, 0.2, 0.8, 0.1], [0, 0, 0, 0]]), [[1, 1, 0, 0], [0] * 4])
    np.testing.assert_allclose(per, [1 / 3, 1.0])
    s = iou_summary(np.array([[1, 0], [1, 1], [0, 0]], bool), np.array([[1, 0], [1, 0], [1, 1]]))
    assert s["iou_pooled"] == pytest.approx(2 / 5) and s["iou_median"] == pytest.approx(0.5)


def test_iou_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="`labels` must be binary"):
        nk.iou(np.zeros((1, 3)), np.array([[0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="must match"):
        nk.iou(np.zeros((1, 3)), np.zeros((1, 4)))


def test_baselines():
    d = closure_images(40, 32, kind="mixed", seed=3)
    assert iou_summary(parity_predict(d.curves), d.inside)["iou_p10"] == 1.0
    # The convex hull is exact on a convex polygon and wrong in the bay of a C.
    square = np.zeros((1, 16, 16), bool)
    square[0, 3:12, 3] = square[0, 3:12, 11] = square[0, 3, 3:12] = square[0, 11, 3:12] = True
    np.testing.assert_array_equal(convex_hull_predict(square), parity_predict(square))
    folded = closure_images(10, 32, kind="folded", seed=0)
    hull = convex_hull_predict(folded.curves)
    assert (hull & ~folded.inside).any(axis=(1, 2)).all(), "every C/S/spiral has a bay"
    assert (hull >= folded.inside).all(), "the hull contains the inside"
    frac = d.inside.mean()
    assert iou_summary(all_inside_predict(d.curves), d.inside)["iou_pooled"] == pytest.approx(frac)


def test_unet_is_fully_convolutional_and_checks_sizes():
    net = _tiny(scales=3)
    call = eqx.filter_jit(net)
    assert call(jnp.zeros((1, 16, 16))).shape == (16, 16)
    assert call(jnp.zeros((1, 8, 8))).shape == (8, 8)  # same weights, another size
    with pytest.raises(ValueError, match="multiples of 4"):
        call(jnp.zeros((1, 10, 10)))
    with pytest.raises(ValueError, match=r"one image \(1, m, m\)"):
        call(jnp.zeros((16, 16)))
    with pytest.raises(ValueError, match="`norm` must be one of"):
        nk.UNet(norm="batch", key=jax.random.key(0))
    h = eqx.filter_eval_shape(
        lambda: nk.UNet(scales=3, channels=4, growth=2.0, norm="group", key=jax.random.key(0))
    )
    assert h.widths == (4, 8, 16) and h.hyperparameters()["norm"] == "group"


@pytest.mark.slow
def test_unet_ntk_agrees_with_reference():
    # The structured engine taps the U-Net's convolutions (through pooling, upsampling and
    # concatenation) and contracts group-norm scales as Jacobians: it must agree with the
    # plain per-example Jacobian contraction.
    _, x, _ = _data(3, 16)
    net = _tiny(norm="group", channels=2)
    fast = nk.ntk(net, x, trace=True)
    ref = nk.ntk(net, x, trace=True, implementation="reference")
    np.testing.assert_allclose(fast, ref, rtol=1e-10, atol=1e-12)
    # The study's route: the trace summed over blocks of pixels, as many as fit in
    # `memory_gb` (all 256, one, or a few), against chosen columns in any order.
    kept, _ = traced_ntk(net, x, np.array([1]))
    np.testing.assert_allclose(kept, ref[:, [1]], rtol=1e-10, atol=1e-12)
    blocked, _ = traced_ntk(net, x, 1, memory_gb=1e-9)
    np.testing.assert_allclose(blocked, ref[:, :1], rtol=1e-10, atol=1e-12)
    per_pixel = 6 * sum(v.size for v in jax.tree.leaves(eqx.filter(net, eqx.is_array))) * 8
    grouped, _ = traced_ntk(net, x, np.array([2, 0, 1]), memory_gb=50 * per_pixel / 1e9)
    np.testing.assert_allclose(grouped, ref[:, [2, 0, 1]], rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # 22 s on an idle machine: three compilations of the U-Net's jacrev
def test_traced_ntk_equals_direct_jacobian_trace():
    # `traced_ntk` sums J_B(X) J_B(X_cols)^T over pixel blocks, puts the columns first and
    # fills the symmetric column block from its upper tile triangle. Against the plain
    # definition sum_p grad f_p(x) . grad f_p(x') from one whole `jax.jacrev` per image,
    # float64, for 16-pixel blocks and the whole image (one-pixel blocks: the slow test
    # above), with columns in any order (so the permutation and the mirrored tiles are
    # both exercised).
    # Random 0/1 "curve" images 8×8 keep compilation short; the kernel does not care.
    x = jax.random.bernoulli(jax.random.key(2), 0.3, (7, 1, 8, 8)).astype(float)
    net = _tiny(channels=2)
    params, static = eqx.partition(net, eqx.is_inexact_array)

    def features(xi):
        jac = jax.jacrev(lambda p: eqx.combine(p, static)(xi).reshape(-1))(params)
        return jnp.concatenate([a.reshape(64, -1) for a in jax.tree.leaves(jac)], 1)

    j = jax.vmap(features)(x)  # (7, 64 pixels, P)
    direct = np.einsum("ipk,jpk->ij", j, j)
    size = j.shape[-1]
    for cols, pixels in ((np.array([5, 0, 3, 1, 6]), 16), (7, 64)):
        want = direct[:, cols] if np.ndim(cols) else direct[:, :cols]
        # Memory for exactly `pixels` pixels per block (4 blocks, or the whole image).
        got, _ = traced_ntk(net, x, cols, memory_gb=2 * 7 * size * 8 * pixels / 1e9)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * direct.max())
    with pytest.raises(ValueError, match="`cols` must be distinct"):
        traced_ntk(net, x, np.array([1, 1]))


def test_training_lowers_the_loss_and_records_history():
    _, x, y = _data(16, 16)
    run = _train.train(_tiny(), x, y, optimiser=Adam(1e-2), epochs=6, batch_size=8, progress=False)
    losses = [h["loss"] for h in run.history]
    assert losses[-1] < 0.8 * losses[0]  # measured 0.60 → 0.45 in these 12 steps
    assert run.steps == 12 and run.resumed is None
    ranger = _train.train(
        _tiny(), x, y, optimiser=Ranger(1e-2), epochs=3, batch_size=8, progress=False
    )
    assert ranger.history[-1]["loss"] < ranger.history[0]["loss"]


def test_interrupted_training_resumes_exactly(tmp_path, monkeypatch, capsys):
    _, x, y = _data(16, 16)
    kw = dict(optimiser=Adam(1e-2), epochs=3, batch_size=4, seed=5, progress=True)
    whole = _train.train(_tiny(), x, y, **kw)
    calls, real = [0], _train._step

    def flaky(*args):
        calls[0] += 1
        if calls[0] == 6:  # in the middle of epoch 2 (4 steps per epoch)
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(_train, "_step", flaky)
    with pytest.raises(KeyboardInterrupt):
        _train.train(_tiny(), x, y, folder=str(tmp_path), **kw)
    assert "interrupted after 1 step(s) of epoch 2" in capsys.readouterr().out
    monkeypatch.setattr(_train, "_step", real)
    again = _train.train(_tiny(), x, y, folder=str(tmp_path), **kw)
    assert again.resumed == (1, 1)
    assert "resuming from epoch 2, step 2" in capsys.readouterr().out
    # Same minibatches, same augmentation: the very same weights, bit for bit.
    for a, b in zip(jax.tree.leaves(whole.model), jax.tree.leaves(again.model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    # Changed settings start afresh, and say which setting changed.
    _train.train(_tiny(), x, y, folder=str(tmp_path), **{**kw, "seed": 6})
    assert "is for other settings (seed: 5 → 6); starting afresh" in capsys.readouterr().out


def test_saved_network_round_trip_any_size(tmp_path):
    d, x, y = _data(8, 16)
    net = _tiny(scales=3)
    save_closure_network(str(tmp_path), net, {"note": "test"})
    loaded = nk.load_closure_network(tmp_path)
    probs = loaded(d.curves)
    assert probs.shape == (8, 16, 16) and float(probs.min()) >= 0 and float(probs.max()) <= 1
    np.testing.assert_allclose(probs, jax.nn.sigmoid(jax.vmap(net)(x)), rtol=1e-12)
    big = closure_images(2, 32, seed=0).curves
    assert loaded(big).shape == (2, 32, 32) and loaded(big[0]).shape == (32, 32)
    assert loaded.record["note"] == "test"


def test_saved_network_bad_input(tmp_path):
    net = _tiny(scales=3)
    with pytest.raises(ValueError, match="does not exist"):
        nk.load_closure_network(tmp_path / "nothing")
    save_closure_network(str(tmp_path), net)
    loaded = nk.load_closure_network(tmp_path)
    with pytest.raises(ValueError, match=r"`images` must be curve images \(n, m, m\)"):
        loaded(np.zeros((2, 1, 16, 16)))
    with pytest.raises(ValueError, match="`images` must hold 0/1 curve pixels"):
        loaded(np.full((1, 16, 16), 0.5))
    with pytest.raises(ValueError, match="multiples of 4"):
        loaded(np.zeros((1, 18, 18)))
    meta = tmp_path / "network.json"
    record = json.loads(meta.read_text())
    record["hyperparameters"]["channels"] = 5
    meta.write_text(json.dumps(record))
    with pytest.raises(ValueError, match="do not match the hyperparameters in network.json"):
        nk.load_closure_network(tmp_path)
    meta.unlink()
    with pytest.raises(ValueError, match="has no network.json"):
        nk.load_closure_network(tmp_path)


def test_leave_one_out_residuals_by_refitting():
    # The closed form α_i / G_ii equals refitting without image i, for a symmetric kernel
    # and for a non-symmetric one (the path kernel).
    rng = np.random.default_rng(0)
    a = rng.normal(size=(7, 5))
    r = rng.normal(size=(7, 3))
    for k in (a @ a.T, a @ a.T + 0.3 * rng.normal(size=(7, 7))):
        fast = loo_residuals(k, r, 0.1)
        for i in range(7):
            keep = np.arange(7) != i
            alpha = np.linalg.solve(k[np.ix_(keep, keep)] + 0.1 * np.eye(6), r[keep])
            np.testing.assert_allclose(fast[i], r[i] - k[i, keep] @ alpha, rtol=1e-10)


def test_kernel_machine_interpolates_its_training_images():
    # Tested on its own training images with a tiny ridge, kernel regression returns the
    # ±1 targets, so its masks are the labels.
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(6, 40))
    k = jnp.asarray(feats @ feats.T)
    truth = rng.random((6, 10)) < 0.4
    f0 = rng.normal(size=(6, 10)) * 0.1
    m = kernel_machine(k, k, truth, f0, f0, ridges=(1e-9,))
    np.testing.assert_allclose(m.test, np.where(truth, 1.0, -1.0), atol=1e-5)
    assert m.loo_iou <= 1.0 and m.ridge == 1e-9


@pytest.mark.slow
def test_path_kernel_is_the_sum_of_step_kernels():
    # Two SGD steps of two images each (one epoch): each image's column holds η/B times
    # the tangent kernel at the weights of the step that used it, and nothing else.
    _, x, y = _data(4, 16)
    net = _tiny()
    queries = x
    run = sgd_path_kernel(
        net, x, y, queries, learning_rate=0.3, epochs=1, batch_size=2, progress=False
    )
    order = np.random.default_rng([0, 0]).permutation(4)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    expected = np.zeros((4, 4))
    for step in range(2):
        idx = order[2 * step : 2 * step + 2]
        model = eqx.combine(params, static)
        expected[:, idx] = 0.3 / 2 * np.asarray(nk.ntk(model, queries, x[idx], trace=True))
        params, _, _ = _sgd_step(params, static, x[idx], y[idx], queries, 0.3)
    np.testing.assert_allclose(run.kernel, expected, rtol=1e-10)
    assert run.steps == 2


def test_path_kernel_reconstruction_converges():
    # The per-step tangent features predict the outputs' change, with a relative residual
    # that vanishes with the rate. ReLU and max-pooling kinks make it converge at about
    # half order (measured residual ratios 1.7–2.0 per factor 4 in the rate; with softplus
    # instead of ReLU the ratio reaches 4.0, first order).
    _, x, y = _data(4, 16)
    net = _tiny()
    res = [
        sgd_path_kernel(
            net, x, y, x, learning_rate=lr, epochs=2, batch_size=2, progress=False
        ).residual
        for lr in (0.1, 0.025)
    ]
    assert res[1] < 0.2 and 1.4 < res[0] / res[1] < 3.0, res


def test_closure_command_registered():
    assert "ntkode.studies._closure._cli" in _cli._COMMANDS


def test_study_bad_settings():
    with pytest.raises(ValueError, match="`epochs` must be at least 1"):
        nk.closure_study(epochs=0, out=None, progress=False)
    with pytest.raises(ValueError, match="`kernel_size` are 20×20 pixels"):
        nk.closure_study(kernel_size=20, out=None, progress=False)
    with pytest.raises(ValueError, match="must also be in `curve_n`"):
        nk.closure_study(kernel_n=(128,), curve_n=(64,), out=None, progress=False)
    with pytest.raises(ValueError, match="`curve_channels` must be at least 1, got 0"):
        nk.closure_study(curve_channels=0, out=None, progress=False)


@pytest.mark.slow
def test_closure_quick(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    _cli_closure.add_arguments(parser)
    assert _cli_closure.run(parser.parse_args(["--quick", "--out", str(tmp_path)])) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    for name in ("examples", "kernel_examples", "learning_curves", "training"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    sets = {"same", "two_shapes", "three_shapes", "double_size"}
    for name in ("network", "parity", "convex_hull", "all_inside"):
        assert set(res[name]) == sets
        assert all(set(v) == {"iou_pooled", "iou_median", "iou_p10"} for v in res[name].values())
    assert res["parity"]["same"]["iou_pooled"] == 1.0
    assert res["settings"]["size"] == 32 and res["settings"]["kernel_size"] == 16
    curves = res["learning_curves"]
    assert {"network", "ntk_init", "ntk_final", "path", "network_sgd"} <= set(curves)
    # Each curve network says whether it converged; the kernel stage, what it cost.
    assert {"train_loss", "train_iou", "steps"} <= set(curves["network"][0])
    assert {"ntk_seconds", "solve_seconds"} <= set(curves["ntk_init"][0])
    assert 0 < res["timings"]["curves_peak_rss_gb"] < 8
    out = capsys.readouterr().out
    assert "Is it its own kernel machine?" in out and "IoU on held-out" in out
    net = nk.load_closure_network(tmp_path / "network")
    images = closure_images(3, 32, seed=9).curves
    assert net(images).shape == (3, 32, 32)


def test_schedule_of_a_one_step_run_moves_the_weights():
    # One step (e.g. 32 images in batches of 32 for one epoch): no warm-up, the full rate.
    for opt in (Adam(1e-2), Ranger(1e-2)):
        t = opt.build(1)
        params = opt.wrap({"a": jnp.ones(2)})
        grads = {"a": jnp.ones(2)}  # taken at the fast weights
        update, _ = t.update(grads, t.init(params), params)
        assert np.all(np.asarray(jax.tree.leaves(update)[0]) < 0), update


def test_quick_keeps_options_given_explicitly(monkeypatch, capsys):
    import argparse

    from ntkode.studies._closure import _cli, _study

    seen = {}
    monkeypatch.setattr(_study, "closure_study", lambda **kw: seen.update(kw))
    parser = argparse.ArgumentParser()
    _cli.add_arguments(parser)
    assert _cli.run(parser.parse_args(["--quick", "--epochs", "3"])) == 0
    assert seen["epochs"] == 3  # given: kept
    assert seen["n_train"] == _cli.QUICK["n_train"]  # left at its default: shrunk
    assert "--epochs 3 as given" in capsys.readouterr().out


def test_answer_states_the_kernel_machine_verdict_from_the_numbers():
    """The printed answer follows the learning curves: close but below is 'Nearly', with the
    worst-decile IoUs quoted; far below is 'No'; equal is 'Yes'."""
    from ntkode.studies._closure._summary import answer

    def results(final):
        row = lambda n, iou, p10: {"n": n, "iou_pooled": iou, "iou_median": iou, "iou_p10": p10}
        sets = ("same", "two_shapes", "three_shapes", "double_size")
        return {
            "settings": {"size": 32},
            "network": {t: row(0, 0.96, 0.85) for t in sets},
            "convex_hull": {"same": {"iou_pooled": 0.8}},
            "learning_curves": {
                "size": 16, "steps": 2000,
                "network": [row(64, 0.92, 0.8), row(1024, 0.989, 0.94)],
                "ntk_init": [row(64, 0.22, 0.1), row(1024, 0.268, 0.15)],
                "ntk_final": [row(64, final * 0.7, 0.4), row(1024, final, 0.76)],
            },
        }  # fmt: skip

    text = answer(results(0.917))
    assert "Nearly, with ntk_final: its kernel machine reaches 93% of the network's" in text
    assert "stays below the network at every n measured" in text
    assert "10th percentile 0.76 against 0.94" in text
    assert "Yes in this sense" in answer(results(0.985))
    assert "No: kernel regression" in answer(results(0.5))
