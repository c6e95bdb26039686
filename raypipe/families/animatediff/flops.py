"""AnimateDiff's FLOP model: SD 1.5's UNet with the motion modules (raypipe/flops.py, UNetFlops)."""

from __future__ import annotations

import math

from raypipe.flops import UNET_FLOPS, cfg_passes, strength_steps


def animatediff_flops(row, kc) -> float | None:
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
