"""Reading manifests (JSONL, CSV, Parquet; any fsspec URI) into records with line numbers.

Every line of a manifest becomes one record, or one per row of its sweep. A line without a usable
id (not JSON, not an object, no id, a malformed id, a sweep that cannot be expanded) gets the id
`<manifest file name>:<line number>` and is rejected, so nothing vanishes.

Sweeps: a row with `sweep` (a grid of fields, `{"seed": [1, 2], "guidance_scale": [5, 7]}`)
and/or `num_videos: K` (K seeds from the row's seed) stands for the rows `<id>.<n>`, n = 0.. in
grid order (the fields in the order written, the last varying fastest, then the K seeds): each is
an ordinary row with the values set, validated on its own; its `sweep` column (JSON) says what it
is, `{"of": "<id>", "values": {...}}`, and goes into its metadata's params_json.

Ids are unique across the manifests of a run: the first occurrence of an id (in manifest order,
then line order) keeps it and later ones are rejected under `<file>:<line>` ids ("id: 'x' already
used at file:line"). An id that a sweep makes and another row also has is rejected everywhere
(the first occurrence keeps its id, rejected too), since neither row is plainly the one meant.

Reading is parallel, a task per manifest (raypipe/pipeline/read.py), in two passes: `manifest_ids`
lists each manifest's ids (as Arrow data), `find_duplicates` finds the repeated ones across all of
them (raypipe/ids.py: no Python object per id), then `read_manifest` reads each manifest into
record batches, in its line order, with its share of the duplicates and the resume index (an
IdSet of the ids already `ok`, checked a batch at a time). `read_batches` does all of it in this
process, one manifest after the other.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import posixpath
import re
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
from pydantic_core import from_json

from raypipe.ids import IdSet, duplicate_groups
from raypipe.schema import ID_PATTERN, seed_from_id

FORMATS = ("jsonl", "csv", "parquet")
# A sweep row stands for at most this many rows (a typo in a grid should not make a billion).
MAX_SWEEP_ROWS = 100_000
NOT_SWEPT = ("id", "kind", "sweep", "num_videos")
ID_RULE = "[A-Za-z0-9._-]{1,128}"


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


def manifest_sources(uris: list[str]) -> list[str]:
    """How records and messages name each manifest: its file name, or its whole URI where two
    manifests of the run share a file name (their `<file>:<line>` ids would collide)."""
    names = [posixpath.basename(uri.rstrip("/").split("?")[0]) for uri in uris]
    sources = [uri if names.count(name) > 1 else name for uri, name in zip(uris, names)]
    # the same manifest given twice: its second reading is "<uri>#2" (its rows: ids used above)
    return [
        f"{source}#{sources[:i].count(source) + 1}" if source in sources[:i] else source
        for i, source in enumerate(sources)
    ]


def _jsonl_lines(lines: Iterable[str]) -> Iterator[tuple[int, Any, str, str | None]]:
    """_objects' rows of JSONL text lines, numbered from 1."""
    # pydantic_core's JSON parser: the same objects as json.loads (NaN included), ~2.5x faster,
    # which matters in this sequential read of a million-row manifest (BENCHMARKS.md).
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue  # blank lines are not rows
        try:
            yield number, from_json(text), "", text
        except ValueError as err:
            yield number, None, f"not valid JSON: {err}", None


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
            yield from _jsonl_lines(f)
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


# ---- sweeps ---------------------------------------------------------------------------------------


