"""How busy each pool actor was, and the run summary file (OUT/runs/<run_id>.json).

Utilisation, from the metadata rows and one timestamp per actor:
  - a call is the rows one worker generated in one pipeline call: the same `worker` and
    `started_at`; its seconds are the sum of its rows' `gen_seconds` (a stage splits a call's
    time evenly over its rows), and it ends at started_at + seconds;
  - an actor's busy seconds are the sum of its calls' seconds; its span runs from the moment its
    model was loaded (`loaded_at`, which the actor attaches to every row it returns, see
    raypipe.metrics.StageMeter) to its pool's last call end in the run;
  - busy_ratio = busy / span, per actor; a pool's is the sum of its actors' busy over the sum of
    their spans. An idle gap (an actor waiting for rows, or for the others to finish the last
    ones) lowers it; 1.0 is an actor that never waited. An actor that never returned a row is
    not seen.

The driver folds each final metadata record in as it arrives (`Usage.observe`: a few numbers per
actor, never the rows); the report computes the same from the Parquet metadata
(`usage_from_rows`) with the run summaries' `loaded_at` per worker.

OUT/runs/<run_id>.json (one per run, written at its end; the metadata parts are named after the
same run id) holds: run_id, out, manifests, started_at / finished_at (Unix seconds), seconds,
rows (total, skipped, ok, failed, rejected), by_kind ({kind: {ok, failed, rejected}}),
exit_code, phases (seconds from the process start to each step of the start-up: ray_ready,
counted, pools_started, first_actor_created, first_actor_loaded, first_generation, and
finished), pools ({pool: {kind, actors, busy_seconds, span_seconds, busy_ratio}}) and actors
(one per pool actor: pool, kind, worker, created_at, loaded_at, load_cpu_seconds (the CPU its
process had used when the model was loaded: Ray's boot, the imports, the load), first_started_at,
last_call_end, calls, rows, busy_seconds, span_seconds, busy_ratio).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

RUNS_DIR = "runs"


def pool_of(kind: str, sp_degree: int | None) -> str:
    """The pool a row ran in: its kind's, or "<kind>/sp<N>" (raypipe.pipeline.records.pool_route)."""
    return f"{kind}/sp{sp_degree}" if sp_degree and sp_degree > 1 else kind


def _seconds(value: Any) -> float | None:
    """Unix seconds of a timestamp (datetime, or a number already)."""
    if value is None:
        return None
    return value.timestamp() if isinstance(value, datetime) else float(value)


@dataclass
class ActorUsage:
    pool: str
    kind: str
    worker: str
    created_at: float | None = None
    loaded_at: float | None = None
    load_cpu_seconds: float | None = None
    first_started_at: float | None = None
    last_call_end: float | None = None
    rows: int = 0
    busy_seconds: float = 0.0
    ncalls: int = 0

    def add(self, started: float, seconds: float, loaded_at: float | None, created_at: float | None) -> None:
        self.rows += 1
        self.busy_seconds += seconds
        if loaded_at is not None:
            self.loaded_at = loaded_at if self.loaded_at is None else min(self.loaded_at, loaded_at)
        if created_at is not None:
            self.created_at = created_at if self.created_at is None else min(self.created_at, created_at)
        self.first_started_at = started if self.first_started_at is None else min(self.first_started_at, started)

    def record(self, pool_end: float | None) -> dict[str, Any]:
        start = self.loaded_at if self.loaded_at is not None else self.first_started_at
        span = max(0.0, (pool_end or 0.0) - start) if start is not None and pool_end is not None else 0.0
        return {
            "pool": self.pool,
            "kind": self.kind,
            "worker": self.worker,
            "created_at": self.created_at,
            "loaded_at": self.loaded_at,
            "load_cpu_seconds": self.load_cpu_seconds,
            "first_started_at": self.first_started_at,
            "last_call_end": self.last_call_end,
            "calls": self.ncalls,
            "rows": self.rows,
            "busy_seconds": round(self.busy_seconds, 6),
            "span_seconds": round(span, 6),
            "busy_ratio": round(min(1.0, self.busy_seconds / span), 4) if span > 0 else None,
        }


class Usage:
    """Per-actor bookkeeping of a run on the driver, fed every final metadata record."""

    def __init__(self):
        self.actors: dict[str, ActorUsage] = {}

    def observe(self, meta) -> None:
        started = _seconds(meta.started_at)
        if not meta.worker or started is None or meta.gen_seconds is None or meta.status == "rejected":
            return
        timings = meta.timings
        pool = pool_of(meta.kind, meta.sp_degree)
        actor = self.actors.get(meta.worker)
        if actor is None:
            actor = self.actors[meta.worker] = ActorUsage(pool, meta.kind, meta.worker)
        actor.add(started, meta.gen_seconds, timings.get("actor_loaded_at"), timings.get("actor_created_at"))
        # The actor sends the end of each row's call and its calls so far: a call's rows reach
        # the driver one by one, in any order.
        end = timings.get("call_end", started + meta.gen_seconds)
        if actor.last_call_end is None or end > actor.last_call_end:
            actor.last_call_end = end
        actor.ncalls = max(actor.ncalls, int(timings.get("actor_calls", 0)))
        if "actor_load_cpu_seconds" in timings:
            actor.load_cpu_seconds = round(timings["actor_load_cpu_seconds"], 3)

    def summary(self) -> tuple[dict[str, dict], list[dict]]:
        return summarize(self.actors.values())


