"""The run config: which model serves each kind, on what device, with how many actors.

The built-in default points every kind at its `tiny:` random-weight model on CPU, so a
fresh machine runs the demo with no model hub. A YAML file (`--config`) is merged on top:
each kind's keys replace the default's keys one by one. See configs/ for examples.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class KindConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # A local directory, a hub id (needs network) or `tiny:<name>` (built locally on first use).
    model: str
    # Extra models a family needs besides `model`, by role (e.g. {"i2v": ..., "svd": ...}).
    models: dict[str, str] = Field(default_factory=dict)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "cpu"
    # Actors in this kind's pool (Ray Data ActorPoolStrategy min..max).
    pool_size: int = Field(default=1, ge=1)
    max_pool_size: int | None = Field(default=None, ge=1)
    # Resources of each actor.
    num_gpus: float = Field(default=0.0, ge=0)
    num_cpus: float = Field(default=1.0, gt=0)
    memory_gb: float | None = Field(default=None, gt=0)
    # Rows handed to one actor call; rows of one shape may run as one pipeline call.
    batch_size: int = Field(default=1, ge=1)
    # Row fields used when a manifest row leaves them out (num_frames, height, ...).
    defaults: dict[str, Any] = Field(default_factory=dict)
    # Family-specific switches (memory options, schedulers, ...), recorded in params_json.
    options: dict[str, Any] = Field(default_factory=dict)


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: dict[str, KindConfig]
    # CPU per task of the CPU stages (manifest parsing, validation, MP4 encoding, upload).
    cpu_stage_num_cpus: float = Field(default=0.25, gt=0)
    # The driver writes a metadata part every this many rows or seconds.
    metadata_flush_rows: int = Field(default=256, ge=1)
    metadata_flush_seconds: float = Field(default=15.0, gt=0)
    # Seconds between progress lines.
    progress_seconds: float = Field(default=5.0, gt=0)


DEFAULT_CONFIG: dict[str, Any] = {
    "kinds": {
        "cogvideox": {
            "model": "tiny:cogvideox",
            "dtype": "float32",
            "device": "cpu",
            "pool_size": 1,
            "num_gpus": 0,
            "num_cpus": 1,
            "batch_size": 1,
            "defaults": {"num_frames": 9, "height": 64, "width": 64, "num_inference_steps": 4,
                         "guidance_scale": 6.0, "fps": 8},
        },
    },
}


class ConfigError(ValueError):
    """The config cannot be used: the run does not start (exit code 2)."""


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if key == "kinds" and isinstance(value, dict):
            kinds = merged.setdefault("kinds", {})
            for kind, kind_cfg in value.items():
                kinds[kind] = {**kinds.get(kind, {}), **(kind_cfg or {})}
        else:
            merged[key] = value
    return merged


def load_config(uri: str | None = None) -> RunConfig:
    data = DEFAULT_CONFIG
    if uri:
        try:
            with fsspec.open(uri, "r") as f:
                override = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"config {uri}: cannot read: {err}") from None
        if not isinstance(override, dict):
            raise ConfigError(f"config {uri}: must be a mapping at the top level")
        data = _merge(DEFAULT_CONFIG, override)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"config {uri or '(default)'}: {problems}") from None
