"""The CPU batch functions of the graph (Ray Data map_batches functions; no model here)."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic_core import from_json

from raypipe.config import KindConfig
from raypipe.families import family
from raypipe.manifest import read_manifest
from raypipe.metadata import Metadata, empty_metadata, metadata_from_row, prompt_text
from raypipe.parallel import check_sequence_parallel
from raypipe.parallel.validate import GangNodes
from raypipe.pipeline.records import NONE, READ_BATCH_ROWS, pack, pool_route, unpack
from raypipe.schema import known_kinds, validate_row

LOST_ERROR = (
    "lost: the worker running this row died on every retry (a node lost, or the process killed, "
    "e.g. out of memory); see the Ray logs"
)


def read_fn(read):
    """The read of whole manifests (read: a pipeline.read.ManifestRead); each row of a batch is
    one manifest's index, so a task reads one manifest (graph.records_dataset)."""

    def read_manifests(batch):
        import ray

        # The resume index and the duplicates come from the object store: the driver never holds
        # them, and the read tasks of a node share one copy.
        done = ray.get(read.done) if read.done is not None else None
        for index in batch["manifest"]:
            index = int(index)
            duplicates = ray.get(read.duplicates[index])
            # Arrow tables of known types: Ray Data's own conversion of a dict of lists infers the
            # types and costs this sequential task ~0.5 s more a million rows.
            yield from read_manifest(
                read.uris[index], index, read.sources, duplicates, done, READ_BATCH_ROWS, check_all=read.check_all
            )

    return read_manifests


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Python's cyclic garbage collector off for a batch (a context manager, or a decorator:
    `@no_cyclic_gc()`): validating a row allocates a few dozen
    objects (pydantic), and in a Ray worker, whose heap holds Ray Data's and pyarrow's modules, the
    collections that set off took ~40% of the validation (BENCHMARKS.md). A batch is bounded, so
    the cycles it leaves are collected when the collector is back on."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


@no_cyclic_gc()
def validate_batch(
    batch: pa.Table | dict[str, Any],
    defaults: dict[str, dict],
    kinds: dict[str, dict] | None = None,
    keep_rows: bool = True,
    then=None,
    nodes: GangNodes | None = None,
) -> dict[str, Any]:
    """Validate each pending record: route = its pool (records.pool_route: its kind, or "<kind>/sp<N>"),
    or "rejected" with the error. keep_rows: add the validated row, packed (`row`). then: a reduction
    of the validated batch, run in the same task (counting, pricing), so that only its result leaves
    the task. nodes: what gangs must fit (read once on the driver), None: not checked.

    batch: an Arrow table (Ray Data's batch_format="pyarrow": only the columns read here become
    Python objects, and the others pass through as they are) or a dict of lists (in process)."""
    routes, errors, rows = [], [], []
    configs: dict[str, KindConfig] = {}  # parsed once a batch, for the rows that need them
    all_kinds = known_kinds()
    table = batch if isinstance(batch, pa.Table) else None
    names = table.column_names if table is not None else list(batch)

    def column(name: str) -> list:
        return table.column(name).to_pylist() if table is not None else batch[name]

    sweeps = (
        column("sweep") if "sweep" in names else [""] * (table.num_rows if table is not None else len(batch["route"]))
    )
    for route, kind, raw_json, error, sweep in zip(
        column("route"), column("kind"), column("raw_json"), column("error"), sweeps
    ):
        row = None
        if route == "pending":
            try:
                if kind and kind in all_kinds and kind not in defaults:
                    raise ValueError(f"kind: no model configured for {kind!r} in the run config")
                row = validate_row(from_json(raw_json), defaults.get(kind))
                if sweep:  # a row a manifest's sweep made: its params_json says so (metadata.row_params)
                    row._sweep = from_json(sweep)
                if kinds and getattr(row, "sp_degree", 1) > 1:  # heads, latent rows, CFG parallel, gang size
                    if kind not in configs:
                        configs[kind] = KindConfig.model_validate(kinds[kind])
                    if nodes is None:
                        check_sequence_parallel(row, configs[kind], check_nodes=False)
                    else:
                        check_sequence_parallel(row, configs[kind], nodes.nodes, source=nodes.source)
                check = family(row.kind).check
                if kinds and check is not None:  # the family's own checks against its config
                    if kind not in configs:
                        configs[kind] = KindConfig.model_validate(kinds[kind])
                    check(row, configs[kind])
                route = pool_route(row.kind, getattr(row, "sp_degree", 1))
            except ValueError as err:
                route, error, row = "rejected", str(err), None
        routes.append(route)
        errors.append(error)
        rows.append(row)
    if then is not None:
        others = {name: table.column(name) for name in names} if table is not None else batch
        return then({**others, "route": routes, "error": errors, "rows": rows})
    packed = [pack(row) if row is not None and keep_rows else NONE for row in rows]
    if table is None:
        return {**batch, "route": routes, "error": errors, "row": packed}
    for name, values in (("route", routes), ("error", errors)):
        table = table.set_column(names.index(name), name, pa.array(values, pa.string()))
    return table.append_column("row", pa.array(packed, pa.binary()))


