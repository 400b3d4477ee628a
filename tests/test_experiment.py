"""Configuration files, overrides, output-folder checks and the standalone flow."""

import dataclasses
import json
import math
import tomllib

import numpy as np
import pytest

from flowtools import config as config_module
from flowtools import data, experiment, reference
from flowtools.experiment import Config, ConfigError, ExperimentError

# ------------------------------------------------------------------ configuration


def test_default_config_is_the_documented_main_job():
    config = experiment.load_config()
    assert config == Config()
    assert config.data.spec == "digits:0,1"
    assert config.model.kind == "mlp" and config.model.widths == (32,)
    assert config.loss.name == "exponential"
    assert config.sgd.batch_size == 1 and config.sgd.sampling == "iid"
    assert 0.01 <= config.sgd.step <= 0.03
    assert config.sgd.step_rule == "constant"


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[data]\nspec = "iris"\n[model]\nkind = "linear"\n'
        "[sgd]\nstep = 0.05\nnum_steps = 1000\n"
    )
    config = experiment.load_config(
        path, ["sgd.step=0.02", "model.widths=[64, 8]", "data.spec=digits:3,8"]
    )
    assert config.model.kind == "linear"  # from the file
    assert config.sgd.num_steps == 1000  # from the file
    assert config.sgd.step == 0.02  # the override wins over the file
    assert config.model.widths == (64, 8)  # a TOML list becomes a tuple
    assert config.data.spec == "digits:3,8"  # a bare word is read as a string
    assert config.flow == experiment.FlowConfig()  # untouched sections keep defaults


def test_integer_is_accepted_for_a_float_field():
    config = experiment.load_config(None, ["flow.t1=3"])
    assert config.flow.t1 == 3.0 and isinstance(config.flow.t1, float)


def test_resolved_config_round_trips_through_toml():
    config = experiment.load_config(
        None,
        [
            'shadowing.references=["inclusion"]',
            "output.figures=false",
            "model.relu0=0.5",
            'data.spec="a \\"quoted\\" path.csv"',
        ],
    )
    text = config.to_toml()
    assert config_module._from_dict(tomllib.loads(text), "round trip") == config
    assert config.data.spec == 'a "quoted" path.csv'


def test_every_field_has_a_valid_key():
    keys = Config.valid_keys()
    assert len(keys) == len(set(keys))
    for section in dataclasses.fields(Config):
        for field in dataclasses.fields(section.type):
            assert f"{section.name}.{field.name}" in keys


