"""Experiments described by a configuration: data, model, loss, SGD, flow, shadowing.

A [`Config`][flowtools.config.Config] (defined in `flowtools.config`, re-exported
here) is read from a TOML file (with the standard library's `tomllib`: no code is
ever evaluated) and adjusted by `key=value` overrides with dotted keys, such as
`sgd.step=0.02` or `model.widths=[64]`. The resolved configuration is saved with
the results as `config.toml` and reproduces the run.

[`run_compare`][flowtools.experiment.run_compare] runs the main comparison of
normalized SGD with the margin flow (Schechtman & Schreuder 2025) and writes
`report.json`, `arrays.npz`, `config.toml` and `figures/` into an output folder;
[`run_flow`][flowtools.experiment.run_flow] integrates the flow alone.

!!! warning "Limits"

    The output folder receives its files one by one at the very end of a run, each
    by an atomic rename, so a failed run leaves earlier results untouched; the set of
    files is not replaced as one transaction (a crash between two renames leaves a
    mix of old and new files, each of them whole).
"""

from flowtools.config import (
    Config,
    ConfigError,
    DataConfig,
    FlowConfig,
    LossConfig,
    ModelConfig,
    OutputConfig,
    SGDConfig,
    ShadowingConfig,
    apply_overrides,
    load_config,
)
from flowtools.experiment._common import ExperimentError, build_model
from flowtools.experiment._compare import _log_smoothed as _log_smoothed
from flowtools.experiment._compare import run_compare
from flowtools.experiment._flow import run_flow
from flowtools.experiment._output import _write_outputs as _write_outputs
from flowtools.experiment._output import check_writable

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ExperimentError",
    "FlowConfig",
    "LossConfig",
    "ModelConfig",
    "OutputConfig",
    "SGDConfig",
    "ShadowingConfig",
    "apply_overrides",
    "build_model",
    "check_writable",
    "load_config",
    "run_compare",
    "run_flow",
]
