"""Configurations of flowtools runs: TOML files and `key=value` overrides.

A [`Config`][flowtools.config.Config] has one frozen dataclass per stage of a run
(data, model, loss, SGD, flow, shadowing, output). It is read from a TOML file with
the standard library's `tomllib` (a file is data: nothing in it is evaluated) and
adjusted by `section.field=value` overrides whose values are TOML literals, such as
`sgd.step=0.02` or `model.widths=[64]`. Unknown keys are errors that list the valid
keys; malformed files are errors that name the file and the field.
[`Config.to_toml`][flowtools.config.Config.to_toml] writes a configuration back,
so that the resolved configuration saved with results reproduces the run.
"""

import dataclasses
import math
import os
import tomllib
import typing
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "FlowConfig",
    "LossConfig",
    "ModelConfig",
    "OutputConfig",
    "SGDConfig",
    "ShadowingConfig",
    "apply_overrides",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration file or override that cannot be used (names the key)."""


_MODEL_KINDS = ("mlp", "linear", "deep_linear", "diagonal", "cnn")
_LOSSES = ("exponential", "logistic")
_SAMPLINGS = ("iid", "reshuffle", "full")
_STEP_RULES = ("constant", "loss_scaled", "flow_clock")
_CLOCKS = ("estimate", "exact")
_SELECTIONS = ("proximal", "min-norm", "softmin", "autodiff", "random")
_SHADOW_SELECTIONS = ("min-norm", "softmin", "autodiff", "random")
_REFERENCES = ("mean_field", "inclusion")
_WARMUPS = ("none", "logistic", "exponential")
_FORMATS = ("png", "pdf", "svg")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the samples come from.

    **Arguments:**

    - `spec`: a bundled data set (`"digits:0,1"`, `"iris"`, `"breast_cancer"`,
      `"blobs:n=100,d=2,margin=0.5,seed=0"`) or the path of a CSV or NPZ file.
    """

    spec: str = "digits:0,1"


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which homogeneous predictor to train, and its options.

    **Arguments:**

    - `kind`: `"mlp"`, `"linear"`, `"deep_linear"`, `"diagonal"` or `"cnn"`.
    - `widths`: hidden widths of the bias-free MLP (degree `len(widths) + 1`).
    - `activation`, `slope`: `"relu"` or `"leaky_relu"` with its negative slope.
    - `relu0`: the autodiff value $s$ of ReLU'(0), which fixes the conservative field.
    - `first_layer_bias`: give the MLP's first layer a bias (it keeps the degree).
    - `depth`, `width`: depth of `deep_linear`/`diagonal`; hidden width of
      `deep_linear` (0 means the input dimension).
    - `channels`, `kernel`, `pool`: the CNN's convolution channels, kernel size and
      pooling (`"max"` or `"avg"`); the data must carry an image shape.
    - `init_scale`: scale of the random start (default 0.1: a small start spends
      more flow time before the late stage, so the run reaches further along the
      flow); `seed`: its PRNG seed.
    """

    kind: str = "mlp"
    widths: tuple[int, ...] = (32,)
    activation: str = "relu"
    slope: float = 0.01
    relu0: float = 0.0
    first_layer_bias: bool = False
    depth: int = 2
    width: int = 0
    channels: tuple[int, ...] = (8,)
    kernel: int = 3
    pool: str = "max"
    init_scale: float = 0.1
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """The loss: `name` is `"exponential"` (default) or `"logistic"`."""

    name: str = "exponential"


@dataclasses.dataclass(frozen=True)
class SGDConfig:
    """Stochastic gradient descent in polar form (THEORY section 4).

    **Arguments:**

    - `step`: the constant step $\\alpha$ (0.01-0.03 is stable on digits; 0.1
      diverges in about half the seeds); the base step of `"loss_scaled"`, the
      target $\\eta$ of `"flow_clock"`.
    - `num_steps`, `batch_size`, `seed`.
    - `sampling`: `"iid"` (the theorem's setting), `"reshuffle"` or `"full"` (GD).
    - `step_rule`: `"constant"`, `"loss_scaled"` or `"flow_clock"`; `max_step`:
      the cap of `"loss_scaled"` (0 for none).
    - `clock`: `"estimate"` (mini-batch estimate of $\\eta_k$) or `"exact"`.
    - `log_points`: records log-spaced in $k$; `record_dt`: also record each time
      the flow clock passes a multiple of this (0 for none). The shadowing windows
      see only recorded iterates, so keep several records per horizon.
    - `warmup`: `"none"`, or a loss (`"logistic"`, `"exponential"`) to train with
      until every sample is classified, before the run proper; `warmup_step`: its
      step (0: `step`); `warmup_steps`: its budget (0: the whole budget).
    - `checkpoint`: path of a checkpoint file to write and resume from (`""`: none).
    """

    step: float = 0.02
    num_steps: int = 3_000_000
    batch_size: int = 1
    sampling: str = "iid"
    step_rule: str = "constant"
    max_step: float = 0.0
    clock: str = "estimate"
    log_points: int = 200
    record_dt: float = 0.02
    seed: int = 0
    warmup: str = "none"
    warmup_step: float = 0.0
    warmup_steps: int = 0
    checkpoint: str = ""


@dataclasses.dataclass(frozen=True)
class FlowConfig:
    """The margin flow (THEORY sections 3 and 3b).

    **Arguments:**

    - `selection`: what drives the flow of the whole-run comparison and of
      `flowtools flow`: `"proximal"` (the inclusion solver, linearized proximal
      Euler), or an explicit scheme with the `"min-norm"`, `"autodiff"`,
      `"random"` selection, or the smooth `"softmin"` flow.
    - `dt`: the fixed step in flow time (inclusion solver and explicit schemes).
    - `eps`: the active-set slack; `k`: the number of candidate rows.
    - `tau`: the softmin temperature (0: $\\rho^{-L}$ at the last SGD record in a
      comparison, 0.01 for `flowtools flow`).
    - `t1`: the flow time of the standalone flow and of the sphere portraits.
    - `seed`: the PRNG seed of the random start and of the `"random"` selection.
    - `num_portrait`: number of extra random starts drawn on the sphere map for
      models with 2 or 3 parameters.
    """

    selection: str = "proximal"
    dt: float = 2e-3
    eps: float = 1e-6
    k: int = 32
    tau: float = 0.0
    t1: float = 5.0
    seed: int = 0
    num_portrait: int = 6


@dataclasses.dataclass(frozen=True)
class ShadowingConfig:
    """How SGD is compared with the flow (THEORY section 5).

    **Arguments:**

    - `horizon`: the window length $T$ in flow time.
    - `num_starts`: the number of window starts, log-spaced in $k$ after the
      late-stage entry.
    - `references`: `"mean_field"` (the flow SGD follows on average) and/or
      `"inclusion"` (the theorem's flow).
    - `selections`: the selections of the inclusion references: `"min-norm"` is
      the inclusion solver, `"softmin"`, `"autodiff"`, `"random"` add flows of
      those selections.
    - `dt`: the step of the inclusion references (0: `horizon / 500`).
    - `clock`: `"auto"`, `"exact"` or `"estimate"`: which flow clock to compare on.
    - `rtol`, `atol`: tolerances of the (adaptive) mean-field reference; its error
      must stay well below the distances measured (about 1e-4 on digits).
    - `max_steps`: step budget of the mean-field flow drawn over the whole late
      stage (it stiffens as $\\rho$ grows; the part reached is kept).
    """

    horizon: float = 0.25
    num_starts: int = 12
    references: tuple[str, ...] = ("mean_field", "inclusion")
    selections: tuple[str, ...] = ("min-norm",)
    dt: float = 0.0
    clock: str = "auto"
    rtol: float = 1e-7
    atol: float = 1e-9
    max_steps: int = 65536


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where and how results are written.

    **Arguments:**

    - `out`: the output folder (the command line's `--out` takes precedence).
    - `formats`: figure formats (`"png"`, `"pdf"`, `"svg"`).
    - `figures`: whether to draw figures at the end of a run.
    - `dpi`: resolution of raster figures.
    """

    out: str = "flowtools-out"
    formats: tuple[str, ...] = ("png", "pdf")
    figures: bool = True
    dpi: int = 200


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment: one section per stage, each a frozen dataclass.

    Build it with [`load_config`][flowtools.config.load_config]; `Config()` is the
    built-in default (digits 0 vs 1, a bias-free two-layer ReLU network of width 32,
    exponential loss, single-sample i.i.d. SGD with step 0.02).
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    sgd: SGDConfig = SGDConfig()
    flow: FlowConfig = FlowConfig()
    shadowing: ShadowingConfig = ShadowingConfig()
    output: OutputConfig = OutputConfig()

    def to_dict(self) -> dict:
        """The configuration as a plain dictionary (tuples become lists)."""
        return {
            section.name: {
                f.name: _plain(getattr(getattr(self, section.name), f.name))
                for f in dataclasses.fields(getattr(self, section.name))
            }
            for section in dataclasses.fields(self)
        }

    def to_toml(self) -> str:
        """The configuration as TOML text, which `load_config` reads back unchanged."""
        lines = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    @classmethod
    def valid_keys(cls) -> list[str]:
        """Every dotted key that a file or an override may set."""
        return [
            f"{section.name}.{f.name}"
            for section in dataclasses.fields(cls)
            for f in dataclasses.fields(section.type)
        ]


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} of type {type(value).__name__} as TOML")


def _coerce(value, annotation, key: str, source: str):
    """Check `value` against a field's annotation; return it in the field's type."""
    where = f"{key} (from {source})"
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item,) = {a for a in typing.get_args(annotation) if a is not Ellipsis}
        if not isinstance(value, list | tuple):
            value = [value]
        return tuple(_coerce(v, item, key, source) for v in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}.")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}.")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}.")
        return value
    raise TypeError(f"unsupported field type {annotation!r} for {key}")


