"""raypipe's metrics, named by Prometheus conventions: prefix `raypipe_`, base units
(seconds, bytes), counters end in `_total`.

    raypipe_videos_total{kind,status}        counter    rows that reached a final state (ok/failed/rejected)
    raypipe_generation_seconds{kind}         histogram  model time of each ok video (metadata gen_seconds)
    raypipe_encode_seconds{kind}             histogram  H.264 encoding of each ok video
    raypipe_upload_seconds{kind}             histogram  committing each MP4 to --out (rename or object PUT)
    raypipe_output_bytes_total{kind}         counter    bytes of the MP4s written (metadata bytes)
    raypipe_model_load_seconds{kind}         histogram  loading the model, once per pool actor
    raypipe_rows_in_flight{kind}             gauge      rows routed to a kind's pool, not final yet
    raypipe_actor_busy_ratio{kind,worker}    gauge      a pool actor's time since its model loaded spent generating
    raypipe_rows_skipped_total               counter    rows skipped because `ok` in --out already (resume)
    raypipe_run_duration_seconds             gauge      seconds since the run started (final: its length)

Two producers report them:

- The driver (RunMetrics, prometheus_client): every final metadata row that reaches it is
  counted, with the timings the pool actor and the MP4 writer attached to it (under the
  `_metrics` key, which never reaches the Parquet metadata). `raypipe run --metrics-port P`
  serves these live; at the end of every run they are written in Prometheus text format to
  `<out>/metrics.prom` and, with `--pushgateway URL`, pushed to a Pushgateway (the usual way
  for batch jobs: the job ends before a scrape would see it). They cover one run: a resumed
  run counts only the rows it finished itself (the skipped ones in raypipe_rows_skipped_total).
- Pool actors and the MP4 writer tasks (ray.util.metrics): Ray's exporter on every node
  serves them live on the node's metrics port, under Ray's own prefix and labels
  (`ray_raypipe_generation_seconds{kind,WorkerId,NodeAddress,...}`); the k8s PodMonitor
  scrapes them. Ray approximates histogram sums by bucket midpoints: use the driver's for sums.

Label values are bounded: `kind` is one of the known kinds, or "unknown" for a rejected row
whose kind is not (a typo in a manifest must not create a new series).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("raypipe")

STATUSES = ("ok", "failed", "rejected")
METRICS_FILE = "metrics.prom"
PUSHGATEWAY_JOB = "raypipe"

# Buckets: tiny CPU models take a second, real ones up to an hour per video.
GENERATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
IO_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
LOAD_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)

# name: (type, help, labels, buckets) - the one list both producers, the dashboard and the
# tests read. Ray's Counter gets the name without `_total` (its exporter appends it).
METRICS: dict[str, tuple[str, str, tuple[str, ...], tuple[float, ...] | None]] = {
    "raypipe_videos_total": (
        "counter",
        "Rows that reached a final state, by kind and status (ok, failed, rejected).",
        ("kind", "status"),
        None,
    ),
    "raypipe_generation_seconds": (
        "histogram",
        "Model time of each ok video (the metadata's gen_seconds).",
        ("kind",),
        GENERATION_BUCKETS,
    ),
    "raypipe_encode_seconds": ("histogram", "H.264 encoding time of each ok video.", ("kind",), IO_BUCKETS),
    "raypipe_upload_seconds": (
        "histogram",
        "Time to commit each MP4 to the output URI (rename or PUT).",
        ("kind",),
        IO_BUCKETS,
    ),
    "raypipe_output_bytes_total": ("counter", "Bytes of the MP4s written.", ("kind",), None),
    "raypipe_model_load_seconds": (
        "histogram",
        "Time to load a kind's model, once per pool actor.",
        ("kind",),
        LOAD_BUCKETS,
    ),
    "raypipe_rows_in_flight": (
        "gauge",
        "Rows routed to a kind's pool that have not reached a final state.",
        ("kind",),
        None,
    ),
    "raypipe_actor_busy_ratio": (
        "gauge",
        "Fraction of a pool actor's time, from its model loaded to its pool's last generation, spent generating.",
        ("kind", "worker"),
        None,
    ),
    "raypipe_rows_skipped_total": (
        "counter",
        "Rows skipped because they are ok in the output already (resume).",
        (),
        None,
    ),
    "raypipe_run_duration_seconds": ("gauge", "Seconds since the run started; at the end, the run's length.", (), None),
}


def kind_label(kind: Any) -> str:
    from raypipe.schema import known_kinds

    return kind if kind in known_kinds() else "unknown"


def add_timings(meta, **seconds: float) -> None:
    """Attach timings to a row's metadata record for the driver's metrics (Metadata.timings)."""
    meta.timings.update(seconds)


# ---- inside actors and tasks: ray.util.metrics, served by Ray's exporter ---------------------

_ray_metrics: dict[str, Any] | None = None


def _ray() -> dict[str, Any] | None:
    """This worker's Ray metric objects, made once; None outside Ray (a stage run directly)."""
    global _ray_metrics
    if _ray_metrics is None:
        try:
            import ray
            from ray.util import metrics as ray_metrics

            if not ray.is_initialized():
                return None
            made: dict[str, Any] = {}
            for name, (kind, text, labels, buckets) in METRICS.items():
                if kind == "counter":
                    made[name] = ray_metrics.Counter(name.removesuffix("_total"), text, tag_keys=labels)
                elif kind == "histogram":
                    made[name] = ray_metrics.Histogram(name, text, boundaries=list(buckets), tag_keys=labels)
                else:
                    made[name] = ray_metrics.Gauge(name, text, tag_keys=labels)
            _ray_metrics = made
        except Exception as err:  # noqa: BLE001 - metrics must never fail a row
            log.warning("raypipe: Ray metrics unavailable: %s", err)
            return None
    return _ray_metrics


