"""The sink: videos written atomically, metadata as Parquet parts, the resume index.

Layout under the output URI:
    videos/<id>.mp4                  complete files only (raypipe/video.py commits them)
    quarantine/<id>.mp4              videos that failed the quality gate (raypipe/quality.py)
    metadata/part-<run>-<n>.parquet  the metadata rows, flushed every N rows or T seconds, and
                                     merged by the sink as it goes (`part-<run>-m<n>.parquet`) and
                                     by reconcile (`part-<stamp>-merged.parquet`)

Exactly once, across crashes:
- A file at a final name is always complete: a video or a part is written to a temporary name
  and renamed (local) or PUT whole (object stores). A crash can leave `.tmp-*` files beside the
  final names (never at them); the next run removes them (`remove_stale_temp_files`).
- Resume: ids whose metadata says `ok` are skipped on the next run (their videos untouched).
  The index (`build_done_index`: an IdSet, raypipe/ids.py, a few bytes an id) is built once a run
  in a Ray task and read by the manifest-reading tasks from the object store, never on the driver.
  A row whose video was committed but whose metadata part was not yet flushed when the driver
  died is generated again and its video replaced whole: such a crash costs the rows in flight
  plus at most `metadata_flush_rows` / `metadata_flush_seconds` of finished ones.
- A row that failed or was rejected is tried again, so its id may then have two rows in the
  parts; `reconcile` (run at the end of every run) rewrites the parts holding superseded rows so
  each id has exactly one row: the `ok` one if any, else the newest. It holds 8 bytes a row (a
  hash of each id), reads the rows of repeated ids only, and rewrites only the parts that hold
  superseded rows, plus small parts once there are many. Merged parts keep `ok` rows apart from
  the others, so what a later run supersedes (failed or rejected rows) sits in small parts: a
  resumed run rewrites those, never the big parts of `ok` rows.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raypipe.config import QualityGate, QualitySettings
from raypipe.ids import IdSet, hash64
from raypipe.metadata import METADATA_SCHEMA, Metadata, metadata_table
from raypipe.metrics import video_written
from raypipe.quality import gate_error, gate_failures, score_video
from raypipe.video import commit_file, is_local, join_uri, write_video

TIME_COLUMNS = ("started_at", "finished_at")
TEMP_PREFIX = ".tmp-"  # raypipe/video.py commit_file's temporary names
# reconcile: parts are rewritten into parts of up to this many rows; smaller clean parts are
# merged once there are more than COMPACT_MAX_PARTS of them.
COMPACT_ROWS = 100_000
COMPACT_MAX_PARTS = 64


def video_uri(out: str, row_id: str) -> str:
    return join_uri(out, "videos", f"{row_id}.mp4")


def quarantine_uri(out: str, row_id: str) -> str:
    return join_uri(out, "quarantine", f"{row_id}.mp4")


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
        if columns is not None:  # only those columns' pages: ranged reads on object stores
            return pq.read_table(f, columns=columns)
        return pq.read_table(io.BytesIO(f.read()))


def conform_metadata(table: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """A metadata part's table in METADATA_SCHEMA (or its `columns`): a part written before a
    column existed (the quality scores) gets it as nulls; columns it has are cast to their type."""
    schema = METADATA_SCHEMA if columns is None else pa.schema([METADATA_SCHEMA.field(c) for c in columns])
    arrays = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def _read_metadata_part(uri: str, columns: list[str] | None) -> pa.Table:
    with fsspec.open(uri, "rb") as f:
        data = io.BytesIO(f.read())
    present = pq.read_schema(data).names
    wanted = None if columns is None else [c for c in columns if c in present]
    return conform_metadata(pq.read_table(data, columns=wanted), columns)


def read_metadata(out: str, columns: list[str] | None = None) -> pa.Table:
    """Every metadata part of a run's output (an empty table when there is none), in
    METADATA_SCHEMA: the columns a part predates are null in its rows."""
    tables = [_read_metadata_part(uri, columns) for uri in _part_uris(out)]
    if not tables:
        return conform_metadata(METADATA_SCHEMA.empty_table(), columns)
    return pa.concat_tables(tables)


def build_done_index(out: str, exclude_run: str | None = None, any_status_of_run: bool = False) -> IdSet:
    """The resume index: the ids already `ok` in the output, as an IdSet (raypipe/ids.py: each id
    once, a few bytes each; read a part at a time). Built in a Ray task (raypipe/pipeline/read.py).

    exclude_run: ignore that run's own parts, so that every read of one run sees the index as it
    was when the run started. any_status_of_run: add every id that run has a row for, whatever
    its status (the sweep for rows that got lost, raypipe/run.py)."""

    def ids_of(uri: str):
        table = _read_part(uri, ["id", "status"])
        if _run_of(uri, exclude_run):
            return table.column("id") if any_status_of_run else None
        return table.column("id").filter(pc.equal(table.column("status"), "ok"))

    return IdSet.build(ids for ids in map(ids_of, _part_uris(out)) if ids is not None)


def remove_stale_temp_files(out: str) -> int:
    """Remove the temporary files a crashed run left beside final names (`.tmp-*` in videos/
    and metadata/). Object stores have none: a PUT leaves a complete object or nothing.
    One run per output at a time: a second run on the same --out would lose its temporaries."""
    if not is_local(out):
        return 0
    removed = 0
    for folder in (join_uri(out, "videos"), join_uri(out, "quarantine"), metadata_dir(out)):
        fs, path = fsspec.core.url_to_fs(folder)
        if not os.path.isdir(path):
            continue
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith(TEMP_PREFIX) and entry.is_file():
                    os.remove(entry.path)
                    removed += 1
    return removed


def _remove(uri: str) -> None:
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path)


def _score_and_write(meta: Metadata, frames: np.ndarray, out: str, gate: QualityGate, settings: QualitySettings):
    """Score the video, gate it, commit it to videos/ (passed) or quarantine/ (failed)."""
    try:
        meta.update(**score_video(frames, meta.prompt, settings))
        reasons = gate_failures(meta.column_values(), gate, meta.nonfinite_frames or 0)
    except Exception as err:  # noqa: BLE001 - e.g. the CLIP model cannot load: kept, not published
        reasons = [f"scoring the video: {type(err).__name__}: {err}"]
    if meta.nonfinite_frames:
        meta.params_json = json.dumps({**meta.params, "nonfinite_frames": meta.nonfinite_frames}, sort_keys=True)
    target, stale = (quarantine_uri, video_uri) if reasons else (video_uri, quarantine_uri)
    written = write_video(frames, meta.fps, target(out, meta.id))
    # One place per id: a re-roll that passed leaves no quarantined file, a failed run's no
    # video (e.g. committed before a crash, or under looser thresholds).
    _remove(stale(out, meta.id))
    meta.update(video_uri=written.uri, bytes=written.bytes, sha256=written.sha256, duration_s=written.duration_s)
    video_written(meta, written)  # encode / upload seconds, bytes
    if reasons:
        meta.update(status="failed", error=gate_error(reasons))


def write_videos(
    batch: dict[str, np.ndarray],
    out: str,
    quality: dict[str, Any] | None = None,
    scoring: dict[str, Any] | None = None,
) -> dict[str, list]:
    """CPU stage after the generation pool: score each `ok` row's frames (raypipe/quality.py),
    gate them (quality: the kind's QualityGate, dumped) and encode them to videos/<id>.mp4, or
    to quarantine/<id>.mp4 with the row `failed` (scoring: the run's QualitySettings, dumped)."""
    from raypipe.pipeline.records import pack, unpack

    gate = QualityGate.model_validate(quality or {})
    settings = QualitySettings.model_validate(scoring or {})
    metas = []
    for packed_meta, packed_frames in zip(batch["meta"], batch["frames"]):
        meta: Metadata = unpack(packed_meta)
        if meta.status == "ok":
            try:
                _score_and_write(meta, unpack(packed_frames), out, gate, settings)
            except Exception as err:  # noqa: BLE001 - the row fails, the run goes on
                meta.update(status="failed", error=f"writing the video: {type(err).__name__}: {err}")
        if meta.status != "rejected":
            meta.finished_at = datetime.now().astimezone()
        metas.append(pack(meta))
    return {"meta": metas}


def _split_by_status(table: pa.Table) -> list[tuple[bool, pa.Table]]:
    """(True, the `ok` rows) and (False, the others), those that have rows: kept apart, since what
    reconcile supersedes later is in the others."""
    ok = pc.equal(table.column("status"), "ok")
    return [(is_ok, t) for is_ok, t in ((True, table.filter(ok)), (False, table.filter(pc.invert(ok)))) if t.num_rows]


class MetadataSink:
    """Collects metadata rows on the driver and flushes them as Parquet parts.

    Every flush is a small part (a crash costs at most one flush interval); once the small parts
    of this run hold `merge_rows` rows, they are written again as one part of `ok` rows and one
    of the others (`part-<run>-m<n>.parquet`, read back a part at a time), and removed. So a run
    of ten million rows leaves a few hundred parts, not tens of thousands, and the driver holds
    at most one flush of rows (`flush_rows`) and one small part as it merges. A crash between
    the merged parts and the removal leaves identical copies, which reconcile removes."""

    def __init__(
        self,
        out: str,
        flush_rows: int = 256,
        flush_seconds: float = 15.0,
        run_id: str | None = None,
        merge_rows: int | None = None,
    ):
        self.out = out
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self.run_id = run_id or new_run_id()
        self.merge_rows = merge_rows or COMPACT_ROWS // 2  # not a "small" part for reconcile
        self._pending: list[Metadata] = []
        self._parts = 0
        self._merges = 0
        self._flushed: list[str] = []  # this run's small parts, not merged yet
        self._flushed_rows = 0
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
        table = metadata_table(self._pending)
        _write_table(table, uri)
        self._parts += 1
        self._pending = []
        self._flushed.append(uri)
        self._flushed_rows += table.num_rows
        if self._flushed_rows >= self.merge_rows:
            self._merge()

    def _merge(self) -> None:
        """This run's small parts written again as one part of `ok` rows and one of the others,
        read back a part at a time into two Parquet writers: the driver holds one small part,
        never the merged rows."""
        if len(self._flushed) > 1:
            with tempfile.TemporaryDirectory(prefix="raypipe-") as tmpdir:
                writers: dict[bool, pq.ParquetWriter] = {}  # ok or not -> its merged part
                for uri in self._flushed:
                    for ok, rows in _split_by_status(_read_part(uri)):
                        if ok not in writers:
                            writers[ok] = pq.ParquetWriter(os.path.join(tmpdir, str(ok)), rows.schema)
                        writers[ok].write_table(rows)
                for ok in (True, False):  # the ok part first, as before
                    if ok in writers:
                        writers[ok].close()
                        name = f"part-{self.run_id}-m{self._merges:05d}.parquet"
                        commit_file(os.path.join(tmpdir, str(ok)), join_uri(metadata_dir(self.out), name))
                        self._merges += 1
            fs, _ = fsspec.core.url_to_fs(self.out)
            for uri in self._flushed:
                fs.rm(fsspec.core.url_to_fs(uri)[1])
        self._flushed, self._flushed_rows = [], 0


def _kept_rows(index: pa.Table) -> np.ndarray:
    """index: id, status, finished_at, part, row of metadata rows. Returns a bool mask of the rows
    to keep: per id the `ok` one if any, else the newest (finished_at, then the later part, then
    the later row: identical copies left by a crashed reconcile or sink merge keep one)."""
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
    ids = order.column("id")
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).to_numpy(zero_copy_only=False)
    keep = np.zeros(index.num_rows, dtype=bool)
    keep[order.column("pos").to_numpy()[first]] = True
    return keep


def _superseded(parts: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """(rows of each part, the superseded rows of each part). Two passes over the parts, a part at
    a time: a 64-bit hash of every id (8 bytes a row, all that is held), then the id, status and
    finished_at of the rows whose hash repeats only (repeated ids, and the odd hash collision:
    _kept_rows decides on the ids themselves)."""
    hashes = [hash64(_read_part(uri, ["id"]).column("id")) for uri in parts]
    sizes = np.array([len(h) for h in hashes], dtype=np.int64)
    ordered = np.sort(np.concatenate(hashes))
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    del ordered
    dropped = [np.empty(0, dtype=np.int64) for _ in parts]
    if not len(repeated):
        return sizes, dropped
    tables = []
    for i, uri in enumerate(parts):
        at = np.minimum(np.searchsorted(repeated, hashes[i]), len(repeated) - 1)
        rows = np.flatnonzero(repeated[at] == hashes[i])
        if len(rows):
            table = _read_part(uri, ["id", "status", "finished_at"]).take(pa.array(rows))
            tables.append(
                table.append_column("part", pa.array(np.full(len(rows), i, dtype=np.int64))).append_column(
                    "row", pa.array(rows)
                )
            )
    index = pa.concat_tables(tables)
    lost = ~_kept_rows(index)
    part_of, row_of = index.column("part").to_numpy()[lost], index.column("row").to_numpy()[lost]
    for i in np.unique(part_of).tolist():
        dropped[i] = row_of[part_of == i]
    return sizes, dropped


def reconcile(out: str) -> int:
    """Make the metadata one row per id (ok first, else the newest); returns the number of rows.

    Holds 8 bytes a row and the rows of repeated ids (_superseded), never the table: at ten
    million rows, ~80 MB. Rewrites only the parts holding superseded rows, and small parts once
    there are more than COMPACT_MAX_PARTS of them (a run's new parts merged into the rest), a
    part at a time into parts of up to COMPACT_ROWS rows, `ok` rows apart from the others (but for
    a small remainder). New
    parts are written before old ones are removed: a crash in between leaves identical copies,
    which the next reconcile removes; never a missing row."""
    parts = _part_uris(out)
    if not parts:
        return 0
    sizes, dropped = _superseded(parts)
    small = [i for i in range(len(parts)) if sizes[i] < COMPACT_ROWS // 2]
    rewrite = {i for i in range(len(parts)) if len(dropped[i])}
    if len(small) > COMPACT_MAX_PARTS:
        rewrite.update(small)
    if rewrite:
        fs, _ = fsspec.core.url_to_fs(parts[0])
        buffers: dict[bool, list[pa.Table]] = {True: [], False: []}  # ok rows, the others

        def write(ok: bool, at_least: int) -> None:
            if sum(t.num_rows for t in buffers[ok]) >= max(at_least, 1):
                name = f"part-{new_run_id()}-merged.parquet"
                _write_table(pa.concat_tables(buffers[ok]), join_uri(metadata_dir(out), name))
                buffers[ok] = []

        for i in sorted(rewrite):
            keep = np.ones(sizes[i], dtype=bool)
            keep[dropped[i]] = False
            if keep.any():
                table = conform_metadata(_read_part(parts[i]).filter(pa.array(keep)))
                for ok, part in _split_by_status(table):
                    buffers[ok].append(part)
                    write(ok, COMPACT_ROWS)
        if sum(t.num_rows for t in buffers[True] + buffers[False]) < COMPACT_ROWS // 2:
            buffers[True] += buffers.pop(False)  # a small remainder: one small part
            buffers[False] = []
        write(True, 0)
        write(False, 0)
        for i in sorted(rewrite):
            fs.rm(fsspec.core.url_to_fs(parts[i])[1])
    return int(sizes.sum() - sum(len(d) for d in dropped))
