"""Conversions between run objects (SGD traces, shadowing reports) and results."""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from flowtools.results._container import (
    Results,
    ResultsFormatError,
    _from_json,
    to_json,
)

_TRACE_PREFIX = "trace."
_SHADOW_PREFIX = "shadowing."


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
