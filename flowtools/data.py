"""Binary classification data sets: validation and loaders.

A `Dataset` holds inputs `X` of shape `(n, d)` (float64, finite) and labels `y` in
$\\{-1, +1\\}$. `Dataset.from_arrays` validates user arrays and names the
offending rows; `load` reads the bundled real data sets (offline, through
scikit-learn), builds synthetic separable sets, and reads user CSV and NPZ files
(NPZ with pickling disabled).
"""

import csv
import dataclasses
import math
import os
import warnings

import numpy as np

__all__ = ["Dataset", "load", "make_blobs"]

_MAX_LISTED = 10

_VALID_SPECS = (
    '"digits:a,b" (two distinct digits 0-9; a -> -1, b -> +1), "iris", '
    '"breast_cancer" (or "breast_cancer:bias"), "blobs" (or '
    '"blobs:n=100,d=2,margin=0.5,seed=0"), a path ending in ".csv", or a path '
    'ending in ".npz"'
)


def _list(items) -> str:
    """Format at most `_MAX_LISTED` items, saying how many were left out."""
    items = list(items)
    shown = ", ".join(str(item) for item in items[:_MAX_LISTED])
    if len(items) > _MAX_LISTED:
        shown += f", ... ({len(items) - _MAX_LISTED} more)"
    return f"[{shown}]"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A binary classification data set with labels in $\\{-1, +1\\}$.

    Build one with `Dataset.from_arrays` (which validates) or `load`. The arrays
    are read-only copies.

    **Arguments:**

    - `X`: inputs, float64 of shape `(n, d)`, all finite.
    - `y`: labels, float64 of shape `(n,)`, each $-1$ or $+1$.
    - `name`: a label for reports.
    - `image_shape`: the shape of one input as an image (e.g. `(8, 8)` for
      digits), or `None`; its product equals `d`.
    """

    X: np.ndarray
    y: np.ndarray
    name: str = "arrays"
    image_shape: tuple[int, ...] | None = None

    @property
    def n(self) -> int:
        """The number of samples $n$."""
        return int(self.X.shape[0])

    @property
    def dim(self) -> int:
        """The input dimension $d$."""
        return int(self.X.shape[1])

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        positive = int(np.sum(self.y > 0))
        return (
            f"Dataset(name={self.name!r}, n={self.n}, dim={self.dim}, "
            f"positive={positive}, negative={self.n - positive}, "
            f"image_shape={self.image_shape})"
        )

    def images(self) -> np.ndarray:
        """The inputs reshaped as images, of shape `(n, *image_shape)`.

        **Raises:**

        - `ValueError`: when the data set has no `image_shape`.
        """
        if self.image_shape is None:
            raise ValueError(
                f"Dataset {self.name!r} has no image_shape; pass image_shape= to "
                "Dataset.from_arrays to view its rows as images."
            )
        return self.X.reshape((self.n, *self.image_shape))

    @classmethod
    def from_arrays(
        cls,
        X,
        y,
        *,
        name: str = "arrays",
        image_shape: tuple[int, ...] | None = None,
    ) -> "Dataset":
        """Validate arrays and build a `Dataset`.

        Labels in $\\{0, 1\\}$ are mapped to $\\{-1, +1\\}$ ($0 \\to -1$) with a
        warning. A row equal to the zero vector gets a warning: every homogeneous
        predictor gives it margin 0, so such data are never separated.

        **Arguments:**

        - `X`: inputs of shape `(n, d)`.
        - `y`: labels of shape `(n,)` (or `(n, 1)`), in $\\{-1, +1\\}$ or
          $\\{0, 1\\}$.
        - `name`: a label for reports and error messages.
        - `image_shape`: optional image shape, with product `d`.

        **Returns:**

        A `Dataset` holding float64 read-only copies.

        **Raises:**

        - `ValueError`: for empty data, a shape mismatch, non-numeric values,
          NaN or infinite values (naming the rows), labels outside
          $\\{-1, +1\\}$ and $\\{0, 1\\}$ (listing the values), or the same point
          with both labels (naming the rows).
        """
        where = "" if name == "arrays" else f"{name}: "

        try:
            X = np.array(X, dtype=np.float64)
            y = np.array(y, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{where}X and y must be numeric arrays ({error})."
            ) from error
        if X.ndim != 2:
            raise ValueError(
                f"{where}X must be 2-D with shape (n, d), got shape {X.shape}; "
                "use X.reshape(-1, 1) for a single feature or X.reshape(n, -1) for "
                "images."
            )
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise ValueError(
                f"{where}y must be 1-D with one label per row of X, got shape "
                f"{y.shape}."
            )
        if X.shape[0] == 0 or X.shape[1] == 0:
            raise ValueError(
                f"{where}the data are empty (X has shape {X.shape}); a data set "
                "needs at least one sample and one feature."
            )
        if X.shape[0] != y.shape[0]:
            raise ValueError(
                f"{where}shape mismatch: X has {X.shape[0]} rows but y has "
                f"{y.shape[0]} labels."
            )

        bad_rows = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
        if bad_rows.size:
            raise ValueError(
                f"{where}X has NaN or infinite values in {bad_rows.size} row(s): "
                f"rows {_list(bad_rows)} (0-based); remove or impute them."
            )
        bad_labels = np.flatnonzero(~np.isfinite(y))
        if bad_labels.size:
            raise ValueError(
                f"{where}y has NaN or infinite labels at rows {_list(bad_labels)} "
                "(0-based)."
            )

        values = set(np.unique(y).tolist())
        if not values <= {-1.0, 1.0}:
            if values <= {0.0, 1.0}:
                warnings.warn(
                    f"{where}labels are in {{0, 1}}; mapping 0 -> -1 and 1 -> +1.",
                    stacklevel=2,
                )
                y = np.where(y > 0.5, 1.0, -1.0)
            else:
                bad = sorted(values - {-1.0, 1.0})
                rows = np.flatnonzero(~np.isin(y, [-1.0, 1.0]))
                raise ValueError(
                    f"{where}labels must be binary, -1/+1 (or 0/1); found the "
                    f"values {_list(bad)} at rows {_list(rows)} (0-based). For a "
                    "multi-class set, select two classes first."
                )

        _check_conflicts(X, y, where)
        zero_rows = np.flatnonzero(np.all(X == 0.0, axis=1))
        if zero_rows.size:
            warnings.warn(
                f"{where}rows {_list(zero_rows)} are the zero vector: every "
                "homogeneous predictor gives them margin 0, so these data can "
                "never be separated.",
                stacklevel=2,
            )

        if image_shape is not None:
            image_shape = tuple(int(s) for s in image_shape)
            if math.prod(image_shape) != X.shape[1]:
                raise ValueError(
                    f"{where}image_shape {image_shape} has "
                    f"{math.prod(image_shape)} pixels but X has {X.shape[1]} "
                    "features."
                )

        X.setflags(write=False)
        y.setflags(write=False)
        return cls(X=X, y=y, name=str(name), image_shape=image_shape)


def _check_conflicts(X: np.ndarray, y: np.ndarray, where: str) -> None:
    """Raise when one point appears with both labels."""
    _, inverse = np.unique(X, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    has_positive = np.zeros(inverse.max() + 1, dtype=bool)
    has_negative = np.zeros_like(has_positive)
    has_positive[inverse[y > 0]] = True
    has_negative[inverse[y < 0]] = True
    conflicting = np.flatnonzero(has_positive & has_negative)
    if conflicting.size:
        groups = [
            tuple(int(i) for i in np.flatnonzero(inverse == g)) for g in conflicting
        ]
        raise ValueError(
            f"{where}the same point appears with both labels in {len(groups)} "
            f"group(s) of rows {_list(groups)} (0-based); no classifier separates "
            "them. Remove the duplicates or fix their labels."
        )


# ---------------------------------------------------------------------------
# Loaders


def load(spec: str | os.PathLike, **kw) -> Dataset:
    """Load a data set from a short specification.

    Valid forms:

    - `"digits:a,b"`: the scikit-learn digits (8x8 images, bundled, offline),
      restricted to the two distinct digits `a` and `b`; pixels are divided by 16
      so that features lie in $[0, 1]$; digit `a` gets label $-1$ and digit `b`
      label $+1$; `image_shape` is `(8, 8)`. `"digits"` alone means
      `"digits:0,1"`.
    - `"iris"`: the 150 iris flowers with their 4 raw features (cm); setosa gets
      $+1$, versicolor and virginica $-1$. Linearly separable through the
      origin.
    - `"breast_cancer"`: the 569 Wisconsin breast cancer samples, 30 features
      standardized to mean 0 and variance 1; benign gets $+1$, malignant $-1$.
      These standardized features are *not* linearly separable through the
      origin (a linear model never reaches the late stage);
      `"breast_cancer:bias"` appends a constant feature 1, with which they are.
    - `"blobs"` or `"blobs:n=100,d=2,margin=0.5,seed=0"`: the synthetic set of
      `make_blobs` (options may also be given as keyword arguments).
    - a path ending in `.csv`: one sample per line, the last column is the label;
      a first line that is not numeric is taken as a header. Keyword argument
      `delimiter` (default `","`).
    - a path ending in `.npz`: arrays `X` and `y` (and optionally
      `image_shape`), read with `allow_pickle=False`.

    **Arguments:**

    - `spec`: one of the forms above.
    - `**kw`: options of the chosen form (blobs options, CSV `delimiter`).

    **Returns:**

    A validated `Dataset`.

    **Raises:**

    - `ValueError`: for an unknown specification (listing the valid forms), bad
      options, or a malformed file (naming the file and the line or keys).
    - `FileNotFoundError`: when a CSV or NPZ path does not exist.
    - `TypeError`: for keyword arguments that the chosen form does not take.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str):
        raise TypeError(
            f"spec must be a string or a path, got {type(spec).__name__}; valid "
            f"forms: {_VALID_SPECS}."
        )
    stripped = spec.strip()
    lowered = stripped.lower()
    head, _, options = stripped.partition(":")
    head = head.strip().lower()

    if lowered.endswith(".csv"):
        return _load_csv(stripped, **kw)
    if lowered.endswith(".npz"):
        _no_options(kw, "an NPZ file")
        return _load_npz(stripped)
    if head == "digits":
        _no_options(kw, "digits")
        return _load_digits(options)
    if head == "iris" and not options:
        _no_options(kw, "iris")
        return _load_iris()
    if head == "breast_cancer":
        _no_options(kw, "breast_cancer")
        return _load_breast_cancer(options)
    if head == "blobs":
        return make_blobs(**{**_parse_blob_options(options), **kw})
    raise ValueError(f"Unknown data spec {spec!r}; valid forms: {_VALID_SPECS}.")


