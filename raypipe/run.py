"""The Ray Data graph: read -> validate -> route -> one actor pool per kind -> sink.

    manifests ─▶ read (one task, manifest order, ids checked) ─▶ validate (parallel CPU tasks)
        ├─ route == "rejected" ─────────────────────────────────────────────────┐
        ├─ route == "cogvideox" ─▶ CogVideoX actor pool ─▶ write_videos (CPU) ─┤─▶ union ─▶ driver:
        └─ route == <kind>      ─▶ <kind> actor pool    ─▶ write_videos (CPU) ─┘   metadata parts

A first pass over the validated rows counts them per route, so that only kinds that have
rows get a pool (a pool reserves GPUs) and the progress line knows the total.
Only metadata reaches the driver; frames go from the pool to the CPU writers through the
object store.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raypipe.config import KindConfig, RunConfig
from raypipe.manifest import batched_records, read_records
from raypipe.schema import KNOWN_KINDS, empty_metadata, row_from_json, row_to_json, validate_row
from raypipe.sink import MetadataSink, load_done_ids, meta_from_json, meta_to_json, reconcile, write_videos

log = logging.getLogger("raypipe")

READ_BATCH_ROWS = 4096


def init_ray(address: str | None = None) -> bool:
    """Connect to (or start) Ray; True if this call started it. Inside `ray job submit`
    RAY_ADDRESS is set and ray.init() joins that cluster."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             configure_logging=True)
    return True


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_operator_progress_bars = False


# ---- the graph's CPU functions ---------------------------------------------------------


def _read_fn(uris: list[str], out: str | None):
    def read(_batch):
        done = load_done_ids(out) if out else set()
        yield from batched_records(read_records(uris, done), READ_BATCH_ROWS)
    return read


def _validate_batch(batch: dict[str, np.ndarray], defaults: dict[str, dict]) -> dict[str, Any]:
    routes, errors, rows = [], [], []
    for route, kind, raw_json, error in zip(batch["route"], batch["kind"], batch["raw_json"], batch["error"]):
        row_json = ""
        if route == "pending":
            try:
                if kind and kind in KNOWN_KINDS and kind not in defaults:
                    raise ValueError(f"kind: no model configured for {kind!r} in the run config")
                row = validate_row(json.loads(raw_json), defaults.get(kind))
                route, row_json = row.kind, row_to_json(row)
            except ValueError as err:
                route, error = "rejected", str(err)
        routes.append(route)
        errors.append(error)
        rows.append(row_json)
    return {**batch, "route": routes, "error": errors, "row_json": rows}


def _rejected_meta(batch: dict[str, np.ndarray]) -> dict[str, list]:
    metas = []
    for row_id, kind, source, line, raw_json, error in zip(batch["id"], batch["kind"], batch["source"], batch["line"],
                                                           batch["raw_json"], batch["error"]):
        meta = empty_metadata(str(row_id), str(kind), "rejected", str(error))
        raw = json.loads(raw_json) if raw_json else {}
        if isinstance(raw.get("prompt"), str):
            meta["prompt"] = raw["prompt"]
        meta["params_json"] = json.dumps({"source": str(source), "line": int(line)})
        metas.append(meta_to_json(meta))
    return {"meta_json": metas}


class StageActor:
    """A Ray Data actor of one kind's pool: the stage is set up once, in __init__."""

    def __init__(self, kind: str, kind_config: dict[str, Any]):
        from raypipe.stages import stage_class

        self.kind = kind
        self.setup_error = ""
        self.stage = stage_class(kind)(KindConfig.model_validate(kind_config))
        try:
            self.stage.setup()
        except Exception as err:  # noqa: BLE001 - every row of this actor fails with the reason
            self.setup_error = f"loading the {kind} model failed: {type(err).__name__}: {err}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from raypipe.schema import metadata_from_row

        rows = [row_from_json(text) for text in batch["row_json"]]
        if self.setup_error:
            metas = [meta_to_json(metadata_from_row(row, "failed", self.setup_error)) for row in rows]
            return {"meta_json": metas, "frames": [b""] * len(rows)}
        results = self.stage.process(rows)
        return {"meta_json": [meta_to_json(r.meta) for r in results],
                "frames": [r.frames.tobytes() if r.frames is not None else b"" for r in results]}


# ---- the graph ---------------------------------------------------------------------------


