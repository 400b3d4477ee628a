"""Result containers: a JSON summary next to named numpy arrays, saved atomically.

A [`Results`][flowtools.results.Results] holds everything a run produced in two
parts: a `summary` of JSON values (configuration, versions, scalars, small
tables) and `arrays`, a mapping from names to numpy arrays. On disk they are
`report.json` and `arrays.npz` in one folder. Both files are written to a
temporary file in the target folder first and then moved into place with
`os.replace`, so a failed save never leaves a half-written file and never
destroys the results already there.

The JSON encoding is strict JSON (no bare `NaN` tokens): numpy scalars become
Python numbers, tuples and numpy arrays become lists, and non-finite floats are
written as the strings `"NaN"`, `"Infinity"` and `"-Infinity"`, which
[`Results.load`][flowtools.results.Results.load] turns back into floats. A
string in the summary that is exactly one of those three spellings therefore
reads back as a float; tuples read back as lists.

Conversions to and from the run objects of the package
([`trace_to_results`][flowtools.results.trace_to_results],
[`report_to_results`][flowtools.results.report_to_results] and their inverses)
give a saved SGD run or shadowing report back without recomputation, with
bit-identical arrays.
"""

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

__all__ = [
    "FORMAT_VERSION",
    "Results",
    "ResultsFormatError",
    "merge",
    "report_from_results",
    "report_to_results",
    "to_json",
    "trace_from_results",
    "trace_to_results",
]

FORMAT_VERSION = 1
"""Version of the on-disk layout that `Results.save` writes."""

_REPORT_FILE = "report.json"
_ARRAYS_FILE = "arrays.npz"
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TRACE_PREFIX = "trace."
_SHADOW_PREFIX = "shadowing."


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


def _require(mapping: Mapping, key: str, where: str) -> Any:
    if key not in mapping:
        raise ResultsFormatError(
            f"{where} has no field {key!r}; the results do not hold this object."
        )
    return mapping[key]


def _is_array_field(value: Any) -> bool:
    return (
        hasattr(value, "shape")
        and hasattr(value, "dtype")
        and getattr(value, "ndim", 0) >= 1
    )


# ---------------------------------------------------------------------------
# SGD traces


def trace_to_results(trace: Any) -> Results:
    """Convert an SGD trace to results, arrays bit for bit.

    Every array field of the trace (one or more dimensions) goes to
    `arrays["trace.<name>"]`; every other field (steps, seeds, names, messages,
    scalars) to `summary["trace"]`.

    **Arguments:**

    - `trace`: a [`flowtools.sgd.SGDTrace`][] (any dataclass-like object whose
      fields are arrays and JSON values works).

    **Returns:**

    A [`Results`][flowtools.results.Results] that
    [`trace_from_results`][flowtools.results.trace_from_results] turns back into
    an equal trace.

    **Raises:**

    - `TypeError`: when `trace` is not a dataclass or a field cannot be stored.
    """
    fields = _object_fields(trace, "trace")
    summary, arrays = {"type": type(trace).__name__}, {}
    scalars = {}
    for name, value in fields.items():
        if _is_array_field(value):
            arrays[_TRACE_PREFIX + name] = np.asarray(value)
        else:
            scalars[name] = _scalar_to_json(value, f"trace.{name}")
    summary["fields"] = scalars
    return Results(summary={"trace": summary}, arrays=arrays)


def trace_from_results(res: Results) -> Any:
    """Rebuild the SGD trace stored by `trace_to_results`, without recomputation.

    **Arguments:**

    - `res`: results holding a trace (possibly merged with other parts).

    **Returns:**

    A [`flowtools.sgd.SGDTrace`][] with the saved arrays, no recomputation.

    **Raises:**

    - `ResultsFormatError`: when the results hold no trace, or a field of the
      trace is missing, naming it.
    """
    from flowtools import sgd

    info = _require(res.summary, "trace", "summary")
    scalars = _require(info, "fields", "summary['trace']")
    values = {}
    for name, value in scalars.items():
        values[name] = _scalar_from_json(value)
    for name, array in res.arrays.items():
        if name.startswith(_TRACE_PREFIX):
            values[name[len(_TRACE_PREFIX) :]] = array
    return _build(sgd.SGDTrace, values, "trace")


# ---------------------------------------------------------------------------
# Shadowing reports