def _integer(value: Any) -> int | None:
    """An int, or the int a CSV cell's digits spell; None for anything else."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def sweep_values(row: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The values of each row a sweep row stands for, in grid order; None for a row without
    `sweep` or `num_videos`. Raises ValueError naming the field."""
    if "sweep" not in row and "num_videos" not in row:
        return None
    grid = row.get("sweep", {})
    if isinstance(grid, str) and grid.strip().startswith("{"):  # a JSON cell of a Parquet manifest
        try:
            grid = json.loads(grid)
        except json.JSONDecodeError as err:
            raise ValueError(f"sweep: not valid JSON: {err}") from None
    if not isinstance(grid, dict):
        raise ValueError(f"sweep: must be an object of field: [values], got {type(grid).__name__}")
    grid = {field: values for field, values in grid.items() if values is not None}  # Parquet structs
    if "sweep" in row and not grid:
        raise ValueError("sweep: must name at least one field")
    for field, values in grid.items():
        if field in NOT_SWEPT:
            raise ValueError(f"sweep.{field}: cannot be swept")
        if field in row:
            raise ValueError(f"sweep.{field}: also set in the row; set it in one place")
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep.{field}: must be a non-empty list")
    videos, seed = 0, None
    if "num_videos" in row:
        videos = _integer(row["num_videos"])
        if videos is None or videos < 1:
            raise ValueError(f"num_videos: must be a positive integer, got {row['num_videos']!r}")
        if "seed" in grid:
            raise ValueError("num_videos: cannot be combined with sweep.seed (each swept seed is one video)")
        seed = seed_from_id(row["id"]) if row.get("seed") is None else _integer(row["seed"])
        if seed is None:
            raise ValueError(f"seed: must be an integer to make num_videos seeds from, got {row['seed']!r}")
    count = math.prod(len(values) for values in grid.values()) * max(videos, 1)
    if count > MAX_SWEEP_ROWS:
        raise ValueError(f"sweep: stands for {count} rows, more than {MAX_SWEEP_ROWS} a row")
    if len(f"{row['id']}.{count - 1}") > 128:
        raise ValueError(f"id: too long for a sweep: {row['id']}.{count - 1} must match {ID_RULE}")
    combos = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())]
    if not videos:
        return combos
    return [{**combo, "seed": seed + k} for combo in combos for k in range(videos)]


# ---- one manifest line -> its records ---------------------------------------------------------------


def _usable(obj: Any, error: str) -> tuple[str | None, list[dict] | None, str]:
    """(id, the sweep's values or None, error) of one parsed line; no id when the line has no usable one."""
    if obj is None:
        return None, None, error
    if not isinstance(obj, dict):
        return None, None, f"not an object (a {type(obj).__name__})"
    candidate = obj.get("id")
    if candidate is None:
        return None, None, "id: required"
    if not isinstance(candidate, str) or not ID_PATTERN.match(candidate):
        return None, None, f"id: must match {ID_RULE}, got {candidate!r}"
    try:
        return candidate, sweep_values(obj), ""
    except ValueError as err:
        return None, None, str(err)


def _line_records(source: str, number: int, obj: Any, error: str, text: str | None) -> list[tuple]:
    """The records of one line: (id, kind, route, raw_json, error, sweep, n); n is -1 for a row's
    own id, the row number for a sweep's, None for a line rejected as a whole (no id claimed)."""
    row_id, values, error = _usable(obj, error)
    kind = obj.get("kind") if isinstance(obj, dict) else ""
    kind = kind if isinstance(kind, str) else ""
    if row_id is None:
        raw = (text if text is not None else json.dumps(obj)) if isinstance(obj, dict) else ""
        return [(f"{source}:{number}", kind, "rejected", raw, error, "", None)]
    if values is None:
        return [(row_id, kind, "pending", text if text is not None else json.dumps(obj), "", "", -1)]
    base = {k: v for k, v in obj.items() if k not in ("sweep", "num_videos")}
    return [
        (
            f"{row_id}.{n}",
            kind,
            "pending",
            json.dumps({**base, **value, "id": f"{row_id}.{n}"}),
            "",
            json.dumps({"of": row_id, "values": value}),
            n,
        )
        for n, value in enumerate(values)
    ]


def _claims(obj: Any) -> list[tuple[str, int]]:
    """The ids a line claims, with n as in _line_records (the id pass: nothing but ids)."""
    row_id, values, _ = _usable(obj, "")
    if row_id is None:
        return []
    if values is None:
        return [(row_id, -1)]
    return [(f"{row_id}.{n}", n) for n in range(len(values))]


# ---- the id pass and the duplicates -------------------------------------------------------------------

CLAIMS_SCHEMA = pa.schema([("id", pa.string()), ("line", pa.int64()), ("n", pa.int32())])
_CHUNK = 65536


def manifest_ids(uri: str) -> pa.Table:
    """Every id the manifest's lines claim (CLAIMS_SCHEMA: id, line, n), in line order, as Arrow
    columns built a chunk at a time (no Python object per id outlives its chunk). A JSONL manifest
    of plain rows is parsed by Arrow's JSON reader (several times faster: this pass is sequential, before
    any row is read); any other goes through the same parse as the read, a line at a time."""
    if manifest_format(uri) == "jsonl":
        claims = _plain_jsonl_ids(uri)
        if claims is not None:
            return claims
    return _line_ids(uri)


