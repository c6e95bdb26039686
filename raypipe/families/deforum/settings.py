"""Deforum settings: files and objects with Deforum's own key names, resolved for one row.

A `kind: deforum` row carries `deforum` (an object of Deforum keys) and/or `deforum_settings`
(the URI of a settings file saved by Deforum, JSON). The settings of a row are, each layer
replacing the keys of the one before:

    Deforum's own defaults (for the keys raypipe implements)
    < the row's common fields: prompt, negative_prompt, num_frames, height, width,
      num_inference_steps, guidance_scale, fps (and the run config's defaults for them)
    < the `deforum_settings` file
    < the row's `deforum` object

Keys raypipe does not implement are kept, listed in `unimplemented` (they go into the
row's metadata, params_json "deforum_unimplemented"); they are never run nor dropped
silently. Values of implemented keys are checked here, at validation: a bad schedule, an
unknown sampler or a value out of range rejects the row with "deforum.<key>: problem"
(or "deforum_settings.<key>: problem" when the file holds it).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raypipe.families.deforum.schedule import Schedule, evaluate, evaluate_expression, key_frame, parse

MODES = ("2D", "3D", "Video Input", "Interpolation")

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
}
IMPLEMENTED = frozenset(DEFAULTS)

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
)
CHOICES: dict[str, tuple[str, ...]] = {
    "animation_mode": MODES,
    "border": ("replicate", "wrap"),
    "padding_mode": ("border", "reflection", "zeros"),
    "sampling_mode": ("bicubic", "bilinear", "nearest"),
    "color_coherence": ("None", "LAB", "HSV", "RGB"),
    "seed_behavior": ("iter", "fixed", "random", "ladder", "alternate", "schedule"),
    "noise_type": ("uniform", "perlin"),
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
}
FLOATS: dict[str, tuple[float, float]] = {
    "strength": (0.0, 1.0),
    "perlin_w": (0.1, 64.0),
    "perlin_h": (0.1, 64.0),
    "perlin_persistence": (0.0, 1.0),
}
BOOLS = (
    "use_init",
    "strength_0_no_init",
    "aspect_ratio_use_old_formula",
    "use_depth_warping",
    "enable_steps_scheduling",
)
TEXTS = ("positive_prompts", "negative_prompts", "init_image", "video_init_path")

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
def _read_settings_text(uri: str) -> str:
    import fsspec

    with fsspec.open(uri, "rt", encoding="utf-8") as f:
        return f.read()


def read_settings_file(uri: str) -> dict[str, Any]:
    """A Deforum settings file (JSON, as Deforum saves it). ValueError 'deforum_settings: ...'."""
    try:
        text = _read_settings_text(uri)
    except Exception as err:  # noqa: BLE001 - any I/O failure rejects the row with the reason
        raise ValueError(f"deforum_settings: cannot read {uri}: {type(err).__name__}: {err}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"deforum_settings: {uri} is not a Deforum settings file (JSON): {err.msg} at line {err.lineno}"
        ) from None
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

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def mode(self) -> str:
        return self.values["animation_mode"]

    def where(self, key: str) -> str:
        return _where(self.sources, key)

    # ---- per-frame values ------------------------------------------------------------------

    def value_at(self, name: str, frame: int, frames: int | None = None) -> float:
        """One schedule's value at one frame (over max_frames frames unless told)."""
        return float(evaluate(self.schedules[name], frames or self.values["max_frames"], self.seed)[frame])

    def series(self, frames: int) -> dict[str, np.ndarray]:
        """Every schedule evaluated over `frames` frames (Deforum's DeformAnimKeys)."""
        return {name: evaluate(schedule, frames, self.seed) for name, schedule in self.schedules.items()}

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
        full = f"{pos_extra} {text} {'' if '--neg' in text else '--neg'} {neg_extra}"
        where = self.where("prompts")
        full = _WEIGHT.sub(lambda m: f"{evaluate_expression(m.group(1), frame, frames, self.seed, where):g}", full)
        positive, _, negative = full.partition("--neg")
        return positive.strip(), negative.replace("--neg", " ").strip()

    def prompt_for_frame(self, frame: int, frames: int) -> tuple[str, str]:
        """The prompt in effect at `frame` (the last keyframe at or before it; the first before any)."""
        keys = self.prompt_keyframes(frames)
        text = keys[0][1]
        for start, key_text in keys:
            if start <= frame:
                text = key_text
        return self.prompt_at(text, frame, frames)

    def summary(self) -> dict[str, Any]:
        """What params_json records: the implemented settings as used."""
        return dict(sorted(self.values.items()))


