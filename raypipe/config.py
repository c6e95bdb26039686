"""The run config: which model serves each kind, on what device, with how many actors.

The built-in default points every kind at its `tiny:` random-weight model on CPU (each
family's package holds its part, raypipe/families/<kind>/__init__.py), so a fresh machine
runs the demo with no model hub. A YAML file (`--config`) is merged on top:
each kind's keys replace the default's keys one by one. See configs/ for examples.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class SequenceParallelConfig(BaseModel):
    """How rows with `sp_degree: N` > 1 run (raypipe/parallel): on a gang of rank actors reserved
    together in a Ray placement group, created once per pool actor and reused across rows."""

    model_config = ConfigDict(extra="forbid")

    # "auto": xDiT (xfuser) on CUDA when installed, else Ulysses attention (NCCL on GPU, gloo on CPU).
    backend: Literal["auto", "ulysses", "xdit"] = "auto"
    # xDiT only: sp_degree = ulysses degree x ring_degree. The Ulysses backend runs all of it as Ulysses.
    ring_degree: int = Field(default=1, ge=1)
    # The conditional and unconditional CFG branches on two halves of the gang: 2 x sp_degree ranks.
    cfg_parallel: bool = False
    # Resources of each rank actor; by default the kind's num_cpus / num_gpus.
    rank_num_cpus: float | None = Field(default=None, gt=0)
    rank_num_gpus: float | None = Field(default=None, ge=0)
    placement_strategy: Literal["STRICT_PACK", "PACK", "SPREAD", "STRICT_SPREAD"] = "STRICT_PACK"
    # Seconds to place the gang, start its ranks and load the model; seconds for one row on it.
    start_timeout_s: float = Field(default=900.0, gt=0)
    row_timeout_s: float = Field(default=3600.0, gt=0)
    # A row whose rank died (or timed out) runs again on a fresh gang this many times.
    retries: int = Field(default=1, ge=0)
    # Gangs a pool actor keeps (one per degree in use); the least recently used one goes first.
    max_gangs: int = Field(default=1, ge=1)


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
    # Custom Ray resources of each actor, e.g. {raypipe_cogvideox: 1}: only nodes that offer them
    # (the kind's worker group in k8s/raycluster.yaml) run the kind's actors.
    resources: dict[str, float] = Field(default_factory=dict)
    # Rows handed to one actor call; rows of one shape may run as one pipeline call.
    batch_size: int = Field(default=1, ge=1)
    # Row fields used when a manifest row leaves them out (num_frames, height, ...).
    defaults: dict[str, Any] = Field(default_factory=dict)
    # Family-specific switches (memory options, schedulers, ...), recorded in params_json.
    options: dict[str, Any] = Field(default_factory=dict)
    # Sequence parallelism for rows with sp_degree > 1 (cogvideox, exvideo base cogvideox).
    sp: SequenceParallelConfig = Field(default_factory=SequenceParallelConfig)


class PlanConfig(BaseModel):
    """`raypipe plan`'s assumptions: GPU-seconds = FLOPs / (peak_tflops * 1e12 * mfu)."""

    model_config = ConfigDict(extra="forbid")

    gpu: str = "H100 SXM"
    # Dense BF16 peak of one GPU (H100 SXM: 989 TFLOP/s; A100: 312; H200 as H100).
    peak_tflops: float = Field(default=989.0, gt=0)
    # The fraction of the peak a diffusion transformer reaches in practice (CogVideoX-5B on an
    # H100: ~90 s for 50 steps of 49x480x720 with CFG = 33 PFLOP -> ~0.37).
    mfu: float = Field(default=0.35, gt=0, le=1)


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
    # A row whose pool worker died while generating it (node lost, process killed) runs again;
    # after this many such deaths it ends `failed` with the reason instead (raypipe/run.py).
    max_row_attempts: int = Field(default=3, ge=1)
    # What `raypipe plan` assumes about the GPUs (raypipe/flops.py).
    plan: PlanConfig = Field(default_factory=PlanConfig)


# Every kind's pool in the built-in config: one actor of one CPU, one row a call, float32 on CPU.
# Each family's built-in config (its tiny models, row defaults, options) is in its package.
ON_CPU: dict[str, Any] = {
    "dtype": "float32",
    "device": "cpu",
    "pool_size": 1,
    "num_gpus": 0,
    "num_cpus": 1,
    "batch_size": 1,
}


def default_config() -> dict[str, Any]:
    """The built-in config: every registered family on its tiny models on CPU."""
    from raypipe.families import families

    return {"kinds": {f.kind: copy.deepcopy(f.config) for f in families()}}


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


def load_config(uri: str | list[str] | None = None) -> RunConfig:
    """The default, with each file merged over it in order (`--config A --config B`: B's keys win;
    e.g. configs/gpu.yaml, then configs/kuberay.yaml placing each kind on its worker group)."""
    uris = [uri] if isinstance(uri, str) else [u for u in (uri or []) if u]
    data = default_config()
    for one in uris:
        try:
            with fsspec.open(one, "r") as f:
                override = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"config {one}: cannot read: {err}") from None
        if not isinstance(override, dict):
            raise ConfigError(f"config {one}: must be a mapping at the top level")
        data = _merge(data, override)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"config {' + '.join(uris) or '(default)'}: {problems}") from None