def _line_ids(uri: str) -> pa.Table:
    """manifest_ids a line at a time, through the read's own parse (_objects, _claims)."""
    chunks: list[pa.RecordBatch] = []
    ids: list[str] = []
    lines: list[int] = []
    ns: list[int] = []

    def flush() -> None:
        if ids:
            chunks.append(pa.record_batch([pa.array(ids, pa.string()), lines, ns], schema=CLAIMS_SCHEMA))
            ids.clear()
            lines.clear()
            ns.clear()

    for number, obj, _, _ in _objects(uri):
        if type(obj) is dict and "sweep" not in obj and "num_videos" not in obj:  # the common case, inline
            candidate = obj.get("id")
            if type(candidate) is str and ID_PATTERN.match(candidate):
                ids.append(candidate)
                lines.append(number)
                ns.append(-1)
        else:
            for row_id, n in _claims(obj):
                ids.append(row_id)
                lines.append(number)
                ns.append(n)
        if len(ids) >= _CHUNK:
            flush()
    flush()
    return pa.Table.from_batches(chunks, schema=CLAIMS_SCHEMA)


# Plain JSONL, which Arrow's JSON reader may parse for the id pass and the read (several times
# faster than a line at a time, in these sequential passes): every line one JSON object, `id` and
# `kind` strings (or null, or absent), no blank line (Arrow skips them: the line numbers would
# shift), no sweep (a row claiming several ids) and no lone \r (a line break to Python's text
# mode, not to Arrow). A chunk of lines that is not plain goes a line at a time, as before.
_NOT_PLAIN = (b'"sweep"', b'"num_videos"')
_BLANK_LINE = re.compile(rb"\n[ \t\r]*\n")  # searched in "\n" + lines + "\n"
_ARROW_ID_RULE = "^[A-Za-z0-9._-]{1,128}$"  # ID_PATTERN in RE2, whose $ is the end of the text
_PLAIN_FIELDS = pa.schema([("id", pa.string()), ("kind", pa.string())])
CHUNK_BYTES = 16 << 20  # a chunk of lines and its Arrow columns are held at once, a few times its size


