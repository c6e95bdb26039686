"""The Ray Data graph: read -> validate -> route -> one actor pool per kind -> sink.

    count pass: read ─▶ validate ─▶ rows per route (a kind, "rejected" or "skip"): counts only
    then one streaming execution (or one per wave, see pool_waves), a branch per pooled kind:

    read ─▶ kind K ─▶ validate ─▶ load inputs (CPU) ─▶ K's pool ─▶ write_videos (CPU) ─┐
    read ─▶ kind L ─▶ validate ─▶ load inputs (CPU) ─▶ L's pool ─▶ write_videos (CPU) ─┼─▶ driver:
    read ─▶ no pool for its kind ─▶ validate ─▶ rejected metadata ─────────────────────┘  metadata parts

- Streaming: the manifests are read by one Ray task per branch (ids are checked in manifest
  order there, and the resume index is loaded there); rows flow in blocks of READ_BATCH_ROWS;
  nothing holds the manifest on the driver, which sees counts and metadata rows only.
- CPU stages do the CPU work: validation, decoding a row's input image / video
  (Stage.load_inputs), MP4 encoding and the upload. The pool actors only generate.
- Each row is validated twice: in the count pass (so that only kinds with valid rows get a pool,
  a pool reserves GPUs) and in its branch. A row of a pooled kind that fails validation flows
  through its kind's branch as a `rejected` metadata row, untouched by the model.
- Faults: a pool actor whose process or node dies is restarted by Ray and its batch retried
  (Ray Data's actor defaults, max_restarts=-1 and max_task_retries=-1, are kept on purpose: in
  Ray 2.60 bounded values lose rows instead of bounding work. A task sent to the actor of a
  lost node fails at once with "actor temporarily unavailable" until the GCS declares the node
  dead, which spends a bounded max_task_retries in seconds; and a pool actor out of restarts
  stays in the pool as a dead member, which stalls the run.) What is bounded is each row:
  a row that was being generated when its worker died is counted (RowAttempts), and after
  `max_row_attempts` such deaths it ends `failed` with the reason instead of being retried
  forever. A block Ray Data drops anyway (max_errored_blocks) does not lose its rows: a sweep at
  the end gives each row without a final state a `failed` metadata row.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic_core import from_json

from raypipe.config import KindConfig, RunConfig
from raypipe.manifest import RECORD_TYPES, read_batches
from raypipe.metrics import RunMetrics, StageMeter
from raypipe.parallel import check_sequence_parallel
from raypipe.schema import (KNOWN_KINDS, empty_metadata, metadata_from_row, prompt_text, row_from_json, row_to_json,
                            validate_row)
from raypipe.sink import (MetadataSink, load_done_ids, meta_from_json, meta_to_json, reconcile,
                          remove_stale_temp_files, write_videos)

log = logging.getLogger("raypipe")

READ_BATCH_ROWS = 16384
BLOCK_BYTES = 4 << 20
# Environment variables that configure object storage (fsspec, s3fs, gcsfs, adlfs): the driver's
# are forwarded to every worker of the run, so that tasks and actors reach the same storage.
STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_APPLICATION_CREDENTIALS", "GCSFS_", "AZURE_STORAGE_")
LOST_ERROR = ("lost: the worker running this row died on every retry (a node lost, or the process killed, "
              "e.g. out of memory); see the Ray logs")


def storage_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}


def init_ray(address: str | None = None, dashboard: bool = True) -> bool:
    """Connect to (or start) Ray; True if this call started it. Inside `ray job submit`
    RAY_ADDRESS is set and ray.init() joins that cluster. dashboard=False: a Ray started here
    runs without the dashboard (a second of start-up on 2 cores; `validate` and `plan` need none).

    Joining a running cluster, the driver's object-storage settings (AWS_*, FSSPEC_*, ...) go to
    the run's workers in its runtime_env; inside `ray job submit` the job's own runtime_env rules
    instead (set them there: `--runtime-env-json '{"env_vars": {...}}'`). A Ray started here
    needs none: its workers inherit this process's environment, and a job-level runtime_env
    would cost every worker a round trip to the runtime-env agent (~1.5 s of a million-row
    `raypipe validate` on 2 cores)."""
    import ray
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    env = storage_env()
    joining = address not in (None, "local") or (address is None and bool(os.environ.get("RAY_ADDRESS")))
    if env and joining and RAY_JOB_CONFIG_JSON_ENV_VAR not in os.environ:
        kwargs["runtime_env"] = {"env_vars": env}
    if not dashboard:
        kwargs["include_dashboard"] = False  # ignored when joining a running cluster
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True,
             configure_logging=True, **kwargs)
    return True


def _quiet_ray_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_operator_progress_bars = False
    # Small blocks, for streaming: a task's outputs are merged into one block until it reaches
    # this size, so with Ray Data's 128 MiB default the reader would hand a million rows to the
    # validators in two blocks (two tasks, one after the other). At 4 MiB a block holds about
    # READ_BATCH_ROWS records.
    ctx.target_max_block_size = BLOCK_BYTES


def load_stage(path: str):
    """A stage class from "module:Class" (raypipe.stages.STAGES holds one per kind)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# ---- the graph's CPU functions ---------------------------------------------------------


