"""Tests of flowtools.results: JSON encoding, atomic saves, exact round trips."""

import json
import math
import os

import jax
import numpy as np
import pytest

from flowtools import data, models, results, sgd, shadowing


def _example() -> results.Results:
    summary = {
        "config": {"step": np.float64(0.01), "seed": np.int64(3), "tags": ("a", "b")},
        "scalars": {"nan": float("nan"), "inf": np.inf, "ninf": -np.inf, "ok": True},
        "table": [{"k": np.int32(10), "d": np.float32(0.5)}],
        "small": np.arange(3),
        7: "integer key",
    }
    arrays = {
        "u": np.random.default_rng(0).normal(size=(5, 3)),
        "k": np.arange(5, dtype=np.int64),
        "mask": np.array([True, False, True]),
        "scalar": np.float64(2.5),
    }
    return results.Results(summary=summary, arrays=arrays)


def test_round_trip_is_exact(tmp_path):
    res = _example()
    res.save(tmp_path / "out")
    back = results.Results.load(tmp_path / "out")
    assert set(back.arrays) == set(res.arrays)
    for name, array in res.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], array)
        assert back.arrays[name].dtype == np.asarray(array).dtype
    s = back.summary
    assert s["config"] == {"step": 0.01, "seed": 3, "tags": ["a", "b"]}
    assert math.isnan(s["scalars"]["nan"])
    assert s["scalars"]["inf"] == math.inf and s["scalars"]["ninf"] == -math.inf
    assert s["table"] == [{"k": 10, "d": 0.5}]
    assert s["small"] == [0, 1, 2] and s["7"] == "integer key"


def test_json_is_strict_and_readable(tmp_path):
    _example().save(tmp_path)
    text = (tmp_path / "report.json").read_text()
    # Strict JSON: no bare NaN/Infinity tokens (other readers refuse them).
    payload = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert payload["summary"]["scalars"]["nan"] == "NaN"
    assert payload["summary"]["scalars"]["ninf"] == "-Infinity"
    assert payload["arrays"]["u"] == {"shape": [5, 3], "dtype": "float64"}


def test_unstorable_values_are_refused_before_writing(tmp_path):
    _example().save(tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in ("report.json", "arrays.npz")}
    with pytest.raises(TypeError, match=r"summary\.bad"):
        results.Results(summary={"bad": object()}).save(tmp_path)
    with pytest.raises(TypeError, match="'obj'.*pickling"):
        results.Results(arrays={"obj": np.array([{}], dtype=object)}).save(tmp_path)
    with pytest.raises(ValueError, match="'a/b'"):
        results.Results(arrays={"a/b": np.zeros(2)}).save(tmp_path)
    after = {p: (tmp_path / p).read_bytes() for p in before}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["arrays.npz", "report.json"]


