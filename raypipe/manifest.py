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
import pyarrow as pa
from pydantic_core import from_json

from raypipe.schema import ID_PATTERN

FORMATS = ("jsonl", "csv", "parquet")


class ManifestError(ValueError):
    """A manifest cannot be read as a whole: nothing runs (exit code 2)."""


def manifest_format(uri: str) -> str:
    name = uri.lower().split("?")[0]
    for suffix, fmt in (
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".json", "jsonl"),
        (".csv", "csv"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
    ):
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
        # pydantic_core's JSON parser: the same objects as json.loads (NaN included), ~2.5x faster,
        # which matters in this sequential read of a million-row manifest (BENCHMARKS.md).
        with fsspec.open(uri, "rt", encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                text = line.strip()
                if not text:
                    continue  # blank lines are not rows
                try:
                    yield number, from_json(text), "", text
                except ValueError as err:
                    yield number, None, f"not valid JSON: {err}", None
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


RECORD_TYPES = {
    "id": pa.string(),
    "source": pa.string(),
    "line": pa.int64(),
    "kind": pa.string(),
    "route": pa.string(),
    "raw_json": pa.string(),
    "error": pa.string(),
}
RECORD_COLUMNS = tuple(RECORD_TYPES)


def read_batches(
    uris: list[str], done_ids: set[str] | frozenset[str] = frozenset(), size: int = 16384
) -> Iterator[dict[str, list]]:
    """Every manifest row as one record, in manifest order, in column batches of `size` records
    (RECORD_COLUMNS; the form a Ray Data generator UDF yields). Built column by column, with no
    dict per row: this loop is the one sequential part of a run.

    route: "pending" (to validate), "rejected" (no usable id; error says why) or "skip"
    (already `ok` in the output: resume).
    """
    seen: dict[str, tuple[str, int]] = {}
    columns: tuple[list, ...] = tuple([] for _ in RECORD_COLUMNS)
    ids, sources, lines, kinds, routes, raws, errors = columns
    for uri in uris:
        source = posixpath.basename(uri.rstrip("/").split("?")[0])
        for number, obj, error, text in _objects(uri):
            row_id, kind, route, raw = None, "", "rejected", ""
            if obj is not None and not isinstance(obj, dict):
                error = f"not an object (a {type(obj).__name__})"
            elif obj is not None:
                kind = obj.get("kind")
                kind = kind if isinstance(kind, str) else ""
                raw = text if text is not None else json.dumps(obj)
                candidate = obj.get("id")
                if candidate is None:
                    error = "id: required"
                elif not isinstance(candidate, str) or not ID_PATTERN.match(candidate):
                    error = f"id: must match [A-Za-z0-9._-]{{1,128}}, got {candidate!r}"
                elif candidate in seen:
                    error = "id: {!r} already used at {}:{}".format(candidate, *seen[candidate])
                else:
                    seen[candidate] = (source, number)
                    row_id, route = candidate, ("skip" if candidate in done_ids else "pending")
            ids.append(row_id if row_id is not None else f"{source}:{number}")
            sources.append(source)
            lines.append(number)
            kinds.append(kind)
            routes.append(route)
            raws.append(raw)
            errors.append(error)
            if len(ids) >= size:
                yield dict(zip(RECORD_COLUMNS, columns))
                columns = tuple([] for _ in RECORD_COLUMNS)
                ids, sources, lines, kinds, routes, raws, errors = columns
    if ids:
        yield dict(zip(RECORD_COLUMNS, columns))


def read_records(uris: list[str], done_ids: set[str] | frozenset[str] = frozenset()) -> Iterator[dict[str, Any]]:
    """read_batches, one record (a dict of RECORD_COLUMNS) at a time."""
    for batch in read_batches(uris, done_ids):
        for values in zip(*(batch[c] for c in RECORD_COLUMNS)):
            yield dict(zip(RECORD_COLUMNS, values))