def _check_choice(value, choices, key):
    if value not in choices:
        raise ConfigError(
            f"{key} = {value!r} is not one of {', '.join(map(repr, choices))}."
        )


def _validate(config: Config) -> Config:
    """Check the values of a configuration (not only their types)."""
    m, s, f, sh, o = (
        config.model,
        config.sgd,
        config.flow,
        config.shadowing,
        config.output,
    )
    _check_choice(m.kind, _MODEL_KINDS, "model.kind")
    _check_choice(m.activation, ("relu", "leaky_relu"), "model.activation")
    _check_choice(m.pool, ("max", "avg"), "model.pool")
    if m.kind == "mlp" and (not m.widths or min(m.widths) < 1):
        raise ConfigError(
            f"model.widths={list(m.widths)}: an MLP needs at least one hidden layer "
            "of positive width (e.g. model.widths=[32]); for a linear model use "
            "model.kind=linear."
        )
    _check_choice(config.loss.name, _LOSSES, "loss.name")
    _check_choice(s.sampling, _SAMPLINGS, "sgd.sampling")
    _check_choice(s.step_rule, _STEP_RULES, "sgd.step_rule")
    _check_choice(s.clock, _CLOCKS, "sgd.clock")
    _check_choice(s.warmup, _WARMUPS, "sgd.warmup")
    _check_choice(f.selection, _SELECTIONS, "flow.selection")
    _check_choice(sh.clock, ("auto", "exact", "estimate"), "shadowing.clock")
    for ref in sh.references:
        _check_choice(ref, _REFERENCES, "shadowing.references")
    for name in sh.selections:
        _check_choice(name, _SHADOW_SELECTIONS, "shadowing.selections")
    if not sh.references or ("inclusion" in sh.references and not sh.selections):
        raise ConfigError(
            "shadowing.references must name at least one reference, and "
            "shadowing.selections at least one selection when 'inclusion' is used."
        )
    for fmt in o.formats:
        _check_choice(fmt, _FORMATS, "output.formats")
    positive = {
        "sgd.step": s.step,
        "sgd.num_steps": s.num_steps,
        "sgd.batch_size": s.batch_size,
        "flow.dt": f.dt,
        "flow.eps": f.eps,
        "flow.k": f.k,
        "flow.t1": f.t1,
        "shadowing.horizon": sh.horizon,
        "shadowing.num_starts": sh.num_starts,
        "shadowing.rtol": sh.rtol,
        "shadowing.atol": sh.atol,
        "shadowing.max_steps": sh.max_steps,
        "model.init_scale": m.init_scale,
        "model.depth": m.depth,
        "model.kernel": m.kernel,
        "output.dpi": o.dpi,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value!r}.")
    if not 0.0 <= m.relu0 <= 1.0:
        raise ConfigError(f"model.relu0 must lie in [0, 1], got {m.relu0!r}.")
    if any(w <= 0 for w in m.widths + m.channels):
        raise ConfigError("model.widths and model.channels must be positive integers.")
    non_negative = {
        "flow.tau": f.tau,
        "model.width": m.width,
        "sgd.max_step": s.max_step,
        "sgd.log_points": s.log_points,
        "sgd.record_dt": s.record_dt,
        "sgd.warmup_step": s.warmup_step,
        "sgd.warmup_steps": s.warmup_steps,
        "flow.num_portrait": f.num_portrait,
        "shadowing.dt": sh.dt,
    }
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"{key} must be non-negative, got {value!r}.")
    if not o.out:
        raise ConfigError("output.out must name a folder.")
    return config


