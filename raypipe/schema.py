"""Manifest rows: the fields every kind shares, and validation against the kind's own model.

A row is validated once, on a CPU worker, before any model sees it. Unknown fields are errors
(`extra="forbid"`), so a typo such as `num_frame` is reported, not ignored. Each family's row
model (a RowBase subclass) lives in its package, raypipe/families/<kind>/schema.py; the union
of them, discriminated on `kind`, comes from the registry (raypipe/families/__init__.py).
"""

from __future__ import annotations

import functools
import hashlib
import operator
import re
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

# The metadata record lives in raypipe/metadata.py; these names stay importable from here.
from raypipe.metadata import (  # noqa: F401
    METADATA_COLUMNS,
    METADATA_SCHEMA,
    STATUSES,
    Metadata,
    empty_metadata,
    metadata_from_row,
    prompt_text,
)

# \Z, not $: Python's $ also matches before a final newline, which would let "a\n" through.
ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}\Z")


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
    # Not a field: for a row a manifest's sweep made, `row._sweep = {"of": <the sweep row's id>,
    # "values": {...}}` (raypipe/manifest.py), recorded in its metadata's params_json
    # (metadata.row_params; absent: getattr(row, "_sweep", None)). Not a PrivateAttr either: a
    # model with one pays pydantic's set-up of private attributes on every row, ~20% of validating
    # one (BENCHMARKS.md); assigned, it sits in the instance's __dict__ and is pickled with it.

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


# ---- checks the families share ------------------------------------------------------------


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{name}: must be positive, got {value}")


def check_size_multiple(row: RowBase, multiple: int, why: str = "") -> None:
    """height and width positive multiples of `multiple` (the VAE's and the patches' grid)."""
    for name in ("height", "width"):
        value = getattr(row, name)
        check_positive(name, value)
        if value is not None and value % multiple != 0:
            raise ValueError(f"{name}: must be a multiple of {multiple}{why}, got {value}")


def only_for(row: RowBase, names: tuple[str, ...], where: str) -> None:
    for name in names:
        if getattr(row, name) is not None:
            raise ValueError(f"{name}: only for {where}")


def require_prompt(row: RowBase, mode: str) -> None:
    """Text-to-video has nothing else to go on: an empty prompt is a mistake, not a request."""
    prompt = row.prompt
    if not (prompt.strip() if isinstance(prompt, str) else prompt):
        raise ValueError(f"prompt: required for mode {mode}")


# ---- validation through the registry ------------------------------------------------------


@functools.cache
def _adapter() -> tuple[TypeAdapter, tuple[str, ...]]:
    from raypipe.families import families

    models = [f.row for f in families()]
    union = (
        Annotated[functools.reduce(operator.or_, models), Field(discriminator="kind")] if len(models) > 1 else models[0]
    )
    return TypeAdapter(union), tuple(f.kind for f in families())


def known_kinds() -> tuple[str, ...]:
    return _adapter()[1]


def format_validation_error(err: ValidationError) -> str:
    """'field: problem' for each error, the field as a dotted path without the union tag."""
    kinds = known_kinds()
    parts = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"]]
        if loc and loc[0] in kinds:  # drop the discriminator tag pydantic puts first
            loc = loc[1:]
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field (not in the schema of this kind; a typo?)"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
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
    adapter, kinds = _adapter()
    kind = raw.get("kind")
    if defaults:
        raw = {**defaults, **raw}
    if kind is None:
        raise ValueError(f"kind: required (one of {', '.join(kinds)})")
    if kind not in kinds:
        raise ValueError(f"kind: unknown kind {kind!r} (one of {', '.join(kinds)})")
    try:
        return adapter.validate_python(raw)
    except ValidationError as err:
        raise ValueError(format_validation_error(err)) from None


def __getattr__(name: str):
    # KNOWN_KINDS reads the registry on first use (the families import this module).
    if name == "KNOWN_KINDS":
        return list(known_kinds())
    raise AttributeError(name)
