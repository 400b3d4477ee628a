"""The `flowtools` command end to end on a tiny configuration, and its failures."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from flowtools import cli, data, models, results

TINY = """\
[data]
spec = "blobs:n=40,d=2,margin=0.5,seed=0"

[model]
kind = "linear"

[sgd]
step = 0.1
num_steps = 4000
log_points = 60
record_dt = 0.02

[flow]
t1 = 1.0
num_portrait = 2

[shadowing]
horizon = 0.1
num_starts = 3

[output]
formats = ["png"]
dpi = 60
"""

FIGURES = ["margins", "shadowing", "stationarity", "scales", "sphere", "decomposition"]


def _snapshot(folder):
    """Every file under `folder` with its bytes, to prove nothing was touched."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One in-process `flowtools compare` on the tiny config, shared by the tests."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.toml"
    config.write_text(TINY)
    out = root / "out"
    status = cli.main(
        ["compare", "--config", str(config), "--out", str(out), "--no-progress"]
    )
    return root, config, out, status


def test_compare_succeeds_and_writes_everything(run, capsys):
    root, config, out, status = run
    assert status == 0
    for name in ("report.json", "arrays.npz", "config.toml"):
        assert (out / name).stat().st_size > 0
    for name in FIGURES:
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no leftovers


def test_report_contents(run):
    _, _, out, _ = run
    summary = json.loads((out / "report.json").read_text())["summary"]
    for key in (
        "config",
        "versions",
        "late_stage_step",
        "flow_time_reached",
        "final",
        "shadowing_table",
    ):
        assert key in summary
    assert summary["versions"]["jax"] and summary["versions"]["numpy"]
    assert set(summary["final"]) >= {"margin", "smoothed_margin", "stationarity"}
    table = summary["shadowing_table"]
    assert table["references"][:2] == ["mean_field", "inclusion"]
    for row in table["windows"]:
        assert row["start_step"] >= summary["late_stage_step"]
        assert set(row["distance"]) >= {"mean_field", "inclusion"}
    assert "slope" in table["fits"]["mean_field"]["vs_k"]


def test_report_numbers_are_independently_right(run):
    # The final normalized margin recomputed from the saved direction with the
    # model's apply (min_i y_i <u, x_i>), and the margin's upper bound: the SVM
    # margin of the data. Agreement to float64 rounding.
    _, _, out, _ = run
    res = results.Results.load(out)
    ds = data.load("blobs:n=40,d=2,margin=0.5,seed=0")
    u = res.arrays["u.final"]
    margin = float(np.min(ds.y * (ds.X @ u)))
    assert res.summary["final"]["margin"] == pytest.approx(margin, rel=1e-10)
    assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-12)
    from flowtools import reference

    _, gamma = reference.svm_direction(ds.X, ds.y)
    assert 0 < margin <= gamma + 1e-12
    # Flow time reached is the trace's last clock value.
    assert res.summary["flow_time_reached"] == res.arrays["trace.t"][-1]
    assert (
        res.summary["late_stage_step"]
        == res.summary["trace"]["fields"]["late_stage_step"]
    )


def test_saved_config_reproduces_the_run(run):
    _, config, out, _ = run
    from flowtools import experiment

    saved = experiment.load_config(out / "config.toml")
    assert saved == experiment.load_config(config)


def test_summary_is_printed(run, tmp_path, capsys):
    # Rerunning is the only way to see the printed summary; run `figures` instead,
    # then check the summary text through the formatter on the saved results.
    _, _, out, _ = run
    text = cli._compare_summary(results.Results.load(out), out)
    assert "late-stage entry step" in text and "flow time reached" in text
    assert "D_T vs mean_field" in text and "D_T vs inclusion" in text


def test_figures_redraws_from_saved_results(run, tmp_path, capsys):
    _, _, out, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "figures")
    assert cli.main(["figures", str(copy)]) == 0
    for name in FIGURES:
        assert (copy / "figures" / f"{name}.png").stat().st_size > 1000
    assert cli.main(["figures", str(copy), "--formats", "pdf"]) == 0
    assert (copy / "figures" / "margins.pdf").read_bytes()[:4] == b"%PDF"


