"""ExVideo's FLOP model: CogVideoX's transformer (base cogvideox) or SVD's UNet (base svd)."""

from __future__ import annotations

from raypipe.families.cogvideox.flops import dit_shape
from raypipe.flops import UNET_FLOPS, cfg_passes, dit_forward_flops


def exvideo_flops(row, kc) -> float | None:
    if row.base == "svd":  # SVD always guides (its guidance ramps from min to max over the frames)
        unet = UNET_FLOPS["exvideo_svd"]  # SVD's UNet with the extension's 3D convolutions
        return row.num_inference_steps * 2 * unet.forward(row.num_frames, row.height, row.width)
    shape = dit_shape(row.model or kc.model)
    if shape is None:
        return None
    return (
        row.num_inference_steps
        * cfg_passes(row.guidance_scale)
        * dit_forward_flops(shape, row.num_frames, row.height, row.width)
    )
