"""Connecting to (or starting) Ray, Ray Data's settings for a streaming run, and Ray's routine
notices kept off a user's terminal."""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# Environment variables that configure object storage (fsspec, s3fs, gcsfs, adlfs) and the Hugging
# Face hub (HF_TOKEN for gated and private models, HF_HOME / HF_HUB_CACHE, HF_ENDPOINT for a mirror,
# HF_HUB_OFFLINE, ...; HUGGING_FACE_HUB_TOKEN, the token's old name): the driver's are forwarded to
# every worker of the run, so that tasks and actors reach the same storage and the same models.
HUB_ENV_PREFIXES = ("HF_", "HUGGING_FACE_HUB_")
STORAGE_ENV_PREFIXES = (
    "AWS_",
    "FSSPEC_",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCSFS_",
    "AZURE_STORAGE_",
    *HUB_ENV_PREFIXES,
)
BLOCK_BYTES = 4 << 20

# How long a Ray task worker beyond one a CPU may stay idle before the raylet stops it (Ray's
# default: 1 s). A run's CPU stages (validators, decoders, writers of 0.25 CPU each) come and go
# in bursts, and at 1 s the raylet stopped a worker every few seconds and started another, which
# imported raypipe, PyAV and OpenCV again (kept, and with the writers' batches, a 20k-row run took
# 22% less CPU: BENCHMARKS.md). Set for a Ray that raypipe starts; a cluster's raylets read it
# from their environment (k8s/).
IDLE_WORKER_ENV = "RAY_idle_worker_killing_time_threshold_ms"
IDLE_WORKER_MS = 60_000

# The largest task result (or argument) Ray keeps in its owner's own memory rather than the object
# store (Ray's default: 100 KiB); an argument under it is copied into the task's spec, which the
# owner keeps (lineage) while the task's results live. The driver owns every block of a run, so
# each block queued between two stages (in the 100k-row benchmark, up to ~1,300 pool outputs of
# 64 rows waiting for the writers) held ~50 KB of the driver's memory: its anonymous memory rose
# 106 MB over the run. At 1 KiB the blocks go to the object store, which Ray Data's budget counts
# (and spills): 49 MB, the same rows/s (BENCHMARKS.md). Set for a Ray that raypipe starts.
INLINE_BYTES_ENV = "RAY_max_direct_call_object_size"
INLINE_BYTES = 1024

# What every raylet (and so every worker and a job's driver) of a run should have in its
# environment: a Ray that raypipe starts gets it from init_ray; k8s/ and the README's `ray start` set it.
RAYLET_ENV = {IDLE_WORKER_ENV: str(IDLE_WORKER_MS), INLINE_BYTES_ENV: str(INLINE_BYTES)}

# Lines Ray prints on every run that mean nothing to a user of raypipe (shown with --verbose):
# the token-authentication notice of every ray.init, Ray Data's notice that progress bars are
# off (raypipe draws its own) and its line at the end of each execution, and the core worker's
# error-level line for every pool actor, whose constructor arguments (Ray Data's) sit in the
# object store while max_restarts is -1 (kept on purpose: raypipe/pipeline/actors.py). Ray's
# lines about real problems (out of memory, a dead node or worker, a failed task) do not match.
QUIET_LINES = tuple(
    re.compile(pattern)
    for pattern in (
        r"Token authentication is enabled for this Ray cluster",
        r"Progress bars disabled\. To enable",
        r"has constructor arguments in the object store and max_restarts > 0",
        r"INFO streaming_executor\.py:\d+ -- .*execution finished in [\d.]+ seconds",
    )
)


def storage_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(STORAGE_ENV_PREFIXES)}


def joins_cluster(address: str | None) -> bool:
    """True when init_ray(address) joins a running cluster (an address, or RAY_ADDRESS), not a Ray of its own."""
    return address not in (None, "local") or (address is None and bool(os.environ.get("RAY_ADDRESS")))


def init_ray(address: str | None = None, dashboard: bool = True) -> bool:
    """Connect to (or start) Ray; True if this call started it. Inside `ray job submit`
    RAY_ADDRESS is set and ray.init() joins that cluster. dashboard=False: a Ray started here
    runs without the dashboard (a second of start-up on 2 cores; `validate` and `plan` need none).

    Joining a running cluster, the driver's object-storage and hub settings (AWS_*, FSSPEC_*, ...,
    HF_TOKEN, HF_HOME, HF_ENDPOINT, ...) go to the run's workers in its runtime_env; inside
    `ray job submit` the job's own runtime_env rules instead (set them there:
    `--runtime-env-json '{"env_vars": {...}}'`). A Ray started here needs none: its workers inherit
    this process's environment, and a job-level runtime_env would cost every worker a round trip to
    the runtime-env agent (~1.5 s of a million-row `raypipe validate` on 2 cores)."""
    import ray
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {}
    env = storage_env()
    if env and joins_cluster(address) and RAY_JOB_CONFIG_JSON_ENV_VAR not in os.environ:
        kwargs["runtime_env"] = {"env_vars": env}
    if not dashboard:
        kwargs["include_dashboard"] = False  # ignored when joining a running cluster
    # Read by the raylet that this ray.init may start (it inherits the environment) and by this
    # process's own core worker; not arguments, since ray.init refuses system settings when it
    # joins a cluster (`ray start`'s). A value the user set wins.
    for name, value in RAYLET_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, configure_logging=True, **kwargs)
    return True


def quiet_ray_data() -> None:
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


@contextmanager
def filtered_stderr(write: Callable[[str], Any], quiet=QUIET_LINES) -> Iterator[None]:
    """Every line this process writes to stderr (file descriptor 2: Python, Ray's C++ core
    worker, the worker output Ray forwards to the driver) goes to `write` instead, but the lines
    matching a pattern of `quiet`. `write` must not write to file descriptor 2 itself."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            pending = b""
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    if not any(pattern.search(line) for pattern in quiet):
                        write(line + "\n")
            if pending:
                write(pending.decode(errors="replace"))

    thread = threading.Thread(target=pump, name="raypipe-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last writer here: the pump reads what is left, then ends
        os.close(saved)
        # A process started meanwhile may hold the pipe open (Ray's own are gone by now): wait a
        # little for the rest, not for ever.
        thread.join(timeout=5)
