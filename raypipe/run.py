"""A run: every manifest row to a final state under `--out` (the graph: raypipe/pipeline/).

    count   valid rows per kind, rejected and skipped rows (raypipe/pipeline/graph.py count_routes);
    waves   the pooled kinds, in waves that fit the cluster (raypipe/pipeline/waves.py);
    execute one streaming execution per wave: each kind's branch (validate, load inputs, the
            pool, write videos) and the branch of rows with no pool, into the driver's sink;
    sweep   rows of blocks Ray Data dropped get a `failed` row (none is missing);
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
from raypipe.pipeline.actors import row_attempts_actor
from raypipe.pipeline.batches import rejected_and_tally
from raypipe.pipeline.graph import count_routes, others_dataset, pool_dataset, records_dataset, validated_dataset
from raypipe.pipeline.ray_init import init_ray, storage_env  # noqa: F401 - the CLI's and users' entry points
from raypipe.pipeline.records import unpack
from raypipe.pipeline.waves import pool_waves  # noqa: F401
from raypipe.sink import MetadataSink, reconcile, remove_stale_temp_files


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


def prepare_models(config: RunConfig, kinds: list[str]) -> None:
    """Build the `tiny:` models a run needs once, on the driver, before the pools start."""
    from raypipe.models.tiny import TINY_PREFIX, tiny_path

    for kind in kinds:
        kc = config.kinds[kind]
        for model in [kc.model, *kc.models.values()]:
            if model.startswith(TINY_PREFIX):
                tiny_path(model)


def run(
    uris: list[str],
    out: str,
    config: RunConfig,
    progress=sys.stderr,
    metrics: RunMetrics | None = None,
    stages: dict[str, str] | None = None,
) -> RunSummary:
    """Run every manifest row to a final state under `out`; returns the counts.
    metrics: the driver's metrics (served live if the caller made them with a port).
    stages: kind -> "module:Class", replacing the registered families' stages (tests, plugins)."""
    import ray.data

    from raypipe.families import family

    started = time.monotonic()
    metrics = metrics or RunMetrics()
    # A block whose retries all failed is dropped, not the run: its rows end `failed` (the sweep).
    ray.data.DataContext.get_current().max_errored_blocks = -1
    stale = remove_stale_temp_files(out)
    if stale:
        print(f"raypipe: removed {stale} temporary files an interrupted run left in {out}", file=progress, flush=True)
    sink = MetadataSink(out, config.metadata_flush_rows, config.metadata_flush_seconds)
    routes = count_routes(uris, config, out, sink.run_id)
    summary = RunSummary(total=sum(n for r, n in routes.items() if r != "skip"), skipped=routes.get("skip", 0))
    kinds = sorted(k for k in routes if k in config.kinds)
    metrics.start(routes, kinds)
    prepare_models(config, kinds)
    stage_paths = {kind: (stages or {}).get(kind) or family(kind).stage for kind in kinds}

    def consume(results) -> None:
        last_line = time.monotonic()
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for packed in batch["meta"]:
                meta = unpack(packed)
                metrics.observe(meta)
                sink.add(meta)
                summary.by_status[meta.status] = summary.by_status.get(meta.status, 0) + 1
            summary.seconds = time.monotonic() - started
            if time.monotonic() - last_line >= config.progress_seconds and summary.done < summary.total:
                print(summary.line(), file=progress, flush=True)
                last_line = time.monotonic()

    if summary.total:
        import ray

        attempts = row_attempts_actor() if kinds else None
        records = records_dataset(uris, config, out, sink.run_id)
        waves = pool_waves(kinds, routes, config, stage_paths, ray.cluster_resources()) or [[]]
        if len(waves) > 1:
            print(
                f"raypipe: the pools do not fit the cluster at once; they run in {len(waves)} waves: "
                + ", then ".join("+".join(wave) for wave in waves),
                file=progress,
                flush=True,
            )
        for number, wave in enumerate(waves):
            results = others_dataset(records, kinds, config) if number == 0 else None
            for kind in wave:
                branch = pool_dataset(
                    records, kind, config.kinds[kind], routes[kind], out, config, stage_paths[kind], attempts
                )
                results = branch if results is None else results.union(branch)
            consume(results)
        if summary.done < summary.total:
            # Rows of blocks Ray Data dropped after their retries ran out: every row not yet
            # final in this run gets a metadata row (`failed`, lost) so none is missing.
            sink.flush()
            consume(others_dataset(records_dataset(uris, config, out, sink.run_id, sweep=True), [], config))
        if summary.done < summary.total:
            print(
                f"raypipe: {summary.total - summary.done} rows have no final state: Ray Data dropped their blocks "
                f"even in the sweep (the errors are above); run the same command again to finish them",
                file=progress,
                flush=True,
            )
    sink.flush()
    reconcile(out)
    metrics.finish(out)  # <out>/metrics.prom, and the Pushgateway if set
    summary.seconds = time.monotonic() - started
    print(summary.line(), file=progress, flush=True)  # the final counts, always
    return summary


def rejected_rows(uris: list[str], config: RunConfig) -> tuple[int, list[dict[str, Any]]]:
    """`raypipe validate`: the number of rows and each rejected row (id, source, line, error),
    in one streaming pass; only the rejected rows and a tally per block reach the driver."""
    found = validated_dataset(uris, config, keep_rows=False, then=rejected_and_tally)
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
