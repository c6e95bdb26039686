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
    # Seconds a rank may go without answering the heartbeat (a ping on a thread of its own, sent
    # while it starts or generates): a rank process stopped or cut off is found this soon, not
    # after row_timeout_s. A rank busy in a collective still answers.
    rank_timeout_s: float = Field(default=60.0, gt=0)
    # A row whose rank died (or timed out) runs again on a fresh gang this many times.
    retries: int = Field(default=1, ge=0)
    # Gangs a pool actor keeps (one per degree in use); the least recently used one goes first.
    max_gangs: int = Field(default=1, ge=1)
    # Gangs of one degree running at once: a run sends the rows of sp_degree N to the kind's pool
    # "<kind>/sp<N>", whose actors (CPU only, no model) each drive one gang; the gang holds the GPUs.
    pool_size: int = Field(default=1, ge=1)
    max_pool_size: int | None = Field(default=None, ge=1)


class QualityGate(BaseModel):
    """A kind's quality gate (raypipe/quality.py defines each score): a video whose score is above
    a `<score>_max` or below a `<score>_min` fails, is kept under quarantine/<id>.mp4 instead of
    videos/<id>.mp4, and its row is `failed` with the score and threshold in `error`. The defaults
    fail only what nobody wants: a video whose frames are (nearly) all black or blank, or whose
    pipeline output held NaN/Inf; every other threshold is opt-in (null: not checked)."""

    model_config = ConfigDict(extra="forbid")

    black_fraction_max: float | None = Field(default=0.99, ge=0, le=1)
    black_fraction_min: float | None = Field(default=None, ge=0, le=1)
    frozen_fraction_max: float | None = Field(default=None, ge=0, le=1)
    frozen_fraction_min: float | None = Field(default=None, ge=0, le=1)
    motion_score_min: float | None = Field(default=None, ge=0)
    motion_score_max: float | None = Field(default=None, ge=0)
    flicker_min: float | None = Field(default=None, ge=0)
    flicker_max: float | None = Field(default=None, ge=0)
    sharpness_min: float | None = Field(default=None, ge=0)
    sharpness_max: float | None = Field(default=None, ge=0)
    clip_score_min: float | None = Field(default=None, ge=0, le=100)
    clip_score_max: float | None = Field(default=None, ge=0, le=100)
    # Frames of the pipeline's float output holding NaN or Inf (they become black in uint8).
    nonfinite_frames_max: int | None = Field(default=0, ge=0)
    # A row that fails the gate runs again up to this many times, with seed + 1, seed + 2, ...
    # (each in a follow-up pass after the run's main one, raypipe/run.py); 0: never.
    rerolls: int = Field(default=0, ge=0)


class QualitySettings(BaseModel):
    """How the scores are computed (the top-level `quality:` of the run config)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # A CLIP checkpoint for clip_score (a local folder, a hub id, or tiny:clip); none: clip_score is null.
    clip_model: str | None = None
    # Frames sampled evenly from a video for clip_score.
    clip_frames: int = Field(default=8, ge=1)
    # Optical flow (motion_score) runs on grey frames downscaled so that their longer side is at most this.
    flow_max_side: int = Field(default=160, ge=16)


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
    # Ray's accelerator type of each actor (e.g. H100, A100, L4): only nodes of that type run them.
    accelerator_type: str | None = None
    # Rows handed to one actor call; rows of one shape may run as one pipeline call.
    batch_size: int = Field(default=1, ge=1)
    # Row fields used when a manifest row leaves them out (num_frames, height, ...).
    defaults: dict[str, Any] = Field(default_factory=dict)
    # Family-specific switches (memory options, schedulers, ...), recorded in params_json.
    options: dict[str, Any] = Field(default_factory=dict)
    # Sequence parallelism for rows with sp_degree > 1 (cogvideox, exvideo base cogvideox).
    sp: SequenceParallelConfig = Field(default_factory=SequenceParallelConfig)
    # The quality gate of this kind's videos (thresholds on the scores, re-rolls).
    quality: QualityGate = Field(default_factory=QualityGate)


class PlanConfig(BaseModel):
    """`raypipe plan`'s assumptions: GPU-seconds = FLOPs / (peak_tflops * 1e12 * mfu)."""

    model_config = ConfigDict(extra="forbid")

    gpu: str = "H100 SXM"
    # Dense BF16 peak of one GPU (H100 SXM: 989 TFLOP/s; A100: 312; H200 as H100).
    peak_tflops: float = Field(default=989.0, gt=0)
    # The fraction of the peak a diffusion transformer reaches in practice (CogVideoX-5B on an
    # H100: ~90 s for 50 steps of 49x480x720 with CFG = 33 PFLOP -> ~0.37).
    mfu: float = Field(default=0.35, gt=0, le=1)


class NodeGroup(BaseModel):
    """Nodes of one shape in the cluster a run will join (`cluster:` in the config), named as a
    kind's resources are, for the check that a row's gang fits a node: `raypipe validate` / `plan`
    without a cluster (--address) check against these alone; a run (or --address) against the
    cluster's alive nodes and these (the nodes an autoscaler may add)."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=1)  # nodes of this shape (a worker group's maxReplicas)
    num_cpus: float = Field(default=0.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0)
    memory_gb: float | None = Field(default=None, gt=0)
    accelerator_type: str | None = None
    resources: dict[str, float] = Field(default_factory=dict)

    def ray_resources(self) -> dict[str, float]:
        """One node's resources as Ray names them (ray.nodes()[i]["Resources"])."""
        out = {"CPU": self.num_cpus, "GPU": self.num_gpus, **self.resources}
        if self.memory_gb:
            out["memory"] = self.memory_gb * 2**30
        if self.accelerator_type:
            out[f"accelerator_type:{self.accelerator_type}"] = 1.0
        return {name: amount for name, amount in out.items() if amount}


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
    # The cluster's node groups, for the gang-fits check (NodeGroup; configs/kuberay.yaml).
    cluster: list[NodeGroup] = Field(default_factory=list)
    # How the quality scores are computed (the CLIP model, ...); the thresholds are per kind.
    quality: QualitySettings = Field(default_factory=QualitySettings)


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
