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

import os  # noqa: F401  (`flowtools.results.os` stays importable)

from flowtools.results._container import (
    FORMAT_VERSION,
    Results,
    ResultsFormatError,
    merge,
    to_json,
)
from flowtools.results._convert import (
    report_from_results,
    report_to_results,
    trace_from_results,
    trace_to_results,
)

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
