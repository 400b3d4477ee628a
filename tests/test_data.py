"""Tests for flowtools.data: validation, bundled loaders, synthetic and user files."""

import warnings

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, load_iris

from flowtools import data


def _toy():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.5], [0.2, -2.0]])
    y = np.array([1.0, -1.0, 1.0, -1.0])
    return X, y


# --------------------------------------------------------------- from_arrays


def test_from_arrays_copies_and_freezes():
    X, y = _toy()
    ds = data.Dataset.from_arrays(X, y, name="toy")
    assert (ds.n, ds.dim, len(ds), ds.name) == (4, 2, 4, "toy")
    assert ds.X.dtype == np.float64 and ds.y.dtype == np.float64
    np.testing.assert_array_equal(ds.X, X)
    X[0, 0] = 99.0
    assert ds.X[0, 0] == 1.0  # a copy
    with pytest.raises(ValueError, match="read-only"):
        ds.X[0, 0] = 5.0
    with pytest.raises(AttributeError):
        ds.name = "other"
    assert "positive=2" in repr(ds)


def test_zero_one_labels_are_mapped_with_a_warning():
    X, _ = _toy()
    with pytest.warns(UserWarning, match=r"labels are in \{0, 1\}"):
        ds = data.Dataset.from_arrays(X, [1, 0, 1, 0])
    np.testing.assert_array_equal(ds.y, [1.0, -1.0, 1.0, -1.0])


def test_column_labels_are_accepted():
    X, y = _toy()
    ds = data.Dataset.from_arrays(X, y[:, None])
    np.testing.assert_array_equal(ds.y, y)