def _no_options(kw: dict, what: str) -> None:
    if kw:
        raise TypeError(f"{what} takes no keyword options, got {sorted(kw)}.")


def _load_digits(options: str) -> Dataset:
    from sklearn.datasets import load_digits

    options = options.strip() or "0,1"
    parts = [part.strip() for part in options.split(",")]
    if len(parts) != 2 or not all(part.isdigit() and len(part) == 1 for part in parts):
        raise ValueError(
            f"digits spec needs two digits 0-9, as in 'digits:3,8'; got {options!r}."
        )
    a, b = int(parts[0]), int(parts[1])
    if a == b:
        raise ValueError(f"digits spec needs two distinct digits, got {a} twice.")

    bunch = load_digits()
    keep = (bunch.target == a) | (bunch.target == b)
    X = bunch.data[keep] / 16.0
    y = np.where(bunch.target[keep] == b, 1.0, -1.0)
    return Dataset.from_arrays(X, y, name=f"digits:{a},{b}", image_shape=(8, 8))


def _load_iris() -> Dataset:
    from sklearn.datasets import load_iris

    bunch = load_iris()
    y = np.where(bunch.target == 0, 1.0, -1.0)
    return Dataset.from_arrays(bunch.data, y, name="iris")


def _load_breast_cancer(options: str) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    options = options.strip().lower()
    if options not in ("", "bias"):
        raise ValueError(
            f"breast_cancer takes no option or 'bias', got {options!r}; use "
            "'breast_cancer' or 'breast_cancer:bias'."
        )
    bunch = load_breast_cancer()
    X = (bunch.data - bunch.data.mean(axis=0)) / bunch.data.std(axis=0)
    name = "breast_cancer"
    if options == "bias":
        X = np.hstack([X, np.ones((X.shape[0], 1))])
        name = "breast_cancer:bias"
    y = np.where(bunch.target == 1, 1.0, -1.0)
    return Dataset.from_arrays(X, y, name=name)


