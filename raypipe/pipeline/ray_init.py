"""Connecting to (or starting) Ray, and Ray Data's settings for a streaming run."""

from __future__ import annotations

import logging
import os
from typing import Any

# Environment variables that configure object storage (fsspec, s3fs, gcsfs, adlfs): the driver's
# are forwarded to every worker of the run, so that tasks and actors reach the same storage.
STORAGE_ENV_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_APPLICATION_CREDENTIALS", "GCSFS_", "AZURE_STORAGE_")
BLOCK_BYTES = 4 << 20


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