def _ray_record(name: str, method: str, value: float, **tags: str) -> None:
    made = _ray()
    if made is not None:
        try:
            getattr(made[name], method)(value, tags=tags or None)
        except Exception as err:  # noqa: BLE001
            log.warning("raypipe: recording %s failed: %s", name, err)


class StageMeter:
    """The metrics of one pool actor: made before its model loads, so `loaded()` measures the load.

    The load time also rides on the first row the actor returns, once, so the driver counts
    each actor's load in raypipe_model_load_seconds. Every row carries what the run summary's
    utilisation needs (raypipe/usage.py): when this actor was made and loaded its model, the end
    of the row's pipeline call, and the actor's calls so far."""

    def __init__(self, kind: str, worker: str = ""):
        self.kind = kind
        self.worker = worker
        self._started = time.perf_counter()
        self.created_at = time.time()
        self.loaded_at: float | None = None
        self.load_cpu_seconds: float | None = None  # the process's CPU seconds until then (boot and imports too)
        self.busy_seconds = 0.0  # the gen_seconds of its rows, summed
        self.calls = 0
        self._load_seconds: float | None = None

    def loaded(self) -> None:
        self._load_seconds = time.perf_counter() - self._started
        self.loaded_at = time.time()
        self.load_cpu_seconds = time.process_time()
        _ray_record("raypipe_model_load_seconds", "observe", self._load_seconds, kind=self.kind)

    def started(self, rows: int) -> None:
        _ray_record("raypipe_rows_in_flight", "set", rows, kind=self.kind)

    def done(self, metas: list) -> None:
        """After a batch: count its rows, time its ok ones (metas are modified in place)."""
        calls: dict[Any, float] = {}  # a call's rows share their started_at (Stage._run_group)
        for meta in metas:
            _ray_record("raypipe_videos_total", "inc", 1, kind=self.kind, status=meta["status"])
            if meta["status"] == "ok" and meta.get("gen_seconds") is not None:
                _ray_record("raypipe_generation_seconds", "observe", meta["gen_seconds"], kind=self.kind)
            if meta.get("gen_seconds") is not None and meta.get("started_at") is not None:
                calls[meta["started_at"]] = calls.get(meta["started_at"], 0.0) + meta["gen_seconds"]
        self.calls += len(calls)
        self.busy_seconds += sum(calls.values())
        for meta in metas:
            add_timings(meta, actor_created_at=self.created_at, actor_calls=self.calls)
            if self.loaded_at is not None:
                add_timings(meta, actor_loaded_at=self.loaded_at, actor_load_cpu_seconds=self.load_cpu_seconds)
            started = meta.get("started_at")
            if started in calls:
                add_timings(meta, call_end=started.timestamp() + calls[started])
        if metas and self._load_seconds is not None:
            add_timings(metas[0], model_load_seconds=self._load_seconds)
            self._load_seconds = None
        _ray_record("raypipe_rows_in_flight", "set", 0, kind=self.kind)
        if self.loaded_at is not None and time.time() > self.loaded_at:
            ratio = min(1.0, self.busy_seconds / (time.time() - self.loaded_at))
            _ray_record("raypipe_actor_busy_ratio", "set", ratio, kind=self.kind, worker=self.worker)


def video_written(meta, written: Any) -> None:
    """In the MP4 writer task, after a row's video is committed (written: video.WrittenVideo)."""
    kind = kind_label(meta.get("kind"))
    add_timings(meta, encode_seconds=written.encode_seconds, upload_seconds=written.upload_seconds)
    _ray_record("raypipe_encode_seconds", "observe", written.encode_seconds, kind=kind)
    _ray_record("raypipe_upload_seconds", "observe", written.upload_seconds, kind=kind)
    _ray_record("raypipe_output_bytes_total", "inc", written.bytes, kind=kind)