def test_unknown_key_lists_the_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown configuration key sgd\.stepp"):
        experiment.load_config(None, ["sgd.stepp=0.1"])
    path = tmp_path / "bad.toml"
    path.write_text("[sgd]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"sgd\.learning_rate in .*bad\.toml") as info:
        experiment.load_config(path)
    assert "sgd.step" in str(info.value) and "model.widths" in str(info.value)
    with pytest.raises(ConfigError, match="unknown configuration section 'optimizer'"):
        experiment.load_config(None, ["optimizer.step=1"])


def test_malformed_file_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[sgd\nstep = 0.1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        experiment.load_config(path)
    with pytest.raises(ConfigError, match=r"cannot read the configuration file"):
        experiment.load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    "override, message",
    [
        ('sgd.step="fast"', r"sgd\.step .* must be a number"),
        ("sgd.num_steps=1.5", r"sgd\.num_steps .* must be an integer"),
        ("sgd.step=-0.1", r"sgd\.step must be positive"),
        ("model.kind=resnet", r"model\.kind = 'resnet' is not one of"),
        ("loss.name=hinge", r"loss\.name = 'hinge' is not one of"),
        ("model.relu0=2", r"model\.relu0 must lie in \[0, 1\]"),
        ("output.figures=1", r"output\.figures .* must be true or false"),
        ("sgd.step", r"not of the form key=value"),
        ("step=0.1", r"must be section\.field"),
    ],
)
def test_bad_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        experiment.load_config(None, [override])


def test_configs_are_data_not_code(tmp_path):
    # A TOML string that looks like Python is kept as a string, never evaluated.
    config = experiment.load_config(None, ['data.spec=__import__("os").getcwd()'])
    assert config.data.spec == '__import__("os").getcwd()'


# ------------------------------------------------------------------ output folder


def test_unwritable_output_folder_fails_before_computing(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExperimentError, match="cannot write results into"):
        experiment.check_writable(blocker / "out")
    with pytest.raises(ExperimentError, match="exists and is not a folder"):
        experiment.check_writable(blocker)
    # run_compare refuses before loading data: a data spec that would fail to load
    # is never reached.
    config = experiment.load_config(None, ["data.spec=/nonexistent/file.csv"])
    with pytest.raises(ExperimentError, match="nothing was computed"):
        experiment.run_compare(config, blocker / "out", progress=False)


def test_check_writable_creates_the_folder(tmp_path):
    out = experiment.check_writable(tmp_path / "new" / "nested")
    assert out.is_dir() and list(out.iterdir()) == []


# ------------------------------------------------------------------ helpers


@pytest.mark.parametrize("loss", ["exponential", "logistic"])
def test_smoothed_margin_in_log_space(loss):
    # Independent value at a moderate scale where the direct formula is exact in
    # float64: gtilde = -log(sum l(rho^L q_i)) / rho^L (exponential), and
    # -log(expm1(sum log(1 + exp(-rho^L q_i)))) / rho^L (logistic).
    q = np.array([0.3, 0.5, 0.9])
    log_rho, degree = math.log(2.0), 2
    z = 4.0 * q
    if loss == "exponential":
        expected = -math.log(np.exp(-z).sum()) / 4.0
    else:
        expected = -math.log(math.expm1(np.log1p(np.exp(-z)).sum())) / 4.0
    got = experiment._log_smoothed(q[None], np.array([log_rho]), degree, loss)
    assert got[0] == pytest.approx(expected, rel=1e-13)  # float64 rounding only
    # Late in training (rho^L q ~ 1e4) the direct formula underflows; the log-space
    # one tends to min q from below, within log(n) / rho^L (THEORY section 2).
    late = experiment._log_smoothed(q[None], np.array([0.5 * math.log(2e4)]), 2, loss)
    assert q.min() - math.log(3) / 2e4 <= late[0] <= q.min()


@pytest.mark.parametrize(
    "kind, degree", [("linear", 1), ("deep_linear", 3), ("diagonal", 2), ("mlp", 3)]
)
def test_build_model_reaches_every_kind(kind, degree):
    ds = data.load("iris")
    config = experiment.ModelConfig(kind=kind, depth=3 if kind != "diagonal" else 2)
    config = dataclasses.replace(config, widths=(4, 4))
    model = experiment.build_model(config, ds)
    assert model.degree == degree


def test_cnn_needs_images():
    with pytest.raises(ConfigError, match="needs image data"):
        experiment.build_model(experiment.ModelConfig(kind="cnn"), data.load("iris"))
    model = experiment.build_model(
        experiment.ModelConfig(kind="cnn", channels=(2,)), data.load("digits:0,1")
    )
    assert model.degree == 2


# ------------------------------------------------------------------ the flow alone


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flow")
    config = experiment.load_config(
        None,
        [
            "data.spec=blobs:n=30,d=2,margin=0.5,seed=1",
            "model.kind=linear",
            "flow.t1=3.0",
            "flow.dt=0.01",
            'output.formats=["png"]',
            "output.dpi=60",
        ],
    )
    ds = data.load(config.data.spec)
    w, gamma = reference.svm_direction(ds.X, ds.y)
    # Start 0.3 rad away from the SVM direction, where the margin is positive.
    c, s = math.cos(0.3), math.sin(0.3)
    u0 = np.array([c * w[0] - s * w[1], s * w[0] + c * w[1]])
    assert np.min(ds.y * (ds.X @ u0)) > 0
    res = experiment.run_flow(config, out, u0=u0, progress=False)
    return out, res, np.asarray(w), float(gamma)


def test_flow_reaches_the_svm_direction(flow_run):
    out, res, w, gamma = flow_run
    # Linear model: the flow converges to the hard-margin SVM direction (THEORY 6),
    # computed independently by scipy; the proximal solver lands on the kink and
    # stays, so the error is at the level of the QP tolerance.
    u = res.arrays["u.final"]
    assert np.linalg.norm(u - w) < 1e-6
    assert res.summary["final"]["margin"] == pytest.approx(gamma, rel=1e-6)
    assert res.summary["final"]["stationarity"] < 1e-8
    margins = res.arrays["flow.margin"]
    assert np.all(np.diff(margins) >= -1e-12)  # monotone along the inclusion


def test_flow_writes_its_files(flow_run):
    out, res, _, _ = flow_run
    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"]["kind"] == "flow"
    assert saved["summary"]["start"] == "given"
    assert (out / "figures" / "flow.png").stat().st_size > 0
    assert (out / "figures" / "sphere.png").stat().st_size > 0
    config = experiment.load_config(out / "config.toml")
    assert config.model.kind == "linear" and config.flow.t1 == 3.0
    assert not [p for p in out.iterdir() if p.name.startswith(".flowtools")]


def test_flow_start_file_is_checked(tmp_path):
    bad = tmp_path / "u0.npy"
    np.save(bad, np.zeros(3))
    config = experiment.load_config(
        None, ["data.spec=blobs:n=30,d=2,margin=0.5,seed=1", "model.kind=linear"]
    )
    with pytest.raises(ExperimentError, match="has 3 entries, the model has 2"):
        experiment.run_flow(config, tmp_path / "out", u0=bad, progress=False)


def test_mlp_without_hidden_layer_is_refused_before_any_run():
    with pytest.raises(ConfigError, match="at least one hidden layer"):
        experiment.load_config(None, ["model.widths=[]"])