def take(column, indexes: list[int]) -> list:
    """The values at `indexes` of a batch's column: a list, or an Arrow column (validate_batch's
    `then` gets the columns it did not read as Arrow data)."""
    if isinstance(column, (pa.Array, pa.ChunkedArray)):
        return column.take(indexes).to_pylist()
    return [column[i] for i in indexes]


def rejected_metadata(row_id, kind, source, line, raw_json, error, sweep="") -> Metadata:
    meta = empty_metadata(str(row_id), str(kind), "rejected", str(error))
    raw = from_json(raw_json) if raw_json else {}
    if isinstance(raw, dict) and isinstance(raw.get("prompt"), (str, dict)):
        meta.prompt = prompt_text(raw["prompt"])
    params = {"source": str(source), "line": int(line)}
    if sweep:  # a row a manifest's sweep made (raypipe/manifest.py)
        params["sweep"] = from_json(sweep)
    meta.params_json = json.dumps(params)
    return meta


def rejected_meta(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """The branch of rows with no pool: rejected by validation (or lost, in the sweep)."""
    metas = []
    for row_id, kind, source, line, raw_json, route, error, row, sweep in zip(
        batch["id"],
        batch["kind"],
        batch["source"],
        batch["line"],
        batch["raw_json"],
        batch["route"],
        batch["error"],
        batch["row"],
        batch["sweep"],
    ):
        if route == "rejected":
            metas.append(pack(rejected_metadata(row_id, kind, source, line, raw_json, error, sweep)))
        else:  # a valid row here is one the sweep found without a final state
            metas.append(pack(metadata_from_row(unpack(row), "failed", LOST_ERROR)))
    return {"meta": metas}


def count_routes_batch(batch: dict[str, Any]) -> dict[str, Any]:
    routes, counts = np.unique(np.asarray(batch["route"], dtype=object).astype(str), return_counts=True)
    return {"route": routes, "rows": counts}


def rejected_and_tally(batch: dict[str, Any]) -> dict[str, list]:
    """For `raypipe validate`: the batch's rejected rows, plus one tally row (id "") standing for
    its valid rows; `rows` says how many manifest rows each output row stands for."""
    rejected = [i for i, route in enumerate(batch["route"]) if route == "rejected"]
    return {
        "id": [*take(batch["id"], rejected), ""],
        "source": [*take(batch["source"], rejected), ""],
        "line": [*(int(line) for line in take(batch["line"], rejected)), 0],
        "error": [*take(batch["error"], rejected), ""],
        "rows": [*([1] * len(rejected)), len(batch["route"]) - len(rejected)],
    }


def load_inputs(batch: dict[str, np.ndarray], stage_path: str, kind_config: dict[str, Any]) -> dict[str, list]:
    """CPU stage before a pool: decode each row's input images / videos (Stage.load_inputs), so the
    pool actor only generates. A row rejected by validation gets its metadata record here."""
    from raypipe.families import stage_class

    stage = stage_class(stage_path)(KindConfig.model_validate(kind_config))  # no model is loaded
    n = len(batch["route"])
    metas, inputs = [NONE] * n, [NONE] * n
    todo = []
    for i in range(n):
        if batch["route"][i] == "rejected":
            metas[i] = pack(
                rejected_metadata(
                    batch["id"][i],
                    batch["kind"][i],
                    batch["source"][i],
                    batch["line"][i],
                    batch["raw_json"][i],
                    batch["error"][i],
                    batch["sweep"][i],
                )
            )
        else:
            todo.append(i)
    loaded = stage.load_all_inputs([unpack(batch["row"][i]) for i in todo])
    for i, value in zip(todo, loaded):  # a dict of arrays / images, or the error text
        inputs[i] = pack(value)
    return {"row": list(batch["row"]), "meta": metas, "inputs": inputs}
