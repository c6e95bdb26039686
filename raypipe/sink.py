"""The sink: videos written atomically, metadata as Parquet parts, the resume index.

Layout under the output URI:
    videos/<id>.mp4                  complete files only (raypipe/video.py commits them)
    metadata/part-<run>-<n>.parquet  the metadata rows, flushed every N rows or T seconds

Exactly once, across crashes:
- A file at a final name is always complete: a video or a part is written to a temporary name
  and renamed (local) or PUT whole (object stores). A crash can leave `.tmp-*` files beside the
  final names (never at them); the next run removes them (`remove_stale_temp_files`).
- Resume: ids whose metadata says `ok` are skipped on the next run (their videos untouched).
  The index is read inside the manifest-reading Ray task (`load_done_ids`), never on the driver.
  A row whose video was committed but whose metadata part was not yet flushed when the driver
  died is generated again and its video replaced whole: such a crash costs the rows in flight
  plus at most `metadata_flush_rows` / `metadata_flush_seconds` of finished ones.
- A row that failed or was rejected is tried again, so its id may then have two rows in the
  parts; `reconcile` (run at the end of every run) rewrites the parts holding superseded rows so
  each id has exactly one row: the `ok` one if any, else the newest.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from datetime import datetime

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raypipe.metadata import METADATA_SCHEMA, Metadata, metadata_table
from raypipe.metrics import video_written
from raypipe.video import commit_file, is_local, join_uri, write_video

TIME_COLUMNS = ("started_at", "finished_at")
TEMP_PREFIX = ".tmp-"  # raypipe/video.py commit_file's temporary names
# reconcile: parts are rewritten into parts of up to this many rows; smaller clean parts are
# merged once there are more than COMPACT_MAX_PARTS of them.
COMPACT_ROWS = 100_000
COMPACT_MAX_PARTS = 64


def video_uri(out: str, row_id: str) -> str:
    return join_uri(out, "videos", f"{row_id}.mp4")


def metadata_dir(out: str) -> str:
    return join_uri(out, "metadata")


def new_run_id() -> str:
    """Names this run's metadata parts; sorts by start time (microseconds), then at random."""
    return datetime.now().strftime("%Y%m%dT%H%M%S%f") + "-" + uuid.uuid4().hex[:8]


def _write_table(table: pa.Table, uri: str) -> None:
    with tempfile.TemporaryDirectory(prefix="raypipe-") as tmpdir:
        local = os.path.join(tmpdir, "part.parquet")
        pq.write_table(table, local)
        commit_file(local, uri)


def _list(uri: str) -> list[str]:
    """Full URIs of the entries of a folder (none when it does not exist), listed afresh:
    s3fs and gcsfs cache listings per process, and Ray reuses worker processes across runs."""
    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    names = fs.ls(path, detail=False)
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    return sorted(n if protocol == "file" else f"{protocol}://{n}" for n in names)


def _part_uris(out: str) -> list[str]:
    return [u for u in _list(metadata_dir(out)) if u.rsplit("/", 1)[-1].startswith("part-") and u.endswith(".parquet")]


def _run_of(part_uri: str, run_id: str | None) -> bool:
    return run_id is not None and part_uri.rsplit("/", 1)[-1].startswith(f"part-{run_id}-")


def _read_part(uri: str, columns: list[str] | None = None) -> pa.Table:
    with fsspec.open(uri, "rb") as f:
        return pq.read_table(io.BytesIO(f.read()), columns=columns)