def _from_dict(raw: dict, source: str, base: Config | None = None) -> Config:
    """Build a validated configuration from nested dictionaries over `base`."""
    base = Config() if base is None else base
    valid = ", ".join(Config.valid_keys())
    sections = {s.name: s for s in dataclasses.fields(Config)}
    updates = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(
                f"unknown configuration section {name!r} in {source}; valid keys "
                f"are: {valid}."
            )
        if not isinstance(values, dict):
            raise ConfigError(
                f"{name} in {source} must be a table such as [{name}], got {values!r}."
            )
        section_type = sections[name].type
        hints = typing.get_type_hints(section_type)
        changes = {}
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(
                    f"unknown configuration key {name}.{key} in {source}; valid keys "
                    f"are: {valid}."
                )
            changes[key] = _coerce(value, hints[key], f"{name}.{key}", source)
        updates[name] = dataclasses.replace(getattr(base, name), **changes)
    return _validate(dataclasses.replace(base, **updates))


def _parse_override(item: str) -> tuple[str, str, object]:
    if "=" not in item:
        raise ConfigError(
            f"override {item!r} is not of the form key=value (for example "
            "sgd.step=0.02)."
        )
    key, text = (part.strip() for part in item.split("=", 1))
    if key.count(".") != 1:
        raise ConfigError(
            f"override key {key!r} must be section.field; valid keys are: "
            f"{', '.join(Config.valid_keys())}."
        )
    try:
        value = tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as digits:3,8 is read as a string
    section, field = key.split(".")
    return section, field, value


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """Apply `key=value` overrides (dotted keys, TOML literal values) to a config.

    A value that is not a TOML literal (such as `digits:3,8` without quotes) is read as
    a string, so `data.spec=digits:3,8` and `data.spec="digits:3,8"` agree.

    **Arguments:**

    - `config`: the configuration to start from.
    - `overrides`: strings `section.field=value`, e.g. `sgd.step=0.02`,
      `model.widths=[64]`.

    **Returns:** the new, validated configuration.

    **Raises:** `ConfigError` for a malformed override, an unknown key (listing the
    valid ones) or a value of the wrong type.
    """
    raw: dict[str, dict] = {}
    for item in overrides:
        section, field, value = _parse_override(item)
        raw.setdefault(section, {})[field] = value
    return _from_dict(raw, "the command line", base=config)


def load_config(
    path: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Read a configuration from a TOML file (or the default) and apply overrides.

    The file is parsed with the standard library's `tomllib`; nothing in it is
    executed. Missing keys keep their defaults.

    **Arguments:**

    - `path`: a TOML file, or `None` for the built-in default.
    - `overrides`: `section.field=value` strings applied after the file.

    **Returns:** the resolved [`Config`][flowtools.config.Config].

    **Raises:** `ConfigError` naming the file and the field for an unreadable or
    malformed file, an unknown key or a wrong value.
    """
    config = Config()
    if path is not None:
        path = Path(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise ConfigError(
                f"cannot read the configuration file {path}: {err.strerror}."
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(
                f"the configuration file {path} is not valid TOML: {err}."
            ) from None
        config = _from_dict(raw, str(path))
    return apply_overrides(config, overrides)
