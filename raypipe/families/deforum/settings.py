"""Deforum settings: files and objects with Deforum's own key names, resolved for one row.

A `kind: deforum` row carries `deforum` (an object of Deforum keys) and/or `deforum_settings`
(the URI of a settings file saved by Deforum, JSON). The settings of a row are, each layer
replacing the keys of the one before:

    Deforum's own defaults (deforum_helpers/args.py)
    < the row's common fields: prompt, negative_prompt, num_frames, height, width,
      num_inference_steps, guidance_scale, fps (and the run config's defaults for them)
    < the `deforum_settings` file
    < the `deforum` object
    < a Parseq manifest (parseq_manifest), for the schedules it sets

Meaning, not keys: a feature counts when the settings turn it on (use_mask, cn_1_enabled,
hybrid_motion other than None, ...). The keys of a feature that is off are neither checked nor
reported, whatever they hold. A feature that is on and that raypipe implements is checked here,
at validation: a bad schedule, an unknown choice or a value out of range rejects the row with
"deforum.<key>: problem" (or "deforum_settings.<key>: problem" when the file holds it). A
feature that is on and that raypipe does not implement is listed in `unimplemented`: the family
rejects the row with that list unless the run config allows it (kinds.deforum.options.
allow_unimplemented: true), and then it renders without them and lists them in params_json.
Keys Deforum does not know are listed in `unknown_keys` (params_json), not run. Keys with no
effect on the frames (batch_name, show_info_on_ui, save_depth_maps, ...) are ignored.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raypipe.families.deforum import controlnet as cn
from raypipe.families.deforum.schedule import (
    Schedule,
    evaluate,
    evaluate_expression,
    evaluate_text,
    key_frame,
    parse,
    parse_text,
)

MODES = ("2D", "3D", "Video Input", "Interpolation")
CAMERA_MODES = ("2D", "3D")
FLOWS = ("None", "RAFT", "DIS Medium", "DIS Fine", "Farneback")
# Optical flow methods of Deforum's list that raypipe does not run, and why.
UNIMPLEMENTED_FLOWS = {
    "RAFT": "RAFT needs torchvision; use DIS Medium, DIS Fine or Farneback",
    "DenseRLOF": "needs opencv-contrib; use DIS Medium, DIS Fine or Farneback",
    "SF": "needs opencv-contrib; use DIS Medium, DIS Fine or Farneback",
    "DualTVL1": "needs opencv-contrib; use DIS Medium, DIS Fine or Farneback",
    "DeepFlow": "needs opencv-contrib; use DIS Medium, DIS Fine or Farneback",
    "PCAFlow": "needs opencv-contrib; use DIS Medium, DIS Fine or Farneback",
}

# Deforum's defaults (sd-webui-deforum, deforum_helpers/args.py) for every key raypipe implements.
DEFAULTS: dict[str, Any] = {
    "animation_mode": "2D",
    "max_frames": 120,
    "W": 512,
    "H": 512,
    "seed": -1,
    "sampler": "Euler a",
    "steps": 25,
    "fps": 15,
    "seed_behavior": "iter",
    "seed_iter_N": 1,
    "seed_schedule": '0:(s), 1:(-1), "max_f-2":(-1), "max_f-1":(s)',
    "prompts": {"0": ""},
    "positive_prompts": "",
    "negative_prompts": "",
    "use_init": False,
    "init_image": None,
    "strength": 0.8,
    "strength_0_no_init": True,
    "border": "replicate",
    "angle": "0: (0)",
    "zoom": "0: (1.0025+0.002*sin(1.25*3.14*t/30))",
    "translation_x": "0: (0)",
    "translation_y": "0: (0)",
    "translation_z": "0: (1.75)",
    "transform_center_x": "0: (0.5)",
    "transform_center_y": "0: (0.5)",
    "rotation_3d_x": "0: (0)",
    "rotation_3d_y": "0: (0)",
    "rotation_3d_z": "0: (0)",
    "fov_schedule": "0: (70)",
    "near_schedule": "0: (200)",
    "far_schedule": "0: (10000)",
    "aspect_ratio_schedule": "0: (1)",
    "aspect_ratio_use_old_formula": False,
    "padding_mode": "border",
    "sampling_mode": "bicubic",
    "use_depth_warping": True,
    "noise_schedule": "0: (0.065)",
    "strength_schedule": "0: (0.65)",
    "contrast_schedule": "0: (1.0)",
    "cfg_scale_schedule": "0: (7)",
    "enable_steps_scheduling": False,
    "steps_schedule": "0: (25)",
    "noise_type": "perlin",
    "perlin_w": 8,
    "perlin_h": 8,
    "perlin_octaves": 4,
    "perlin_persistence": 0.5,
    "color_coherence": "LAB",
    "diffusion_cadence": 2,
    "video_init_path": "",
    "extract_nth_frame": 1,
    "extract_from_frame": 0,
    "extract_to_frame": -1,
    # anti-blur: an unsharp mask of the warped frame (on by default in Deforum)
    "amount_schedule": "0: (0.1)",
    "kernel_schedule": "0: (5)",
    "sigma_schedule": "0: (1)",
    "threshold_schedule": "0: (0)",
    # A1111's initial noise multiplier of img2img (on by default in Deforum)
    "enable_noise_multiplier_scheduling": True,
    "noise_multiplier_schedule": "0: (1.05)",
    "reroll_blank_frames": "ignore",
    "reroll_patience": 10,
    # masks
    "use_mask": False,
    "mask_file": "",
    "invert_mask": False,
    "mask_contrast_adjust": 1.0,
    "mask_brightness_adjust": 1.0,
    "overlay_mask": True,
    "mask_overlay_blur": 4,
    "fill": 1,
    "full_res_mask": True,
    "full_res_mask_padding": 4,
    "use_noise_mask": False,
    "mask_schedule": '0: ("{video_mask}")',
    "noise_mask_schedule": '0: ("{video_mask}")',
    # perspective flip
    "enable_perspective_flip": False,
    "perspective_flip_theta": "0: (0)",
    "perspective_flip_phi": "0: (0)",
    "perspective_flip_gamma": "0: (0)",
    "perspective_flip_fv": "0: (53)",
    # checkpoints, by the names the run config gives them
    "enable_checkpoint_scheduling": False,
    "checkpoint_schedule": '0: ("model1.ckpt"), 100: ("model2.safetensors")',
    # optical flow
    "optical_flow_cadence": "None",
    "cadence_flow_factor_schedule": "0: (1)",
    "optical_flow_redo_generation": "None",
    "redo_flow_factor_schedule": "0: (1)",
    # hybrid video
    "hybrid_composite": "None",
    "hybrid_motion": "None",
    "hybrid_motion_use_prev_img": False,
    "hybrid_flow_method": "RAFT",
    "hybrid_flow_consistency": False,
    "hybrid_consistency_blur": 2,
    "hybrid_comp_mask_type": "None",
    "hybrid_comp_mask_inverse": False,
    "hybrid_comp_mask_equalize": "None",
    "hybrid_comp_mask_auto_contrast": False,
    "hybrid_use_init_image": False,
    "hybrid_use_first_frame_as_init_image": True,
    "hybrid_generate_human_masks": "None",
    "hybrid_comp_alpha_schedule": "0:(0.5)",
    "hybrid_comp_mask_blend_alpha_schedule": "0:(0.5)",
    "hybrid_comp_mask_contrast_schedule": "0:(1)",
    "hybrid_comp_mask_auto_contrast_cutoff_high_schedule": "0:(100)",
    "hybrid_comp_mask_auto_contrast_cutoff_low_schedule": "0:(0)",
    "hybrid_flow_factor_schedule": "0:(1)",
    # Parseq
    "parseq_manifest": "",
    "parseq_use_deltas": True,
    "parseq_non_schedule_overrides": True,
    # ControlNet units cn_1_* .. cn_5_*
    **{f"cn_{n}_{key}": value for n in cn.UNITS for key, value in cn.UNIT_DEFAULTS.items()},
}
IMPLEMENTED = frozenset(DEFAULTS)

HYBRID_SCHEDULES = (
    "hybrid_comp_alpha_schedule",
    "hybrid_comp_mask_blend_alpha_schedule",
    "hybrid_comp_mask_contrast_schedule",
    "hybrid_comp_mask_auto_contrast_cutoff_high_schedule",
    "hybrid_comp_mask_auto_contrast_cutoff_low_schedule",
    "hybrid_flow_factor_schedule",
)
SCHEDULES = (
    "angle",
    "zoom",
    "translation_x",
    "translation_y",
    "translation_z",
    "transform_center_x",
    "transform_center_y",
    "rotation_3d_x",
    "rotation_3d_y",
    "rotation_3d_z",
    "fov_schedule",
    "near_schedule",
    "far_schedule",
    "aspect_ratio_schedule",
    "noise_schedule",
    "strength_schedule",
    "contrast_schedule",
    "cfg_scale_schedule",
    "steps_schedule",
    "seed_schedule",
    "amount_schedule",
    "kernel_schedule",
    "sigma_schedule",
    "threshold_schedule",
    "noise_multiplier_schedule",
    "perspective_flip_theta",
    "perspective_flip_phi",
    "perspective_flip_gamma",
    "perspective_flip_fv",
    "cadence_flow_factor_schedule",
    "redo_flow_factor_schedule",
    *HYBRID_SCHEDULES,
    *(f"cn_{n}_{key}" for n in cn.UNITS for key in cn.SCHEDULE_KEYS),
)
TEXT_SCHEDULES = ("mask_schedule", "noise_mask_schedule", "checkpoint_schedule")
CHOICES: dict[str, tuple[str, ...]] = {
    "animation_mode": MODES,
    "border": ("replicate", "wrap"),
    "padding_mode": ("border", "reflection", "zeros"),
    "sampling_mode": ("bicubic", "bilinear", "nearest"),
    # Image and Video Input coherence are Deforum's, not implemented (reported)
    "color_coherence": ("None", "LAB", "HSV", "RGB", "Image", "Video Input"),
    "seed_behavior": ("iter", "fixed", "random", "ladder", "alternate", "schedule"),
    "noise_type": ("uniform", "perlin"),
    "reroll_blank_frames": ("ignore", "reroll", "interrupt"),
    "optical_flow_cadence": FLOWS,
    "optical_flow_redo_generation": FLOWS,
    "hybrid_composite": ("None", "Normal", "Before Motion", "After Generation"),
    "hybrid_motion": ("None", "Optical Flow", "Perspective", "Affine"),
    "hybrid_flow_method": ("RAFT", "DIS Medium", "DIS Fine", "Farneback", *UNIMPLEMENTED_FLOWS),
    "hybrid_comp_mask_type": ("None", "Depth", "Video Depth", "Blend", "Difference"),
    "hybrid_comp_mask_equalize": ("None", "Before", "After", "Both"),
    **{f"cn_{n}_resize_mode": cn.RESIZE_MODES for n in cn.UNITS},
    **{f"cn_{n}_control_mode": cn.CONTROL_MODES for n in cn.UNITS},
}
# key: (minimum, maximum)
INTS: dict[str, tuple[int, int]] = {
    "max_frames": (1, 100_000),
    "W": (8, 8192),
    "H": (8, 8192),
    "seed": (-1, 2**32 - 1),
    "steps": (1, 1000),
    "fps": (1, 240),
    "seed_iter_N": (1, 100_000),
    "perlin_octaves": (1, 7),
    "diffusion_cadence": (1, 200),
    "extract_nth_frame": (1, 100_000),
    "extract_from_frame": (0, 10**9),
    "extract_to_frame": (-1, 10**9),
    "reroll_patience": (1, 1000),
    "mask_overlay_blur": (0, 64),
    "full_res_mask_padding": (0, 4096),
    "hybrid_consistency_blur": (0, 64),
    **{f"cn_{n}_processor_res": (1, 8192) for n in cn.UNITS},
}
FLOATS: dict[str, tuple[float, float]] = {
    "strength": (0.0, 1.0),
    "perlin_w": (0.1, 64.0),
    "perlin_h": (0.1, 64.0),
    "perlin_persistence": (0.0, 1.0),
    "mask_contrast_adjust": (0.0, 100.0),
    "mask_brightness_adjust": (0.0, 100.0),
    **{f"cn_{n}_threshold_{ab}": (0.0, 1024.0) for n in cn.UNITS for ab in "ab"},
}
BOOLS = (
    "use_init",
    "strength_0_no_init",
    "aspect_ratio_use_old_formula",
    "use_depth_warping",
    "enable_steps_scheduling",
    "enable_noise_multiplier_scheduling",
    "use_mask",
    "invert_mask",
    "overlay_mask",
    "full_res_mask",
    "use_noise_mask",
    "enable_perspective_flip",
    "enable_checkpoint_scheduling",
    "hybrid_motion_use_prev_img",
    "hybrid_flow_consistency",
    "hybrid_comp_mask_inverse",
    "hybrid_comp_mask_auto_contrast",
    "hybrid_use_init_image",
    "hybrid_use_first_frame_as_init_image",
    "parseq_use_deltas",
    "parseq_non_schedule_overrides",
    *(f"cn_{n}_{key}" for n in cn.UNITS for key in ("enabled", "loopback_mode", "pixel_perfect", "low_vram")),
    *(f"cn_{n}_overwrite_frames" for n in cn.UNITS),
)
TEXTS = (
    "positive_prompts",
    "negative_prompts",
    "init_image",
    "video_init_path",
    "mask_file",
    "hybrid_generate_human_masks",
    *(f"cn_{n}_{key}" for n in cn.UNITS for key in ("module", "model", "vid_path", "mask_vid_path")),
)

# The keys each feature owns beyond its switch: checked only when the feature is on.
FEATURE_KEYS: dict[str, tuple[str, ...]] = {
    "mask": (
        "mask_file",
        "mask_schedule",
        "invert_mask",
        "mask_contrast_adjust",
        "mask_brightness_adjust",
        "overlay_mask",
        "mask_overlay_blur",
        "fill",
        "full_res_mask",
        "full_res_mask_padding",
    ),
    "noise_mask": ("mask_file", "noise_mask_schedule", "invert_mask", "mask_contrast_adjust", "mask_brightness_adjust"),
    "flip": ("perspective_flip_theta", "perspective_flip_phi", "perspective_flip_gamma", "perspective_flip_fv"),
    "checkpoints": ("checkpoint_schedule",),
    "noise_multiplier": ("noise_multiplier_schedule",),
    "flow_cadence": ("cadence_flow_factor_schedule",),
    "redo": ("redo_flow_factor_schedule",),
    "hybrid": (
        "hybrid_motion_use_prev_img",
        "hybrid_flow_method",
        "hybrid_flow_consistency",
        "hybrid_consistency_blur",
        "hybrid_comp_mask_type",
        "hybrid_comp_mask_inverse",
        "hybrid_comp_mask_equalize",
        "hybrid_comp_mask_auto_contrast",
        "hybrid_use_init_image",
        "hybrid_use_first_frame_as_init_image",
        "hybrid_generate_human_masks",
        *HYBRID_SCHEDULES,
        "video_init_path",
        "extract_nth_frame",
        "extract_from_frame",
        "extract_to_frame",
    ),
    "parseq": ("parseq_use_deltas", "parseq_non_schedule_overrides"),
    "reroll": ("reroll_patience",),
    **{f"cn_{n}": tuple(f"cn_{n}_{key}" for key in cn.UNIT_DEFAULTS if key != "enabled") for n in cn.UNITS},
}
FEATURE_OWNED = frozenset(key for keys in FEATURE_KEYS.values() for key in keys) - {
    "video_init_path",
    "extract_nth_frame",
    "extract_from_frame",
    "extract_to_frame",
}

# Deforum keys with no effect on the frames raypipe renders (UI, file output, Deforum's own
# bookkeeping), or served otherwise (depth_algorithm: the run config's models.depth).
INERT = frozenset(
    {
        "show_info_on_ui",
        "batch_name",
        "sd_model_name",
        "sd_model_hash",
        "deforum_git_commit_id",
        "skip_video_creation",
        "delete_imgs",
        "delete_input_frames",
        "image_path",
        "store_frames_in_ram",
        "save_depth_maps",
        "overwrite_extracted_frames",
        "hybrid_generate_inputframes",
        "hybrid_comp_save_extra_frames",
        "pix2pix_img_cfg_scale_schedule",  # only instruct-pix2pix checkpoints read it
        "depth_algorithm",
        "midas_weight",
        "init_image_box",
        "resume_timestring",
        "subseed_schedule",
        "subseed_strength_schedule",
        "sampler_schedule",
        "clipskip_schedule",
        "ddim_eta_schedule",
        "ancestral_eta_schedule",
        "color_coherence_image_path",
        "color_coherence_video_every_N_frames",
        "video_mask_path",
        "init_images",
        "image_strength_schedule",
        "blendFactorMax",
        "blendFactorSlope",
        "tweening_frames_schedule",
        "color_correction_factor",
        "soundtrack_path",
        "r_upscale_factor",
        "r_upscale_model",
        "r_upscale_keep_imgs",
        "frame_interpolation_x_amount",
        "frame_interpolation_slow_mo_enabled",
        "frame_interpolation_slow_mo_amount",
        "frame_interpolation_keep_imgs",
        "frame_interpolation_use_upscaled",
        "fetched_parseq_manifest_summary",
    }
)
# Deforum features raypipe does not implement: key -> (on, what): on(value) says whether the
# value turns it on (their helper keys are in INERT: they only count with the switch).
UNIMPLEMENTED_SWITCHES: dict[str, tuple[Any, str]] = {
    "tiling": (lambda v: v is True or str(v).lower() == "true", "seamless tiling"),
    "restore_faces": (lambda v: v is True or str(v).lower() == "true", "face restoration"),
    "seed_resize_from_w": (lambda v: _number(v) > 0, "seed resize"),
    "seed_resize_from_h": (lambda v: _number(v) > 0, "seed resize"),
    "use_alpha_as_mask": (lambda v: v is True or str(v).lower() == "true", "the init image's alpha as the mask"),
    "motion_preview_mode": (lambda v: v is True or str(v).lower() == "true", "motion preview (no diffusion)"),
    "resume_from_timestring": (lambda v: v is True or str(v).lower() == "true", "resuming a Deforum run"),
    "enable_subseed_scheduling": (lambda v: v is True or str(v).lower() == "true", "subseed scheduling"),
    "enable_sampler_scheduling": (lambda v: v is True or str(v).lower() == "true", "sampler scheduling"),
    "enable_clipskip_scheduling": (lambda v: v is True or str(v).lower() == "true", "CLIP skip scheduling"),
    "enable_ddim_eta_scheduling": (lambda v: v is True or str(v).lower() == "true", "DDIM eta scheduling"),
    "enable_ancestral_eta_scheduling": (lambda v: v is True or str(v).lower() == "true", "ancestral eta scheduling"),
    "color_force_grayscale": (lambda v: v is True or str(v).lower() == "true", "forced greyscale"),
    "legacy_colormatch": (lambda v: v is True or str(v).lower() == "true", "legacy colour match"),
    "diffusion_redo": (lambda v: _number(v) > 0, "diffusion redo"),
    "use_mask_video": (lambda v: v is True or str(v).lower() == "true", "a mask video"),
    "use_looper": (lambda v: v is True or str(v).lower() == "true", "Guided Images (looper)"),
    "make_gif": (lambda v: v is True or str(v).lower() == "true", "a GIF"),
    "add_soundtrack": (lambda v: str(v) not in ("None", "", "none"), "a soundtrack"),
    "r_upscale_video": (lambda v: v is True or str(v).lower() == "true", "Real-ESRGAN upscaling"),
    "frame_interpolation_engine": (lambda v: str(v) not in ("None", "", "none"), "frame interpolation"),
}
ALLOW_HINT = "set kinds.deforum.options.allow_unimplemented: true in the run config to render without them"


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


# Deforum / A1111 sampler names (case-insensitive) -> a diffusers scheduler and its options.
# None: no diffusers counterpart (the row is rejected). Where diffusers lacks the exact
# sampler the nearest one is used; params_json records the scheduler each video ran with.
_KARRAS = {"use_karras_sigmas": True}
_EXP = {"use_exponential_sigmas": True}
_SDE = {"algorithm_type": "sde-dpmsolver++"}
SAMPLERS: dict[str, tuple[str, dict[str, Any]] | None] = {
    "euler a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "lms karras": ("LMSDiscreteScheduler", _KARRAS),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "dpm2 karras": ("KDPM2DiscreteScheduler", _KARRAS),
    "dpm2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpm2 a karras": ("KDPM2AncestralDiscreteScheduler", _KARRAS),
    "dpm++ 2s a": ("DPMSolverSinglestepScheduler", {}),
    "dpm++ 2s a karras": ("DPMSolverSinglestepScheduler", _KARRAS),
    "dpm++ 2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++ 2m karras": ("DPMSolverMultistepScheduler", _KARRAS),
    "dpm++ sde": ("DPMSolverSDEScheduler", {}),
    "dpm++ sde karras": ("DPMSolverSDEScheduler", _KARRAS),
    "dpm++ 2m sde": ("DPMSolverMultistepScheduler", _SDE),
    "dpm++ 2m sde karras": ("DPMSolverMultistepScheduler", {**_SDE, **_KARRAS}),
    "dpm++ 2m sde exponential": ("DPMSolverMultistepScheduler", {**_SDE, **_EXP}),
    "dpm++ 2m sde heun": ("DPMSolverMultistepScheduler", {**_SDE, "solver_type": "heun"}),
    "dpm++ 2m sde heun karras": ("DPMSolverMultistepScheduler", {**_SDE, "solver_type": "heun", **_KARRAS}),
    "dpm++ 2m sde heun exponential": ("DPMSolverMultistepScheduler", {**_SDE, "solver_type": "heun", **_EXP}),
    "dpm++ 3m sde": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3}),
    "dpm++ 3m sde karras": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3, **_KARRAS}),
    "dpm++ 3m sde exponential": ("DPMSolverMultistepScheduler", {**_SDE, "solver_order": 3, **_EXP}),
    "ddim": ("DDIMScheduler", {}),
    "plms": ("PNDMScheduler", {"skip_prk_steps": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "dpm fast": None,
    "dpm adaptive": None,
    "restart": None,
}
# The names of the Deforum notebook (k-diffusion) settings files.
SAMPLER_ALIASES = {
    "klms": "lms",
    "euler_ancestral": "euler a",
    "dpm2_ancestral": "dpm2 a",
    "dpmpp_2s_a": "dpm++ 2s a",
    "dpmpp_2m": "dpm++ 2m",
    "dpmpp_sde": "dpm++ sde",
    "dpm_fast": "dpm fast",
    "dpm_adaptive": "dpm adaptive",
}

# The row's common fields that stand in for Deforum keys (layer 2 above).
COMMON_FIELDS = {
    "num_frames": "max_frames",
    "height": "H",
    "width": "W",
    "num_inference_steps": "steps",
    "fps": "fps",
    "negative_prompt": "negative_prompts",
}

_WEIGHT = re.compile(r"`([^`]*)`")  # Deforum's `expression` weights inside prompts


def sampler_scheduler(name: str) -> tuple[str, dict[str, Any]]:
    """(diffusers scheduler class name, options) of a Deforum sampler name; ValueError if none."""
    key = SAMPLER_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in SAMPLERS:
        known = ", ".join(sorted(k for k, v in SAMPLERS.items() if v))
        raise ValueError(f"unknown sampler {name!r} (known: {known})")
    target = SAMPLERS[key]
    if target is None:
        raise ValueError(
            f"sampler {name!r} has no diffusers counterpart; choose another (e.g. 'Euler a', 'DPM++ 2M Karras')"
        )
    return target


@functools.lru_cache(maxsize=64)
def read_text(uri: str) -> str:
    """The text at a URI (any fsspec URI), read once per process (rows share their files)."""
    import fsspec

    with fsspec.open(uri, "rt", encoding="utf-8") as f:
        return f.read()


def read_json(uri: str, where: str, what: str) -> Any:
    """The JSON at a URI (read once per process). ValueError "<where>: cannot read <uri>: ..." or
    "<where>: <what>: <the parser's message> at line N"."""
    try:
        text = read_text(uri)
    except Exception as err:  # noqa: BLE001 - any I/O failure rejects the row with the reason
        raise ValueError(f"{where}: cannot read {uri}: {type(err).__name__}: {err}") from None
    return parse_json(text, where, what)


def parse_json(text: str, where: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: {what}: {err.msg} at line {err.lineno}") from None


def read_settings_file(uri: str) -> dict[str, Any]:
    """A Deforum settings file (JSON, as Deforum saves it). ValueError 'deforum_settings: ...'."""
    data = read_json(uri, "deforum_settings", f"{uri} is not a Deforum settings file (JSON)")
    if not isinstance(data, dict):
        raise ValueError(f"deforum_settings: {uri} must hold a JSON object of Deforum keys")
    return data


# ---- checking values ----------------------------------------------------------------------


def _as_int(where: str, value: Any, low: int, high: int) -> int:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not number.is_integer():
        raise ValueError(f"{where}: must be an integer, got {value!r}")
    number = int(number)
    if not low <= number <= high:
        raise ValueError(f"{where}: must be between {low} and {high}, got {number}")
    return number


def _as_float(where: str, value: Any, low: float, high: float) -> float:
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not np.isfinite(number):
        raise ValueError(f"{where}: must be a number, got {value!r}")
    if not low <= number <= high:
        raise ValueError(f"{where}: must be between {low} and {high}, got {number}")
    return number


def _as_bool(where: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if value in (0, 1):
        return bool(value)
    raise ValueError(f"{where}: must be true or false, got {value!r}")


def _as_choice(where: str, value: Any, choices: tuple[str, ...]) -> str:
    if value is None and "None" in choices:
        return "None"
    for choice in choices:
        if isinstance(value, str) and value.strip().lower() == choice.lower():
            return choice
    raise ValueError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")


def _as_prompts(where: str, value: Any) -> dict[str, str]:
    if isinstance(value, str):
        try:
            loaded = json.loads(value)  # Deforum's UI keeps the prompts as JSON text
        except json.JSONDecodeError:
            loaded = None
        value = loaded if isinstance(loaded, dict) else {"0": value}
    if not isinstance(value, dict) or not value:
        raise ValueError(f'{where}: must be an object of frame: prompt, e.g. {{"0": "a cat", "30": "a dog"}}')
    prompts = {}
    for key, text in value.items():
        if not isinstance(text, str):
            raise ValueError(f"{where}: the prompt of frame {key!r} must be text, got {text!r}")
        prompts[str(key)] = text
    return prompts


FILLS = ("fill", "original", "latent noise", "latent nothing")


def _as_fill(where: str, value: Any) -> int:
    """Deforum's `fill`: the index of A1111's inpainting fill (0 fill, 1 original, ...), or its name."""
    if isinstance(value, str) and value.strip().lower() in FILLS:
        return FILLS.index(value.strip().lower())
    return _as_int(where, value, 0, 3)


def _convert(key: str, value: Any, where: str) -> Any:
    """One implemented key's value, checked and typed."""
    if key in SCHEDULES:
        return parse(value, where).text  # a bare number becomes "0:(number)"
    if key in TEXT_SCHEDULES:
        parse_text(value, where)
        return value
    if key in CHOICES:
        return _as_choice(where, value, CHOICES[key])
    if key in INTS:
        return _as_int(where, value, *INTS[key])
    if key in FLOATS:
        return _as_float(where, value, *FLOATS[key])
    if key in BOOLS:
        return _as_bool(where, value)
    if key in TEXTS:
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: must be text, got {value!r}")
        return (value or "").strip()
    if key == "fill":
        return _as_fill(where, value)
    if key == "prompts":
        return _as_prompts(where, value)
    if key == "parseq_manifest":
        if value in (None, ""):
            return ""
        if isinstance(value, dict):
            return value
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a Parseq manifest (JSON text or object) or its URI, got {value!r}")
        return value.strip()
    if key == "sampler":
        if not isinstance(value, str):
            raise ValueError(f"{where}: must be a sampler name, got {value!r}")
        try:
            sampler_scheduler(value)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        return value
    raise AssertionError(f"no type for Deforum key {key}")


