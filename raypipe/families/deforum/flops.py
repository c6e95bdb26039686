"""Deforum's FLOP model: one SD 1.5 UNet pass per diffused frame and step."""

from __future__ import annotations

import math

from raypipe.flops import UNET_FLOPS, cfg_passes, strength_steps


def deforum_flops(row, kc) -> float | None:
    settings = row.settings
    cadence = max(1, int(settings["diffusion_cadence"])) if settings is not None else 1
    diffused = math.ceil(row.num_frames / cadence)
    # the first frame from noise, the others img2img at the strength schedule (0.65 by default)
    strength = float(settings.value_at("strength_schedule", 0)) if settings is not None else 0.65
    steps = row.num_inference_steps + (diffused - 1) * strength_steps(row.num_inference_steps, strength)
    return steps * cfg_passes(row.guidance_scale) * UNET_FLOPS["sd15"].forward(1, row.height, row.width)
