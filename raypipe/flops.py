"""FLOP formulas of the model families, for `raypipe plan` (raypipe/plan.py); each family's own
model (which formula, which shapes) is its raypipe/families/<kind>/flops.py.

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

UNets (Stable Diffusion 1.5 for deforum and animatediff, SDXL for sdxl_video, SVD with the
ExVideo-SVD extension for exvideo base svd): one forward over F frames of latent h x w (P = h*w pixels, h = H/8) is
    F * (a*P + b*P^2)  +  t * F^2 * P
a: convolutions, projections, MLPs and text cross-attention (linear in pixels); b: spatial
self-attention (quadratic); t: temporal attention across frames. The constants are counted
on the released architectures by benchmarks/flop_constants.py (meta device, no weights); a
`tiny:` model is priced as its full-size family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


def dit_forward_flops(shape: DiTShape, frames: int, height: int, width: int) -> float:
    """FLOPs of one transformer forward over a video of frames x height x width (formula above)."""
    latent_frames = (frames - 1) // shape.temporal_compression + 1
    patch_pixels = shape.spatial_compression * shape.patch
    per_frame = (height // patch_pixels) * (width // patch_pixels)
    n = shape.text_tokens + math.ceil(latent_frames / shape.patch_t) * per_frame
    d = shape.hidden
    return shape.layers * ((8 + 4 * shape.mlp_ratio) * n * d * d + 4 * n * n * d)


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
    "exvideo_svd": UNetFlops(a=3.64002e8, b=7390.6),  # SVD + ExVideo-SVD's 3D convolutions: +27% at 512 px
}


def cfg_passes(guidance_scale: float | None) -> int:
    return 2 if guidance_scale is not None and guidance_scale > 1.0 else 1


def strength_steps(steps: int, strength: float | None) -> int:
    """Denoising steps that run when starting from an input at `strength` (diffusers' get_timesteps)."""
    return steps if strength is None else min(int(steps * strength), steps)


def row_flops(row, kc: KindConfig) -> float | None:
    """FLOPs to generate one validated row with its kind's config; None when unknown."""
    from raypipe.families import family

    try:
        model = family(row.kind).flops
        return None if model is None else model(row, kc)
    except Exception:  # noqa: BLE001 - a row the model cannot price is reported as unknown
        return None


def gpu_seconds(flops: float, peak_tflops: float, mfu: float) -> float:
    return flops / (peak_tflops * 1e12 * mfu)