# ---- on the driver: prometheus_client ----------------------------------------------------------


class MetricsError(RuntimeError):
    """The metrics port cannot be served: the run does not start."""


class RunMetrics:
    """The driver's metrics of one run: fed each final metadata row (`observe`), served live
    on `port` when given, written to <out>/metrics.prom and pushed by `finish`.

        with RunMetrics(port=9095, pushgateway="http://pushgateway:9091") as metrics:
            run(uris, out, config, metrics=metrics)
    """

    def __init__(self, port: int | None = None, pushgateway: str | None = None, addr: str = "0.0.0.0"):
        import prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        # No `*_created` series: a batch job's file and push hold the values, nothing else.
        prometheus_client.disable_created_metrics()
        self.pushgateway = pushgateway
        self.registry = CollectorRegistry()
        self._started = time.monotonic()
        self.m: dict[str, Any] = {}
        for name, (kind, text, labels, buckets) in METRICS.items():
            if kind == "counter":
                self.m[name] = Counter(name.removesuffix("_total"), text, labels, registry=self.registry)
            elif kind == "histogram":
                self.m[name] = Histogram(name, text, labels, buckets=buckets, registry=self.registry)
            else:
                self.m[name] = Gauge(name, text, labels, registry=self.registry)
        self.m["raypipe_run_duration_seconds"].set_function(lambda: time.monotonic() - self._started)
        self._server = None
        if port is not None:
            try:
                self._server, _thread = prometheus_client.start_http_server(port, addr=addr, registry=self.registry)
            except OSError as err:
                raise MetricsError(f"--metrics-port {port}: cannot serve metrics: {err}") from None

    # the run calls these

    def start(self, routes: dict[str, int], kinds: Iterable[str]) -> None:
        """routes: rows per route (a kind, 'rejected' or 'skip'); kinds: those with a pool."""
        self.m["raypipe_rows_skipped_total"].inc(routes.get("skip", 0))
        for kind in kinds:
            self.m["raypipe_rows_in_flight"].labels(kind).set(routes.get(kind, 0))
            for status in STATUSES:  # explicit zeros: "0 failed" rather than no series
                self.m["raypipe_videos_total"].labels(kind, status)

    def observe(self, meta) -> None:
        """One final metadata record (raypipe.metadata.Metadata, its timings included)."""
        timings = meta.timings
        kind, status = kind_label(meta.kind), meta.status
        self.m["raypipe_videos_total"].labels(kind, status).inc()
        if status != "rejected":  # it came out of the kind's pool
            self.m["raypipe_rows_in_flight"].labels(kind).dec()
        if "model_load_seconds" in timings:
            self.m["raypipe_model_load_seconds"].labels(kind).observe(timings["model_load_seconds"])
        if status == "ok":
            if meta.get("gen_seconds") is not None:
                self.m["raypipe_generation_seconds"].labels(kind).observe(meta["gen_seconds"])
            self.m["raypipe_output_bytes_total"].labels(kind).inc(meta.get("bytes") or 0)
            for name in ("encode_seconds", "upload_seconds"):
                if name in timings:
                    self.m[f"raypipe_{name}"].labels(kind).observe(timings[name])

    def actor_busy(self, actors: list[dict]) -> None:
        """The run summary's busy ratio of each pool actor (raypipe/usage.py), as gauges."""
        for actor in actors:
            if actor["busy_ratio"] is not None:
                self.m["raypipe_actor_busy_ratio"].labels(kind_label(actor["kind"]), actor["worker"]).set(
                    actor["busy_ratio"]
                )

    def finish(self, out: str) -> None:
        """The final values: <out>/metrics.prom, and the Pushgateway when one is set.
        A Pushgateway that cannot be reached is a warning, not a failed run."""
        from prometheus_client import generate_latest, push_to_gateway

        from raypipe.video import commit_file, join_uri

        seconds = time.monotonic() - self._started
        self.m["raypipe_run_duration_seconds"].set_function(lambda: seconds)
        with tempfile.TemporaryDirectory(prefix="raypipe-") as tmpdir:
            local = os.path.join(tmpdir, METRICS_FILE)
            with open(local, "wb") as f:
                f.write(generate_latest(self.registry))
            commit_file(local, join_uri(out, METRICS_FILE))
        if self.pushgateway:
            try:
                # One group per output: a re-run of the same --out replaces its values.
                push_to_gateway(
                    self.pushgateway, job=PUSHGATEWAY_JOB, registry=self.registry, grouping_key={"out": out}, timeout=30
                )
            except Exception as err:  # noqa: BLE001 - the videos are done; metrics are not worth a failure
                print(
                    f"raypipe: warning: pushing metrics to {self.pushgateway} failed: {err}",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> RunMetrics:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
