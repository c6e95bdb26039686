"""FLOP models of the model families, for `raypipe plan` (raypipe/plan.py).

A row costs  forwards x FLOPs of one denoiser forward; text encoders, VAEs and depth models
are left out (a few percent for these families). GPU-seconds = FLOPs / (peak x MFU), with the
GPU's peak and the MFU from the run config's `plan` section (raypipe/config.py PlanConfig).

Forwards per row: the denoising steps run (num_inference_steps; times `strength` for
video-to-video and img2img, as diffusers' get_timesteps) times 2 when classifier-free guidance
is on (guidance_scale > 1: a conditional and an unconditional pass).

Diffusion transformers (CogVideoX, ExVideo on CogVideoX), from the transformer's shapes:
    tokens N = text tokens + ceil(T / p_t) * (H / s / p) * (W / s / p),   T = (F - 1) / c_t + 1
    one forward = L * ( (8 + 4m) * N * d^2  +  4 * N^2 * d )
with L layers of width d, an MLP m*d wide (m = 4), the VAE's spatial and temporal compression
s = 8 and c_t = 4, patches p x p (x p_t in time). Per layer: Q, K, V and output projections
8*N*d^2, the MLP 4m*N*d^2 (a multiply-add is 2 FLOPs), attention scores Q K^T and the weighted
sum of V 2*N^2*d each, over text and video tokens together. CogVideoX-5B (L=42, d=3072, 226
text tokens) at 49x480x720: N = 226 + 13*30*45 = 17,776 tokens and 332 TFLOP per forward, as
torch.utils.flop_counter counts it (benchmarks/flop_constants.py). The shapes come from the
model's transformer/config.json when it is a local folder (or a `tiny:` model), else from
the table of released checkpoints below.

UNets (Stable Diffusion 1.5 for deforum and animatediff, SDXL for sdxl_video, SVD for
ExVideo-SVD): one forward over F frames of latent h x w (P = h*w pixels, h = H/8) is
    F * (a*P + b*P^2)  +  t * F^2 * P
a: convolutions, projections, MLPs and text cross-attention (linear in pixels); b: spatial
self-attention (quadratic); t: temporal attention across frames. The constants are counted
on the released architectures by benchmarks/flop_constants.py (meta device, no weights); a
`tiny:` model is priced as its full-size family.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raypipe.config import KindConfig


@dataclass(frozen=True)
class DiTShape:
    layers: int
    hidden: int
    text_tokens: int
    patch: int = 2
    patch_t: int = 1
    temporal_compression: int = 4
    spatial_compression: int = 8
    mlp_ratio: float = 4.0


COGVIDEOX_2B = DiTShape(layers=30, hidden=30 * 64, text_tokens=226)
COGVIDEOX_5B = DiTShape(layers=42, hidden=48 * 64, text_tokens=226)
COGVIDEOX_15_5B = DiTShape(layers=42, hidden=48 * 64, text_tokens=224, patch_t=2)
# Released checkpoints by a piece of their hub id (lower case; the first match wins).
KNOWN_DITS: list[tuple[str, DiTShape]] = [
    ("cogvideox1.5-5b", COGVIDEOX_15_5B),
    ("cogvideox-5b", COGVIDEOX_5B),  # also CogVideoX-5b-I2V
    ("cogvideox-2b", COGVIDEOX_2B),
]


def dit_forward_flops(shape: DiTShape, frames: int, height: int, width: int) -> float:
    """FLOPs of one transformer forward over a video of frames x height x width (formula above)."""
    latent_frames = (frames - 1) // shape.temporal_compression + 1
    patch_pixels = shape.spatial_compression * shape.patch
    per_frame = (height // patch_pixels) * (width // patch_pixels)
    n = shape.text_tokens + math.ceil(latent_frames / shape.patch_t) * per_frame
    d = shape.hidden
    return shape.layers * ((8 + 4 * shape.mlp_ratio) * n * d * d + 4 * n * n * d)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@functools.lru_cache(maxsize=64)
def dit_shape(model: str) -> DiTShape | None:
    """The transformer shapes of a model: its config files when it is local, else the table."""
    path = model
    if model.startswith("tiny:"):
        from raypipe.models.tiny import resolve_model

        path = resolve_model(model)  # builds the tiny model on first use (seconds, no video)
    config = _read_json(os.path.join(path, "transformer", "config.json"))
    if config:
        vae = _read_json(os.path.join(path, "vae", "config.json")) or {}
        blocks = len(vae.get("block_out_channels", [0, 0, 0, 0]))
        return DiTShape(layers=config["num_layers"],
                        hidden=config["num_attention_heads"] * config["attention_head_dim"],
                        text_tokens=config.get("max_text_seq_length", 226), patch=config.get("patch_size", 2),
                        patch_t=config.get("patch_size_t") or 1,
                        temporal_compression=config.get("temporal_compression_ratio", 4),
                        spatial_compression=2 ** (blocks - 1))
    lowered = model.lower()
    for piece, shape in KNOWN_DITS:
        if piece in lowered:
            return shape
    return None


@dataclass(frozen=True)
class UNetFlops:
    a: float  # FLOPs per latent pixel per frame
    b: float  # per latent pixel squared per frame
    t: float = 0.0  # per latent pixel per frame squared

    def forward(self, frames: int, height: int, width: int) -> float:
        pixels = (height // 8) * (width // 8)
        return frames * (self.a * pixels + self.b * pixels * pixels) + self.t * frames * frames * pixels


# Counted by benchmarks/flop_constants.py on the released architectures.
UNET_FLOPS: dict[str, UNetFlops] = {
    "sd15": UNetFlops(a=1.66532e8, b=7221.57),  # 0.80 TFLOP per 512x512 image
    "sdxl": UNetFlops(a=3.82117e8, b=1408.4),  # 6.6 TFLOP per 1024x1024 image
    "sdxl_video": UNetFlops(a=4.59464e8, b=1578.4),  # SDXL + temporal modules (conditioned chunk)
    "animatediff": UNetFlops(a=2.40875e8, b=7221.57, t=23360),  # SD 1.5 + MotionAdapter v1-5-2
    "svd": UNetFlops(a=2.79676e8, b=7390.6),  # SVD(-XT) UNet, 8 input channels
}


def cfg_passes(guidance_scale: float | None) -> int:
    return 2 if guidance_scale is not None and guidance_scale > 1.0 else 1


def strength_steps(steps: int, strength: float | None) -> int:
    """Denoising steps that run when starting from an input at `strength` (diffusers' get_timesteps)."""
    return steps if strength is None else min(int(steps * strength), steps)


# ---- per family: FLOPs of one row (None: no FLOP model for this row) -------------------------


def _cogvideox(row, kc: KindConfig) -> float | None:
    model = row.model or (kc.models.get("i2v", kc.model) if getattr(row, "mode", "t2v") == "i2v" else kc.model)
    shape = dit_shape(model)
    if shape is None:
        return None
    steps = strength_steps(row.num_inference_steps, getattr(row, "strength", None) if row.mode == "v2v" else None)
    return steps * cfg_passes(row.guidance_scale) * dit_forward_flops(shape, row.num_frames, row.height, row.width)


def _exvideo(row, kc: KindConfig) -> float | None:
    if row.base == "svd":  # SVD always guides (its guidance ramps from min to max over the frames)
        return row.num_inference_steps * 2 * UNET_FLOPS["svd"].forward(row.num_frames, row.height, row.width)
    shape = dit_shape(row.model or kc.model)
    if shape is None:
        return None
    return row.num_inference_steps * cfg_passes(row.guidance_scale) * dit_forward_flops(
        shape, row.num_frames, row.height, row.width)


def _animatediff(row, kc: KindConfig) -> float | None:
    frames = row.num_frames
    if row.free_noise is not None:  # overlapping context windows: more frames go through the UNet
        window = row.free_noise.context_length or row.motion_window or 16
        if frames > window:
            windows = math.ceil((frames - window) / row.free_noise.context_stride) + 1
            frames = windows * window
    steps = strength_steps(row.num_inference_steps, row.strength)
    per_forward = UNET_FLOPS["animatediff"].forward(frames, row.height, row.width)
    if row.mode == "controlnet":  # a ControlNet is the UNet's encoder half again
        per_forward *= 1.5
    return steps * cfg_passes(row.guidance_scale) * per_forward


def _deforum(row, kc: KindConfig) -> float | None:
    settings = row.settings
    cadence = max(1, int(settings["diffusion_cadence"])) if settings is not None else 1
    diffused = math.ceil(row.num_frames / cadence)
    # the first frame from noise, the others img2img at the strength schedule (0.65 by default)
    strength = float(settings.value_at("strength_schedule", 0)) if settings is not None else 0.65
    steps = row.num_inference_steps + (diffused - 1) * strength_steps(row.num_inference_steps, strength)
    return steps * cfg_passes(row.guidance_scale) * UNET_FLOPS["sd15"].forward(1, row.height, row.width)


def _sdxl_video(row, kc: KindConfig) -> float | None:
    per_chunk = UNET_FLOPS["sdxl_video"].forward(row.num_frames, row.height, row.width)
    return row.num_repeats * row.num_inference_steps * cfg_passes(row.guidance_scale) * per_chunk


FLOP_MODELS: dict[str, Callable[[Any, KindConfig], float | None]] = {
    "cogvideox": _cogvideox,
    "exvideo": _exvideo,
    "animatediff": _animatediff,
    "deforum": _deforum,
    "sdxl_video": _sdxl_video,
}


def row_flops(row, kc: KindConfig) -> float | None:
    """FLOPs to generate one validated row with its kind's config; None when unknown."""
    model = FLOP_MODELS.get(row.kind)
    if model is None:
        return None
    try:
        return model(row, kc)
    except Exception:  # noqa: BLE001 - a row the model cannot price is reported as unknown
        return None


def gpu_seconds(flops: float, peak_tflops: float, mfu: float) -> float:
    return flops / (peak_tflops * 1e12 * mfu)
