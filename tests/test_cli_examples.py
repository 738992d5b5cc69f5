"""The command line and every example script run end to end (STYLE §9)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_compare_quick_writes_results(tmp_path):
    # The whole quick study in a subprocess (its --quick promises under a minute; 23 min for
    # this file on 2 cores at load 30).
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ntkode",
            "compare",
            "--quick",
            "--no-progress",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "results.json").read_text())
    assert record["study"] == "compare" and record["status"] == "finished"
    assert record["settings"]["width"] == 64 and record["machine"]["cpus"] >= 1
    results = record["rows"]
    for method in ("true", "true_loose", "frozen"):
        for key in (
            "max_rel_train_error",
            "final_train_loss",
            "final_test_loss",
            "seconds",
            "steps",
        ):
            assert key in results[method], (method, key)
    assert results["true"]["max_rel_train_error"] == 0.0
    # The frozen kernel misses the (nonlinear) truth by far more than the truth's uncertainty.
    assert (
        results["frozen"]["max_rel_train_error"] > 5 * results["true_loose"]["max_rel_train_error"]
    )
    assert (out / "compare.png").stat().st_size > 10_000
    assert "frozen" in proc.stdout and "train err" in proc.stdout
    # Timings say how they were measured, and on what machine (load average).
    assert results["true"]["timing"] == "single-shot"
    assert results["frozen"]["timing"] == "median of 5"
    assert "single-shot" in proc.stdout and "load average" in proc.stdout
    # In a pipe: no progress-bar fragments, one line per stage with its time.
    assert "\r" not in proc.stdout and proc.stdout.count(" s)") >= 3


@pytest.mark.slow
def test_readme_examples_run(tmp_path):
    # Every python block of the README, in order, in one namespace (STYLE §9).
    text = (ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) >= 2
    script = tmp_path / "readme.py"
    script.write_text("\n\n".join(blocks))
    proc = _run_python(script, tmp_path)
    assert "frozen" in proc.stdout  # the comparison table was printed


def test_cli_rejects_bad_arguments(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ntkode", "compare", "--t-end", "-1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert proc.returncode != 0 and "--t-end must be positive" in proc.stderr


# The two longest examples (tuning a grid; two processes, which the distributed test also
# runs) are long tests.
_LONG = ("tune_grid.py", "multiprocess.py")


@pytest.mark.parametrize(
    "script",
    [pytest.param(p, marks=pytest.mark.slow) if p.name in _LONG else p for p in EXAMPLES],
    ids=[p.name for p in EXAMPLES],
)
def test_example_runs(script, tmp_path):
    _run_python(script, tmp_path)


def _run_python(script, cwd) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_study_argument_errors_are_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ntkode", "closure", "--epochs", "-1", "--out", str(tmp_path)],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "ntkode closure: error: `epochs` must be at least 1" in proc.stderr
    assert "Traceback" not in proc.stderr