def _read_fn(uris: list[str], out: str | None, run_id: str | None = None, sweep: bool = False):
    def read(_batch):
        # The resume index, loaded here in the read task: the driver never holds it. This run's
        # own parts are left out, so every branch sees the index as it was when the run started.
        done = load_done_ids(out, exclude_run=run_id, any_status_of_run=sweep) if out else set()
        for batch in read_batches(uris, done, READ_BATCH_ROWS):
            # An Arrow table of known types: Ray Data's own conversion of a dict of lists infers
            # the types and costs this sequential task ~0.5 s more a million rows.
            yield pa.table({name: pa.array(batch[name], type=type_) for name, type_ in RECORD_TYPES.items()})
    return read


def _validate_batch(batch: dict[str, np.ndarray], defaults: dict[str, dict],
                    kinds: dict[str, dict] | None = None, keep_rows: bool = True, then=None) -> dict[str, Any]:
    """Validate each pending record: route = its kind, or "rejected" with the error. keep_rows: add
    the validated row as JSON (row_json). then: a reduction of the validated batch, run in the
    same task (counting, pricing), so that only its result leaves the task."""
    routes, errors, rows = [], [], []
    configs: dict[str, KindConfig] = {}  # parsed once a batch, for the rows that need them
    for route, kind, raw_json, error in zip(batch["route"], batch["kind"], batch["raw_json"], batch["error"]):
        row_json = ""
        if route == "pending":
            try:
                if kind and kind in KNOWN_KINDS and kind not in defaults:
                    raise ValueError(f"kind: no model configured for {kind!r} in the run config")
                row = validate_row(from_json(raw_json), defaults.get(kind))
                if kinds and getattr(row, "sp_degree", 1) > 1:  # heads, latent rows, CFG parallel, gang size
                    if kind not in configs:
                        configs[kind] = KindConfig.model_validate(kinds[kind])
                    check_sequence_parallel(row, configs[kind])
                route, row_json = row.kind, (row_to_json(row) if keep_rows else "")
            except ValueError as err:
                route, error = "rejected", str(err)
        routes.append(route)
        errors.append(error)
        rows.append(row_json)
    validated = {**batch, "route": routes, "error": errors, "row_json": rows}
    return then(validated) if then is not None else validated


def _rejected_meta_json(row_id, kind, source, line, raw_json, error) -> str:
    meta = empty_metadata(str(row_id), str(kind), "rejected", str(error))
    raw = json.loads(raw_json) if raw_json else {}
    if isinstance(raw.get("prompt"), (str, dict)):
        meta["prompt"] = prompt_text(raw["prompt"])
    meta["params_json"] = json.dumps({"source": str(source), "line": int(line)})
    return meta_to_json(meta)


