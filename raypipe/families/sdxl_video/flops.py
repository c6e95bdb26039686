"""SDXL video's FLOP model: SDXL's UNet with temporal modules, once per chunk and step."""

from __future__ import annotations

from raypipe.flops import UNET_FLOPS, cfg_passes


def sdxl_video_flops(row, kc) -> float | None:
    per_chunk = UNET_FLOPS["sdxl_video"].forward(row.num_frames, row.height, row.width)
    return row.num_repeats * row.num_inference_steps * cfg_passes(row.guidance_scale) * per_chunk