@dataclass
class DeforumSettings:
    """A row's resolved Deforum settings: every implemented key, checked and typed."""

    values: dict[str, Any]
    schedules: dict[str, Schedule]
    unimplemented: list[str]
    seed: int  # the seed of frame 0 (Deforum's -1 replaced by the row's seed)
    max_frames_given: bool  # max_frames was set in the row's `deforum` object
    # key -> the layer it came from: "default", "row:<field>", "deforum_settings" or "deforum"
    sources: dict[str, str] = field(default_factory=dict)
    unknown_keys: list[str] = field(default_factory=list)
    # the implemented features the settings turn on: mask, noise_mask, flip, checkpoints,
    # noise_multiplier, flow_cadence, redo, hybrid, parseq, reroll, cn_1 .. cn_5
    features: frozenset[str] = frozenset()
    units: tuple[cn.Unit, ...] = ()
    parseq: Any = None  # raypipe.families.deforum.parseq.Parseq

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def mode(self) -> str:
        return self.values["animation_mode"]

    def on(self, feature: str) -> bool:
        return feature in self.features

    def where(self, key: str) -> str:
        return _where(self.sources, key)

    # ---- per-frame values ------------------------------------------------------------------

    def value_at(self, name: str, frame: int, frames: int | None = None) -> float:
        """One schedule's value at one frame (over max_frames frames unless told)."""
        return float(self.series(frames or self.values["max_frames"], (name,))[name][frame])

    def series(self, frames: int, names: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Every schedule in effect (or those named) evaluated over `frames` frames (Deforum's
        DeformAnimKeys), with the Parseq manifest's values where it sets them."""
        names = self.schedules if names is None else names
        out = {name: evaluate(self.schedules[name], frames, self.seed) for name in names}
        if self.parseq is not None:
            for name in out:
                values = self.parseq.series(name, frames)
                if values is not None:
                    out[name] = values
        return out

    def text_series(self, name: str, frames: int) -> list[str]:
        """A text schedule (mask_schedule, noise_mask_schedule, checkpoint_schedule) per frame."""
        return evaluate_text(self.values[name], frames, self.seed, self.where(name))

    def prompt_keyframes(self, frames: int) -> list[tuple[int, str]]:
        """(frame, full Deforum prompt text) in frame order; a later key for a frame wins."""
        by_frame: dict[int, str] = {}
        for key, text in self.values["prompts"].items():
            by_frame[key_frame(key, frames, self.seed, self.where("prompts"))] = text
        return sorted(by_frame.items())

    def prompt_at(self, text: str, frame: int, frames: int) -> tuple[str, str]:
        """(positive, negative) of one keyframe's prompt at `frame`, as Deforum composes it:
        positive_prompts + prompt + negative_prompts after `--neg`, `expressions` evaluated."""
        pos_extra, neg_extra = self.values["positive_prompts"], self.values["negative_prompts"].replace("--neg", "")
        return self._split_prompt(f"{pos_extra} {text} {'' if '--neg' in text else '--neg'} {neg_extra}", frame, frames)

    def _split_prompt(self, full: str, frame: int, frames: int) -> tuple[str, str]:
        where = self.where("prompts")
        full = _WEIGHT.sub(lambda m: f"{evaluate_expression(m.group(1), frame, frames, self.seed, where):g}", full)
        positive, _, negative = full.partition("--neg")
        return positive.strip(), negative.replace("--neg", " ").strip()

    def prompt_for_frame(self, frame: int, frames: int) -> tuple[str, str]:
        """The prompt in effect at `frame` (the last keyframe at or before it; the first before
        any), or the Parseq manifest's deforum_prompt of the frame (used as written)."""
        parseq_prompts = self.parseq.prompts(frames) if self.parseq is not None else None
        if parseq_prompts is not None:
            return self._split_prompt(parseq_prompts[frame], frame, frames)
        keys = self.prompt_keyframes(frames)
        text = keys[0][1]
        for start, key_text in keys:
            if start <= frame:
                text = key_text
        return self.prompt_at(text, frame, frames)

    def checkpoints(self, frames: int) -> list[str]:
        """The checkpoint name of each frame (checkpoint_schedule), or [] when it is off."""
        return self.text_series("checkpoint_schedule", frames) if self.on("checkpoints") else []

    def summary(self) -> dict[str, Any]:
        """What params_json records: the implemented settings in effect (the keys of features
        that are off left out)."""
        off = {key for feature, keys in FEATURE_KEYS.items() if feature not in self.features for key in keys}
        off -= {key for feature in self.features for key in FEATURE_KEYS[feature]}
        off |= {f"cn_{n}_enabled" for n in cn.UNITS if f"cn_{n}" not in self.features}
        values = {k: v for k, v in self.values.items() if k not in off}
        if isinstance(values.get("parseq_manifest"), dict) or len(str(values.get("parseq_manifest", ""))) > 200:
            values["parseq_manifest"] = "(inline manifest)"
        return dict(sorted(values.items()))


def _where(sources: dict[str, str], key: str) -> str:
    """How an error names a key: the row field it came from, else deforum[_settings].<key>."""
    source = sources.get(key, "default")
    if source.startswith("row:"):
        return source[4:]
    return f"{'deforum' if source in ('default', 'parseq_manifest') else source}.{key}"


def _features(values: dict[str, Any]) -> set[str]:
    """The implemented features the (typed) switches turn on."""
    camera = values["animation_mode"] in CAMERA_MODES
    on = {f"cn_{n}" for n in cn.UNITS if values[f"cn_{n}_enabled"]}
    switches = {
        "mask": values["use_mask"],
        "noise_mask": values["use_noise_mask"],
        "flip": values["enable_perspective_flip"] and camera,
        "checkpoints": values["enable_checkpoint_scheduling"],
        "noise_multiplier": values["enable_noise_multiplier_scheduling"],
        "flow_cadence": values["optical_flow_cadence"] != "None" and camera and values["diffusion_cadence"] > 1,
        "redo": values["optical_flow_redo_generation"] != "None" and camera,
        "hybrid": camera and (values["hybrid_composite"] != "None" or values["hybrid_motion"] != "None"),
        "parseq": bool(values["parseq_manifest"]),
        "reroll": values["reroll_blank_frames"] != "ignore",
    }
    return on | {name for name, is_on in switches.items() if is_on}


class _Report:
    """The unimplemented features a row turns on, as 'where value: why' lines."""

    def __init__(self, sources: dict[str, str]):
        self.sources, self.lines = sources, []

    def __call__(self, key: str, value: Any, why: str) -> None:
        self.lines.append(f"{_where(self.sources, key)} {value!r}: {why}")


def _unimplemented(merged: dict[str, Any], values: dict[str, Any], on: set[str], report: _Report) -> None:
    """Report what the settings turn on that raypipe does not implement, and turn it off in
    `values` / `on` (a row the run config allows renders without it)."""
    for key, (is_on, what) in UNIMPLEMENTED_SWITCHES.items():
        if key in merged and is_on(merged[key]):
            report(key, merged[key], f"{what} is not implemented")
    if values["color_coherence"] in ("Image", "Video Input"):
        report("color_coherence", values["color_coherence"], "colour coherence to an image or video is not implemented")
        values["color_coherence"] = "None"
    depth_algorithm = str(merged.get("depth_algorithm", ""))
    if values["animation_mode"] == "3D" and values["use_depth_warping"] and "(old)" in depth_algorithm.lower():
        report("depth_algorithm", depth_algorithm, "Deforum's legacy AdaBins warp is not implemented")
    if "mask" in on and values["fill"] >= 2:
        report("fill", values["fill"], f"mask fill {FILLS[values['fill']]!r} is not implemented (fill 0 or 1)")
        values["fill"] = 1
    for switch, feature in (("optical_flow_cadence", "flow_cadence"), ("optical_flow_redo_generation", "redo")):
        if feature in on and values[switch] in UNIMPLEMENTED_FLOWS:
            report(switch, values[switch], UNIMPLEMENTED_FLOWS[values[switch]])
            values[switch] = "None"
            on.discard(feature)
    if "hybrid" in on:
        if values["hybrid_motion"] == "Optical Flow":
            if values["hybrid_flow_method"] in UNIMPLEMENTED_FLOWS:
                method = values["hybrid_flow_method"]
                report("hybrid_flow_method", method, UNIMPLEMENTED_FLOWS[method])
                values["hybrid_motion"] = "None"
            elif values["hybrid_flow_consistency"]:
                report("hybrid_flow_consistency", True, "the flow consistency check is not implemented")
                values["hybrid_flow_consistency"] = False
        if values["hybrid_composite"] != "None" and values["hybrid_comp_mask_type"] in ("Depth", "Video Depth"):
            mask_type = values["hybrid_comp_mask_type"]
            report("hybrid_comp_mask_type", mask_type, "depth composite masks are not implemented (Blend, Difference)")
            values["hybrid_comp_mask_type"] = "None"
        if values["hybrid_generate_human_masks"] not in ("", "None"):
            human = values["hybrid_generate_human_masks"]
            report("hybrid_generate_human_masks", human, "human masks are not implemented")
        if values["hybrid_composite"] == "None" and values["hybrid_motion"] == "None":
            on.discard("hybrid")
    for n in cn.UNITS:
        if f"cn_{n}" not in on:
            continue
        module, model = values[f"cn_{n}_module"], values[f"cn_{n}_model"]
        if cn.kind_of(module, model) is None:
            why = (
                f"ControlNet preprocessor {module!r} is not implemented (canny, depth, depth_midas, depth_leres, "
                "depth_zoe, depth_anything, or none with a canny or depth model)"
            )
            report(f"cn_{n}_module", module, why)
            on.discard(f"cn_{n}")
            continue
        if values[f"cn_{n}_control_mode"] != "Balanced":
            mode = values[f"cn_{n}_control_mode"]
            report(f"cn_{n}_control_mode", mode, "ControlNet control modes other than Balanced are not implemented")
            values[f"cn_{n}_control_mode"] = "Balanced"
        if values[f"cn_{n}_mask_vid_path"]:
            report(
                f"cn_{n}_mask_vid_path", values[f"cn_{n}_mask_vid_path"], "ControlNet mask videos are not implemented"
            )
    for name, feature in (("mask_schedule", "mask"), ("noise_mask_schedule", "noise_mask")):
        if feature in on and re.search(r"<[^>]*>", values[name]):
            report(name, values[name], "word masks (<...>, CLIPSeg) are not implemented")
            values[name] = DEFAULTS[name]


def resolve(
    deforum: dict[str, Any] | None, settings_uri: str | None, common: dict[str, Any], row_seed: int
) -> DeforumSettings:
    """The settings of one row (see the module doc). ValueError names the key."""
    from raypipe.families.deforum import parseq as parseq_module
    from raypipe.families.deforum.masks import MaskError, files_of, parse_expression

    merged: dict[str, Any] = dict(DEFAULTS)
    sources: dict[str, str] = dict.fromkeys(DEFAULTS, "default")
    for name, key in COMMON_FIELDS.items():
        if common.get(name) not in (None, ""):
            merged[key], sources[key] = common[name], f"row:{name}"
    if common.get("prompt"):
        merged["prompts"], sources["prompts"] = {"0": common["prompt"]}, "row:prompt"
    if common.get("guidance_scale") is not None:
        merged["cfg_scale_schedule"] = f"0: ({float(common['guidance_scale'])})"
        sources["cfg_scale_schedule"] = "row:guidance_scale"
    for source, layer in (
        ("deforum_settings", read_settings_file(settings_uri) if settings_uri else {}),
        ("deforum", deforum or {}),
    ):
        for key, value in layer.items():
            merged[key], sources[key] = value, source

    # The switches and the keys every row uses first; a feature's own keys only when it is on.
    values: dict[str, Any] = {}
    for key in DEFAULTS:
        if key not in FEATURE_OWNED:
            values[key] = _convert(key, merged[key], _where(sources, key))
    on = _features(values)
    for feature in sorted(on):
        for key in FEATURE_KEYS[feature]:
            values[key] = _convert(key, merged[key], _where(sources, key))
    for key in DEFAULTS:
        values.setdefault(key, DEFAULTS[key])  # an off feature's keys: Deforum's defaults, never read
    report = _Report(sources)
    _unimplemented(merged, values, on, report)

    # Stable Diffusion sizes are multiples of 8; Deforum rounds down the same way.
    values["W"], values["H"] = values["W"] - values["W"] % 8, values["H"] - values["H"] % 8
    parseq = None
    if "parseq" in on:
        where = _where(sources, "parseq_manifest")
        parseq = parseq_module.Parseq.from_manifest(
            parseq_module.load(values["parseq_manifest"], where), values["parseq_use_deltas"]
        )
        if values["parseq_non_schedule_overrides"]:
            for key, value in (
                ("max_frames", parseq.frame_count),
                ("fps", parseq.options.get("output_fps")),
                ("diffusion_cadence", parseq.options.get("cadence")),
            ):
                if value:
                    values[key] = _as_int(f"{where} ({key})", value, *INTS[key])
                    sources[key] = "parseq_manifest"
        if parseq.manages("subseed_strength") and np.any(parseq.series("subseed_strength", parseq.frame_count)):
            report("parseq_manifest", "subseed_strength", "Parseq's subseed variation is not implemented")
    _check_inputs(values, sources, common, on)

    seed = row_seed if values["seed"] == -1 else values["seed"]
    frames = values["max_frames"]
    schedules: dict[str, Schedule] = {}
    owned_off = {key for feature, keys in FEATURE_KEYS.items() if feature not in on for key in keys}
    owned_on = {key for feature in on for key in FEATURE_KEYS[feature]}
    for key in SCHEDULES:
        if key in owned_off and key not in owned_on:
            continue
        schedules[key] = parse(values[key], _where(sources, key))
        evaluate(schedules[key], frames, seed)  # evaluation errors (1/0, ...) reject the row now
    settings = DeforumSettings(
        values=values,
        schedules=schedules,
        unimplemented=report.lines,
        seed=seed,
        max_frames_given=bool(deforum) and "max_frames" in deforum,
        sources=sources,
        unknown_keys=sorted(
            k for k in merged if k not in IMPLEMENTED and k not in INERT and k not in UNIMPLEMENTED_SWITCHES
        ),
        features=frozenset(on),
        parseq=parseq,
    )
    # Prompt keys and `weights` are checked now too.
    for frame, text in settings.prompt_keyframes(frames):
        settings.prompt_at(text, max(frame, 0), frames)
    wanted = ("kernel_schedule", "amount_schedule")
    wanted += tuple(
        f"{unit}_{end}" for unit in sorted(on) if unit.startswith("cn_") for end in ("guidance_start", "guidance_end")
    )
    _check_series(settings, settings.series(frames, wanted), frames)
    for name, feature in (("mask_schedule", "mask"), ("noise_mask_schedule", "noise_mask")):
        if feature in on:
            for text in set(settings.text_series(name, frames)):
                try:
                    tree = parse_expression(text, settings.where(name))
                except MaskError as err:
                    raise ValueError(str(err)) from None
                if "{video_mask}" in text and not values["mask_file"]:
                    raise ValueError(f"{settings.where('mask_file')}: {{video_mask}} in {name} needs mask_file (a URI)")
                files_of(tree)
    if "checkpoints" in on:
        for name in set(settings.checkpoints(frames)):
            if not name:
                raise ValueError(f"{settings.where('checkpoint_schedule')}: a keyframe names no checkpoint")
    settings.units = tuple(_unit(n, values) for n in cn.UNITS if f"cn_{n}" in on)
    return settings


def _check_inputs(values: dict[str, Any], sources: dict[str, str], common: dict[str, Any], on: set[str]) -> None:
    """The inputs the settings need are named: videos, init images, masks."""
    mode = values["animation_mode"]
    if values["extract_to_frame"] != -1 and values["extract_to_frame"] < values["extract_from_frame"]:
        raise ValueError(f"{_where(sources, 'extract_to_frame')}: must be -1 or at least extract_from_frame")
    if common.get("video") and mode != "Video Input" and "hybrid" not in on:
        raise ValueError(f"video: only used by animation_mode 'Video Input' and hybrid video (this row is {mode})")
    # hybrid video composites with init_image instead with hybrid_use_init_image: no video then, unless it moves
    hybrid_video = "hybrid" in on and not (values["hybrid_use_init_image"] and values["hybrid_motion"] == "None")
    needs_video = "Video Input" if mode == "Video Input" else "hybrid video" if hybrid_video else ""
    if needs_video and not values["video_init_path"] and not common.get("video"):
        raise ValueError(f"video: {needs_video} needs the input video (the row's `video` or deforum.video_init_path)")
    if values["use_init"] and not values["init_image"]:
        raise ValueError(f"{_where(sources, 'use_init')}: true needs init_image (a URI)")
    if "hybrid" in on and values["hybrid_use_init_image"] and not values["init_image"]:
        raise ValueError(f"{_where(sources, 'hybrid_use_init_image')}: true needs init_image (a URI)")
    if "mask" in on and not values["mask_file"]:
        raise ValueError(f"{_where(sources, 'use_mask')}: true needs mask_file (a URI)")


def _check_series(settings: DeforumSettings, series: dict[str, np.ndarray], frames: int) -> None:
    """Per-frame values Deforum's functions would fail on, caught now."""
    if settings.mode in CAMERA_MODES:
        kernels = series["kernel_schedule"].astype(int)
        bad = np.flatnonzero((series["amount_schedule"] > 0) & ((kernels < 1) | (kernels % 2 == 0)))
        if bad.size:
            frame = int(bad[0])
            raise ValueError(
                f"{settings.where('kernel_schedule')}: the anti-blur kernel must be an odd number of pixels where "
                f"amount_schedule > 0, got {kernels[frame]} at frame {frame}"
            )
    for unit in (n for n in cn.UNITS if settings.on(f"cn_{n}")):
        start, end = series[f"cn_{unit}_guidance_start"], series[f"cn_{unit}_guidance_end"]
        bad = np.flatnonzero((start < 0) | (end > 1) | (start > end))
        if bad.size:
            raise ValueError(
                f"{settings.where(f'cn_{unit}_guidance_start')}: guidance start and end must be fractions of the steps "
                f"with start <= end, got {start[bad[0]]:g} and {end[bad[0]]:g} at frame {int(bad[0])}"
            )


def _unit(number: int, values: dict[str, Any]) -> cn.Unit:
    prefix = f"cn_{number}"
    return cn.Unit(
        number=number,
        module=values[f"{prefix}_module"],
        model=values[f"{prefix}_model"],
        kind=cn.kind_of(values[f"{prefix}_module"], values[f"{prefix}_model"]) or "",
        processor_res=values[f"{prefix}_processor_res"],
        threshold_a=values[f"{prefix}_threshold_a"],
        threshold_b=values[f"{prefix}_threshold_b"],
        resize_mode=values[f"{prefix}_resize_mode"],
        loopback=values[f"{prefix}_loopback_mode"],
        pixel_perfect=values[f"{prefix}_pixel_perfect"],
        source="" if values[f"{prefix}_loopback_mode"] else values[f"{prefix}_vid_path"],
    )


def check_run_config(settings: DeforumSettings, kind_config: Any) -> list[str]:
    """What a row's settings need from the run config (kinds.deforum): ValueError for a model it
    lacks or unimplemented features it does not allow; the features allowed (to log)."""
    options = kind_config.options or {}
    models = kind_config.models or {}
    frames = settings["max_frames"]
    for name in sorted(set(settings.checkpoints(frames))):
        if checkpoint_model(name, models) is None:
            raise ValueError(
                f"{settings.where('checkpoint_schedule')}: checkpoint {name!r} is not in the run config "
                f'(kinds.deforum.models: {{"checkpoint:{name}": <folder or hub id>}})'
            )
    for unit in settings.units:
        if not models.get(cn.role(unit.kind)):
            raise ValueError(
                f"{settings.where(f'{unit.prefix}_module')}: {unit.prefix} ({unit.kind}) needs a ControlNet in the run "
                f"config (kinds.deforum.models.{cn.role(unit.kind)})"
            )
    if settings.unimplemented and options.get("allow_unimplemented") is not True:
        raise ValueError(
            "deforum: turns on Deforum features raypipe does not implement: "
            + "; ".join(settings.unimplemented)
            + f" ({ALLOW_HINT})"
        )
    return list(settings.unimplemented)


def checkpoint_model(name: str, models: dict[str, str]) -> str | None:
    """The run config's model for a checkpoint_schedule name: models["checkpoint:<name>"], the name
    with or without its .ckpt / .safetensors suffix (as Deforum finds the closest checkpoint)."""
    stem = re.sub(r"\.(ckpt|safetensors)$", "", name.strip())
    for key, model in models.items():
        if key.startswith("checkpoint:"):
            other = key[len("checkpoint:") :].strip()
            if other in (name, stem) or re.sub(r"\.(ckpt|safetensors)$", "", other) == stem:
                return model
    return None


# ---- seeds ---------------------------------------------------------------------------------


def frame_seeds(settings: DeforumSettings, diffused_frames: list[int], frames: int) -> dict[int, int]:
    """The seed of each diffused frame under seed_behavior, as Deforum's next_seed advances it
    (once per diffused frame), or the seed_schedule's (behavior `schedule`, or a Parseq
    manifest's seeds). `random`, and -1 in a seed_schedule, draw from a generator
    seeded by the row's seed, so that a row renders the same video on every run."""
    behavior = settings["seed_behavior"]
    rng = np.random.default_rng(settings.seed)
    parseq_seeds = settings.parseq is not None and settings.parseq.manages("seed_schedule")
    # A Parseq manifest's seeds are the seeds (Deforum's manages_seed), whatever seed_behavior says.
    schedule = settings.series(frames)["seed_schedule"] if behavior == "schedule" or parseq_seeds else None
    seed, internal, out = settings.seed, 0, {}
    for frame in diffused_frames:
        if schedule is not None:
            value = int(schedule[frame])
            seed = int(rng.integers(0, 2**32)) if value == -1 else value
        out[frame] = seed % 2**32
        if behavior == "iter":
            seed += 1 if internal % settings["seed_iter_N"] == 0 else 0
            internal += 1
        elif behavior == "ladder":
            seed += 2 if internal == 0 else -1
            internal = 1 - internal
        elif behavior == "alternate":
            seed += 1 if internal == 0 else -1
            internal = 1 - internal
        elif behavior == "random":
            seed = int(rng.integers(0, 2**32))
    return out
