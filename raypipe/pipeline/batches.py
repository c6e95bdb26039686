"""The CPU batch functions of the graph (Ray Data map_batches functions; no model here)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic_core import from_json

from raypipe.config import KindConfig
from raypipe.families import family
from raypipe.manifest import RECORD_TYPES, read_manifest
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
            for records in read_manifest(
                read.uris[index], index, read.sources, duplicates, done, READ_BATCH_ROWS, check_all=read.check_all
            ):
                # An Arrow table of known types: Ray Data's own conversion of a dict of lists infers
                # the types and costs this sequential task ~0.5 s more a million rows.
                yield pa.table({name: pa.array(records[name], type=type_) for name, type_ in RECORD_TYPES.items()})

    return read_manifests


def validate_batch(
    batch: dict[str, np.ndarray],
    defaults: dict[str, dict],
    kinds: dict[str, dict] | None = None,
    keep_rows: bool = True,
    then=None,
    nodes: GangNodes | None = None,
) -> dict[str, Any]:
    """Validate each pending record: route = its pool (records.pool_route: its kind, or "<kind>/sp<N>"),
    or "rejected" with the error. keep_rows: add the validated row, packed (`row`). then: a reduction
    of the validated batch, run in the same task (counting, pricing), so that only its result leaves
    the task. nodes: what gangs must fit (read once on the driver), None: not checked."""
    routes, errors, rows = [], [], []
    configs: dict[str, KindConfig] = {}  # parsed once a batch, for the rows that need them
    all_kinds = known_kinds()
    sweeps = batch["sweep"] if "sweep" in batch else [""] * len(batch["route"])
    for route, kind, raw_json, error, sweep in zip(
        batch["route"], batch["kind"], batch["raw_json"], batch["error"], sweeps
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
    validated = {**batch, "route": routes, "error": errors}
    if then is not None:
        return then({**validated, "rows": rows})
    validated["row"] = [pack(row) if row is not None and keep_rows else NONE for row in rows]
    return validated


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
    out: dict[str, list] = {"id": [], "source": [], "line": [], "error": [], "rows": []}
    valid = 0
    for route, row_id, source, line, error in zip(
        batch["route"], batch["id"], batch["source"], batch["line"], batch["error"]
    ):
        if route == "rejected":
            for key, value in (("id", row_id), ("source", source), ("line", int(line)), ("error", error), ("rows", 1)):
                out[key].append(value)
        else:
            valid += 1
    for key, value in (("id", ""), ("source", ""), ("line", 0), ("error", ""), ("rows", valid)):
        out[key].append(value)
    return out


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
