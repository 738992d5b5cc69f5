"""The paper builder: every number quoted in the text is recorded with its source and equals
that file's value in the same format; missing studies are reported, not fatal; the quick build
runs end to end (slow)."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "paper"))

import build  # noqa: E402  (paper/build.py)
from quoting import lookup, render  # noqa: E402


def check_numbers(root: pathlib.Path) -> int:
    """Every recorded number equals its file's value, formatted the same, and is in the text."""
    paper = (root / "paper.md").read_text()
    quoted = json.loads((root / "numbers.json").read_text())
    for q in quoted:
        record = json.loads((root / q["file"]).read_text())
        assert render(lookup(record, q["key"]), q["format"]) == q["text"], q
        assert q["text"] in paper, q
    return len(quoted)


def _write(root, study, record):
    (root / study).mkdir(parents=True, exist_ok=True)
    (root / study / "results.json").write_text(json.dumps(record))


def _row(train, test, speedup):
    return {"max_rel_train_error": train, "max_rel_test_error": test, "speedup": speedup}


def test_quoted_numbers_equal_their_records(tmp_path):
    compare = {"true_loose": _row(0.0123, 0.01, 1.0), "frozen": _row(0.2, 0.25, 30.0)}
    for G, e in ((2, 0.08), (8, 0.0456)):
        compare[f"scheduled_time_G{G}"] = _row(e, e * 1.1, 20.0 + G)
        compare[f"scheduled_loss_G{G}"] = _row(2 * e, 2.2 * e, 10.0 + G)
    _write(tmp_path, "compare", {"rows": compare})
    curve = {"r0": 5.3, "solved_end": 0.108, "lower_end": 0.05, "upper_end": 0.167,
             "uniform_end": 3.95, "upper_over_solved_end": 1.54, "uniform_over_solved_end": 36.4,
             "holds": True}  # fmt: skip
    _write(tmp_path, "certificate", {
        "settings": {"width": 128, "n_train": 64, "t_end": 50.0, "grid_size": 8, "substeps": 16},
        "runs": {"relu": {"time": curve}, "softplus": {"time": dict(curve, r0=5.57)}},
    })  # fmt: skip
    (tmp_path / "runs.json").write_text(
        json.dumps({"build": {"seconds": 126.0, "cpus": 2, "load_average": [7.5, 1, 1], "jobs": 2}})
    )
    text = build.write_paper(tmp_path, True, json.loads((tmp_path / "runs.json").read_text()))
    assert check_numbers(tmp_path) > 30
    # The numbers are the records' (the best time grid is G = 8 at 4.56%), in their format.
    assert "(G = 8) by 4.56%" in text and "| 5.3 | 0.108 | [0.05, 0.167] | 3.95 |" in text
    assert "quick build" in text and "2.1 min on 2 CPUs, 2 studies at a time" in text
    # Studies without a record are reported per section, and the build did not stop.
    assert text.count("(study not available in this build: missing") == 7
    assert "## 7. NTK vs optimal MKL" in text


def test_a_missing_key_reports_its_section(tmp_path):
    _write(tmp_path, "compare", {"rows": {"scheduled_time_G2": _row(0.1, 0.1, 1.0)}})  # no frozen
    text = build.write_paper(tmp_path, False, {"build": {"seconds": 1.0, "cpus": 2,
                                                          "load_average": [1, 1, 1]}})  # fmt: skip
    section = text.split("## 1.")[1].split("## 2.")[0]
    assert "(study not available in this build: missing rows/frozen/max_rel_train_error)" in section
    check_numbers(tmp_path)


@pytest.mark.slow
def test_quick_paper_build(tmp_path):
    # The quick build of the two sine studies (a few minutes on 2 shared cores), end to end.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "paper" / "build.py"), "--quick", "--only", "compare",
         "certificate", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=1800, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert check_numbers(tmp_path) > 40
    paper = (tmp_path / "paper.md").read_text()
    assert "**This is the quick build**" in paper and "64 train and 64 test points" in paper
    assert "![" in paper and "Regenerate: `python -m ntkode compare" in paper
    assert "Both bounds hold on every solved trajectory." in paper


def test_control_section_quotes_each_problem(tmp_path):
    policy = {"certified": True, "steps_to_target_network": 243,
              "steps_to_target_surrogate": 191, "final_train_loss_network": 0.0105,
              "prediction_error": 0.537, "diverged": False}  # fmt: skip
    warmup = dict(policy, certified=False, prediction_error=2e15)
    summary = {
        "sine_problem": {"width": 256, "n_train": 128}, "loss": "mse", "seeds": [0, 1],
        "grid_search": {"network_runs": 36},
        "policies": {"designed": policy, "warmup": warmup},
        "targets": {"certified_policy": "designed", "certified_ratio": 0.628,
                    "overall_policy": "warmup", "overall_ratio": 1.49,
                    "prediction_error_certified": 0.598},
    }  # fmt: skip
    _write(tmp_path, "control", {"problems": {"sine": summary}})
    text = build.write_paper(tmp_path, True, {"build": {"seconds": 1.0, "cpus": 2,
                                                         "load_average": [1, 1, 1]}})  # fmt: skip
    section = text.split("## 4.")[1].split("## 5.")[0]
    assert (
        "**sine** (width 256, n_train 128; loss mse; seeds 0, 1; the grid search cost 36" in section
    )
    assert "needs 0.63× the steps" in section and "takes 1.49× those" in section
    assert "| designed | True | 243 | 191 | 1.05e-02 | 53.70% | False |" in section
    assert "| > 1000% |" in section  # a surrogate that diverged beyond the limit
    assert check_numbers(tmp_path) >= 20