def _rejected_meta(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """The branch of rows with no pool: rejected by validation (or lost, in the sweep)."""
    metas = []
    for row_id, kind, source, line, raw_json, route, error, row_json in zip(
            batch["id"], batch["kind"], batch["source"], batch["line"], batch["raw_json"], batch["route"],
            batch["error"], batch["row_json"]):
        if route == "rejected":
            metas.append(_rejected_meta_json(row_id, kind, source, line, raw_json, error))
        else:  # a valid row here is one the sweep found without a final state
            meta = metadata_from_row(row_from_json(row_json), "failed", LOST_ERROR)
            metas.append(meta_to_json(meta))
    return {"meta_json": metas}


def _count_routes_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    routes, counts = np.unique(np.asarray(batch["route"], dtype=object).astype(str), return_counts=True)
    return {"route": routes, "rows": counts}


def _rejected_and_tally(batch: dict[str, np.ndarray]) -> dict[str, list]:
    """For `raypipe validate`: the batch's rejected rows, plus one tally row (id "") standing for
    its valid rows; `rows` says how many manifest rows each output row stands for."""
    out: dict[str, list] = {"id": [], "source": [], "line": [], "error": [], "rows": []}
    valid = 0
    for route, row_id, source, line, error in zip(batch["route"], batch["id"], batch["source"], batch["line"],
                                                 batch["error"]):
        if route == "rejected":
            for key, value in (("id", row_id), ("source", source), ("line", int(line)), ("error", error), ("rows", 1)):
                out[key].append(value)
        else:
            valid += 1
    for key, value in (("id", ""), ("source", ""), ("line", 0), ("error", ""), ("rows", valid)):
        out[key].append(value)
    return out


def _load_inputs(batch: dict[str, np.ndarray], stage_path: str, kind_config: dict[str, Any]) -> dict[str, list]:
    """CPU stage before a pool: decode each row's input images / videos (Stage.load_inputs), so the
    pool actor only generates. A row rejected by validation gets its metadata row here."""
    stage = load_stage(stage_path)(KindConfig.model_validate(kind_config))  # no model is loaded
    n = len(batch["route"])
    metas, inputs = [""] * n, [b""] * n
    todo = []
    for i in range(n):
        if batch["route"][i] == "rejected":
            metas[i] = _rejected_meta_json(batch["id"][i], batch["kind"][i], batch["source"][i], batch["line"][i],
                                           batch["raw_json"][i], batch["error"][i])
        else:
            todo.append(i)
    loaded = stage.load_all_inputs([row_from_json(batch["row_json"][i]) for i in todo])
    for i, value in zip(todo, loaded):  # a dict of arrays / images, or the error text
        inputs[i] = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return {"row_json": list(batch["row_json"]), "meta_json": metas, "inputs": inputs}


class RowAttempts:
    """Which rows pool actors are generating now, and how often a worker died doing one.

    A pool actor marks its rows before generating and clears them after; a mark still there when
    the batch comes back (Ray retried it on a restarted actor) means the worker died with that
    row: one death. One small actor per run, on the driver's node; it holds only rows in flight
    and rows that died."""

    def __init__(self):
        self._running: dict[str, str] = {}
        self._deaths: dict[str, tuple[int, str]] = {}

    def check(self, ids: list[str]) -> list[tuple[int, str]]:
        for row_id in ids:
            worker = self._running.pop(row_id, None)
            if worker is not None:
                self._deaths[row_id] = (self._deaths.get(row_id, (0, ""))[0] + 1, worker)
        return [self._deaths.get(row_id, (0, "")) for row_id in ids]

    def start(self, ids: list[str], worker: str) -> None:
        for row_id in ids:
            self._running[row_id] = worker

    def finish(self, ids: list[str]) -> None:
        for row_id in ids:
            self._running.pop(row_id, None)
            self._deaths.pop(row_id, None)


class StageActor:
    """A Ray Data actor of one kind's pool: the stage is set up once, in __init__."""

    def __init__(self, kind: str, stage_path: str, kind_config: dict[str, Any], attempts=None,
                 max_row_attempts: int = 3):
        self.kind = kind
        self.setup_error = ""
        self.attempts = attempts
        self.max_row_attempts = max_row_attempts
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.meter = StageMeter(kind)  # Ray metrics of this actor (raypipe/metrics.py)
        self.stage = load_stage(stage_path)(KindConfig.model_validate(kind_config))
        try:
            self.stage.setup()
        except Exception as err:  # noqa: BLE001 - every row of this actor fails with the reason
            self.setup_error = f"loading the {kind} model failed: {type(err).__name__}: {err}"
        self.meter.loaded()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        n = len(batch["row_json"])
        metas: list[Any] = list(batch["meta_json"])  # rows rejected by validation pass through as they are
        frames = [b""] * n
        todo = [i for i in range(n) if not metas[i]]
        rows = [row_from_json(batch["row_json"][i]) for i in todo]
        inputs = [pickle.loads(batch["inputs"][i]) for i in todo]
        self.meter.started(len(rows))
        if self.setup_error:
            done = [metadata_from_row(row, "failed", self.setup_error) for row in rows]
        else:
            results = self._generate(rows, inputs)
            done = [r.meta for r in results]
            for i, result in zip(todo, results):
                frames[i] = result.frames.tobytes() if result.frames is not None else b""
        self.meter.done(done)
        for i, meta in zip(todo, done):
            metas[i] = meta_to_json(meta)
        return {"meta_json": metas, "frames": frames}

    def _generate(self, rows, inputs):
        import ray

        if self.attempts is None or not rows:
            return self.stage.process(rows, inputs)
        ids = [row.id for row in rows]
        deaths = ray.get(self.attempts.check.remote(ids))
        if not any(count for count, _ in deaths):
            ray.get(self.attempts.start.remote(ids, self.worker))
            results = self.stage.process(rows, inputs)
            self.attempts.finish.remote(ids)
            return results
        # A retry after a worker died holding these rows: one row at a time, so that a row that
        # kills its worker is found, and fails alone once it has done so max_row_attempts times.
        results = []
        for row, inp, (count, last_worker) in zip(rows, inputs, deaths):
            if count >= self.max_row_attempts:
                meta = metadata_from_row(row, "failed", f"the worker generating this row died {count} times "
                                         f"(last: {last_worker}); not tried again")
                meta.update(worker=last_worker, model=row.model or self.stage.config.model)
                results.append(_Failed(meta))
            else:
                ray.get(self.attempts.start.remote([row.id], self.worker))
                results.extend(self.stage.process([row], [inp]))
            self.attempts.finish.remote([row.id])
        return results


@dataclass
class _Failed:
    meta: dict[str, Any]
    frames: None = None


# ---- the graph ---------------------------------------------------------------------------


def records_dataset(uris: list[str], config: RunConfig, out: str | None = None, run_id: str | None = None,
                    sweep: bool = False, read_cpus: float = 0.0):
    """Every manifest row as a record (id, source, line, kind, route, raw_json, error), read by
    one task in manifest order; route is "pending", "rejected" or "skip" (ok in `out` already).

    read_cpus: the read task's CPU. 0 beside pools: it may live as long as the run (backpressure
    pauses it) and must never hold a CPU that a pool's actors or the CPU stages wait for. 1 in
    the passes that only validate (count, `raypipe validate`, `raypipe plan`): the read is their
    one sequential part, and without a CPU of its own the validating tasks crowd it out."""
    import ray.data

    _quiet_ray_data()
    return (ray.data.from_items([{"manifests": 0}])
            .map_batches(_read_fn(uris, out, run_id, sweep), batch_size=None, num_cpus=read_cpus))


def _validate(records, config: RunConfig, keep_rows: bool = True, then=None, num_cpus: float | None = None):
    defaults = {kind: kc.defaults for kind, kc in config.kinds.items()}
    kinds = {kind: kc.model_dump() for kind, kc in config.kinds.items()}
    return records.map_batches(_validate_batch,
                               fn_kwargs={"defaults": defaults, "kinds": kinds, "keep_rows": keep_rows, "then": then},
                               batch_size=READ_BATCH_ROWS, num_cpus=num_cpus or config.cpu_stage_num_cpus)


def validated_dataset(uris: list[str], config: RunConfig, out: str | None = None, run_id: str | None = None,
                      keep_rows: bool = True, then=None):
    """Records of every manifest row with their route: a kind, 'rejected' or 'skip'; and, with
    keep_rows, the validated row as JSON (row_json) for the stages that need it. then: see
    _validate_batch. For passes that only validate (no pools run beside them)."""
    # Validation is pure Python work: a validating process per half core is enough (more only
    # adds switching; measured in BENCHMARKS.md), the read keeps a core of its own.
    return _validate(records_dataset(uris, config, out, run_id, read_cpus=1.0), config, keep_rows, then,
                     num_cpus=max(0.5, config.cpu_stage_num_cpus))


def count_routes(uris: list[str], config: RunConfig, out: str | None = None, run_id: str | None = None
                 ) -> dict[str, int]:
    """Rows per route; counted in the validating tasks, so only a few numbers reach the driver."""
    counts: dict[str, int] = {}
    tallies = validated_dataset(uris, config, out, run_id, keep_rows=False, then=_count_routes_batch)
    for batch in tallies.iter_batches(batch_size=None, batch_format="numpy"):
        for route, rows in zip(batch["route"], batch["rows"]):
            counts[str(route)] = counts.get(str(route), 0) + int(rows)
    return counts


def pool_dataset(records, kind: str, kc: KindConfig, rows: int, out: str, config: RunConfig, stage_path: str,
                 attempts=None):
    """One kind's branch: its rows validated, inputs decoded on CPU, generated by its actor pool,
    encoded and committed by CPU tasks."""
    import ray.data
    from ray.data.expressions import col

    cpu = config.cpu_stage_num_cpus
    size = min(kc.pool_size, rows)
    compute = ray.data.ActorPoolStrategy(min_size=size, max_size=max(size, min(kc.max_pool_size or size, rows)))
    # Blocks of one actor batch each: a task takes whole blocks and yields its output as one
    # block at its end, so a block of a thousand rows would go to one actor, and reach the
    # writers only once all of it is generated. One batch per block spreads the rows over the
    # pool's actors (and the input decoding over CPU tasks), and each video is encoded and
    # committed as soon as its batch is done.
    validated = _validate(records.filter(expr=(col("kind") == kind) & (col("route") == "pending"), num_cpus=0),
                          config)
    batches = validated.repartition(target_num_rows_per_block=kc.batch_size)
    with_inputs = batches.map_batches(_load_inputs, fn_kwargs={"stage_path": stage_path,
                                                               "kind_config": kc.model_dump()},
                                      batch_size=kc.batch_size, num_cpus=cpu)
    generated = with_inputs.map_batches(
        StageActor, fn_constructor_args=(kind, stage_path, kc.model_dump(), attempts, config.max_row_attempts),
        compute=compute, batch_size=kc.batch_size, **load_stage(stage_path).ray_resources(kc))
    return generated.map_batches(write_videos, fn_kwargs={"out": out}, batch_size=1, num_cpus=cpu)


def others_dataset(records, pooled: list[str], config: RunConfig):
    """The branch of rows whose kind has no pool: rejected (or, in the sweep, lost)."""
    from ray.data.expressions import col

    cpu = config.cpu_stage_num_cpus
    no_pool = (col("route") == "rejected") | (col("route") == "pending")
    if pooled:
        no_pool = (col("route") == "rejected") | ((col("route") == "pending") & ~col("kind").is_in(pooled))
    return _validate(records.filter(expr=no_pool, num_cpus=0), config).map_batches(_rejected_meta, num_cpus=cpu)


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


def _pool_needs(kc: KindConfig, rows: int, stage_path: str) -> dict[str, float]:
    """The Ray resources a kind's pool holds once its min_size actors run."""
    args = load_stage(stage_path).ray_resources(kc)
    size = min(kc.pool_size, rows)
    needs = {"CPU": args.get("num_cpus", 0) * size, "GPU": args.get("num_gpus", 0) * size,
             "memory": args.get("memory", 0) * size}
    for name, amount in (args.get("resources") or {}).items():
        needs[name] = amount * size
    return {name: amount for name, amount in needs.items() if amount}


def pool_waves(kinds: list[str], routes: dict[str, int], config: RunConfig, stage_paths: dict[str, str],
               capacity: dict[str, float]) -> list[list[str]]:
    """Kinds whose pools run at the same time, in order. A pool's actors hold their resources for
    the whole execution: pools that together leave no CPU for the CPU stages would stall it
    (two 1-CPU pools on a 2-CPU laptop). Such kinds run in waves, one streaming execution each;
    on a cluster with room for every pool (capacity: ray.cluster_resources()) there is one wave.
    A kind that does not fit even alone gets a wave of its own (an autoscaler may add nodes)."""
    # Room beside the pools for the CPU stages: a task or two, and the block splitting before
    # each pool (Ray Data's StreamingRepartition, whose tasks take a whole CPU).
    cpu_stages = max(1.0, 2 * config.cpu_stage_num_cpus)
    waves: list[list[str]] = []
    free: dict[str, float] = {}
    for kind in kinds:
        needs = _pool_needs(config.kinds[kind], routes[kind], stage_paths[kind])
        if waves and all(free.get(name, 0.0) >= amount for name, amount in needs.items()):
            waves[-1].append(kind)
        else:
            waves.append([kind])
            free = {name: capacity.get(name, 0.0) for name in capacity}
            free["CPU"] = free.get("CPU", 0.0) - cpu_stages
        for name, amount in needs.items():
            free[name] = free.get(name, 0.0) - amount
        if len(waves[-1]) == 1 and any(free.get(name, 0.0) < 0 for name in needs):
            log.warning("raypipe: the %s pool needs %s, more than the cluster has beside a CPU for the CPU "
                        "stages (%s); it waits for resources (an autoscaler) or stalls", kind, needs, capacity)
    return waves


def _row_attempts_actor():
    """The run's RowAttempts, pinned to the driver's node (if that node is lost, so is the run)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(RowAttempts).options(num_cpus=0, scheduling_strategy=here).remote()


def run(uris: list[str], out: str, config: RunConfig, progress=sys.stderr,
        metrics: RunMetrics | None = None, stages: dict[str, str] | None = None) -> RunSummary:
    """Run every manifest row to a final state under `out`; returns the counts.
    metrics: the driver's metrics (served live if the caller made them with a port).
    stages: kind -> "module:Class", replacing raypipe.stages.STAGES entries (tests, plugins)."""
    import ray.data

    from raypipe.stages import STAGES

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
    stage_paths = {**STAGES, **(stages or {})}

    def consume(results) -> None:
        last_line = time.monotonic()
        for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
            for meta_json in batch["meta_json"]:
                meta = meta_from_json(meta_json)
                metrics.observe(meta)
                sink.add(meta)
                summary.by_status[meta["status"]] = summary.by_status.get(meta["status"], 0) + 1
            summary.seconds = time.monotonic() - started
            if time.monotonic() - last_line >= config.progress_seconds and summary.done < summary.total:
                print(summary.line(), file=progress, flush=True)
                last_line = time.monotonic()

    if summary.total:
        import ray

        attempts = _row_attempts_actor() if kinds else None
        records = records_dataset(uris, config, out, sink.run_id)
        waves = pool_waves(kinds, routes, config, stage_paths, ray.cluster_resources()) or [[]]
        if len(waves) > 1:
            print(f"raypipe: the pools do not fit the cluster at once; they run in {len(waves)} waves: "
                  + ", then ".join("+".join(wave) for wave in waves), file=progress, flush=True)
        for number, wave in enumerate(waves):
            results = others_dataset(records, kinds, config) if number == 0 else None
            for kind in wave:
                branch = pool_dataset(records, kind, config.kinds[kind], routes[kind], out, config,
                                      stage_paths[kind], attempts)
                results = branch if results is None else results.union(branch)
            consume(results)
        if summary.done < summary.total:
            # Rows of blocks Ray Data dropped after their retries ran out: every row not yet
            # final in this run gets a metadata row (`failed`, lost) so none is missing.
            sink.flush()
            consume(others_dataset(records_dataset(uris, config, out, sink.run_id, sweep=True), [], config))
        if summary.done < summary.total:
            print(f"raypipe: {summary.total - summary.done} rows have no final state: Ray Data dropped their blocks "
                  f"even in the sweep (the errors are above); run the same command again to finish them",
                  file=progress, flush=True)
    sink.flush()
    reconcile(out)
    metrics.finish(out)  # <out>/metrics.prom, and the Pushgateway if set
    summary.seconds = time.monotonic() - started
    print(summary.line(), file=progress, flush=True)  # the final counts, always
    return summary


def rejected_rows(uris: list[str], config: RunConfig) -> tuple[int, list[dict[str, Any]]]:
    """`raypipe validate`: the number of rows and each rejected row (id, source, line, error),
    in one streaming pass; only the rejected rows and a tally per block reach the driver."""
    found = validated_dataset(uris, config, keep_rows=False, then=_rejected_and_tally)
    total, rejected = 0, []
    for batch in found.iter_batches(batch_size=None, batch_format="numpy"):
        for row_id, source, line, error, rows in zip(batch["id"], batch["source"], batch["line"], batch["error"],
                                                     batch["rows"]):
            total += int(rows)
            if row_id:
                rejected.append({"id": str(row_id), "source": str(source), "line": int(line), "error": str(error)})
    rejected.sort(key=lambda r: (r["source"], r["line"]))
    return total, rejected
