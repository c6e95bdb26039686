"""The metadata record: one per manifest row, the Parquet table's row (DESIGN.md, 'Outputs').

`Metadata` is a dataclass with exactly the table's columns, plus `timings` (seconds the pool
actor and the MP4 writer measured for the metrics) and `nonfinite_frames` (for the quality gate),
which are not columns. It reads like a mapping too
(`meta["status"]`), but only its own fields exist: a misspelt key is an error, not a new column.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

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
        # The quality scores (raypipe/quality.py defines them and their units); null without a video.
        ("black_fraction", pa.float64()),
        ("frozen_fraction", pa.float64()),
        ("motion_score", pa.float64()),
        ("flicker", pa.float64()),
        ("sharpness", pa.float64()),
        ("clip_score", pa.float64()),
    ]
)
QUALITY_COLUMNS = ("black_fraction", "frozen_fraction", "motion_score", "flicker", "sharpness", "clip_score")
METADATA_COLUMNS = METADATA_SCHEMA.names
STATUSES = ("ok", "failed", "rejected")


def _version() -> str:
    from raypipe import __version__

    return __version__


@dataclass
class Metadata:
    id: str
    kind: str = ""
    mode: str = ""
    status: str = ""
    error: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    model: str | None = None
    params_json: str = "{}"
    video_uri: str = ""
    bytes: int | None = None
    sha256: str = ""
    duration_s: float | None = None
    gen_seconds: float | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str = ""
    device: str = ""
    sp_degree: int | None = None
    raypipe_version: str = field(default_factory=_version)
    black_fraction: float | None = None
    frozen_fraction: float | None = None
    motion_score: float | None = None
    flicker: float | None = None
    sharpness: float | None = None
    clip_score: float | None = None
    # Not a column: seconds measured on the way (model_load_seconds, encode_seconds, ...) for the
    # driver's metrics (raypipe/metrics.py).
    timings: dict[str, float] = field(default_factory=dict)
    # Not a column: frames of the pipeline's float output that held NaN/Inf before they became
    # uint8 (raypipe/stage.py to_uint8), for the quality gate in the MP4 writer.
    nonfinite_frames: int | None = None

    # ---- mapping-style access (tests, reports and users read rows as dicts) ----------------

    def __getitem__(self, name: str) -> Any:
        if name not in _FIELDS:
            raise KeyError(name)
        return getattr(self, name)

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in _FIELDS:
            raise KeyError(f"{name}: not a metadata column")
        setattr(self, name, value)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name, default) if name in _FIELDS else default

    def update(self, **values: Any) -> None:
        for name, value in values.items():
            self[name] = value

    def __iter__(self):
        return iter(METADATA_COLUMNS)

    def __contains__(self, name: object) -> bool:
        return name in _FIELDS

    @property
    def params(self) -> dict[str, Any]:
        return json.loads(self.params_json or "{}")

    def column_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in METADATA_COLUMNS}


_FIELDS = frozenset(f.name for f in dataclasses.fields(Metadata))
assert set(METADATA_COLUMNS) <= _FIELDS, "every column is a field"
assert set(QUALITY_COLUMNS) <= set(METADATA_COLUMNS)


def prompt_text(prompt: Any) -> str:
    """Prompts may be dicts (prompt travel); the metadata column holds text."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True)


def empty_metadata(row_id: str, kind: str | None, status: str, error: str = "") -> Metadata:
    return Metadata(id=row_id, kind=kind or "", status=status, error=error)


def row_params(row: Any) -> dict[str, Any]:
    """What params_json records of the row itself: the sweep it comes from, if any."""
    sweep = getattr(row, "_sweep", None)
    return {"sweep": sweep} if sweep else {}


def metadata_from_row(row: Any, status: str, error: str = "") -> Metadata:
    """Metadata for a validated row, before generation fills in the rest."""
    return Metadata(
        params_json=json.dumps(row_params(row), sort_keys=True),
        id=row.id,
        kind=row.kind,
        status=status,
        error=error,
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


def metadata_table(metas: list[Metadata] | list[dict[str, Any]]) -> pa.Table:
    rows = [m.column_values() if isinstance(m, Metadata) else {c: m.get(c) for c in METADATA_COLUMNS} for m in metas]
    return pa.Table.from_pylist(rows, schema=METADATA_SCHEMA)
