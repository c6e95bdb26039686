"""Tiny Deforum parts: a second SD 1.5 checkpoint (for checkpoint_schedule) beside tiny:sd15."""

from __future__ import annotations

from pathlib import Path

from raypipe.models.tiny import seeded, tiny_sd15_components


def build_sd15_b(path: Path) -> None:
    """tiny:sd15 with other random UNet weights: another checkpoint of the same layout, so that
    switching checkpoints (checkpoint_schedule) shows in the frames."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    components = tiny_sd15_components()
    seeded(41)
    components["unet"] = UNet2DConditionModel.from_config(components["unet"].config)
    StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(path)