def validated_dataset(uris: list[str], config: RunConfig, out: str | None = None):
    """Records of every manifest row with their route: a kind, 'rejected' or 'skip'."""
    import ray.data

    _quiet_ray_data()
    defaults = {kind: kc.defaults for kind, kc in config.kinds.items()}
    cpu = config.cpu_stage_num_cpus
    return (ray.data.from_items([{"manifests": 0}])
            .map_batches(_read_fn(uris, out), batch_size=None, num_cpus=cpu)
            .map_batches(_validate_batch, fn_kwargs={"defaults": defaults}, batch_size=READ_BATCH_ROWS, num_cpus=cpu))


def count_routes(validated) -> dict[str, int]:
    return {row["route"]: int(row["count()"]) for row in validated.groupby("route").count().take_all()}


def _route_is(route: str):
    from ray.data.expressions import col

    return col("route") == route


def pool_dataset(validated, kind: str, kc: KindConfig, rows: int, out: str, cpu: float):
    import ray.data

    from raypipe.stages import stage_class

    size = min(kc.pool_size, rows)
    compute = ray.data.ActorPoolStrategy(min_size=size, max_size=max(size, min(kc.max_pool_size or size, rows)))
    return (validated.filter(expr=_route_is(kind))
            .map_batches(StageActor, fn_constructor_args=(kind, kc.model_dump()), compute=compute,
                         batch_size=kc.batch_size, **stage_class(kind).ray_resources(kc))
            .map_batches(write_videos, fn_kwargs={"out": out}, batch_size=1, num_cpus=cpu))


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "rejected": 0})
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return sum(self.by_status.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.by_status["failed"] == 0 and self.by_status["rejected"] == 0 else 1

    def line(self) -> str:
        s = self.by_status
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        remaining = self.total - self.done
        eta = f", ETA {remaining / rate:.0f}s" if rate > 0 and remaining > 0 else ""
        return (f"raypipe: {self.done}/{self.total} rows done (ok {s['ok']}, failed {s['failed']}, "
                f"rejected {s['rejected']}), {self.skipped} skipped as done, {rate:.2f} rows/s{eta}")


def prepare_models(config: RunConfig, kinds: list[str]) -> None:
    """Build the `tiny:` models a run needs once, on the driver, before the pools start."""
    from raypipe.models.tiny import TINY_PREFIX, tiny_path

    for kind in kinds:
        kc = config.kinds[kind]
        for model in [kc.model, *kc.models.values()]:
            if model.startswith(TINY_PREFIX):
                tiny_path(model)


def run(uris: list[str], out: str, config: RunConfig, progress=sys.stderr) -> RunSummary:
    """Run every manifest row to a final state under `out`; returns the counts."""
    started = time.monotonic()
    sink = MetadataSink(out, config.metadata_flush_rows, config.metadata_flush_seconds)
    validated = validated_dataset(uris, config, out)
    routes = count_routes(validated)
    summary = RunSummary(total=sum(n for r, n in routes.items() if r != "skip"), skipped=routes.get("skip", 0))
    kinds = [k for k in routes if k in config.kinds]
    prepare_models(config, kinds)

    results = validated.filter(expr=_route_is("rejected")).map_batches(_rejected_meta, num_cpus=config.cpu_stage_num_cpus)
    for kind in kinds:
        branch = pool_dataset(validated, kind, config.kinds[kind], routes[kind], out, config.cpu_stage_num_cpus)
        results = results.union(branch)

    last_line = time.monotonic()
    if summary.total:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for meta_json in batch["meta_json"]:
                meta = meta_from_json(meta_json)
                sink.add(meta)
                summary.by_status[meta["status"]] = summary.by_status.get(meta["status"], 0) + 1
            summary.seconds = time.monotonic() - started
            if time.monotonic() - last_line >= config.progress_seconds and summary.done < summary.total:
                print(summary.line(), file=progress, flush=True)
                last_line = time.monotonic()
    sink.flush()
    reconcile(out)
    summary.seconds = time.monotonic() - started
    print(summary.line(), file=progress, flush=True)  # the final counts, always
    return summary


def rejected_rows(uris: list[str], config: RunConfig) -> tuple[int, list[dict[str, Any]]]:
    """`raypipe validate`: the number of rows and each rejected row (id, source, line, error)."""
    validated = validated_dataset(uris, config)
    routes = count_routes(validated)
    rejected = []
    if routes.get("rejected"):
        columns = ["id", "source", "line", "error"]
        for batch in validated.filter(expr=_route_is("rejected")).select_columns(columns).iter_batches(batch_size=None):
            rejected.extend(dict(zip(columns, values)) for values in zip(*(batch[c].tolist() for c in columns)))
    rejected.sort(key=lambda r: (r["source"], r["line"]))
    return sum(routes.values()), rejected
