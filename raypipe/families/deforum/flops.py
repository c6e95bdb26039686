"""Deforum's FLOP model: SD 1.5 UNet passes per diffused frame and step, plus the ControlNets."""

from __future__ import annotations

from raypipe.flops import UNET_FLOPS, cfg_passes, strength_steps


def deforum_flops(row, kc) -> float | None:
    settings = row.settings
    frames, steps = row.num_frames, row.num_inference_steps
    if settings is None:
        return steps * cfg_passes(row.guidance_scale) * UNET_FLOPS["sd15"].forward(1, row.height, row.width)
    cadence = max(1, int(settings["diffusion_cadence"])) if settings.mode in ("2D", "3D") else 1
    strengths = settings.series(frames)["strength_schedule"]
    diffused = range(0, frames, cadence)
    # frame 0 from noise (or its init image), the others img2img at 1 - strength_schedule; a
    # Video Input frame is img2img of its video frame; Interpolation frames are all from noise
    first = steps
    if settings.mode == "Video Input":
        first = strength_steps(steps, 1.0 - float(strengths[0]))
    elif settings["use_init"]:
        first = strength_steps(steps, 1.0 - settings["strength"])
    total = first
    for frame in diffused[1:]:
        if settings.mode == "Interpolation":
            total += steps
        else:
            passes = strength_steps(steps, 1.0 - float(strengths[frame]))
            total += passes * (2 if settings.on("redo") else 1)  # the redo's throwaway diffusion
    # a ControlNet is the UNet's encoder half again
    per_forward = UNET_FLOPS["sd15"].forward(1, row.height, row.width) * (1 + 0.5 * len(settings.units))
    return total * cfg_passes(row.guidance_scale) * per_forward
