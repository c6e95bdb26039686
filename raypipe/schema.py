"""Manifest rows (one pydantic model per kind) and the metadata row.

A row is validated once, on a CPU worker, before any model sees it. Unknown fields
are errors (`extra="forbid"`), so a typo such as `num_frame` is reported, not ignored.
To add a model family: add its row model here, list it in `RowModel`, and add its
stage file (see raypipe/stages/__init__.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal, Union

import pyarrow as pa
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError, field_validator,
                      model_validator)

ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def seed_from_id(row_id: str) -> int:
    """The default seed: stable across runs and machines (unlike Python's hash())."""
    return int.from_bytes(hashlib.sha256(row_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str
    weight: float = 1.0


class RowBase(BaseModel):
    """Fields every kind shares (DESIGN.md, 'Manifest rows')."""

    model_config = ConfigDict(extra="forbid", frozen=False)

    id: str
    kind: str
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int | None = Field(default=None, ge=1, le=240)
    num_inference_steps: int | None = Field(default=None, ge=1, le=1000)
    guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0)
    model: str | None = None
    lora: list[LoraSpec] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id_pattern(cls, v: str) -> str:
        if not ID_PATTERN.match(v):
            raise ValueError(f"must match [A-Za-z0-9._-]{{1,128}}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _default_seed(self):
        if self.seed is None:
            self.seed = seed_from_id(self.id)
        return self


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")


def _check_cogvideox_shapes(row: RowBase, max_frames: int, limit_note: str) -> None:
    _check_positive("num_frames", row.num_frames)
    # CogVideoX's VAE compresses time by 4: frame counts are 4k+1 and the transformer
    # (patch_size_t in 1.5) wants an even latent count; the model cards use 8k+1.
    if row.num_frames is not None and (row.num_frames - 1) % 8 != 0:
        raise ValueError(f"num_frames: must be 8k+1 (9, 17, 25, 33, 41, 49, ...), got {row.num_frames}")
    if row.num_frames is not None and row.num_frames > max_frames:
        raise ValueError(f"num_frames: at most {max_frames} {limit_note}, got {row.num_frames}")
    for name in ("height", "width"):
        value = getattr(row, name)
        _check_positive(name, value)
        if value is not None and value % 16 != 0:
            raise ValueError(f"{name}: must be a multiple of 16, got {value}")


def _only_for(row: RowBase, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if getattr(row, name) is not None:
            raise ValueError(f"{name}: only for {where}")


class CogVideoXRow(RowBase):
    """CogVideoX (raypipe/stages/cogvideox.py): `t2v` from the prompt; `i2v` from the prompt and
    `image` (the first frame; the config's image-to-video model); `v2v` re-noises `video` by
    `strength` and denoises it toward the prompt. Up to 49 frames (longer: kind exvideo)."""

    kind: Literal["cogvideox"]
    mode: Literal["t2v", "i2v", "v2v"] = "t2v"
    # i2v: the first frame (any fsspec URI), resized to height x width.
    image: str | None = None
    # v2v: the input video (any fsspec URI), sampled to num_frames and resized.
    video: str | None = None
    # v2v: how much of the video is re-noised, (0, 1]; 1 keeps only its colours' layout. Default 0.8.
    strength: float | None = Field(default=None, gt=0.0, le=1.0)
    sp_degree: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _cogvideox_shapes(self):
        _check_cogvideox_shapes(self, 49, "for CogVideoX (longer videos: kind exvideo, up to 129)")
        if self.mode == "i2v" and not self.image:
            raise ValueError("image: required for mode i2v (the URI of the first frame)")
        if self.mode == "v2v" and not self.video:
            raise ValueError("video: required for mode v2v (the URI of the input video)")
        if self.mode != "i2v":
            _only_for(self, ("image",), "mode i2v")
        if self.mode != "v2v":
            _only_for(self, ("video", "strength"), "mode v2v")
        if self.mode == "v2v":
            if self.strength is None:
                self.strength = 0.8
            if self.num_inference_steps is not None and int(self.num_inference_steps * self.strength) < 1:
                raise ValueError(f"strength: {self.strength} of {self.num_inference_steps} steps runs no step; "
                                 f"raise strength or num_inference_steps")
        return self


# ExVideo's frame limits and, per base, the size and length a row gets when neither it nor the
# run config's defaults say (the released models' own).
EXVIDEO_MAX_FRAMES = {"cogvideox": 129, "svd": 128}
EXVIDEO_BASE_DEFAULTS = {
    "cogvideox": {"num_frames": 129, "height": 480, "width": 720, "num_inference_steps": 50, "guidance_scale": 6.0,
                  "fps": 8},
    "svd": {"num_frames": 128, "height": 512, "width": 512, "num_inference_steps": 50, "guidance_scale": 2.0,
            "fps": 30},
}
SVD_FIELDS = ("motion_bucket_id", "noise_aug_strength", "min_guidance_scale")


class ExVideoRow(RowBase):
    """ExVideo (raypipe/stages/exvideo.py): long videos from post-tuned models. `base: cogvideox`:
    CogVideoX text-to-video with the ExVideo LoRA, 8k+1 frames up to 129. `base: svd`: Stable
    Video Diffusion image-to-video (`image`) with the ExVideo-SVD extension, up to 128 frames."""

    kind: Literal["exvideo"]
    base: Literal["cogvideox", "svd"] = "cogvideox"
    # svd: the conditioning image (any fsspec URI), resized to height x width.
    image: str | None = None
    sp_degree: int = Field(default=1, ge=1, le=64)
    # svd only: SVD's motion conditioning (default 127), the noise added to the conditioning
    # image (default 0.02), and the classifier-free guidance at the first frame (default 1.0;
    # it rises linearly to guidance_scale at the last frame).
    motion_bucket_id: int | None = Field(default=None, ge=0, le=1023)
    noise_aug_strength: float | None = Field(default=None, ge=0.0, le=1.0)
    min_guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _exvideo_checks(self):
        for name, value in EXVIDEO_BASE_DEFAULTS[self.base].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.base == "cogvideox":
            _check_cogvideox_shapes(self, EXVIDEO_MAX_FRAMES["cogvideox"], "for ExVideo-CogVideoX")
            _only_for(self, ("image", *SVD_FIELDS), "base svd")
            return self
        if not self.image:
            raise ValueError("image: required for base svd (the URI of the conditioning image)")
        if self.sp_degree > 1:
            raise ValueError("sp_degree: sequence parallelism runs base cogvideox only")
        if self.lora:
            raise ValueError("lora: LoRAs apply to base cogvideox only")
        if not 2 <= self.num_frames <= EXVIDEO_MAX_FRAMES["svd"]:
            limit = EXVIDEO_MAX_FRAMES["svd"]
            raise ValueError(f"num_frames: from 2 to {limit} for ExVideo-SVD, got {self.num_frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % 64 != 0:
                raise ValueError(f"{name}: must be a positive multiple of 64 for base svd, got {value}")
        return self


class DeforumRow(RowBase):
    """Deforum: `deforum` (a settings object with Deforum's own key names) and/or
    `deforum_settings` (the URI of a Deforum settings file), resolved and checked here by
    raypipe/deforum/settings.py. The effective frame count, size, steps, seed, fps and
    prompts are written back into the common fields, so the metadata shows what ran."""

    kind: Literal["deforum"]
    deforum: dict[str, Any] = Field(default_factory=dict)
    deforum_settings: str | None = None
    # Video Input: the input video (any fsspec URI); else the settings' video_init_path.
    video: str | None = None
    _settings: Any = PrivateAttr(default=None)

    @property
    def mode(self) -> str:
        return self._settings.mode if self._settings is not None else ""

    @property
    def settings(self):
        """The resolved raypipe.deforum.settings.DeforumSettings."""
        return self._settings

    @model_validator(mode="after")
    def _resolve_deforum(self):
        from raypipe.deforum.settings import resolve

        if self.lora:
            raise ValueError("lora: not supported by kind deforum")
        common = {name: getattr(self, name) for name in ("prompt", "negative_prompt", "num_frames", "height",
                                                         "width", "num_inference_steps", "guidance_scale", "fps",
                                                         "video")}
        try:
            settings = resolve(self.deforum, self.deforum_settings, common, self.seed)
        except ValueError:
            raise
        except Exception as err:  # noqa: BLE001 - anything unexpected still rejects just this row
            raise ValueError(f"deforum: {type(err).__name__}: {err}") from None
        self._settings = settings
        self.num_frames, self.height, self.width = settings["max_frames"], settings["H"], settings["W"]
        self.num_inference_steps, self.fps, self.seed = settings["steps"], settings["fps"], settings.seed
        cfg = settings.value_at("cfg_scale_schedule", 0)
        if 0.0 <= cfg <= 100.0:
            self.guidance_scale = cfg
        # Prompts from the settings (file or object) go into the metadata's prompt columns.
        if settings.sources["prompts"] in ("deforum", "deforum_settings"):
            self.prompt = json.dumps(settings["prompts"], ensure_ascii=False)
        if settings.sources["negative_prompts"] in ("deforum", "deforum_settings"):
            self.negative_prompt = settings["negative_prompts"]
        return self


class SDXLVideoRow(RowBase):
    """SDXL video by chunks (raypipe/stages/sdxl_video.py): `num_repeats` chunks of `num_frames`
    frames each, every chunk conditioned on the last `num_conditioning_frames` latents made so far
    (or on the init `image`); the video has num_repeats * num_frames frames."""

    kind: Literal["sdxl_video"]
    num_repeats: int = Field(default=2, ge=1, le=1000)
    num_conditioning_frames: int = Field(default=2, ge=1)
    # Scales the temporal conditioner's residual: 0 ignores the previous frames.
    conditioning_strength: float = Field(default=1.0, ge=0.0, le=10.0)
    # Init image (any fsspec URI): encoded and repeated as the first conditioning latents.
    image: str | None = None

    @property
    def mode(self) -> str:
        return "i2v" if self.image else "t2v"

    @model_validator(mode="after")
    def _sdxl_video_chunks(self):
        _check_positive("num_frames", self.num_frames)
        if self.num_frames is not None and self.num_conditioning_frames > self.num_frames:
            raise ValueError(f"num_conditioning_frames: must not exceed num_frames ({self.num_frames}), "
                             f"got {self.num_conditioning_frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            _check_positive(name, value)
            if value is not None and value % 8 != 0:  # the VAE's 8x downsampling
                raise ValueError(f"{name}: must be a multiple of 8, got {value}")
        if self.image is not None and not self.image.strip():
            raise ValueError("image: must be a URI, got an empty string")
        return self


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
    """AnimateDiff (raypipe/stages/animatediff.py): a Stable Diffusion 1.5 model animated by a
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
        _check_positive("num_frames", self.num_frames)
        for name in ("height", "width"):
            value = getattr(self, name)
            _check_positive(name, value)
            if value is not None and value % 8 != 0:  # the VAE's 8x downsampling
                raise ValueError(f"{name}: must be a multiple of 8, got {value}")
        self._check_mode()
        self._check_frames()
        if isinstance(self.prompt, dict):
            self.prompt = self._travel_prompt(self.prompt)
        paths = [spec.path for spec in (*self.lora, *self.motion_lora)]
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            raise ValueError(f"motion_lora: {', '.join(repeated)} given more than once (in lora or motion_lora)")
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
                    f"set free_noise (e.g. \"free_noise\": {{\"context_length\": {window}, \"context_stride\": 4}}) "
                    f"to generate long clips")
            return
        if spec.context_length is None:
            spec.context_length = window  # still None when the window is not known here
        length = spec.context_length
        if length is None:
            return
        if window is not None and length > window:
            raise ValueError(f"free_noise.context_length: {length} is longer than the motion adapter's window of "
                             f"{window} frames")
        if frames is not None and length > frames:
            raise ValueError(f"free_noise.context_length: {length} is longer than the clip (num_frames {frames})")
        if spec.context_stride > length:
            raise ValueError(f"free_noise.context_stride: must not exceed context_length ({length}), "
                             f"got {spec.context_stride}")

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
            raise ValueError("prompt: prompt travel needs a prompt for frame \"0\"")
        return {str(frame): travel[frame] for frame in sorted(travel)}


# Every kind raypipe knows. Issues that add a family add a row model above and list it here.
ROW_MODELS: list[type[RowBase]] = [CogVideoXRow, ExVideoRow, DeforumRow, SDXLVideoRow, AnimateDiffRow]
KNOWN_KINDS = [m.model_fields["kind"].annotation.__args__[0] for m in ROW_MODELS]
# A discriminated union on `kind` (a one-member union is just the model).
RowModel = (Annotated[Union[tuple(ROW_MODELS)], Field(discriminator="kind")]
            if len(ROW_MODELS) > 1 else ROW_MODELS[0])
ROW_ADAPTER: TypeAdapter = TypeAdapter(RowModel)


def format_validation_error(err: ValidationError) -> str:
    """'field: problem' for each error, the field as a dotted path without the union tag."""
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        if loc and loc[0] in KNOWN_KINDS:  # drop the discriminator tag pydantic puts first
            loc = loc[1:]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not in the schema of this kind; a typo?)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        field = ".".join(loc)
        if e["type"] == "value_error" and not field:
            # model validators name the field at the start of their own message
            parts.append(msg)
        else:
            parts.append(f"{field}: {msg}" if field else msg)
    return "; ".join(parts)


def validate_row(raw: dict[str, Any], defaults: dict[str, Any] | None = None) -> RowBase:
    """Validate one manifest object. Raises ValueError with 'field: problem' text.

    defaults: the run config's row defaults for this kind, used where the row is silent.
    """
    kind = raw.get("kind")
    if defaults:
        raw = {**defaults, **raw}
    if kind is None:
        raise ValueError(f"kind: required (one of {', '.join(KNOWN_KINDS)})")
    if kind not in KNOWN_KINDS:
        raise ValueError(f"kind: unknown kind {kind!r} (one of {', '.join(KNOWN_KINDS)})")
    try:
        return ROW_ADAPTER.validate_python(raw)
    except ValidationError as err:
        raise ValueError(format_validation_error(err)) from None


def row_to_json(row: RowBase) -> str:
    return row.model_dump_json()


def row_from_json(text: str) -> RowBase:
    return ROW_ADAPTER.validate_json(text)


# ---- the metadata row (DESIGN.md, 'Outputs') -------------------------------------------

METADATA_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("kind", pa.string()),
        ("mode", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("prompt", pa.string()),
        ("negative_prompt", pa.string()),
        ("seed", pa.int64()),
        ("num_frames", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("fps", pa.int64()),
        ("num_inference_steps", pa.int64()),
        ("guidance_scale", pa.float64()),
        ("model", pa.string()),
        ("params_json", pa.string()),
        ("video_uri", pa.string()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("duration_s", pa.float64()),
        ("gen_seconds", pa.float64()),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("finished_at", pa.timestamp("us", tz="UTC")),
        ("worker", pa.string()),
        ("device", pa.string()),
        ("sp_degree", pa.int64()),
        ("raypipe_version", pa.string()),
    ]
)
METADATA_COLUMNS = METADATA_SCHEMA.names
STATUSES = ("ok", "failed", "rejected")


def prompt_text(prompt: Any) -> str:
    """Prompts may be dicts (prompt travel); the metadata column holds text."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def empty_metadata(row_id: str, kind: str | None, status: str, error: str = "") -> dict[str, Any]:
    from raypipe import __version__

    meta: dict[str, Any] = {name: None for name in METADATA_COLUMNS}
    meta.update(id=row_id, kind=kind or "", mode="", status=status, error=error,
                prompt="", negative_prompt="", params_json="{}", video_uri="", sha256="",
                worker="", device="", raypipe_version=__version__)
    return meta


def metadata_from_row(row: RowBase, status: str, error: str = "") -> dict[str, Any]:
    """Metadata for a validated row, before generation fills in the rest."""
    meta = empty_metadata(row.id, row.kind, status, error)
    meta.update(
        mode=getattr(row, "mode", "") or getattr(row, "base", "") or "",
        prompt=prompt_text(row.prompt),
        negative_prompt=row.negative_prompt,
        seed=row.seed,
        num_frames=row.num_frames,
        height=row.height,
        width=row.width,
        fps=row.fps,
        num_inference_steps=row.num_inference_steps,
        guidance_scale=row.guidance_scale,
        model=row.model,
        sp_degree=getattr(row, "sp_degree", 1),
    )
    return meta
