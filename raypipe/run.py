"""A run: every manifest row to a final state under `--out` (the graph: raypipe/pipeline/).

    count   valid rows per pool (a kind's, or "<kind>/sp<N>" for sp_degree N: gangs), rejected and
            skipped rows (raypipe/pipeline/graph.py count_routes);
    waves   the pools, in waves that fit the cluster (raypipe/pipeline/waves.py);
    execute one streaming execution per wave: each pool's branch (validate, load inputs, the
            pool, write videos) and the branch of rows with no pool, into the driver's sink;
    sweep   rows of blocks Ray Data dropped get a `failed` row (none is missing);
    reroll  rows whose video failed the quality gate run again with their next seeds, while they
            have re-rolls left (raypipe/pipeline/rerolls.py);
    finish  flush, reconcile (one metadata row per id), metrics.

Faults: see raypipe/pipeline/actors.py. A block Ray Data drops anyway (max_errored_blocks) does not
lose its rows: the sweep at the end gives each row without a final state a `failed` metadata row.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from raypipe.config import RunConfig
from raypipe.metrics import RunMetrics
from raypipe.parallel.validate import gang_nodes
from raypipe.pipeline.actors import row_attempts_actor
from raypipe.pipeline.batches import rejected_and_tally
from raypipe.pipeline.graph import (
    DRIVER_COUNT_BYTES,
    count_routes,
    input_bytes,
    others_dataset,
    pool_dataset,
    records_dataset,
    validated_dataset,
)
from raypipe.pipeline.ray_init import init_ray, joins_cluster, storage_env  # noqa: F401 - the CLI's and users' entry points
from raypipe.pipeline.read import prepare_read
from raypipe.pipeline.records import split_route, unpack
from raypipe.pipeline.rerolls import Rerolls, reroll_records
from raypipe.pipeline.waves import pool_waves  # noqa: F401
from raypipe.preflight import preflight
from raypipe.progress import Console, Progress
from raypipe.sink import MetadataSink, reconcile, remove_stale_temp_files
from raypipe.usage import Usage, utilisation_line, write_run_summary


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "rejected": 0})
    seconds: float = 0.0
    run_id: str = ""
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    # Unix seconds of the run's steps (process_started, ray_ready, counted, pools_started, ...).
    stamps: dict[str, float] = field(default_factory=dict)
    # Utilisation (raypipe/usage.py): each pool's totals and each pool actor's record.
    pools: dict[str, dict] = field(default_factory=dict)
    actors: list[dict] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.by_status.values())

    @property
    def exit_code(self) -> int:
        # Rows with no final state (blocks lost even in the sweep) are not "every row ok" either.
        final = self.done >= self.total
        return 0 if final and self.by_status["failed"] == 0 and self.by_status["rejected"] == 0 else 1

    def line(self) -> str:
        s = self.by_status
        rate = self.done / self.seconds if self.seconds > 0 else 0.0
        remaining = self.total - self.done
        eta = f", ETA {remaining / rate:.0f}s" if rate > 0 and remaining > 0 else ""
        return (
            f"raypipe: {self.done}/{self.total} rows done (ok {s['ok']}, failed {s['failed']}, "
            f"rejected {s['rejected']}), {self.skipped} skipped as done, {rate:.2f} rows/s{eta}"
        )

    def phases(self) -> dict[str, float]:
        """Seconds from the process start (else the run's) to each step of the run."""
        stamps = dict(self.stamps)
        for name, key in (("first_actor_created", "created_at"), ("first_actor_loaded", "loaded_at")):
            values = [a[key] for a in self.actors if a.get(key) is not None]
            if values:
                stamps[name] = min(values)
        starts = [a["first_started_at"] for a in self.actors if a.get("first_started_at") is not None]
        if starts:
            stamps["first_generation"] = min(starts)
        zero = stamps.get("process_started", stamps.get("run_started", 0.0))
        return {name: round(at - zero, 3) for name, at in sorted(stamps.items(), key=lambda item: item[1])}

    def record(self, out: str, uris: list[str]) -> dict[str, Any]:
        """The run summary file's content (OUT/runs/<run_id>.json, raypipe/usage.py)."""
        from raypipe import __version__

        return {
            "run_id": self.run_id,
            "out": out,
            "manifests": list(uris),
            "raypipe_version": __version__,
            "started_at": self.stamps.get("run_started"),
            "finished_at": self.stamps.get("finished"),
            "seconds": round(self.seconds, 3),
            "rows": {"total": self.total, "skipped": self.skipped, **self.by_status},
            "by_kind": self.by_kind,
            "exit_code": self.exit_code,
            "phases": self.phases(),
            "pools": self.pools,
            "actors": self.actors,
        }


def prepare_models(config: RunConfig, kinds: list[str]) -> None:
    """Build the `tiny:` models a run needs once, on the driver, before the pools start."""
    from raypipe.models.tiny import TINY_PREFIX, tiny_path

    for kind in kinds:
        kc = config.kinds[kind]
        for model in [kc.model, *kc.models.values()]:
            if model.startswith(TINY_PREFIX):
                tiny_path(model)
    if kinds and (config.quality.clip_model or "").startswith(TINY_PREFIX):  # the quality gate's CLIP
        tiny_path(config.quality.clip_model)


def run(
    uris: list[str],
    out: str,
    config: RunConfig,
    progress=sys.stderr,
    metrics: RunMetrics | None = None,
    stages: dict[str, str] | None = None,
    stamps: dict[str, float] | None = None,
) -> RunSummary:
    """Run every manifest row to a final state under `out`; returns the counts.
    progress: where the run prints (a live bar when it is a terminal: raypipe/progress.py).
    metrics: the driver's metrics (served live if the caller made them with a port).
    stages: kind -> "module:Class", replacing the registered families' stages (tests, plugins).
    stamps: Unix seconds of what came before (process_started, ray_init_started, ray_ready),
    for the run summary's phases."""
    stamps = {**(stamps or {}), "run_started": time.time()}
    import ray.data

    from raypipe.families import family

    started = time.monotonic()
    progress = progress if isinstance(progress, Console) else Console(progress)
    metrics = metrics or RunMetrics()
    # A block whose retries all failed is dropped, not the run: its rows end `failed` (the sweep).
    ray.data.DataContext.get_current().max_errored_blocks = -1
    stale = remove_stale_temp_files(out)
    if stale:
        print(f"raypipe: removed {stale} temporary files an interrupted run left in {out}", file=progress, flush=True)
    sink = MetadataSink(out, config.metadata_flush_rows, config.metadata_flush_seconds)
    nodes, _ = gang_nodes(config, joined=True)  # the cluster this run places its gangs on
    # The manifests' ids, their duplicates and the resume index, once for every pass: in Ray tasks,
    # or on the driver for a small input (which the driver counts too).
    manifests = prepare_read(uris, out, sink.run_id, here=input_bytes(uris, out) <= DRIVER_COUNT_BYTES)
    routes = count_routes(manifests, config, out, sink.run_id, nodes)
    stamps["counted"] = time.time()
    summary = RunSummary(
        total=sum(n for r, n in routes.items() if r != "skip"),
        skipped=routes.get("skip", 0),
        run_id=sink.run_id,
        stamps=stamps,
    )
    tracker = Progress(progress, summary.total, summary.skipped, summary.line, config.progress_seconds)
    usage = Usage()
    pools = sorted(r for r in routes if split_route(r)[0] in config.kinds)  # "cogvideox" < "cogvideox/sp2"
    kinds = sorted({split_route(pool)[0] for pool in pools})
    preflight(config, kinds, progress)  # every model these kinds need resolves, or exit 2 (raypipe/preflight.py)
    per_kind: dict[str, int] = {}  # the metrics count rows per kind, whichever of its pools runs them
    for route, rows in routes.items():
        per_kind[split_route(route)[0]] = per_kind.get(split_route(route)[0], 0) + rows
    metrics.start(per_kind, kinds)
    prepare_models(config, kinds)
    stage_paths = {kind: (stages or {}).get(kind) or family(kind).stage for kind in kinds}

    rerolls = Rerolls(config)  # rows that failed the quality gate with re-rolls left (pipeline/rerolls.py)

    def final(meta) -> None:
        metrics.observe(meta)
        summary.by_status[meta.status] = summary.by_status.get(meta.status, 0) + 1
        counts = summary.by_kind.setdefault(meta.kind or "unknown", {"ok": 0, "failed": 0, "rejected": 0})
        counts[meta.status] = counts.get(meta.status, 0) + 1
        tracker.add(meta.kind, meta.status)

    def consume(results) -> None:
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for packed in batch["meta"]:
                meta = unpack(packed)
                held = rerolls.observe(meta)  # a re-roll's earlier attempts go into its params_json
                usage.observe(meta)
                sink.add(meta)  # every attempt is written: a crash before its re-roll loses nothing
                if not held:  # a row that runs again is not final yet
                    final(meta)
            summary.seconds = time.monotonic() - started
            tracker.tick()

    def execute(records, run_pools: list[str], pool_rows: dict[str, int], main: bool) -> None:
        """The pools' branches over `records`, in waves that fit the cluster, into the sink. main:
        the run's main execution (the rows with no pool too); else a re-roll pass."""
        waves = pool_waves(run_pools, pool_rows, config, stage_paths, ray.cluster_resources()) or [[]]
        if len(waves) > 1:
            print(
                f"raypipe: the pools do not fit the cluster at once; they run in {len(waves)} waves: "
                + ", then ".join("+".join(wave) for wave in waves),
                file=progress,
                flush=True,
            )
        for number, wave in enumerate(waves):
            results = others_dataset(records, kinds, config, nodes) if number == 0 and main else None
            for pool in wave:
                kind = split_route(pool)[0]
                # the kind's first pool takes the kind's rejected rows
                first_of_kind = pool == min(p for p in run_pools if split_route(p)[0] == kind)
                branch = pool_dataset(
                    records,
                    pool,
                    config.kinds[kind],
                    pool_rows[pool],
                    out,
                    config,
                    stage_paths[kind],
                    attempts,
                    nodes,
                    with_rejected=first_of_kind,
                )
                results = branch if results is None else results.union(branch)
            stamps.setdefault("pools_started", time.time())
            consume(results)
            if any(split_route(pool)[1] > 1 for pool in wave):
                from raypipe.parallel.gang import remove_leftover_gangs

                remove_leftover_gangs()  # the wave's gangs: GPUs the next wave needs

    if summary.total:
        import ray

        attempts = row_attempts_actor() if kinds else None
        execute(records_dataset(manifests, config, out, sink.run_id), pools, routes, main=True)
        if summary.done + len(rerolls.held) < summary.total:
            # Rows of blocks Ray Data dropped after their retries ran out: every row not yet
            # final in this run gets a metadata row (`failed`, lost) so none is missing.
            sink.flush()
            consume(others_dataset(records_dataset(manifests, config, out, sink.run_id, sweep=True), [], config, nodes))
        while rerolls.held:
            # A follow-up execution of the rows that failed the quality gate, each with its next seed.
            sink.flush()
            seeds, reroll_routes = rerolls.start_pass()
            print(
                f"raypipe: {len(seeds)} rows failed the quality gate; running them again with their next seeds",
                file=progress,
                flush=True,
            )
            execute(reroll_records(uris, seeds), sorted(reroll_routes), reroll_routes, main=False)
            for meta in rerolls.lost():  # no row came back: the attempt before is final
                final(meta)
        if summary.done < summary.total:
            print(
                f"raypipe: {summary.total - summary.done} rows have no final state: Ray Data dropped their blocks "
                f"even in the sweep (the errors are above); run the same command again to finish them",
                file=progress,
                flush=True,
            )
    sink.flush()
    reconcile(out)
    tracker.close()
    summary.pools, summary.actors = usage.summary()
    metrics.actor_busy(summary.actors)
    metrics.finish(out)  # <out>/metrics.prom, and the Pushgateway if set
    summary.seconds = time.monotonic() - started
    stamps["finished"] = time.time()
    write_run_summary(out, sink.run_id, summary.record(out, uris))  # OUT/runs/<run_id>.json
    print(summary.line(), file=progress, flush=True)  # the final counts, always
    busy = utilisation_line(summary.pools, summary.actors)
    if busy:
        print(busy, file=progress, flush=True)
    return summary


def rejected_rows(
    uris: list[str], config: RunConfig, address: str | None = None, progress=sys.stderr
) -> tuple[int, list[dict[str, Any]]]:
    """`raypipe validate`: the number of rows and each rejected row (id, source, line, error),
    in one streaming pass; only the rejected rows and a tally per block reach the driver.
    address: the --address given; without one (nor RAY_ADDRESS) gangs are checked against the
    config's `cluster`, or not at all (said on `progress`), never against this machine."""
    nodes, gang_check = gang_nodes(config, joined=joins_cluster(address))
    print(f"raypipe: {gang_check}", file=progress, flush=True)
    found = validated_dataset(uris, config, keep_rows=False, then=rejected_and_tally, nodes=nodes)
    total, rejected = 0, []
    for batch in found.iter_batches(batch_size=None, batch_format="numpy"):
        for row_id, source, line, error, rows in zip(
            batch["id"], batch["source"], batch["line"], batch["error"], batch["rows"]
        ):
            total += int(rows)
            if row_id:
                rejected.append({"id": str(row_id), "source": str(source), "line": int(line), "error": str(error)})
    rejected.sort(key=lambda r: (r["source"], r["line"]))
    return total, rejected
