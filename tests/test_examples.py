"""The example scripts run (smoke), on small budgets, through their `main`."""

import runpy
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _main(name):
    return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="example")["main"]


def test_linear_svm_example(tmp_path, capsys):
    result = _main("linear_svm")(["--quick", "--out", str(tmp_path)])
    # The flow reaches the SVM margin (it lands on the kink in finite time); SGD is
    # still below it after 2*10^4 steps (it approaches like 1/log k).
    assert result["flow_margin"] == pytest.approx(result["gamma"], rel=1e-9)
    assert 0 < result["sgd_margin"] < result["gamma"]
    assert (tmp_path / "linear_svm.png").stat().st_size > 1000
    assert "SVM margin" in capsys.readouterr().out


def test_sphere_portrait_example(tmp_path):
    result = _main("sphere_portrait")(["--quick", "--out", str(tmp_path)])
    # Every flow from a positive-margin start ends at the SVM direction (the only
    # D-critical direction with positive margin of a linear model), to the
    # accuracy of the proximal solver on a kink (exact up to rounding and the QP
    # tolerance).
    distance = np.linalg.norm(result["ends"] - result["w_svm"], axis=1)
    assert np.max(distance) < 1e-8
    assert (tmp_path / "sphere_portrait.png").stat().st_size > 1000


def test_digits_example_configuration(capsys):
    config = _main("digits_compare")(["--quick", "--dry-run"])
    assert config.data.spec == "digits:0,1" and config.sgd.num_steps == 20_000
    assert "[shadowing]" in capsys.readouterr().out


@pytest.mark.slow
def test_digits_example_runs(tmp_path, capsys):
    summary = _main("digits_compare")(["--quick", "--out", str(tmp_path)])
    assert summary["late_stage_step"] is not None
    rows = summary["shadowing_table"]["windows"]
    # On the mean-field reference the last window is closer than the first.
    assert rows[-1]["distance"]["mean_field"] < rows[0]["distance"]["mean_field"]
    assert (tmp_path / "figures" / "shadowing.png").exists()
    assert "window start k" in capsys.readouterr().out