def _line_chunks(uri: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """The bytes of a file in chunks of whole lines (each ends with \n but maybe the last)."""
    with fsspec.open(uri, "rb") as f:
        pending = b""
        while block := f.read(chunk_bytes):
            data = pending + block
            end = data.rfind(b"\n") + 1
            chunk, pending = data[:end], data[end:]
            if chunk:
                yield chunk
        if pending:
            yield pending


def _plain_rows(chunk: bytes) -> tuple[pa.Table, pa.Array] | None:
    """(id and kind of each line, each line's text stripped) of a chunk of plain JSONL lines, row i
    for the chunk's line i + 1; None when the chunk is not plain (see _NOT_PLAIN)."""
    import pyarrow.compute as pc
    import pyarrow.json as pj

    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    if any(word in chunk for word in _NOT_PLAIN) or chunk.count(b"\r") != chunk.count(b"\r\n"):
        return None
    if _BLANK_LINE.search(b"\n" + body + b"\n"):
        return None
    options = pj.ParseOptions(explicit_schema=_PLAIN_FIELDS, unexpected_field_behavior="ignore")
    try:
        table = pj.read_json(pa.BufferReader(chunk), parse_options=options)
        text = pa.array([body], pa.large_binary()).cast(pa.large_string())  # fails on bad UTF-8
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # not JSON, not an object, id not a string, ...
        return None
    lines = pc.utf8_trim(pc.split_pattern(text, "\n").flatten(), " \t\r")  # JSON's whitespace
    if table.num_rows != len(lines):
        return None
    return table, lines.cast(pa.string())


def _plain_jsonl_ids(uri: str, chunk_bytes: int = CHUNK_BYTES) -> pa.Table | None:
    """manifest_ids of a plain JSONL manifest (see _NOT_PLAIN) through Arrow's JSON reader, a chunk
    of lines at a time; None if a chunk is not plain: then the line-by-line pass runs. The same ids
    as manifest_ids' own pass (tests/test_scale.py checks both agree)."""
    import pyarrow.compute as pc

    batches: list[pa.RecordBatch] = []
    first_line = 1
    for chunk in _line_chunks(uri, chunk_bytes):
        plain = _plain_rows(chunk)
        if plain is None:
            return None
        ids = plain[0].column("id")
        valid = pc.fill_null(pc.match_substring_regex(ids, _ARROW_ID_RULE), False)
        numbers = pa.array(np.arange(first_line, first_line + len(ids), dtype=np.int64))
        kept = pa.table([ids, numbers], names=["id", "line"]).filter(valid)
        n = pa.array(np.full(kept.num_rows, -1, dtype=np.int32))
        batches.extend(pa.table([kept["id"], kept["line"], n], schema=CLAIMS_SCHEMA).to_batches())
        first_line += len(ids)
    return pa.Table.from_batches(batches, schema=CLAIMS_SCHEMA)


DUPLICATE_FIELDS = ("line", "n", "code", "other", "other_line", "other_n")
# code: 0 a later occurrence of a row's id; 1 a later occurrence where a sweep makes the id;
# 2 the first occurrence of an id a sweep makes (or takes) elsewhere too. other: the manifest
# (its index) and line (and n) of the first occurrence (0, 1) or of the second (2).


def _no_duplicates() -> dict[str, np.ndarray]:
    return {name: np.empty(0, dtype=np.int64) for name in DUPLICATE_FIELDS}


def find_duplicates(claims: list[pa.Table]) -> list[dict[str, np.ndarray]]:
    """Per manifest (claims[i] = manifest_ids of the i-th), the claims that lose their id: arrays
    of DUPLICATE_FIELDS, sorted by (line, n). Exact, and without a Python object per id."""
    sizes = [t.num_rows for t in claims]
    if not sum(sizes):
        return [_no_duplicates() for _ in claims]
    ids = pa.chunked_array([t.column("id") for t in claims], type=pa.string())
    positions, groups = duplicate_groups(ids)
    if not len(positions):
        return [_no_duplicates() for _ in claims]
    manifest = np.repeat(np.arange(len(claims)), sizes)[positions]
    line = np.concatenate([t.column("line").to_numpy() for t in claims])[positions]
    n = np.concatenate([t.column("n").to_numpy() for t in claims]).astype(np.int64)[positions]
    # groups are contiguous, each in claim order: its first member is the first occurrence
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    group_of = np.cumsum(np.r_[True, groups[1:] != groups[:-1]]) - 1
    first, second = starts[group_of], starts[group_of] + 1
    by_sweep = np.maximum.reduceat((n >= 0).astype(np.int8), starts)[group_of].astype(bool)
    is_first = np.arange(len(positions)) == first
    other = np.where(is_first, second, first)
    code = np.where(is_first, 2, np.where(by_sweep, 1, 0))
    lose = ~is_first | by_sweep
    out = []
    for index in range(len(claims)):
        mine = np.flatnonzero(lose & (manifest == index))
        mine = mine[np.lexsort((n[mine], line[mine]))]
        values = (line[mine], n[mine], code[mine], manifest[other[mine]], line[other[mine]], n[other[mine]])
        out.append({name: np.asarray(v, dtype=np.int64) for name, v in zip(DUPLICATE_FIELDS, values)})
    return out


class _Duplicates:
    """Walks one manifest's find_duplicates entry in (line, n) order, a slice of Python ints at a
    time: a manifest given twice has an entry for each of its lines."""

    SLICE = 65536

    def __init__(self, duplicates: dict[str, np.ndarray] | None):
        self.arrays = duplicates if duplicates is not None else _no_duplicates()
        self.total, self.start, self.at = len(self.arrays["line"]), 0, 0
        self._load()

    def _load(self) -> None:
        end = self.start + self.SLICE
        self.rows = list(zip(*(self.arrays[name][self.start : end].tolist() for name in DUPLICATE_FIELDS)))
        self.at = 0

    def _current(self) -> tuple | None:
        """The entry at the cursor (the next slice loaded as needed), None past the last."""
        if self.at == len(self.rows):
            if self.start + len(self.rows) >= self.total:
                return None
            self.start += len(self.rows)
            self._load()
        return self.rows[self.at]

    def take_lines(self, first: int, last: int) -> list[tuple]:
        """The entries of lines first..last (claims come in the entries' order, as for take)."""
        found = []
        while (entry := self._current()) is not None and entry[0] <= last:
            if entry[0] >= first:
                found.append(entry)
            self.at += 1
        return found

    def take(self, line: int, n: int) -> tuple | None:
        """The entry of claim (line, n), if it loses its id (claims come in the entries' order;
        entries behind it, of lines no longer there, are passed over)."""
        while (entry := self._current()) is not None and (entry[0], entry[1]) < (line, n):
            self.at += 1
        if entry is None or (entry[0], entry[1]) != (line, n):
            return None
        self.at += 1
        return entry


def _duplicate_error(row_id: str, n: int, code: int, where: str, other_n: int) -> str:
    own = f"id: {row_id!r}" + (f" (of the sweep of {row_id.rsplit('.', 1)[0]!r})" if n >= 0 else "")
    if code == 0:
        return f"{own} already used at {where}"
    by = " by a sweep" if other_n >= 0 else ""
    seen = "already used at" if code == 1 else "also used at"
    return f"{own} {seen} {where}{by}; an id a sweep makes must be unique: every row with it is rejected"


# ---- reading into records -----------------------------------------------------------------------------

RECORD_TYPES = {
    "id": pa.string(),
    "source": pa.string(),
    "line": pa.int64(),
    "kind": pa.string(),
    "route": pa.string(),
    "raw_json": pa.string(),
    "error": pa.string(),
    "sweep": pa.string(),  # "" or {"of": <the sweep row's id>, "values": {...}} (JSON)
}
RECORD_COLUMNS = tuple(RECORD_TYPES)


def _done_index(done: Any) -> Any:
    """An IdSet for a collection of ids; an IdSet or another container (anything with `in`) as is."""
    if isinstance(done, (set, frozenset, list, tuple)):
        return IdSet.build([list(done)]) if done else None
    return done


def read_manifest(
    uri: str,
    index: int,
    sources: list[str],
    duplicates: dict[str, np.ndarray] | None = None,
    done: Any = None,
    size: int = 16384,
    check_all: bool = False,
    chunk_bytes: int | None = CHUNK_BYTES,
) -> Iterator[pa.Table]:
    """The records of manifest `index` of a run (sources: manifest_sources of its URIs), in line
    order, as Arrow tables of at most `size` records (RECORD_TYPES; the form a Ray Data generator
    UDF yields): this is the sequential part of a manifest's read. duplicates: find_duplicates'
    entry for it. done: the resume index, an IdSet (checked a batch at a time), or any container
    of ids (`in`, an id at a time). chunk_bytes: a JSONL manifest is read in chunks of lines this
    large, each plain one (see _NOT_PLAIN) parsed by Arrow, the others a line at a time; None:
    every line a line at a time (the reference the tests hold the Arrow read to).

    route: "pending" (to validate), "rejected" (no usable id; error says why) or "skip" (in
    `done`: already `ok` in the output). check_all: every record is checked against `done`, not
    only pending ones (the sweep for lost rows, whose index holds every id of the run)."""
    import pyarrow.compute as pc

    source = sources[index]
    lost = _Duplicates(duplicates)
    check = done is not None and (len(done) > 0 if isinstance(done, IdSet) else True)
    if chunk_bytes and manifest_format(uri) == "jsonl":
        pieces = _jsonl_records(uri, source, sources, lost, size, chunk_bytes)
    else:
        pieces = _line_records_batches(_objects(uri), source, sources, lost, size)
    for table in pieces:
        for start in range(0, table.num_rows, size):
            batch = table.slice(start, size)
            if check:  # the resume index, a batch at a time (vectorised for an IdSet)
                ids = batch.column("id").combine_chunks()
                found = done.contains(ids) if isinstance(done, IdSet) else [i in done for i in ids.to_pylist()]
                found = np.asarray(found, dtype=bool)
                if found.any():
                    routes = batch.column("route")
                    skip = found if check_all else found & pc.equal(routes, "pending").to_numpy(zero_copy_only=False)
                    batch = batch.set_column(
                        RECORD_COLUMNS.index("route"), "route", pc.if_else(pa.array(skip), "skip", routes)
                    )
            yield batch


def _records_table(columns: dict[str, Any]) -> pa.Table:
    """Records as Arrow columns of known types (lists converted, Arrow arrays as they are)."""
    return pa.table(
        {
            name: columns[name] if isinstance(columns[name], pa.Array) else pa.array(columns[name], type=type_)
            for name, type_ in RECORD_TYPES.items()
        }
    )


def _line_records_batches(objects, source: str, sources: list[str], lost, size: int, first_line: int = 0):
    """Records, a line at a time, of (number, obj, error, text) from _objects (numbers offset by
    first_line), in tables of `size` records, with their duplicates (lost: _Duplicates)."""
    columns: dict[str, list] = {name: [] for name in RECORD_COLUMNS}
    for number, obj, parse_error, text in objects:
        number += first_line
        for row_id, kind, route, raw, error, sweep, n in _line_records(source, number, obj, parse_error, text):
            entry = lost.take(number, n) if n is not None and lost.total else None
            if entry is not None:
                _, _, code, other, other_line, other_n = entry
                route, error = "rejected", _duplicate_error(row_id, n, code, f"{sources[other]}:{other_line}", other_n)
                if code != 2:  # the first occurrence keeps its id; later ones get their line's
                    row_id = f"{source}:{number}" + (f".{n}" if n >= 0 else "")
            for name, value in zip(RECORD_COLUMNS, (row_id, source, number, kind, route, raw, error, sweep)):
                columns[name].append(value)
        if len(columns["id"]) >= size:
            yield _records_table(columns)
            columns = {name: [] for name in RECORD_COLUMNS}
    if columns["id"]:
        yield _records_table(columns)


def _text_lines(chunk: bytes) -> int:
    """The lines of a chunk as Python's text mode breaks them (\n, \r\n, a lone \r): counted in
    the bytes, which decoding (errors="replace") leaves alone, since a break is ASCII."""
    breaks = chunk.count(b"\n") + chunk.count(b"\r") - chunk.count(b"\r\n")
    return breaks + (0 if chunk.endswith((b"\n", b"\r")) else 1)


def _jsonl_records(uri: str, source: str, sources: list[str], lost, size: int, chunk_bytes: int):
    """A JSONL manifest's records, a chunk of lines at a time: Arrow's parse for a plain chunk, a
    line at a time for the others; the same records either way (tests/test_scale.py)."""
    import pyarrow.compute as pc

    first_line = 0  # lines before this chunk
    for chunk in _line_chunks(uri, chunk_bytes):
        plain = _plain_rows(chunk)
        if plain is None:
            with io.TextIOWrapper(io.BytesIO(chunk), encoding="utf-8", errors="replace") as f:
                yield from _line_records_batches(_jsonl_lines(f), source, sources, lost, size, first_line)
            first_line += _text_lines(chunk)
            continue
        fields, texts = plain
        count = fields.num_rows
        numbers = np.arange(first_line + 1, first_line + 1 + count, dtype=np.int64)
        ids = fields.column("id").combine_chunks()
        valid = pc.fill_null(pc.match_substring_regex(ids, _ARROW_ID_RULE), False)
        entries = lost.take_lines(first_line + 1, first_line + count) if lost.total else []
        routes: Any = pc.if_else(valid, "pending", "rejected")
        errors: Any = pa.array([""] * count, pa.string())
        valid = valid.to_numpy(zero_copy_only=False)
        if entries or not valid.all():  # the few rows with their own id or error, in Python
            ids, routes, errors = ids.to_pylist(), routes.to_pylist(), errors.to_pylist()
            for i in np.flatnonzero(~valid).tolist():
                row_id, _, errors[i] = _usable({"id": ids[i]} if ids[i] is not None else {}, "")
                ids[i] = f"{source}:{numbers[i]}"
            for line, _, code, other, other_line, other_n in entries:  # plain rows: n is -1
                i = line - first_line - 1
                routes[i] = "rejected"
                errors[i] = _duplicate_error(ids[i], -1, code, f"{sources[other]}:{other_line}", other_n)
                if code != 2:
                    ids[i] = f"{source}:{line}"
        yield _records_table(
            {
                "id": ids,
                "source": pa.array([source] * count, pa.string()),
                "line": pa.array(numbers),
                "kind": pc.fill_null(fields.column("kind"), "").combine_chunks(),
                "route": routes,
                "raw_json": texts,
                "error": errors,
                "sweep": pa.array([""] * count, pa.string()),
            }
        )
        first_line += count


def read_batches(uris: list[str], done_ids: Any = None, size: int = 16384) -> Iterator[pa.Table]:
    """Every record of the manifests, in manifest order (read_manifest's batches), read in this
    process: the id pass, the duplicates, then each manifest. done_ids: an IdSet, a collection of
    ids or any container (read_manifest's `done`)."""
    sources = manifest_sources(uris)
    duplicates = find_duplicates([manifest_ids(uri) for uri in uris])
    done = _done_index(done_ids)
    for index, uri in enumerate(uris):
        yield from read_manifest(uri, index, sources, duplicates[index], done, size)


def read_records(uris: list[str], done_ids: Any = None) -> Iterator[dict[str, Any]]:
    """read_batches, one record (a dict of RECORD_COLUMNS) at a time."""
    for batch in read_batches(uris, done_ids):
        yield from batch.to_pylist()
