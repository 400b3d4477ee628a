"""The results container: JSON encoding, atomic save and checked load."""

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

FORMAT_VERSION = 1
"""Version of the on-disk layout that `Results.save` writes."""

_REPORT_FILE = "report.json"
_ARRAYS_FILE = "arrays.npz"
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class ResultsFormatError(ValueError):
    """A results file that exists but cannot be read as flowtools results.

    The message names the file and, where it applies, the missing or malformed
    field.
    """


# ---------------------------------------------------------------------------
# JSON values


def _float_to_json(x: float) -> float | str:
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def to_json(value: Any, *, path: str = "summary") -> Any:
    """Convert a nested value to plain JSON types, in the encoding of this module.

    Numpy scalars become Python numbers, numpy arrays and tuples become lists,
    non-finite floats become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`,
    and mapping keys must be strings (integer keys are written as their decimal
    string).

    **Arguments:**

    - `value`: a nested structure of dicts, lists, tuples, strings, numbers,
      booleans, `None`, numpy scalars and numpy arrays.
    - `path`: the name used for `value` in error messages.

    **Returns:**

    The same structure made of `dict`, `list`, `str`, `int`, `float`, `bool` and
    `None` only.

    **Raises:**

    - `TypeError`: for a value of any other type, naming its place in `value`.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return _float_to_json(float(value))
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{path}: object arrays cannot be stored in JSON.")
        return to_json(value.tolist(), path=path)
    if hasattr(value, "__array__") and hasattr(value, "dtype"):
        return to_json(np.asarray(value), path=path)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if isinstance(key, int | np.integer) and not isinstance(key, bool):
                key = str(int(key))
            if not isinstance(key, str):
                raise TypeError(
                    f"{path}: JSON keys must be strings, got {key!r} "
                    f"({type(key).__name__}); convert the key to a string."
                )
            out[key] = to_json(item, path=f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [to_json(item, path=f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{path}: cannot store a value of type {type(value).__name__} in the JSON "
        "summary; convert it to numbers, strings, lists or dicts, or put arrays in "
        "`arrays`."
    )


def _from_json(value: Any) -> Any:
    if isinstance(value, str) and value in _NONFINITE:
        return _NONFINITE[value]
    if isinstance(value, dict):
        return {key: _from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    return value


# ---------------------------------------------------------------------------
# The container


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _keep_copy(path: str, copy: str) -> None:
    try:
        os.link(path, copy)
    except OSError:
        shutil.copyfile(path, copy)


def _writable_dir(out_dir: str | os.PathLike) -> str:
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(
            f"Cannot save results in {out_dir!r}: it exists and is not a folder; "
            "choose another output folder."
        )
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:
        raise PermissionError(
            f"Cannot create the output folder {out_dir!r} ({err.strerror}); "
            "choose a folder you can write to."
        ) from err
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise PermissionError(
            f"The output folder {out_dir!r} is not writable; choose a folder you "
            "can write to. Nothing was written and earlier results are untouched."
        )
    return out_dir


@dataclasses.dataclass
class Results:
    """A JSON summary and named numpy arrays: the saved form of a run.

    **Arguments:**

    - `summary`: JSON-serializable values (see [`to_json`][flowtools.results.to_json]
      for what is accepted and how non-finite floats are stored).
    - `arrays`: a mapping from names (strings without `/`) to numpy arrays of
      numeric or boolean dtype.
    """

    summary: dict = dataclasses.field(default_factory=dict)
    arrays: dict = dataclasses.field(default_factory=dict)

    def _checked_arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for name, value in self.arrays.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(
                    f"Array name {name!r} is not allowed: use a non-empty string "
                    "without '/'."
                )
            array = np.asarray(value)
            if array.dtype == object or array.dtype.kind not in "biufcS?U":
                raise TypeError(
                    f"Array {name!r} has dtype {array.dtype}, which cannot be saved "
                    "without pickling; store numbers, booleans or strings."
                )
            out[name] = array
        return out

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write `out_dir/report.json` and `out_dir/arrays.npz` atomically.

        The folder is created when missing. Each file is written to a temporary
        file in `out_dir` and moved into place with `os.replace`, the arrays
        first and the summary last; the previous `arrays.npz` is kept until the
        new summary is in place and put back if that last rename fails. On any
        failure the temporary files are removed and the results already in
        `out_dir` are left as they were. `report.json` records the SHA-256 of
        `arrays.npz`, and [`load`][flowtools.results.Results.load] refuses a
        pair of files from two different saves (which only a crash of the
        process between the two renames can leave behind).

        **Arguments:**

        - `out_dir`: the output folder.

        **Raises:**

        - `PermissionError`: when `out_dir` cannot be created or written, naming it.
        - `NotADirectoryError`: when `out_dir` exists and is a file.
        - `TypeError`, `ValueError`: for a summary value or an array that cannot
          be stored, naming it (raised before anything is written).
        """
        arrays = self._checked_arrays()
        payload = {
            "format": "flowtools-results",
            "format_version": FORMAT_VERSION,
            "arrays": {
                name: {"shape": list(a.shape), "dtype": str(a.dtype)}
                for name, a in arrays.items()
            },
            "summary": to_json(self.summary),
        }
        json.dumps(payload, allow_nan=False)  # fail before touching the folder
        out_dir = _writable_dir(out_dir)

        temps = []
        arrays_path = os.path.join(out_dir, _ARRAYS_FILE)
        report_path = os.path.join(out_dir, _REPORT_FILE)
        backup = None
        try:
            fd, tmp_arrays = tempfile.mkstemp(prefix=".arrays-", dir=out_dir)
            temps.append(tmp_arrays)
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            payload["arrays_sha256"] = _sha256(tmp_arrays)
            text = json.dumps(payload, indent=2, allow_nan=False)
            fd, tmp_report = tempfile.mkstemp(prefix=".report-", dir=out_dir)
            temps.append(tmp_report)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text + "\n")

            # Keep the previous arrays until the new summary is in place, so that
            # a failure between the two renames can put them back.
            if os.path.isfile(arrays_path):
                backup = tmp_arrays + ".previous"
                _keep_copy(arrays_path, backup)
                temps.append(backup)
            os.replace(tmp_arrays, arrays_path)
            try:
                os.replace(tmp_report, report_path)
            except OSError:
                if backup is not None:
                    os.replace(backup, arrays_path)
                raise
        except OSError as err:
            raise PermissionError(
                f"Could not write results in {out_dir!r} ({err}); earlier results "
                "in that folder were left untouched."
            ) from err
        finally:
            for tmp in temps:
                if os.path.exists(tmp):
                    os.remove(tmp)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "Results":
        """Read results written by [`save`][flowtools.results.Results.save].

        Arrays are read with pickling disabled: a file is data, never code.

        **Arguments:**

        - `out_dir`: the folder holding `report.json` and `arrays.npz`.

        **Returns:**

        The [`Results`][flowtools.results.Results], with non-finite floats of
        the summary restored.

        **Raises:**

        - `FileNotFoundError`: when a file is missing, naming it.
        - `ResultsFormatError`: when a file is malformed, or an array listed in
          `report.json` is missing from `arrays.npz`, naming the file and field.
        """
        out_dir = os.fspath(out_dir)
        report_path = os.path.join(out_dir, _REPORT_FILE)
        arrays_path = os.path.join(out_dir, _ARRAYS_FILE)
        for path in (report_path, arrays_path):
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"No results file {path!r}; save results there first, or give "
                    "the folder that holds report.json and arrays.npz."
                )

        try:
            with open(report_path, encoding="utf-8") as f:
                payload = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ResultsFormatError(
                f"{report_path!r} is not valid JSON ({err})."
            ) from err
        if not isinstance(payload, dict):
            raise ResultsFormatError(f"{report_path!r}: expected a JSON object.")
        for field in ("format_version", "summary", "arrays"):
            if field not in payload:
                raise ResultsFormatError(
                    f"{report_path!r} has no field {field!r}; it was not written "
                    "by flowtools.results."
                )
        if payload["format_version"] != FORMAT_VERSION:
            raise ResultsFormatError(
                f"{report_path!r}: field 'format_version' is "
                f"{payload['format_version']!r}, this version reads "
                f"{FORMAT_VERSION}."
            )
        if not isinstance(payload["summary"], dict):
            raise ResultsFormatError(
                f"{report_path!r}: field 'summary' must be a JSON object."
            )
        if not isinstance(payload["arrays"], dict):
            raise ResultsFormatError(
                f"{report_path!r}: field 'arrays' must be a JSON object."
            )

        try:
            with np.load(arrays_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except ValueError as err:
            raise ResultsFormatError(
                f"{arrays_path!r} holds data that needs pickling to load ({err}); "
                "it is refused."
            ) from err
        except (OSError, EOFError, KeyError) as err:
            raise ResultsFormatError(
                f"{arrays_path!r} is not a readable .npz file ({err})."
            ) from err
        expected = payload.get("arrays_sha256")
        if expected is not None and expected != _sha256(arrays_path):
            raise ResultsFormatError(
                f"{arrays_path!r} does not match {report_path!r} (field "
                "'arrays_sha256'): the folder holds files from two different saves."
            )
        for name in payload["arrays"]:
            if name not in arrays:
                raise ResultsFormatError(
                    f"{arrays_path!r} has no array {name!r}, which {report_path!r} "
                    "lists; the folder holds files from two different saves."
                )
        return cls(summary=_from_json(payload["summary"]), arrays=arrays)


def merge(*parts: Results) -> Results:
    """Combine several results into one.

    **Arguments:**

    - `parts`: results whose summary keys and array names do not overlap.

    **Returns:**

    One [`Results`][flowtools.results.Results] holding every summary entry and
    array.

    **Raises:**

    - `ValueError`: when two parts share a summary key or an array name.
    """
    summary, arrays = {}, {}
    for part in parts:
        for key, value in part.summary.items():
            if key in summary:
                raise ValueError(f"merge: summary key {key!r} appears twice.")
            summary[key] = value
        for name, value in part.arrays.items():
            if name in arrays:
                raise ValueError(f"merge: array {name!r} appears twice.")
            arrays[name] = value
    return Results(summary=summary, arrays=arrays)
