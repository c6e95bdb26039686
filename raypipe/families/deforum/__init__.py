"""Deforum: Stable Diffusion img2img animation driven by keyframe schedules (Deforum's own settings).

Deforum's animation language lives here without a model: keyframe schedules (schedule.py),
settings files and objects (settings.py), camera warps (warps.py), colour coherence (colour.py),
frame noise and anti-blur (noise.py), masks (masks.py), optical flow and hybrid video (flow.py),
ControlNet units (controlnet.py) and Parseq manifests (parseq.py); stage.py and render.py run
them on Stable Diffusion."""

from raypipe.config import ON_CPU
from raypipe.families import Family, register
from raypipe.families.animatediff.tiny import build_animatediff_controlnet
from raypipe.families.deforum.flops import deforum_flops
from raypipe.families.deforum.schema import DeforumRow
from raypipe.families.deforum.tiny import build_sd15_b
from raypipe.models.tiny import build_depth, build_sd15


def check_row(row, kind_config) -> None:
    """A validated row against kinds.deforum: the checkpoints and ControlNets it needs, and the
    Deforum features it turns on that raypipe does not implement (rejected unless
    options.allow_unimplemented is true)."""
    from raypipe.families.deforum.settings import check_run_config

    if row.settings is not None:
        check_run_config(row.settings, kind_config)


FAMILY = register(
    Family(
        kind="deforum",
        row=DeforumRow,
        stage="raypipe.families.deforum.stage:DeforumStage",
        config={
            # Stable Diffusion 1.5 (txt2img + img2img); the depth model animates 3D rows; the
            # ControlNets serve cn_N units by their preprocessor's kind.
            "model": "tiny:sd15",
            "models": {
                "depth": "tiny:depth",
                "controlnet_canny": "tiny:sd15-controlnet",
                "controlnet_depth": "tiny:sd15-controlnet",
            },
            **ON_CPU,
            # Below a row's Deforum settings (file, then `deforum` object), which win.
            "defaults": {"num_frames": 8, "height": 64, "width": 64, "num_inference_steps": 4, "fps": 8},
            # allow_unimplemented: render rows that turn on Deforum features raypipe does not
            # implement, without them (listed in params_json and the log); false: reject them.
            "options": {"allow_unimplemented": False},
        },
        tiny={
            "sd15": build_sd15,
            "sd15-b": build_sd15_b,
            "depth": build_depth,
            # the same ControlNet as AnimateDiff's (made from tiny:sd15's UNet)
            "sd15-controlnet": build_animatediff_controlnet,
        },
        flops=deforum_flops,
        check=check_row,
    )
)