_BLOB_OPTIONS = {"n": int, "d": int, "margin": float, "seed": int, "spread": float}


def _parse_blob_options(options: str) -> dict:
    parsed = {}
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in _BLOB_OPTIONS:
            raise ValueError(
                f"blobs option {item!r} is not of the form key=value with key in "
                f"{sorted(_BLOB_OPTIONS)}; example: 'blobs:n=100,d=2,margin=0.5,"
                "seed=0'."
            )
        try:
            parsed[key] = _BLOB_OPTIONS[key](value.strip())
        except ValueError as error:
            raise ValueError(
                f"blobs option {key}={value!r} is not a valid "
                f"{_BLOB_OPTIONS[key].__name__}."
            ) from error
    return parsed


def make_blobs(
    n: int = 100,
    d: int = 2,
    margin: float = 0.5,
    seed: int = 0,
    spread: float = 1.0,
) -> Dataset:
    """A synthetic data set, separable through the origin with a planted margin.

    A unit direction $w^\\star$ is drawn from the seed; labels alternate $+1, -1$
    (then are shuffled), and each input is
    $x_i = y_i (m + s |g_i|) w^\\star + P_{w^\\star} h_i$ with $g_i \\sim N(0, 1)$,
    $h_i \\sim N(0, I_d)$, $m$ the margin, $s$ the spread and $P_{w^\\star}$ the
    projection orthogonal to $w^\\star$. Hence
    $y_i \\langle w^\\star, x_i \\rangle = m + s |g_i| \\ge m$ for every $i$: the
    hard-margin SVM margin $\\gamma_2$ is at least `margin`, attained along
    $w^\\star$ up to $s \\min_i |g_i|$. The same seed gives the same data.

    **Arguments:**

    - `n`: number of samples (at least 2).
    - `d`: input dimension (at least 1).
    - `margin`: the planted margin $m > 0$.
    - `seed`: seed of `numpy.random.default_rng`.
    - `spread`: scale $s \\ge 0$ of the spread beyond the margin along $w^\\star$.

    **Returns:**

    A `Dataset` named `"blobs:n=...,d=...,margin=...,seed=..."`.

    **Raises:**

    - `ValueError`: for `n < 2`, `d < 1`, `margin <= 0` or `spread < 0`.
    """
    if int(n) < 2 or int(d) < 1:
        raise ValueError(f"blobs needs n >= 2 and d >= 1, got n={n}, d={d}.")
    if not margin > 0 or not spread >= 0:
        raise ValueError(
            f"blobs needs margin > 0 and spread >= 0, got margin={margin}, "
            f"spread={spread}."
        )
    n, d = int(n), int(d)

    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(d)
    w_star /= np.linalg.norm(w_star)
    y = rng.permutation(np.where(np.arange(n) % 2 == 0, 1.0, -1.0))
    along = margin + spread * np.abs(rng.standard_normal(n))
    across = rng.standard_normal((n, d))
    across -= np.outer(across @ w_star, w_star)
    X = (y * along)[:, None] * w_star[None, :] + across

    name = f"blobs:n={n},d={d},margin={margin:g},seed={seed}"
    return Dataset.from_arrays(X, y, name=name)