def report_to_results(report: Any) -> Results:
    """Convert a shadowing report to results, arrays bit for bit.

    Arrays go to `arrays["shadowing.<name>"]` (per-reference dictionaries of
    arrays to `"shadowing.<name>.<reference>"`); the horizon, the reference
    labels, the fitted rates and the settings to `summary["shadowing"]`,
    together with a table of window starts and distances for reading by eye.

    **Arguments:**

    - `report`: a [`flowtools.shadowing.ShadowingReport`][].

    **Returns:**

    A [`Results`][flowtools.results.Results] that
    [`report_from_results`][flowtools.results.report_from_results] turns back
    into an equal report.
    """
    fields = _object_fields(report, "report")
    summary = {"type": type(report).__name__, "fields": {}, "dicts": {}}
    arrays = {}
    for name, value in fields.items():
        if _is_array_field(value):
            arrays[_SHADOW_PREFIX + name] = np.asarray(value)
        elif (
            isinstance(value, Mapping)
            and value
            and all(_is_array_field(v) for v in value.values())
        ):
            summary["dicts"][name] = list(value)
            for ref, array in value.items():
                arrays[f"{_SHADOW_PREFIX}{name}.{ref}"] = np.asarray(array)
        else:
            summary["fields"][name] = _scalar_to_json(value, f"report.{name}")
    table_fn = getattr(report, "table", None)
    if callable(table_fn):
        summary["table"] = to_json(table_fn(), path="report.table")
    return Results(summary={"shadowing": summary}, arrays=arrays)


def report_from_results(res: Results) -> Any:
    """Rebuild the shadowing report stored by `report_to_results`.

    **Arguments:**

    - `res`: results holding a shadowing report (possibly merged with others).

    **Returns:**

    A [`flowtools.shadowing.ShadowingReport`][] with the saved arrays.

    **Raises:**

    - `ResultsFormatError`: when the results hold no report or miss one of its
      fields, naming it.
    """
    from flowtools import shadowing

    info = _require(res.summary, "shadowing", "summary")
    scalars = _require(info, "fields", "summary['shadowing']")
    dicts = _require(info, "dicts", "summary['shadowing']")
    values = {name: _scalar_from_json(value) for name, value in scalars.items()}
    for name, refs in dicts.items():
        values[name] = {
            ref: _require(res.arrays, f"{_SHADOW_PREFIX}{name}.{ref}", "arrays")
            for ref in refs
        }
    taken = {f"{_SHADOW_PREFIX}{n}.{r}" for n, refs in dicts.items() for r in refs}
    for name, array in res.arrays.items():
        if name.startswith(_SHADOW_PREFIX) and name not in taken:
            values[name[len(_SHADOW_PREFIX) :]] = array
    return _build(shadowing.ShadowingReport, values, "shadowing report")


# ---------------------------------------------------------------------------
# Field (de)serialization shared by the conversions


def _object_fields(obj: Any, what: str) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if hasattr(obj, "_asdict"):
        return dict(obj._asdict())
    raise TypeError(
        f"Cannot convert {what} of type {type(obj).__name__}: expected a dataclass "
        "or a NamedTuple."
    )


def _scalar_to_json(value: Any, path: str) -> Any:
    # Tuples are tagged so that they come back as tuples, not lists.
    if isinstance(value, tuple):
        return {"__tuple__": [_scalar_to_json(v, path) for v in value]}
    if isinstance(value, Mapping):
        return {str(k): _scalar_to_json(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_scalar_to_json(v, path) for v in value]
    if hasattr(value, "shape") and getattr(value, "ndim", None) == 0:
        return {"__scalar__": to_json(np.asarray(value).item(), path=path)}
    return to_json(value, path=path)


def _scalar_from_json(value: Any) -> Any:
    value = _from_json(value)
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_scalar_from_json(v) for v in value["__tuple__"])
        if set(value) == {"__scalar__"}:
            return value["__scalar__"]
        return {k: _scalar_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scalar_from_json(v) for v in value]
    return value


def _build(cls: type, values: dict[str, Any], what: str) -> Any:
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.init
        ]
    else:
        names = list(cls._fields)
        required = [n for n in names if n not in cls._field_defaults]
    for name in required:
        if name not in values:
            raise ResultsFormatError(
                f"The saved {what} has no field {name!r}; it was written by another "
                "version or is incomplete."
            )
    return cls(**{name: values[name] for name in names if name in values})
