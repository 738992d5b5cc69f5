"""Nothing lost: studies record their settings and finished parts, resume them, stop at once
on Ctrl-C, refuse unusable output folders and options in one line, and time honestly."""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ntkode.studies import _cli
from ntkode.studies._closure import _cli as closure_cli
from ntkode.studies._compare import _cli as compare_cli, _study as compare_module
from ntkode.studies._mkl import _cli as mkl_cli, _study as mkl_module
from ntkode.studies._run import StudyRecord, machine, median_seconds, prepare_out
from ntkode.studies._widths import _cli as widths_cli, _study as widths_module

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------- the record


def test_record_resumes_matching_settings_and_says_so(tmp_path):
    said = []
    rec = StudyRecord(tmp_path, "demo", {"a": 1, "b": (2, 3)}, parts="rows", log=said.append)
    rec.put("first", {"x": 1.5}, arrays={"u": np.arange(3.0)})
    rec.put("second", {"x": 2.5})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["study"] == "demo" and data["status"] == "running"
    assert data["settings"] == {"a": 1, "b": [2, 3]} and list(data["rows"]) == ["first", "second"]
    assert data["machine"]["cpus"] >= 1
    rec.finish(total=4)
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "finished"
    # The same settings: both parts come back (with their arrays), and the log says so.
    again = StudyRecord(tmp_path, "demo", {"b": [2, 3], "a": 1}, parts="rows", log=said.append)
    assert "first" in again and "second" in again and again.get("second") == {"x": 2.5}
    np.testing.assert_array_equal(again.arrays("first")["u"], np.arange(3.0))
    assert said[-1].startswith("resuming") and "skipping 2 finished part(s)" in said[-1]


def test_record_starts_afresh_on_changed_settings_and_says_what_changed(tmp_path):
    said = []
    StudyRecord(tmp_path, "demo", {"a": 1}, log=said.append).put("p", {"x": 1})
    fresh = StudyRecord(tmp_path, "demo", {"a": 2}, log=said.append)
    assert "p" not in fresh and "starting afresh" in said[-1] and "a: 1 → 2" in said[-1]
    assert not (tmp_path / "parts").exists()
    # --resume refuses to start afresh; --fresh always does.
    StudyRecord(tmp_path, "demo", {"a": 2}, log=said.append).put("p", {"x": 1})
    with pytest.raises(ValueError, match="--resume: .* other settings \\(a: 2 → 3\\)"):
        StudyRecord(tmp_path, "demo", {"a": 3}, resume=True, log=said.append)
    assert "p" not in StudyRecord(tmp_path, "demo", {"a": 2}, resume=False, log=said.append)
    # Another study's record in the same folder is never resumed.
    StudyRecord(tmp_path, "demo", {"a": 2}).put("p", {"x": 1})
    assert "p" not in StudyRecord(tmp_path, "other", {"a": 2}, log=said.append)


def test_record_of_listed_parts_and_missing_arrays(tmp_path):
    key = lambda run: f"w{run['width']}"
    rec = StudyRecord(tmp_path, "demo", {}, parts="runs", key=key)
    rec.put("w8", {"width": 8}, arrays={"a": np.ones(2)})
    rec.put("w16", {"width": 16})
    assert json.loads((tmp_path / "results.json").read_text())["runs"] == [
        {"width": 8},
        {"width": 16},
    ]
    # A part recorded with arrays that are gone is not finished.
    os.remove(tmp_path / "parts" / "w8.npz")
    again = StudyRecord(tmp_path, "demo", {}, parts="runs", key=key)
    assert "w8" not in again and "w16" in again


