"""The sink: videos written atomically, metadata as Parquet parts, the resume index.

Layout under the output URI:
    videos/<id>.mp4                  complete files only (raypipe/video.py commits them)
    metadata/part-<run>-<n>.parquet  the metadata rows, flushed every N rows or T seconds

Resume: ids whose metadata says `ok` are skipped on the next run (their videos untouched).
A row that failed or was rejected is tried again, so its id may then have two rows in the
parts; `reconcile` (run at the end of every run) rewrites the parts so each id has exactly
one row: the `ok` one if any, else the newest.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import uuid
from datetime import datetime
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raypipe.schema import METADATA_COLUMNS, METADATA_SCHEMA
from raypipe.video import commit_file, join_uri, write_video

TIME_COLUMNS = ("started_at", "finished_at")


def video_uri(out: str, row_id: str) -> str:
    return join_uri(out, "videos", f"{row_id}.mp4")


def metadata_dir(out: str) -> str:
    return join_uri(out, "metadata")


def meta_to_json(meta: dict[str, Any]) -> str:
    return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in meta.items()})


def meta_from_json(text: str) -> dict[str, Any]:
    meta = json.loads(text)
    for column in TIME_COLUMNS:
        if meta.get(column):
            meta[column] = datetime.fromisoformat(meta[column])
    return meta


def metadata_table(metas: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([{c: m.get(c) for c in METADATA_COLUMNS} for m in metas], schema=METADATA_SCHEMA)


def _write_table(table: pa.Table, uri: str) -> None:
    with tempfile.TemporaryDirectory(prefix="raypipe-") as tmpdir:
        local = os.path.join(tmpdir, "part.parquet")
        pq.write_table(table, local)
        commit_file(local, uri)


def _part_uris(out: str) -> list[str]:
    fs, path = fsspec.core.url_to_fs(metadata_dir(out))
    if not fs.exists(path):
        return []
    names = [p for p in fs.ls(path, detail=False) if p.rsplit("/", 1)[-1].startswith("part-")
             and p.endswith(".parquet")]
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return sorted(n if protocol == "file" else f"{protocol}://{n}" for n in names)


def read_metadata(out: str, columns: list[str] | None = None) -> pa.Table:
    """Every metadata part of a run's output (an empty table when there is none)."""
    tables = []
    for uri in _part_uris(out):
        with fsspec.open(uri, "rb") as f:
            tables.append(pq.read_table(io.BytesIO(f.read()), columns=columns))
    if not tables:
        schema = METADATA_SCHEMA if columns is None else pa.schema([METADATA_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def load_done_ids(out: str) -> set[str]:
    """Ids already `ok` in the output: the resume index."""
    table = read_metadata(out, columns=["id", "status"])
    ids = table.column("id").to_numpy(zero_copy_only=False)
    ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
    return set(ids[ok].tolist())


def write_videos(batch: dict[str, np.ndarray], out: str) -> dict[str, list]:
    """CPU stage after the generation pool: encode each `ok` row's frames to its MP4."""
    metas = []
    for meta_json, frames in zip(batch["meta_json"], batch["frames"]):
        meta = meta_from_json(meta_json)
        if meta["status"] == "ok":
            try:
                shape = (meta["num_frames"], meta["height"], meta["width"], 3)
                array = np.frombuffer(frames, dtype=np.uint8).reshape(shape)
                written = write_video(array, meta["fps"], video_uri(out, meta["id"]))
                meta.update(video_uri=written.uri, bytes=written.bytes, sha256=written.sha256,
                            duration_s=written.duration_s)
            except Exception as err:  # noqa: BLE001 - the row fails, the run goes on
                meta.update(status="failed", error=f"writing the video: {type(err).__name__}: {err}")
        meta["finished_at"] = datetime.now().astimezone()
        metas.append(meta_to_json(meta))
    return {"meta_json": metas}


class MetadataSink:
    """Collects metadata rows on the driver and flushes them as Parquet parts."""

    def __init__(self, out: str, flush_rows: int = 256, flush_seconds: float = 15.0):
        self.out = out
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        self._pending: list[dict[str, Any]] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        fs, path = fsspec.core.url_to_fs(metadata_dir(out))
        fs.makedirs(path, exist_ok=True)

    def add(self, meta: dict[str, Any]) -> None:
        self._pending.append(meta)
        if len(self._pending) >= self.flush_rows or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        uri = join_uri(metadata_dir(self.out), f"part-{self.run_id}-{self._parts:05d}.parquet")
        _write_table(metadata_table(self._pending), uri)
        self._parts += 1
        self._pending = []


def reconcile(out: str) -> pa.Table:
    """Rewrite the metadata so each id has exactly one row (ok first, else the newest)."""
    old_parts = _part_uris(out)
    table = read_metadata(out)
    if len(old_parts) <= 1 and len(set(table.column("id").to_pylist())) == table.num_rows:
        return table
    epoch = datetime.fromtimestamp(0).astimezone()
    best: dict[str, dict[str, Any]] = {}
    for row in table.to_pylist():
        rank = (row["status"] == "ok", row["finished_at"] or epoch)
        kept = best.get(row["id"])
        if kept is None or rank >= (kept["status"] == "ok", kept["finished_at"] or epoch):
            best[row["id"]] = row
    merged = metadata_table(list(best.values()))
    # Write the merged part first, then drop the old ones: a crash in between leaves
    # duplicates that the next reconcile removes, never a missing row.
    uri = join_uri(metadata_dir(out), f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}-merged.parquet")
    _write_table(merged, uri)
    fs, _ = fsspec.core.url_to_fs(uri)
    for part in old_parts:
        fs.rm(fsspec.core.url_to_fs(part)[1])
    return merged
