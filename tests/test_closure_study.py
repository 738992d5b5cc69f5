"""The closure study: IoU, bad labels, and the `ntkode closure --quick` command end to end."""

import argparse
import json

import numpy as np
import pytest

import ntkode as nk
from ntkode.studies import _cli
from ntkode.studies._closure import _cli as _cli_closure


def test_iou_values():
    labels = np.array([[1, 1, 0, 0]])
    assert nk.iou(np.array([[0.9, 0.2, 0.8, 0.1]]), labels) == pytest.approx(1 / 3)
    assert nk.iou(labels.astype(float), labels) == 1.0
    assert nk.iou(np.zeros((1, 4)), np.zeros((1, 4))) == 1.0  # nothing inside, none predicted


def test_iou_rejects_non_binary_labels():
    with pytest.raises(ValueError, match="binary"):
        nk.iou(np.zeros((1, 3)), np.array([[0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="must match"):
        nk.iou(np.zeros((1, 3)), np.zeros((1, 4)))


def test_closure_command_registered():
    assert "ntkode.studies._closure._cli" in _cli._COMMANDS


def test_closure_quick(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    _cli_closure.add_arguments(parser)
    assert _cli_closure.run(parser.parse_args(["--quick", "--out", str(tmp_path)])) == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "closure.png").stat().st_size > 0
    assert set(res["iou"]) == {"network", "ntk_init", "ntk_final", "path"}
    assert all(0.0 <= v <= 1.0 for v in res["iou"].values())
    # The run certifies itself: the per-step path kernel (midpoint node, float32) reproduces
    # the trained network to float32 rounding plus the midpoint rule (measured ~1e-5).
    assert res["path_kernel_residual"] < 1e-3
    assert "IoU test" in capsys.readouterr().out