def test_unusable_output_folders_are_refused_in_one_sentence(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        prepare_out(a_file)
    with pytest.raises(ValueError, match="cannot be created"):
        prepare_out(a_file / "below")
    prepare_out(tmp_path / "new" / "folder")
    assert (tmp_path / "new" / "folder").is_dir()


@pytest.mark.parametrize("command", ["compare", "widths", "closure", "mkl"])
def test_every_cli_refuses_an_unusable_out_before_any_work(tmp_path, capsys, command):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        assert _cli.main([command, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"ntkode {command}: error: --out") and err.count("\n") == 1


# ---------------------------------------------------------------- options that were dropped


def _parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


class _Captured(Exception):
    pass


def test_quick_keeps_explicit_options(monkeypatch):
    seen = {}

    def capture(**kwargs):
        seen.update(kwargs)
        raise _Captured

    monkeypatch.setattr(compare_module, "compare_study", capture)
    with pytest.raises(_Captured):
        compare_cli.run(_parse(compare_cli, ["--quick", "--width", "32", "--t-end", "3"]))
    assert seen["quick"] and seen["width"] == 32 and seen["t_end"] == 3.0
    assert "n_train" not in seen  # left to --quick's value
    # The study resolves the rest from QUICK, the explicit ones win.
    monkeypatch.setattr(widths_module, "width_study", capture)
    seen.clear()
    with pytest.raises(_Captured):
        widths_cli.run(_parse(widths_cli, ["--quick", "--widths", "8", "--n-train", "5"]))
    assert seen["widths"] == [8] and seen["n_train"] == 5
    assert seen["n_test"] == widths_cli.QUICK["n_test"]


def test_compare_study_applies_quick_only_to_unset_sizes(monkeypatch):
    built = {}

    def problem(**kwargs):
        built.update(kwargs)
        raise _Captured

    monkeypatch.setattr(compare_module, "sine_problem", problem)
    with pytest.raises(_Captured):
        compare_module.compare_study(quick=True, width=32, out=None)
    assert built["width"] == 32 and built["n_train"] == compare_module.QUICK["n_train"]


def test_mkl_quick_runs_the_data_sets_asked_for(monkeypatch, tmp_path):
    ran = []

    def fake_compare(data, **kwargs):
        ran.append(data)
        return {"name": data, "seconds": 0.0}

    monkeypatch.setattr(mkl_module, "mkl_compare", fake_compare)
    monkeypatch.setattr("ntkode.datasets.uci", lambda name, seed=0: name)
    monkeypatch.setattr(mkl_module, "plot_mkl_study", lambda results, path: None)
    monkeypatch.setattr(mkl_module, "format_table", lambda results: "")
    out = mkl_module.mkl_study(["iris", "digits"], quick=True, out=None, progress=None)
    assert ran == ["iris", "digits"] and [r["name"] for r in out] == ["iris", "digits"]
    ran.clear()
    mkl_module.mkl_study(quick=True, out=None, progress=None)
    assert ran == ["iris", "wine"]


def test_seeds_and_folds_that_cannot_work_are_refused():
    with pytest.raises(ValueError, match="`seeds` must be at least 1"):
        widths_module.width_study(widths=(8, 16), seeds=0)
    with pytest.raises(SystemExit, match="--seeds must be at least 1"):
        widths_cli.run(_parse(widths_cli, ["--seeds", "0"]))
    with pytest.raises(SystemExit, match="--folds must be at least 2"):
        mkl_cli.run(_parse(mkl_cli, ["--folds", "1"]))
    with pytest.raises(ValueError, match="`folds` must be an integer of at least 2"):
        mkl_module.mkl_study(["iris"], folds=1, out=None, progress=None)


# ---------------------------------------------------------------- timing


def test_median_seconds_and_machine_load():
    median, times = median_seconds(lambda: time.sleep(0.01), 3)
    assert len(times) == 3 and min(times) <= median <= max(times) and median >= 0.01
    m = machine()
    assert m["cpus"] >= 1 and (m["load_average"] is None or len(m["load_average"]) == 3)


# ---------------------------------------------------------------- Ctrl-C and resume


def _widths_cmd(out):
    # Two tiny runs, each mostly compilation (~10 s on 2 busy cores).
    return [
        sys.executable, "-m", "ntkode", "widths", "--widths", "16", "32", "--depth", "1",
        "--parameterizations", "ntk", "--n-train", "16", "--n-test", "8", "--t-end", "2",
        "--rtol", "1e-4", "--out", str(out),
    ]  # fmt: skip


_LONG_XLA_STUDY = """
import sys
import jax
from ntkode.studies._run import StudyRecord, run_interruptibly

def study():
    record = StudyRecord(sys.argv[1], "demo", {"n": 1})
    record.put("first", {"x": 1.0})
    print("first part done", flush=True)
    # One XLA call of minutes: Python cannot run a signal handler until it returns.
    inner = lambda i, v: jax.lax.fori_loop(0, 2**20, lambda j, w: w * 1.0000001, v)
    spin = jax.jit(lambda x: jax.lax.fori_loop(0, 2**20, inner, x))
    spin(1.0).block_until_ready()
    record.put("second", {"x": 2.0})
    return 0

sys.exit(run_interruptibly("demo", study))
"""


def test_ctrl_c_stops_within_a_second_even_inside_a_long_xla_call(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(_LONG_XLA_STUDY)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "first part done\n", proc.communicate()[1]
    time.sleep(1.0)  # now inside the XLA loop
    start = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    seconds = time.perf_counter() - start
    # Measured 0.1 s on 2 busy cores (a plain KeyboardInterrupt waits for XLA to return:
    # `ntkode compare` took 1 min 43 s).
    assert seconds < 3.0, seconds
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().startswith("ntkode demo: interrupted; 1 finished part(s) saved in")
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "interrupted" and list(record["parts"]) == ["first"]


@pytest.mark.slow
def test_ctrl_c_stops_at_once_keeps_what_is_finished_and_resumes(tmp_path):
    # ~1 minute on 2 cores (3 on busy ones): two tiny width-study runs, mostly compilation.
    out = tmp_path / "w"
    proc = subprocess.Popen(
        _widths_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None
    first = ""
    while not first.startswith("ntk "):  # the first run's row: one part is finished
        first = proc.stdout.readline()
        assert first or proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    time.sleep(1.0)  # inside the second run (compiling or solving: XLA, not Python)
    start = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    seconds = time.perf_counter() - start
    # Measured 0.2 s on 2 busy cores (the old handler waited for XLA: 1 min 43 s).
    assert seconds < 3.0, seconds
    assert proc.returncode == 130
    assert "Traceback" not in err and "interrupted; 1 finished part(s) saved" in err
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "interrupted" and len(record["runs"]) == 1
    # The same command again: the finished run is skipped, and the log says so.
    again = subprocess.run(
        _widths_cmd(out), capture_output=True, text=True, env=_env(), timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert "skipping 1 finished part(s) (ntk-w16-seed0)" in again.stdout
    record = json.loads((out / "results.json").read_text())
    assert record["status"] == "finished" and [r["width"] for r in record["runs"]] == [16, 32]
    assert record["runs"][0] == json.loads(json.dumps(record["runs"][0]))  # read back as is


@pytest.mark.slow
def test_compare_resumes_its_finished_methods(tmp_path):
    # ~3 minutes on 2 busy cores: the quick study, interrupted after the reference, resumed.
    out = tmp_path / "c"
    cmd = [sys.executable, "-m", "ntkode", "compare", "--quick", "--grid-sizes", "2",
           "--no-progress", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )
    assert proc.stdout is not None
    line = ""
    while not line.startswith("[2/4]"):
        line = proc.stdout.readline()
        assert line or proc.poll() is None
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    first = json.loads((out / "results.json").read_text())
    assert list(first["rows"]) == ["true"] and (out / "parts" / "true.npz").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert again.returncode == 0, again.stderr
    assert "skipping 1 finished part(s) (true)" in again.stdout
    rows = json.loads((out / "results.json").read_text())["rows"]
    # The resumed reference is the one computed before, read back bit for bit.
    assert rows["true"] == first["rows"]["true"]
    assert rows["scheduled_time_G2"]["max_rel_train_error"] < rows["frozen"]["max_rel_train_error"]
    # A third run recomputes nothing.
    third = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert f"skipping {len(rows)} finished part(s)" in third.stdout


def test_closure_network_of_width_zero_is_a_sentence(tmp_path, capsys):
    # The closure network's width is `--channels` of its U-Net (`--width` of the earlier CNN,
    # which divided by it: ZeroDivisionError).
    parser = argparse.ArgumentParser()
    closure_cli.add_arguments(parser)
    old = not parser.parse_known_args(["--width", "1"])[1]
    argv = ["--quick", "--width", "0"] if old else ["--channels", "0"]
    try:
        code = _cli.main(["closure", *argv, "--out", str(tmp_path)])
    except ZeroDivisionError:
        pytest.xfail("the earlier closure CNN divides by its width (ntkode/studies/_closure/)")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("ntkode closure: error:") and argv[-2].lstrip("-") in err