def test_failed_save_keeps_previous_results(tmp_path, monkeypatch):
    old = _example()
    old.save(tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("report.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(results.os, "replace", failing_replace)
    new = results.Results(summary={"x": 1}, arrays={"u": np.ones(4)})
    with pytest.raises(PermissionError, match="left untouched"):
        new.save(tmp_path)
    monkeypatch.undo()

    # The arrays were already replaced when the summary failed: they are put back.
    back = results.Results.load(tmp_path)
    np.testing.assert_array_equal(back.arrays["u"], old.arrays["u"])
    assert back.summary["config"]["seed"] == 3
    assert sorted(os.listdir(tmp_path)) == ["arrays.npz", "report.json"]


def test_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="file"):
        _example().save(blocker)
    with pytest.raises(PermissionError, match=r"file/sub"):
        _example().save(blocker / "sub")


def test_load_errors_name_file_and_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.json"):
        results.Results.load(tmp_path)
    _example().save(tmp_path)

    payload = json.loads((tmp_path / "report.json").read_text())
    del payload["summary"]
    (tmp_path / "report.json").write_text(json.dumps(payload))
    with pytest.raises(results.ResultsFormatError, match="report.json.*'summary'"):
        results.Results.load(tmp_path)

    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(results.ResultsFormatError, match="not valid JSON"):
        results.Results.load(tmp_path)

    # A pair of files from two saves is refused (the checksum differs).
    _example().save(tmp_path / "a")
    results.Results(arrays={"u": np.zeros(2)}).save(tmp_path / "b")
    os.replace(tmp_path / "b" / "arrays.npz", tmp_path / "a" / "arrays.npz")
    with pytest.raises(results.ResultsFormatError, match="two different saves"):
        results.Results.load(tmp_path / "a")

    # Pickled content is refused, never executed.
    _example().save(tmp_path / "c")
    np.savez(tmp_path / "c" / "arrays.npz", u=np.array([{}], dtype=object))
    payload = json.loads((tmp_path / "c" / "report.json").read_text())
    payload.pop("arrays_sha256")
    (tmp_path / "c" / "report.json").write_text(json.dumps(payload))
    with pytest.raises(results.ResultsFormatError, match="arrays.npz.*pickling"):
        results.Results.load(tmp_path / "c")


def test_missing_array_is_named(tmp_path):
    _example().save(tmp_path)
    payload = json.loads((tmp_path / "report.json").read_text())
    payload["arrays"]["extra"] = {"shape": [1], "dtype": "float64"}
    payload.pop("arrays_sha256")
    (tmp_path / "report.json").write_text(json.dumps(payload))
    with pytest.raises(results.ResultsFormatError, match="no array 'extra'"):
        results.Results.load(tmp_path)


def test_merge_refuses_duplicates():
    a = results.Results(summary={"x": 1}, arrays={"u": np.zeros(1)})
    b = results.Results(summary={"y": 2}, arrays={"v": np.zeros(1)})
    merged = results.merge(a, b)
    assert merged.summary == {"x": 1, "y": 2} and set(merged.arrays) == {"u", "v"}
    with pytest.raises(ValueError, match="'x' appears twice"):
        results.merge(a, a)


@pytest.fixture(scope="module")
def trace():
    X = np.array([[2.0, 0.5], [1.5, -0.5], [-1.0, -1.5], [-2.0, 0.2]])
    ds = data.Dataset.from_arrays(X, np.array([1.0, 1.0, -1.0, -1.0]))
    model = models.linear(2)
    theta0 = model.init(jax.random.key(0))
    return sgd.run(model, ds, theta0, 0.5, 300, record=20, seed=1)


def test_trace_round_trip_without_recomputation(tmp_path, trace):
    res = results.trace_to_results(trace)
    res.save(tmp_path)
    back = results.trace_from_results(results.Results.load(tmp_path))
    assert type(back) is type(trace)
    for name, value in vars(trace).items():
        other = getattr(back, name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(other, value)  # bit for bit, NaN included
            assert other.dtype == value.dtype
        else:
            assert other == value and type(other) is type(value), name


def _report() -> shadowing.ShadowingReport:
    rng = np.random.default_rng(3)
    w, m = 3, 4
    curves = rng.uniform(size=(w, m))
    curves[0, 3] = np.nan
    fields_ = {
        "horizon": 0.5,
        "references": ("mean_field", "inclusion"),
        "inclusion_references": ("inclusion",),
        "selections": {"mean_field": "mean field", "inclusion": "proximal"},
        "starts_index": np.array([1, 4, 9]),
        "starts_k": np.array([10, 100, 1000]),
        "starts_t": np.array([0.1, 0.7, 1.4]),
        "counts": np.array([3, 4, 4]),
        "offsets": curves.copy(),
        "window_k": np.array([[10, 11, 12, -1], [100, 101, 102, 103], [1, 2, 3, 4]]),
        "distance": {"mean_field": rng.uniform(size=w), "closest": np.ones(w)},
        "geodesic": {"mean_field": rng.uniform(size=w), "closest": np.ones(w)},
        "curves": {"mean_field": curves, "closest": curves},
        "closest": np.zeros(w, dtype=np.int64),
        "fits": {"mean_field": {"vs_k": (-0.5, 0.1), "vs_t": (-1.0, float("nan"))}},
        "eps": 1e-6,
        "clock": "exact",
        "loss": "exponential",
        "degree": 2,
        "late_stage_step": 7,
        "settings": {"dt": 1e-3, "rtol": 1e-9, "atol": 1e-11, "tau": None},
    }
    for name in (
        "k t eta log_rho rho margin smoothed eps_tau stationarity "
        "stationarity_fixed kkt_residual"
    ).split():
        fields_[name] = rng.uniform(size=6)
    return shadowing.ShadowingReport(**fields_)


def test_report_round_trip_without_recomputation(tmp_path):
    report = _report()
    results.merge(
        results.report_to_results(report), results.Results(summary={"kind": "x"})
    ).save(tmp_path)
    loaded = results.Results.load(tmp_path)
    back = results.report_from_results(loaded)
    for name, value in vars(report).items():
        other = getattr(back, name)
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(other, value)
        elif name in ("distance", "geodesic", "curves"):
            assert list(other) == list(value)
            for ref in value:
                np.testing.assert_array_equal(other[ref], value[ref])
        elif name == "fits":
            assert other["mean_field"]["vs_k"] == (-0.5, 0.1)
            assert math.isnan(other["mean_field"]["vs_t"][1])
        else:
            assert other == value, name
    # The readable table is in the summary too.
    table = loaded.summary["shadowing"]["table"]
    assert [row["k"] for row in table] == [10, 100, 1000]


def test_missing_report_field_is_named():
    res = results.report_to_results(_report())
    del res.arrays["shadowing.starts_k"]
    with pytest.raises(results.ResultsFormatError, match="'starts_k'"):
        results.report_from_results(res)
    with pytest.raises(results.ResultsFormatError, match="'trace'"):
        results.trace_from_results(res)