def summarize(actors: Iterable[ActorUsage]) -> tuple[dict[str, dict], list[dict]]:
    """(pools, actors): each pool's totals and each actor's record (see the module docstring)."""
    actors = sorted(actors, key=lambda a: (a.pool, a.loaded_at or 0.0, a.worker))
    ends: dict[str, float] = {}
    for actor in actors:
        if actor.last_call_end is not None:
            ends[actor.pool] = max(ends.get(actor.pool, actor.last_call_end), actor.last_call_end)
    records = [actor.record(ends.get(actor.pool)) for actor in actors]
    pools: dict[str, dict] = {}
    for record in records:
        pool = pools.setdefault(
            record["pool"], {"kind": record["kind"], "actors": 0, "busy_seconds": 0.0, "span_seconds": 0.0}
        )
        pool["actors"] += 1
        pool["busy_seconds"] += record["busy_seconds"]
        pool["span_seconds"] += record["span_seconds"]
    for pool in pools.values():
        span = pool["span_seconds"]
        pool["busy_ratio"] = round(min(1.0, pool["busy_seconds"] / span), 4) if span > 0 else None
        pool["busy_seconds"] = round(pool["busy_seconds"], 6)
        pool["span_seconds"] = round(span, 6)
    return pools, records


def usage_from_rows(rows: Iterable[dict], loaded_at: dict[str, float] | None = None) -> tuple[dict, list[dict]]:
    """The same figures from metadata rows (dicts with kind, status, worker, started_at,
    gen_seconds, sp_degree): what the report draws. loaded_at: worker -> Unix seconds, from the
    run summaries; a worker without one starts at its first call."""
    loaded_at = loaded_at or {}
    actors: dict[str, ActorUsage] = {}
    calls: dict[tuple[str, float], float] = {}
    for row in rows:
        started = _seconds(row.get("started_at"))
        if not row.get("worker") or started is None or row.get("gen_seconds") is None or row["status"] == "rejected":
            continue
        worker = row["worker"]
        actor = actors.get(worker)
        if actor is None:
            actor = actors[worker] = ActorUsage(pool_of(row["kind"], row.get("sp_degree")), row["kind"], worker)
        actor.add(started, row["gen_seconds"], loaded_at.get(worker), None)
        calls[(worker, started)] = calls.get((worker, started), 0.0) + row["gen_seconds"]
    for (worker, started), seconds in calls.items():
        actor = actors[worker]
        actor.ncalls += 1
        end = started + seconds
        actor.last_call_end = end if actor.last_call_end is None else max(actor.last_call_end, end)
    return summarize(actors.values())


def utilisation_line(pools: dict[str, dict], actors: list[dict]) -> str:
    """The final summary's line: each pool's busy ratio, and its actors'."""
    parts = []
    for name, pool in sorted(pools.items()):
        if pool["busy_ratio"] is None:
            continue
        each = ", ".join(
            f"{a['worker']} {a['busy_ratio']:.0%}" for a in actors if a["pool"] == name and a["busy_ratio"] is not None
        )
        parts.append(f"{name} {pool['busy_ratio']:.0%} ({each})")
    return "raypipe: pool actors busy generating since their model loaded: " + "; ".join(parts) if parts else ""


# ---- the run summary file ---------------------------------------------------------------------


def run_summary_uri(out: str, run_id: str) -> str:
    from raypipe.video import join_uri

    return join_uri(out, RUNS_DIR, f"{run_id}.json")


def write_run_summary(out: str, run_id: str, summary: dict[str, Any]) -> str:
    """OUT/runs/<run_id>.json, committed whole (a temporary local file, then rename or PUT)."""
    from raypipe.video import commit_file

    uri = run_summary_uri(out, run_id)
    with tempfile.TemporaryDirectory(prefix="raypipe-") as tmpdir:
        local = os.path.join(tmpdir, "run.json")
        with open(local, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
        commit_file(local, uri)
    return uri


def read_run_summaries(out: str) -> list[dict[str, Any]]:
    """Every run summary of an output, oldest first (none when the folder is missing)."""
    import fsspec

    from raypipe.video import join_uri

    fs, path = fsspec.core.url_to_fs(join_uri(out, RUNS_DIR))
    fs.invalidate_cache(path)
    if not fs.exists(path):
        return []
    summaries = []
    for name in sorted(fs.ls(path, detail=False)):
        base = name.rsplit("/", 1)[-1]
        if base.endswith(".json") and not base.startswith("."):
            with fs.open(name, "r") as f:
                summaries.append(json.load(f))
    return summaries
