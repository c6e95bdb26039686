"""The `animatediff` row: SD 1.5 + a motion adapter; t2v, v2v and ControlNet modes, FreeNoise long clips."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from raypipe.schema import LoraSpec, RowBase, check_positive, check_size_multiple, require_prompt


class FreeNoiseSpec(BaseModel):
    """FreeNoise (diffusers' `enable_free_noise`): the motion modules attend over sliding windows
    of `context_length` frames, `context_stride` frames apart, and the noise of later windows is a
    shuffle of the first one's, so a clip may be longer than the motion adapter's window."""

    model_config = ConfigDict(extra="forbid")

    # Frames per window; default: the motion adapter's window (the row's motion_window).
    context_length: int | None = Field(default=None, ge=1)
    context_stride: int = Field(default=4, ge=1)
    weighting_scheme: Literal["pyramid", "flat", "delayed_reverse_sawtooth"] = "pyramid"
    noise_type: Literal["shuffle_context", "repeat_context", "random"] = "shuffle_context"


class AnimateDiffRow(RowBase):
    """AnimateDiff (raypipe/families/animatediff/stage.py): a Stable Diffusion 1.5 model animated by a
    motion adapter. `mode`: t2v (text only), v2v (re-noise the input `video` by `strength`),
    controlnet (`control` maps of the input `video` steer a new video; with `strength` the input
    video is also the starting point, as in v2v).

    `lora` and `motion_lora` are both lists of {path, weight} and load the same way (diffusers'
    load_lora_weights puts each key where the file says: motion modules, spatial UNet layers or the
    text encoder); `motion_lora` is where camera-move LoRAs go by convention, `lora` image/style
    LoRAs. `motion_lora: "path"` is short for [{"path": "path", "weight": 1.0}].

    `motion_window` is the motion adapter's window (its max positional length, motion_max_seq_length)
    and comes from the config's `defaults`, so that a clip longer than it without `free_noise` is
    rejected here; the stage checks again against the adapter it loaded.
    """

    kind: Literal["animatediff"]
    mode: Literal["t2v", "v2v", "controlnet"] = "t2v"
    # A prompt, or prompt travel (needs free_noise): {"0": "...", "32": "..."}, frame index -> prompt;
    # the text embeddings are interpolated linearly between keyframes.
    prompt: str | dict[str, str] = ""
    video: str | None = None
    # v2v (default 0.8) and controlnet with an input video as the starting point: how much is re-noised.
    strength: float | None = Field(default=None, gt=0.0, le=1.0)
    control: Literal["canny", "depth"] | None = None
    # ControlNet conditioning scale (default 1.0).
    control_scale: float | None = Field(default=None, ge=0.0, le=10.0)
    motion_lora: list[LoraSpec] = Field(default_factory=list)
    free_noise: FreeNoiseSpec | None = None
    motion_window: int | None = Field(default=None, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_type(cls, value):
        if not isinstance(value, (str, dict)):
            raise ValueError(f"must be a string or a dict of frame index -> prompt, got {type(value).__name__}")
        return value

    @field_validator("motion_lora", mode="before")
    @classmethod
    def _motion_lora_shorthand(cls, value):
        return [{"path": value}] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _animatediff_checks(self):
        check_positive("num_frames", self.num_frames)
        check_size_multiple(self, 8)  # the VAE's 8x downsampling
        self._check_mode()
        self._check_frames()
        if isinstance(self.prompt, dict):
            self.prompt = self._travel_prompt(self.prompt)
        paths = [spec.path for spec in (*self.lora, *self.motion_lora)]
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            raise ValueError(f"motion_lora: {', '.join(repeated)} given more than once (in lora or motion_lora)")
        if self.mode == "t2v":
            require_prompt(self, "t2v")
        return self

    def _check_mode(self) -> None:
        needs_video = self.mode in ("v2v", "controlnet")
        if needs_video and not (self.video or "").strip():
            raise ValueError(f"video: required for mode {self.mode} (a video URI)")
        if not needs_video and self.video is not None:
            raise ValueError("video: only for mode v2v or controlnet")
        if self.mode == "t2v" and self.strength is not None:
            raise ValueError("strength: only for mode v2v or controlnet")
        if self.mode == "controlnet" and self.control is None:
            raise ValueError("control: required for mode controlnet (canny or depth)")
        if self.mode != "controlnet":
            if self.control is not None:
                raise ValueError("control: only for mode controlnet")
            if self.control_scale is not None:
                raise ValueError("control_scale: only for mode controlnet")
        if self.mode == "v2v" and self.strength is None:
            self.strength = 0.8  # diffusers' default

    def _check_frames(self) -> None:
        frames, window, spec = self.num_frames, self.motion_window, self.free_noise
        if spec is None:
            if frames is not None and window is not None and frames > window:
                raise ValueError(
                    f"num_frames: {frames} frames is longer than the motion adapter's window of {window} frames; "
                    f'set free_noise (e.g. "free_noise": {{"context_length": {window}, "context_stride": 4}}) '
                    f"to generate long clips"
                )
            return
        if spec.context_length is None:
            spec.context_length = window  # still None when the window is not known here
        length = spec.context_length
        if length is None:
            return
        if window is not None and length > window:
            raise ValueError(
                f"free_noise.context_length: {length} is longer than the motion adapter's window of {window} frames"
            )
        if frames is not None and length > frames:
            raise ValueError(f"free_noise.context_length: {length} is longer than the clip (num_frames {frames})")
        if spec.context_stride > length:
            raise ValueError(
                f"free_noise.context_stride: must not exceed context_length ({length}), got {spec.context_stride}"
            )

    def _travel_prompt(self, prompt: dict[str, str]) -> dict[str, str]:
        if self.free_noise is None:
            raise ValueError("prompt: a dict of frame prompts (prompt travel) needs free_noise")
        travel = {}
        for key, text in prompt.items():
            try:
                frame = int(key)
            except ValueError:
                raise ValueError(f"prompt: keys are frame indices (0, 16, ...), got {key!r}") from None
            if frame < 0 or (self.num_frames is not None and frame >= self.num_frames):
                raise ValueError(f"prompt: frame {frame} is outside the clip (0..{(self.num_frames or 1) - 1})")
            travel[frame] = text
        if 0 not in travel:
            raise ValueError('prompt: prompt travel needs a prompt for frame "0"')
        return {str(frame): travel[frame] for frame in sorted(travel)}
