"""Reading manifests (JSONL, CSV, Parquet; any fsspec URI) into records with line numbers.

Every line of a manifest becomes exactly one record. A line without a usable id (not JSON,
not an object, no id, a malformed id, or an id already used above in any manifest of the
run) gets the id `<manifest file name>:<line number>` and is rejected, so nothing vanishes.
The reading is sequential (ids are checked in manifest order) and runs inside one Ray Data
task; validation of the records runs in parallel after it (raypipe/run.py).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec

from raypipe.schema import ID_PATTERN

FORMATS = ("jsonl", "csv", "parquet")


class ManifestError(ValueError):
    """A manifest cannot be read as a whole: nothing runs (exit code 2)."""


def manifest_format(uri: str) -> str:
    name = uri.lower().split("?")[0]
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"),
                        (".csv", "csv"), (".parquet", "parquet"), (".pq", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise ManifestError(f"{uri}: unknown manifest format (use .jsonl, .csv or .parquet)")


def check_manifests(uris: Iterable[str]) -> list[str]:
    """Fail fast, on the driver, for manifests that cannot be read at all."""
    uris = list(uris)
    if not uris:
        raise ManifestError("no manifest given")
    for uri in uris:
        manifest_format(uri)
        try:
            fs, path = fsspec.core.url_to_fs(uri)
            exists = fs.exists(path) and not fs.isdir(path)
        except Exception as err:  # noqa: BLE001 - any filesystem error means unreadable
            raise ManifestError(f"{uri}: cannot open: {err}") from None
        if not exists:
            raise ManifestError(f"{uri}: no such file")
    return uris


def _csv_value(text: str) -> Any:
    # CSV cells are text; JSON-looking cells (lists, objects) hold nested fields such as `lora`.
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    return text


def _objects(uri: str) -> Iterator[tuple[int, Any, str, str | None]]:
    """(line number, parsed object or None, parse error, the row's JSON text when the manifest
    has it: a JSONL line, kept as is rather than dumped again) for each row of one manifest."""
    fmt = manifest_format(uri)
    if fmt == "jsonl":
        with fsspec.open(uri, "rt", encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue  # blank lines are not rows
                try:
                    yield number, json.loads(line), "", line.strip()
                except json.JSONDecodeError as err:
                    yield number, None, f"not valid JSON: {err.msg} at column {err.colno}", None
    elif fmt == "csv":
        with fsspec.open(uri, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                number = reader.line_num  # the line the row ends on; the header is line 1
                if None in row:
                    yield number, None, "more cells than the header has columns", None
                    continue
                yield number, {k: _csv_value(v) for k, v in row.items() if v not in (None, "")}, "", None
    else:
        import pyarrow.parquet as pq

        with fsspec.open(uri, "rb") as f:
            table = pq.read_table(io.BytesIO(f.read()))
        for number, row in enumerate(table.to_pylist(), start=1):
            yield number, {k: v for k, v in row.items() if v is not None}, "", None


def read_records(uris: list[str], done_ids: set[str] | frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """One record per manifest row, in manifest order.

    route: "pending" (to validate), "rejected" (no usable id; error says why) or "skip"
    (already `ok` in the output: resume).
    """
    seen: dict[str, str] = {}
    for uri in uris:
        source = posixpath.basename(uri.rstrip("/").split("?")[0])
        for number, obj, error, text in _objects(uri):
            where = f"{source}:{number}"
            record = {"id": where, "source": source, "line": number, "kind": "", "route": "rejected",
                      "raw_json": "", "error": error}
            if obj is not None and not isinstance(obj, dict):
                record["error"] = f"not an object (a {type(obj).__name__})"
            elif obj is not None:
                record["kind"] = obj.get("kind") if isinstance(obj.get("kind"), str) else ""
                record["raw_json"] = text if text is not None else json.dumps(obj)
                row_id = obj.get("id")
                if row_id is None:
                    record["error"] = "id: required"
                elif not isinstance(row_id, str) or not ID_PATTERN.match(row_id):
                    record["error"] = f"id: must match [A-Za-z0-9._-]{{1,128}}, got {row_id!r}"
                elif row_id in seen:
                    record["error"] = f"id: {row_id!r} already used at {seen[row_id]}"
                else:
                    seen[row_id] = where
                    record["id"] = row_id
                    record["route"] = "skip" if row_id in done_ids else "pending"
            yield record


RECORD_COLUMNS = ("id", "source", "line", "kind", "route", "raw_json", "error")


def batched_records(records: Iterator[dict[str, Any]], size: int) -> Iterator[dict[str, list]]:
    """Records as column batches, for a Ray Data generator UDF."""
    batch: dict[str, list] = {c: [] for c in RECORD_COLUMNS}
    for record in records:
        for c in RECORD_COLUMNS:
            batch[c].append(record[c])
        if len(batch["id"]) >= size:
            yield batch
            batch = {c: [] for c in RECORD_COLUMNS}
    if batch["id"]:
        yield batch
