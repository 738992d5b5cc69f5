"""The width study and `ntkode widths --quick`."""

import argparse
import json
import math
import os

import numpy as np
import pytest

from ntkode.studies._widths import _cli as _cli_widths
from ntkode.studies._widths._study import METRICS, fit_slope, slopes, width_study


def test_fit_slope_recovers_power_law():
    w = [64, 256, 1024, 4096]
    np.testing.assert_allclose(fit_slope(w, [3.0 * x**-0.5 for x in w]), -0.5, rtol=1e-12)
    assert math.isnan(fit_slope([64], [0.1]))
    runs = [{"parameterization": "ntk", "width": x, **{m: 2.0 / x for m in METRICS}} for x in w]
    np.testing.assert_allclose(list(slopes(runs)["ntk"].values()), [-1.0] * len(METRICS))


@pytest.mark.slow
def test_cli_quick(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    _cli_widths.add_arguments(parser)
    out = str(tmp_path / "w")
    assert _cli_widths.run(parser.parse_args(["--quick", "--out", out])) == 0
    text = capsys.readouterr().out
    assert "fitted log-log slopes" in text
    assert os.path.getsize(os.path.join(out, "widths.png")) > 10_000
    with open(os.path.join(out, "results.json")) as f:
        result = json.load(f)
    runs = result["runs"]
    assert {(r["parameterization"], r["width"]) for r in runs} == {
        (p, w) for p in ("ntk", "standard") for w in _cli_widths.QUICK["widths"]
    }
    for r in runs:
        assert r["success"]
        for m in METRICS:
            assert 0 < r[m] < 1, (m, r[m])
    # Even at widths 64 → 256 the kernel at initialisation gets closer to its limit (expected
    # factor 2; a single seed fluctuates, but not by 2× in the wrong direction).
    for p in ("ntk", "standard"):
        e = {r["width"]: r["kernel_error_init"] for r in runs if r["parameterization"] == p}
        assert e[256] < e[64]
        assert all(math.isfinite(v) for v in result["slopes"][p].values())


def test_bad_input():
    with pytest.raises(ValueError, match="parameterization"):
        width_study(widths=(8, 16), parameterizations=("mup",))
    with pytest.raises(ValueError, match="`widths`"):
        width_study(widths=(0, 16))
    with pytest.raises(ValueError, match="`t_end`"):
        width_study(widths=(8, 16), t_end=0.0)
