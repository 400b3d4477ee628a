"""What every experiment shares: the error type, the model and data a config names,
the library versions and the summary header, and small numerical helpers.

These are the pieces that [`run_compare`][flowtools.experiment.run_compare] and
[`run_flow`][flowtools.experiment.run_flow] build on.
"""

import importlib.metadata
import platform

import jax
import jax.numpy as jnp
import numpy as np

from flowtools.config import Config, ConfigError, ModelConfig


class ExperimentError(RuntimeError):
    """A run that cannot produce results (no late stage, an unusable output folder)."""


def build_model(config: ModelConfig, ds):
    """The homogeneous model that `config` describes, sized for the data `ds`.

    **Arguments:**

    - `config`: the model section of a [`Config`][flowtools.config.Config].
    - `ds`: the [`Dataset`][flowtools.data.Dataset] it will be trained on.

    **Returns:** a [`Model`][flowtools.models.Model].

    **Raises:** `ConfigError` when the model cannot be built for these data (a CNN on
    data without an image shape).
    """
    from flowtools import models

    if config.kind == "linear":
        return models.linear(ds.dim)
    if config.kind == "deep_linear":
        return models.deep_linear(ds.dim, config.depth, width=config.width or None)
    if config.kind == "diagonal":
        return models.diagonal(ds.dim, depth=config.depth)
    if config.kind == "cnn":
        if ds.image_shape is None:
            raise ConfigError(
                f"model.kind = 'cnn' needs image data, but {ds.name!r} has no image "
                "shape; use data.spec='digits:0,1' or another model.kind."
            )
        return models.cnn(
            image_shape=ds.image_shape,
            channels=config.channels,
            kernel=config.kernel,
            pool=config.pool,
            relu0=config.relu0,
        )
    return models.mlp(
        ds.dim,
        widths=config.widths,
        activation=config.activation,
        slope=config.slope,
        relu0=config.relu0,
        first_layer_bias=config.first_layer_bias,
    )


def _load_data(spec: str):
    from flowtools import data

    try:
        return data.load(spec)
    except OSError as err:
        reason = str(err.strerror or err).rstrip(".")
        raise ExperimentError(
            f"cannot read the data file {spec!r}: {reason}. Set "
            "data.spec to a readable CSV or NPZ file or a bundled set such as "
            "'digits:0,1'."
        ) from None


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in (
        "flowtools",
        "jax",
        "jaxlib",
        "diffrax",
        "equinox",
        "numpy",
        "scipy",
        "matplotlib",
        "scikit-learn",
    ):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _header(kind: str, config: Config, ds, model) -> dict:
    """The part of a summary shared by every job: config, versions, data, model."""
    return {
        "kind": kind,
        "config": config.to_dict(),
        "versions": _versions(),
        "data": {"name": ds.name, "n": int(ds.n), "dim": int(ds.dim)},
        "model": {
            "description": _describe(model),
            "layers": model.describe(),
            "degree": int(model.degree),
            "num_params": int(model.num_params),
        },
    }


def _describe(model) -> str:
    return model.describe().splitlines()[0]


def _unit_margins(field, U):
    """All per-sample margins $q_i(u)$ for a batch of flat unit vectors `U` (b, p)."""
    return np.asarray(jax.jit(jax.vmap(field.margins))(jnp.asarray(U)))


def _sphere_map(field, num_params):
    """The normalized margin on a grid of the circle (p = 2) or the sphere (p = 3)."""
    if num_params == 2:
        angle = np.linspace(-np.pi, np.pi, 721)
        U = np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        return {"map.angle": angle, "map.margin": _unit_margins(field, U).min(-1)}
    lon = np.linspace(-np.pi, np.pi, 181)
    lat = np.linspace(-np.pi / 2, np.pi / 2, 91)
    LON, LAT = np.meshgrid(lon, lat)
    U = np.stack(
        [np.cos(LAT) * np.cos(LON), np.cos(LAT) * np.sin(LON), np.sin(LAT)], axis=-1
    ).reshape(-1, 3)
    margin = _unit_margins(field, U).min(-1).reshape(LAT.shape)
    return {"map.lon": lon, "map.lat": lat, "map.margin": margin}


def _flow_kwargs(config: Config, tau_default: float) -> dict:
    """Keyword arguments of `flow.integrate` for the configured selection."""
    f = config.flow
    kwargs = {
        "selection": None if f.selection == "proximal" else f.selection,
        "dt0": f.dt,
    }
    if f.selection == "softmin":
        kwargs["tau"] = f.tau or tau_default
    if f.selection == "random":
        kwargs["key"] = jax.random.key(f.seed)
    return kwargs


def _say(log, message):
    if log is not None:
        log(message)


def _now() -> float:
    import time

    return time.perf_counter()