def test_nan_and_inf_rows_are_named():
    X, y = _toy()
    X[1, 0] = np.nan
    X[3, 1] = np.inf
    with pytest.raises(
        ValueError, match=r"NaN or infinite values in 2 row\(s\): rows \[1, 3\]"
    ):
        data.Dataset.from_arrays(X, y)
    X, y = _toy()
    y[2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite labels at rows \[2\]"):
        data.Dataset.from_arrays(X, y)


def test_empty_and_shape_errors():
    with pytest.raises(ValueError, match="empty"):
        data.Dataset.from_arrays(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="empty"):
        data.Dataset.from_arrays(np.zeros((3, 0)), np.ones(3))
    X, y = _toy()
    with pytest.raises(ValueError, match="X has 4 rows but y has 3 labels"):
        data.Dataset.from_arrays(X, y[:3])
    with pytest.raises(ValueError, match=r"X must be 2-D .* got shape \(4,\)"):
        data.Dataset.from_arrays(y, y)
    with pytest.raises(ValueError, match="y must be 1-D"):
        data.Dataset.from_arrays(X, np.ones((4, 2)))
    with pytest.raises(ValueError, match="numeric"):
        data.Dataset.from_arrays([["a", "b"]], [1.0])


def test_labels_not_binary_lists_values_and_rows():
    X, _ = _toy()
    with pytest.raises(
        ValueError, match=r"found the values \[2.0, 3.0\] at rows \[2, 3\]"
    ):
        data.Dataset.from_arrays(X, [1.0, -1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="must be binary"):
        data.Dataset.from_arrays(X, [0.0, 1.0, 2.0, 1.0])


def test_same_point_with_both_labels_names_the_rows():
    X = np.array([[1.0, 2.0], [0.5, 0.5], [1.0, 2.0], [3.0, 1.0], [0.5, 0.5]])
    y = np.array([1.0, 1.0, -1.0, 1.0, 1.0])  # rows 1 and 4 agree: no conflict
    with pytest.raises(
        ValueError, match=r"both labels in 1 group\(s\) of rows \[\(0, 2\)\]"
    ):
        data.Dataset.from_arrays(X, y)
    # Duplicates with the same label are fine.
    data.Dataset.from_arrays(X[[0, 1, 3, 4]], y[[0, 1, 3, 4]])


def test_zero_rows_warn_that_data_are_never_separated():
    X, y = _toy()
    X[2] = 0.0
    with pytest.warns(UserWarning, match=r"rows \[2\] are the zero vector"):
        data.Dataset.from_arrays(X, y)


def test_image_shape_and_images():
    X = np.arange(12.0).reshape(2, 6) + 1.0
    ds = data.Dataset.from_arrays(X, [1, -1], image_shape=(2, 3))
    assert ds.images().shape == (2, 2, 3)
    np.testing.assert_array_equal(ds.images()[1], X[1].reshape(2, 3))
    with pytest.raises(ValueError, match="6 pixels but X has 5 features"):
        data.Dataset.from_arrays(X[:, :5], [1, -1], image_shape=(2, 3))
    with pytest.raises(ValueError, match="has no image_shape"):
        data.Dataset.from_arrays(X, [1, -1]).images()


# ------------------------------------------------------------ bundled loaders


def test_digits_pair_against_sklearn():
    ds = data.load("digits:3,8")
    bunch = load_digits()
    keep = np.isin(bunch.target, [3, 8])
    assert ds.name == "digits:3,8" and ds.image_shape == (8, 8)
    assert ds.n == int(keep.sum()) and ds.dim == 64
    np.testing.assert_array_equal(ds.X, bunch.data[keep] / 16.0)
    np.testing.assert_array_equal(ds.y, np.where(bunch.target[keep] == 8, 1.0, -1.0))
    assert ds.X.min() == 0.0 and ds.X.max() == 1.0
    np.testing.assert_array_equal(ds.images()[0], bunch.images[keep][0] / 16.0)
    assert data.load("digits").name == "digits:0,1"


@pytest.mark.parametrize(
    "spec", ["digits:3", "digits:3,3", "digits:1,12", "digits:a,b"]
)
def test_digits_bad_specs(spec):
    with pytest.raises(ValueError, match="digits"):
        data.load(spec)


def test_iris_setosa_against_rest():
    ds = data.load("iris")
    bunch = load_iris()
    np.testing.assert_array_equal(ds.X, bunch.data)
    np.testing.assert_array_equal(ds.y, np.where(bunch.target == 0, 1.0, -1.0))
    assert (int((ds.y > 0).sum()), ds.n) == (50, 150)


def test_breast_cancer_is_standardized():
    ds = data.load("breast_cancer")
    bunch = load_breast_cancer()
    assert (ds.n, ds.dim) == (569, 30)
    # Standardization: mean 0 and variance 1 per feature, to rounding (1e-12).
    np.testing.assert_allclose(ds.X.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.X.std(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(ds.y, np.where(bunch.target == 1, 1.0, -1.0))
    biased = data.load("breast_cancer:bias")
    assert biased.dim == 31
    np.testing.assert_array_equal(biased.X[:, -1], 1.0)
    np.testing.assert_array_equal(biased.X[:, :-1], ds.X)


# ------------------------------------------------------------------ synthetic


def test_blobs_planted_margin_and_determinism():
    ds = data.load("blobs:n=60,d=3,margin=0.7,seed=4")
    assert (ds.n, ds.dim) == (60, 3)
    assert ds.name == "blobs:n=60,d=3,margin=0.7,seed=4"
    assert int((ds.y > 0).sum()) == 30
    # The planted direction is the seed's first normal draw, normalized.
    w_star = np.random.default_rng(4).standard_normal(3)
    w_star /= np.linalg.norm(w_star)
    margins = ds.y * (ds.X @ w_star)
    assert margins.min() >= 0.7 - 1e-12  # rounding of a 3-term dot product
    again = data.load("blobs", n=60, d=3, margin=0.7, seed=4)
    np.testing.assert_array_equal(again.X, ds.X)
    other = data.make_blobs(n=60, d=3, margin=0.7, seed=5)
    assert not np.array_equal(other.X, ds.X)


def test_blobs_defaults_and_keyword_override():
    ds = data.load("blobs")
    assert (ds.n, ds.dim) == (100, 2)
    assert data.load("blobs:n=10", n=12).n == 12


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("blobs:k=3", "key=value with key in"),
        ("blobs:n", "key=value"),
        ("blobs:n=ten", "not a valid int"),
        ("blobs:margin=-1", "margin > 0"),
        ("blobs:n=1", "n >= 2"),
    ],
)
def test_blobs_bad_options(spec, match):
    with pytest.raises(ValueError, match=match):
        data.load(spec)


def test_unknown_spec_lists_valid_forms():
    with pytest.raises(
        ValueError, match=r"Unknown data spec 'mnist'; valid forms: .*digits"
    ):
        data.load("mnist")
    with pytest.raises(TypeError, match="spec must be a string"):
        data.load(3)
    with pytest.raises(TypeError, match="iris takes no keyword options"):
        data.load("iris", n=3)


# ------------------------------------------------------------------ user files


def test_csv_with_header(tmp_path):
    path = tmp_path / "points.csv"
    path.write_text("x1,x2,label\n1.0,2.0,1\n-1,0.5,-1\n\n3,4,1\n")
    ds = data.load(str(path))
    assert ds.name == "points.csv"
    np.testing.assert_array_equal(ds.X, [[1.0, 2.0], [-1.0, 0.5], [3.0, 4.0]])
    np.testing.assert_array_equal(ds.y, [1.0, -1.0, 1.0])
    assert data.load(path).n == 3  # a pathlib.Path works too


def test_csv_without_header_and_delimiter(tmp_path):
    path = tmp_path / "points.CSV"
    path.write_text("1;2;0\n3;4;1\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.load(str(path), delimiter=";")
    np.testing.assert_array_equal(ds.y, [-1.0, 1.0])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("a,b,c\n1,2,1\n1,x,-1\n", r"line 3: could not read 'x'"),
        ("1,2,1\n1,2\n", r"line 2: expected 3 columns \(as on line 1\), found 2"),
        ("1,2,1\n1,nan,1\n", r"line 2: NaN or infinite"),
        ("a,b\n", "no data rows"),
        ("1\n2\n", "at least one feature and a label"),
        ("1,2,1\n2,3,5\n", "must be binary"),
    ],
)
def test_malformed_csv_names_file_and_line(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        data.load(str(path))
    assert "bad.csv" in str(info.value)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.csv"):
        data.load(str(tmp_path / "nothere.csv"))
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        data.load(str(tmp_path / "nothere.npz"))


def test_npz_round_trip_and_image_shape(tmp_path):
    X, y = _toy()
    path = tmp_path / "toy.npz"
    np.savez(path, X=X, y=y)
    ds = data.load(str(path))
    np.testing.assert_array_equal(ds.X, X)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.name == "toy.npz" and ds.image_shape is None
    path2 = tmp_path / "img.npz"
    np.savez(path2, X=np.eye(2, 4), y=[1, -1], image_shape=[2, 2])
    assert data.load(str(path2)).image_shape == (2, 2)


def test_npz_missing_key_names_file_and_keys(tmp_path):
    path = tmp_path / "wrong.npz"
    np.savez(path, inputs=np.ones((2, 2)), y=[1, -1])
    with pytest.raises(
        ValueError,
        match=r"wrong.npz: missing array\(s\) \['X'\]; the file holds "
        r"\['inputs', 'y'\]",
    ):
        data.load(str(path))


def test_npz_with_objects_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, X=np.array([{"a": 1}, None], dtype=object), y=[1, -1])
    with pytest.raises(ValueError, match="objects.npz: could not read the NPZ file"):
        data.load(str(path))


def test_npz_not_an_archive(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="garbage.npz"):
        data.load(str(path))
