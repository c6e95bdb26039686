"""Shared test setup: a fresh tiny-model cache per session and a real local Ray per module."""

import os
import tempfile
from pathlib import Path

import pytest

# Set before any Ray starts, so Ray's workers inherit it: each test session builds its own
# tiny models (a few seconds) instead of trusting a cache a previous version wrote.
os.environ["RAYPIPE_CACHE"] = tempfile.mkdtemp(prefix="raypipe-test-cache-")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# ../shared (the KubeRay CRD schemas, a real Deforum settings file) sits beside the checkout in
# CI and in the project's workspace, not in a user's fresh clone: tests that read it skip there.
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"needs {SHARED} (KubeRay CRDs, Deforum settings), which a fresh clone has not"
)


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray (2 CPUs, as the CI machine), shared by the tests of one module."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    # address="local": always a fresh local Ray, never a head someone started with `ray start`.
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSONL; a str row is written as is (for unparseable lines)."""
    import json

    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path