def _where(sources: dict[str, str], key: str) -> str:
    """How an error names a key: the row field it came from, else deforum[_settings].<key>."""
    source = sources.get(key, "default")
    if source.startswith("row:"):
        return source[4:]
    return f"{'deforum' if source == 'default' else source}.{key}"


def resolve(
    deforum: dict[str, Any] | None, settings_uri: str | None, common: dict[str, Any], row_seed: int
) -> DeforumSettings:
    """The settings of one row (see the module doc). ValueError names the key."""
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

    values: dict[str, Any] = {}
    for key in DEFAULTS:
        where, value = _where(sources, key), merged[key]
        if key in SCHEDULES:
            values[key] = parse(value, where).text  # a bare number becomes "0:(number)"
        elif key in CHOICES:
            values[key] = _as_choice(where, value, CHOICES[key])
        elif key in INTS:
            values[key] = _as_int(where, value, *INTS[key])
        elif key in FLOATS:
            values[key] = _as_float(where, value, *FLOATS[key])
        elif key in BOOLS:
            values[key] = _as_bool(where, value)
        elif key in TEXTS:
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{where}: must be text, got {value!r}")
            values[key] = value or ""
        elif key == "prompts":
            values[key] = _as_prompts(where, value)
        elif key == "sampler":
            if not isinstance(value, str):
                raise ValueError(f"{where}: must be a sampler name, got {value!r}")
            try:
                sampler_scheduler(value)
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
            values[key] = value
    # Stable Diffusion sizes are multiples of 8; Deforum rounds down the same way.
    values["W"], values["H"] = values["W"] - values["W"] % 8, values["H"] - values["H"] % 8
    if values["extract_to_frame"] != -1 and values["extract_to_frame"] < values["extract_from_frame"]:
        raise ValueError(f"{_where(sources, 'extract_to_frame')}: must be -1 or at least extract_from_frame")
    if common.get("video") and values["animation_mode"] != "Video Input":
        raise ValueError(f"video: only used by animation_mode 'Video Input' (this row is {values['animation_mode']})")
    if values["animation_mode"] == "Video Input" and not values["video_init_path"] and not common.get("video"):
        raise ValueError("video: Video Input needs the input video (the row's `video` or deforum.video_init_path)")
    if values["use_init"] and not values["init_image"]:
        raise ValueError(f"{_where(sources, 'use_init')}: true needs init_image (a URI)")

    seed = row_seed if values["seed"] == -1 else values["seed"]
    frames = values["max_frames"]
    schedules: dict[str, Schedule] = {}
    for key in SCHEDULES:
        schedules[key] = parse(values[key], _where(sources, key))
        evaluate(schedules[key], frames, seed)  # evaluation errors (1/0, ...) reject the row now
    settings = DeforumSettings(
        values=values,
        schedules=schedules,
        unimplemented=sorted(k for k in merged if k not in IMPLEMENTED),
        seed=seed,
        max_frames_given=bool(deforum) and "max_frames" in deforum,
        sources=sources,
    )
    # Prompt keys and `weights` are checked now too.
    for frame, text in settings.prompt_keyframes(frames):
        settings.prompt_at(text, max(frame, 0), frames)
    return settings


# ---- seeds ---------------------------------------------------------------------------------


def frame_seeds(settings: DeforumSettings, diffused_frames: list[int], frames: int) -> dict[int, int]:
    """The seed of each diffused frame under seed_behavior, as Deforum's next_seed advances it
    (once per diffused frame). `random`, and -1 in a seed_schedule, draw from a generator
    seeded by the row's seed, so that a row renders the same video on every run."""
    behavior = settings["seed_behavior"]
    rng = np.random.default_rng(settings.seed)
    schedule = settings.series(frames)["seed_schedule"] if behavior == "schedule" else None
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