def read_metadata(out: str, columns: list[str] | None = None) -> pa.Table:
    """Every metadata part of a run's output (an empty table when there is none)."""
    tables = [_read_part(uri, columns) for uri in _part_uris(out)]
    if not tables:
        schema = METADATA_SCHEMA if columns is None else pa.schema([METADATA_SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def load_done_ids(out: str, exclude_run: str | None = None, any_status_of_run: bool = False) -> set[str]:
    """The resume index: ids already `ok` in the output (read in a Ray task, not on the driver).

    exclude_run: ignore that run's own parts, so that every read of one run sees the index as it
    was when the run started. any_status_of_run: add every id that run has a row for, whatever
    its status (the sweep for rows that got lost, raypipe/run.py)."""
    done: set[str] = set()
    for uri in _part_uris(out):
        table = _read_part(uri, ["id", "status"])
        ids = table.column("id").to_numpy(zero_copy_only=False)
        if _run_of(uri, exclude_run):
            if any_status_of_run:
                done.update(ids.tolist())
            continue
        ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
        done.update(ids[ok].tolist())
    return done


def remove_stale_temp_files(out: str) -> int:
    """Remove the temporary files a crashed run left beside final names (`.tmp-*` in videos/
    and metadata/). Object stores have none: a PUT leaves a complete object or nothing.
    One run per output at a time: a second run on the same --out would lose its temporaries."""
    if not is_local(out):
        return 0
    removed = 0
    for folder in (join_uri(out, "videos"), metadata_dir(out)):
        fs, path = fsspec.core.url_to_fs(folder)
        if not os.path.isdir(path):
            continue
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file():
                    os.remove(entry.path)
                    removed += 1
    return removed


def write_videos(batch: dict[str, np.ndarray], out: str) -> dict[str, list]:
    """CPU stage after the generation pool: encode each `ok` row's frames to its MP4."""
    from raypipe.pipeline.records import pack, unpack

    metas = []
    for packed_meta, packed_frames in zip(batch["meta"], batch["frames"]):
        meta: Metadata = unpack(packed_meta)
        if meta.status == "ok":
            try:
                written = write_video(unpack(packed_frames), meta.fps, video_uri(out, meta.id))
                meta.update(
                    video_uri=written.uri, bytes=written.bytes, sha256=written.sha256, duration_s=written.duration_s
                )
                video_written(meta, written)  # encode / upload seconds, bytes
            except Exception as err:  # noqa: BLE001 - the row fails, the run goes on
                meta.update(status="failed", error=f"writing the video: {type(err).__name__}: {err}")
        if meta.status != "rejected":
            meta.finished_at = datetime.now().astimezone()
        metas.append(pack(meta))
    return {"meta": metas}


class MetadataSink:
    """Collects metadata rows on the driver and flushes them as Parquet parts."""

    def __init__(self, out: str, flush_rows: int = 256, flush_seconds: float = 15.0, run_id: str | None = None):
        self.out = out
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.run_id = run_id or new_run_id()
        self._pending: list[Metadata] = []
        self._parts = 0
        self._last_flush = time.monotonic()
        fs, path = fsspec.core.url_to_fs(metadata_dir(out))
        fs.makedirs(path, exist_ok=True)

    def add(self, meta: Metadata) -> None:
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


def _kept_rows(index: pa.Table) -> np.ndarray:
    """index: id, status, finished_at, part, row of every metadata row. Returns a bool mask of
    the rows to keep: per id the `ok` one if any, else the newest (finished_at, then the later
    part, then the later row: identical copies left by a crashed reconcile keep one)."""
    ranked = index.append_column("ok", pc.equal(index.column("status"), "ok")).append_column(
        "pos", pa.array(np.arange(index.num_rows))
    )
    order = ranked.sort_by(
        [
            ("id", "ascending"),
            ("ok", "descending"),
            ("finished_at", "descending"),
            ("part", "descending"),
            ("row", "descending"),
        ]
    )
    ids = order.column("id").to_numpy(zero_copy_only=False)
    first = np.ones(len(ids), dtype=bool)
    first[1:] = ids[1:] != ids[:-1]
    keep = np.zeros(index.num_rows, dtype=bool)
    keep[order.column("pos").to_numpy()[first]] = True
    return keep


def reconcile(out: str) -> int:
    """Make the metadata one row per id (ok first, else the newest); returns the number of rows.

    Only the id/status/finished_at columns of every part are held at once (tens of MB for a
    million rows); parts holding superseded rows, and small parts once there are many, are
    rewritten a group at a time. New parts are written before old ones are removed: a crash in
    between leaves identical copies, which the next reconcile removes; never a missing row."""
    parts = _part_uris(out)
    if not parts:
        return 0
    columns = []
    for i, uri in enumerate(parts):
        t = _read_part(uri, ["id", "status", "finished_at"])
        columns.append(
            t.append_column("part", pa.array(np.full(t.num_rows, i, dtype=np.int64))).append_column(
                "row", pa.array(np.arange(t.num_rows, dtype=np.int64))
            )
        )
    index = pa.concat_tables(columns)
    keep = _kept_rows(index)
    part_of = index.column("part").to_numpy()
    sizes = np.bincount(part_of, minlength=len(parts))
    dropped = np.bincount(part_of[~keep], minlength=len(parts))
    small = [i for i in range(len(parts)) if sizes[i] < COMPACT_ROWS // 2]
    rewrite = {i for i in range(len(parts)) if dropped[i]}
    if len(small) > COMPACT_MAX_PARTS:
        rewrite.update(small)
    if rewrite:
        fs, _ = fsspec.core.url_to_fs(parts[0])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        buffer: list[pa.Table] = []
        buffered = 0

        def write_buffer() -> None:
            nonlocal buffer, buffered
            if buffered:
                name = f"part-{new_run_id()}-merged.parquet"
                _write_table(pa.concat_tables(buffer), join_uri(metadata_dir(out), name))
            buffer, buffered = [], 0

        for i in sorted(rewrite):
            mask = keep[offsets[i] : offsets[i + 1]]
            if mask.any():
                table = _read_part(parts[i]).filter(pa.array(mask))
                buffer.append(table.cast(METADATA_SCHEMA))
                buffered += table.num_rows
            if buffered >= COMPACT_ROWS:
                write_buffer()
        write_buffer()
        for i in sorted(rewrite):
            fs.rm(fsspec.core.url_to_fs(parts[i])[1])
    return int(keep.sum())
