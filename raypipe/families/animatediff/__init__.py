"""AnimateDiff: Stable Diffusion 1.5 animated by a motion adapter (motion LoRAs, ControlNet, FreeNoise)."""

from raypipe.config import ON_CPU
from raypipe.families import Family, register
from raypipe.families.animatediff.flops import animatediff_flops
from raypipe.families.animatediff.schema import AnimateDiffRow
from raypipe.families.animatediff.tiny import (
    build_animatediff_controlnet,
    build_animatediff_motion_adapter,
    build_motion_lora,
)
from raypipe.models.tiny import build_depth, build_sd15

FAMILY = register(
    Family(
        kind="animatediff",
        row=AnimateDiffRow,
        stage="raypipe.families.animatediff.stage:AnimateDiffStage",
        config={
            # `model` is the Stable Diffusion 1.5 base that the motion adapter animates.
            "model": "tiny:sd15",
            "models": {
                "motion_adapter": "tiny:animatediff-motion-adapter",
                "controlnet_canny": "tiny:animatediff-controlnet",
                "controlnet_depth": "tiny:animatediff-controlnet",
                "depth_estimator": "tiny:depth",
            },
            **ON_CPU,
            # motion_window: the motion adapter's window (motion_max_seq_length), so that validation
            # rejects longer clips without free_noise; keep it equal to the adapter's.
            "defaults": {
                "num_frames": 16,
                "height": 64,
                "width": 64,
                "num_inference_steps": 4,
                "guidance_scale": 7.5,
                "fps": 8,
                "motion_window": 16,
            },
            "options": {"scheduler": "ddim"},
        },
        tiny={
            "sd15": build_sd15,
            "depth": build_depth,
            "animatediff-motion-adapter": build_animatediff_motion_adapter,
            "animatediff-controlnet": build_animatediff_controlnet,
            "motion-lora": build_motion_lora,
        },
        flops=animatediff_flops,
    )
)
