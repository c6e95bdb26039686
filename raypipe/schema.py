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
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

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


class CogVideoXRow(RowBase):
    kind: Literal["cogvideox"]
    mode: Literal["t2v"] = "t2v"
    sp_degree: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _cogvideox_shapes(self):
        _check_positive("num_frames", self.num_frames)
        # CogVideoX's VAE compresses time by 4: frame counts are 4k+1 and the transformer
        # (patch_size_t in 1.5) wants an even latent count; the model cards use 8k+1.
        if self.num_frames is not None and (self.num_frames - 1) % 8 != 0:
            raise ValueError(f"num_frames: must be 8k+1 (9, 17, 25, 33, 41, 49, ...), got {self.num_frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            _check_positive(name, value)
            if value is not None and value % 16 != 0:
                raise ValueError(f"{name}: must be a multiple of 16, got {value}")
        return self


# Every kind raypipe knows. Issues that add a family add a row model above and list it here.
ROW_MODELS: list[type[RowBase]] = [CogVideoXRow]
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
