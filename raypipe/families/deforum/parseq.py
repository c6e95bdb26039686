"""Parseq manifests (parseq_manifest): per-frame values rendered by Parseq (sd-parseq) that replace
Deforum's schedules, as Deforum's ParseqAdapter applies them.

A manifest is JSON, inline in parseq_manifest or at a URI (any fsspec URI, http too). Its
`rendered_frames` hold one object per frame; a field is Parseq's when the first frame defines
it. The motion fields (angle, zoom, translation_x/y/z, rotation_3d_x/y/z, perspective flip
theta/phi/gamma) are read from their `<field>_delta` values when parseq_use_deltas is on
(Deforum moves the frame by each frame's value, Parseq's deltas are those moves). Other Deforum
schedules map to Parseq's names (noise, strength, contrast, scale, seed, fov, near, far,
antiblur_*), the rest by the schedule's name without `_schedule`. `deforum_prompt` replaces the
prompts (`positive --neg negative`, used as written), `seed` the seeds. With
parseq_non_schedule_overrides the manifest also sets max_frames (its frame count), fps
(options.output_fps) and diffusion_cadence (options.cadence).

Where Deforum leaves a frame the manifest skips empty (NaN), raypipe holds the frame before's
value; frames past the manifest's last hold its last value (as Deforum).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MOTION = (
    "angle",
    "zoom",
    "translation_x",
    "translation_y",
    "translation_z",
    "rotation_3d_x",
    "rotation_3d_y",
    "rotation_3d_z",
    "perspective_flip_theta",
    "perspective_flip_phi",
    "perspective_flip_gamma",
)
# raypipe's schedule key -> Parseq's field (the others: the key without "_schedule").
NAMES = {
    "noise_schedule": "noise",
    "strength_schedule": "strength",
    "contrast_schedule": "contrast",
    "cfg_scale_schedule": "scale",
    "seed_schedule": "seed",
    "fov_schedule": "fov",
    "near_schedule": "near",
    "far_schedule": "far",
    "kernel_schedule": "antiblur_kernel",
    "sigma_schedule": "antiblur_sigma",
    "amount_schedule": "antiblur_amount",
    "threshold_schedule": "antiblur_threshold",
    "steps_schedule": "steps_schedule",
}


def load(value: Any, where: str) -> dict[str, Any]:
    """The manifest of parseq_manifest (JSON text, an object, or a URI). ValueError names `where`."""
    if isinstance(value, dict):
        data = value
    else:
        from raypipe.families.deforum.settings import parse_json, read_json

        text, what = str(value).strip(), "not a Parseq manifest (JSON)"
        data = parse_json(text, where, what) if text.startswith("{") else read_json(text, where, what)
    frames = data.get("rendered_frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise ValueError(f"{where}: a Parseq manifest needs `rendered_frames`, a list of per-frame objects")
    for i, frame in enumerate(frames):
        number = frame.get("frame")
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0 or number != int(number):
            raise ValueError(f"{where}: rendered_frames[{i}] has no frame number (`frame`: 0, 1, ...)")
    return data


@dataclass
class Parseq:
    """A loaded manifest, as the settings use it."""

    rendered: list[dict[str, Any]]
    use_deltas: bool
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, data: dict[str, Any], use_deltas: bool) -> Parseq:
        rendered = sorted(data["rendered_frames"], key=lambda f: f["frame"])
        return cls(rendered, use_deltas, data.get("options") or {})

    def field_of(self, key: str) -> str:
        if key in MOTION:
            return f"{key}_delta" if self.use_deltas else key
        return NAMES.get(key, key.removesuffix("_schedule"))

    def manages(self, key: str) -> bool:
        return self.rendered[0].get(self.field_of(key)) is not None

    @property
    def frame_count(self) -> int:
        return len(self.rendered)

    def series(self, key: str, frames: int) -> np.ndarray | None:
        """The schedule `key` over `frames` frames from the manifest; None if it does not set it."""
        name = self.field_of(key)
        if self.rendered[0].get(name) is None:
            return None
        values = np.full(frames, np.nan)
        for frame in self.rendered:
            if int(frame["frame"]) < frames and frame.get(name) is not None:
                values[int(frame["frame"])] = float(frame[name])
        last = float(self.rendered[-1].get(name, values[~np.isnan(values)][-1]))
        values[int(self.rendered[-1]["frame"]) + 1 :] = last
        for i in range(1, frames):  # a frame the manifest skips holds the one before
            if np.isnan(values[i]):
                values[i] = values[i - 1]
        return values

    def prompts(self, frames: int) -> list[str] | None:
        """deforum_prompt of each frame, held as `series`; None if the manifest has none."""
        if not isinstance(self.rendered[0].get("deforum_prompt"), str):
            return None
        by_frame = {
            int(f["frame"]): f["deforum_prompt"] for f in self.rendered if isinstance(f.get("deforum_prompt"), str)
        }
        out, current = [], by_frame[min(by_frame)]
        for i in range(frames):
            current = by_frame.get(i, current)
            out.append(current)
        return out
