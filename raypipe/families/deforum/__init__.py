"""Deforum: Stable Diffusion img2img animation driven by keyframe schedules (Deforum's own settings).

Deforum's animation language lives here without a model: keyframe schedules (schedule.py),
settings files and objects (settings.py), camera warps (warps.py), colour coherence (colour.py)
and frame noise (noise.py); stage.py runs them on Stable Diffusion."""

from raypipe.config import ON_CPU
from raypipe.families import Family, register
from raypipe.families.deforum.flops import deforum_flops
from raypipe.families.deforum.schema import DeforumRow
from raypipe.models.tiny import build_depth, build_sd15

FAMILY = register(
    Family(
        kind="deforum",
        row=DeforumRow,
        stage="raypipe.families.deforum.stage:DeforumStage",
        config={
            # Stable Diffusion 1.5 (txt2img + img2img); the depth model animates 3D rows.
            "model": "tiny:sd15",
            "models": {"depth": "tiny:depth"},
            **ON_CPU,
            # Below a row's Deforum settings (file, then `deforum` object), which win.
            "defaults": {"num_frames": 8, "height": 64, "width": 64, "num_inference_steps": 4, "fps": 8},
        },
        tiny={"sd15": build_sd15, "depth": build_depth},
        flops=deforum_flops,
    )
)