def _load_csv(path: str, delimiter: str = ",") -> Dataset:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CSV file {path!r} does not exist.")

    rows, lines = [], []
    width = None
    first = True
    with open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        for fields in reader:
            line_number = reader.line_num
            if not fields or all(not field.strip() for field in fields):
                continue
            try:
                values = [float(field) for field in fields]
            except ValueError:
                if first:
                    first = False
                    continue  # a header line
                bad = next(f for f in fields if not _is_number(f))
                raise ValueError(
                    f"{path}, line {line_number}: could not read {bad!r} as a number."
                ) from None
            first = False
            if width is None:
                width = len(values)
            if len(values) != width:
                raise ValueError(
                    f"{path}, line {line_number}: expected {width} columns (as on "
                    f"line {lines[0] if lines else line_number}), found "
                    f"{len(values)}."
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{path}, line {line_number}: NaN or infinite value.")
            rows.append(values)
            lines.append(line_number)

    if not rows:
        raise ValueError(f"{path}: the file holds no data rows.")
    if width < 2:
        raise ValueError(
            f"{path}: each line needs at least one feature and a label (last "
            f"column), found {width} column(s)."
        )
    table = np.asarray(rows, dtype=np.float64)
    name = os.path.basename(path)
    return Dataset.from_arrays(table[:, :-1], table[:, -1], name=name)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _load_npz(path: str) -> Dataset:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"NPZ file {path!r} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            missing = [key for key in ("X", "y") if key not in keys]
            if missing:
                raise ValueError(
                    f"{path}: missing array(s) {missing}; the file holds {keys}. "
                    "Save the inputs as 'X' and the labels as 'y'."
                )
            X, y = archive["X"], archive["y"]
            image_shape = None
            if "image_shape" in keys:
                image_shape = tuple(int(s) for s in archive["image_shape"])
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(
            f"{path}: could not read the NPZ file ({error}); object arrays are not "
            "loaded because pickling is disabled."
        ) from error
    except OSError as error:
        raise ValueError(f"{path}: not a readable NPZ file ({error}).") from error
    return Dataset.from_arrays(
        X, y, name=os.path.basename(path), image_shape=image_shape
    )