def test_figures_on_a_folder_without_results(tmp_path, capsys):
    assert cli.main(["figures", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "No results file" in err and "Traceback" not in err


# ------------------------------------------------------------------ failures


@pytest.fixture
def previous(run, tmp_path):
    """A copy of the tiny run's results, standing for earlier results to protect."""
    _, config, out, _ = run
    folder = tmp_path / "previous"
    shutil.copytree(out, folder)
    return config, folder, _snapshot(folder)


def test_unknown_key_fails_cleanly(previous, capsys):
    config, folder, before = previous
    status = cli.main(
        ["compare", "--config", str(config), "--out", str(folder), "sgd.stepsize=0.1"]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "unknown configuration key sgd.stepsize" in err
    assert "sgd.step," in err  # the valid keys are listed
    assert "Traceback" not in err
    assert _snapshot(folder) == before


def test_unknown_key_in_file_names_the_file(previous, tmp_path, capsys):
    _, folder, before = previous
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\nwidth_list = [3]\n")
    assert cli.main(["compare", "--config", str(bad), "--out", str(folder)]) == 1
    err = capsys.readouterr().err
    assert "model.width_list" in err and "bad.toml" in err
    assert _snapshot(folder) == before


def test_unreadable_data_file_fails_cleanly(previous, tmp_path, capsys):
    config, folder, before = previous
    missing = tmp_path / "no_such_data.csv"
    status = cli.main(
        [
            "compare",
            "--config",
            str(config),
            "--out",
            str(folder),
            f"data.spec={missing}",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "no_such_data.csv" in err and "Traceback" not in err
    assert _snapshot(folder) == before


def test_unwritable_output_folder_fails_cleanly(previous, tmp_path, capsys):
    config, folder, before = previous
    blocker = tmp_path / "plain_file"
    blocker.write_text("a file where a folder is expected")
    status = cli.main(
        ["compare", "--config", str(config), "--out", str(blocker / "results")]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert "cannot write results into" in err and "nothing was computed" in err
    assert blocker.read_text() == "a file where a folder is expected"
    assert _snapshot(folder) == before


def test_failure_while_writing_keeps_previous_results(previous, monkeypatch):
    # A failure at the very end (drawing figures, after all the computation) must
    # leave the earlier files as they were: outputs are staged in a scratch folder
    # and published only once everything is written.
    config, folder, before = previous
    from flowtools import experiment, plots

    def broken(*args, **kwargs):
        raise RuntimeError("figure writer broke")

    monkeypatch.setattr(plots, "draw_all", broken)
    res = results.Results.load(folder)
    res.summary["marker"] = "new results that must not appear"
    with pytest.raises(RuntimeError, match="figure writer broke"):
        experiment._write_outputs(folder, res, experiment.load_config(config))
    assert _snapshot(folder) == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".flowtools")]


def test_failure_while_publishing_rolls_back(previous, monkeypatch):
    # A rename that fails half-way through publishing (here the third one) must
    # put every earlier file back: old report and old arrays stay a matching pair.
    config, folder, before = previous
    from flowtools import experiment
    from flowtools.experiment import _output

    real_replace = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        if ".flowtools-staging-" in str(src):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(_output.os, "replace", flaky)
    res = results.Results.load(folder)
    res.summary["marker"] = "new results that must not appear"
    with pytest.raises(OSError, match="No space left"):
        experiment._write_outputs(folder, res, experiment.load_config(config))
    assert calls["n"] == 3
    assert _snapshot(folder) == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".flowtools")]


def test_folder_in_the_way_is_refused_before_publishing(previous, capsys):
    config, folder, _ = previous
    (folder / "config.toml").unlink()
    (folder / "config.toml").mkdir()
    before = _snapshot(folder)
    status = cli.main(
        ["compare", "--config", str(config), "--out", str(folder), "--no-progress"]
    )
    assert status == 1
    message = " ".join(capsys.readouterr().err.split())
    assert "is a folder where a result file must go" in message
    assert _snapshot(folder) == before


def test_no_late_stage_is_reported(tmp_path, capsys):
    # x and -x with the same label: no linear model classifies both, so the run
    # ends without a late stage and says so.
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    y = np.array([1.0, 1.0, -1.0])
    path = tmp_path / "clash.npz"
    np.savez(path, X=X, y=y)
    status = cli.main(
        [
            "compare",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
            f"data.spec={path}",
            "model.kind=linear",
            "sgd.num_steps=200",
        ]
    )
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err
    assert "no late stage" in err and "training error" in err
    assert not (tmp_path / "out").exists()  # the folder it created is removed again


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("compare", "flow", "figures"):
        assert command in text


def test_console_script_runs():
    # The installed `flowtools` command (or the module, where the script is not on
    # PATH) answers --help in a fresh process.
    exe = shutil.which("flowtools")
    command = [exe] if exe else [sys.executable, "-m", "flowtools.cli"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [*command, "compare", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0
    assert "--config FILE" in done.stdout and "key=value" in done.stdout


def test_show_config_prints_resolved_toml(capsys):
    assert cli.main(["compare", "--show-config", "sgd.step=0.025"]) == 0
    out = capsys.readouterr().out
    assert "step = 0.025" in out and "[shadowing]" in out


def test_flow_command_with_a_start_file(tmp_path, capsys):
    ds = data.load("blobs:n=40,d=2,margin=0.5,seed=0")
    model = models.linear(ds.dim)
    assert model.num_params == 2
    start = tmp_path / "u0.txt"
    from flowtools import reference

    w, _ = reference.svm_direction(ds.X, ds.y)
    u0 = np.array([w[0] - 0.2 * w[1], w[1] + 0.2 * w[0]])  # near w: positive margin
    assert np.min(ds.y * (ds.X @ u0)) > 0
    np.savetxt(start, u0)
    out = tmp_path / "flow"
    status = cli.main(
        [
            "flow",
            "--u0",
            str(start),
            "--out",
            str(out),
            "--no-progress",
            "data.spec=blobs:n=40,d=2,margin=0.5,seed=0",
            "model.kind=linear",
            "flow.t1=2.0",
            "flow.dt=0.01",
            'output.formats=["png"]',
        ]
    )
    text = capsys.readouterr().out
    assert status == 0
    assert "normalized margin" in text and "KKT residual" in text
    saved = results.Results.load(out)
    assert saved.arrays["flow.u"].shape[1] == 2
    assert (out / "figures" / "flow.png").exists()
