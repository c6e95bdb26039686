"""Fault injection for tests/test_orchestration.py, on the real CogVideoX stage, loaded by the pool
actors through `run(..., stages={"cogvideox": "tests.faulty_stage:<class>"})`:

- PoisonCogVideoX: a row whose prompt is POISON kills the worker process generating it (as the
  kernel's OOM killer or a segfault in a CUDA kernel would), every time;
- MarkingCogVideoX: leaves the file MARKS/<row id>.<pid> as it starts each row, so that a test
  sees which process is generating and how far it got, while it is at it (the metadata comes
  later, after the CPU stages)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from raypipe.families.cogvideox.stage import CogVideoXStage

POISON = "kill the worker"
MARKS = Path(tempfile.gettempdir()) / "raypipe-test-marks"


class PoisonCogVideoX(CogVideoXStage):
    def generate(self, rows, inputs):
        if any(row.prompt == POISON for row in rows):
            os._exit(1)  # no exception, no cleanup: the process is gone
        return super().generate(rows, inputs)


class MarkingCogVideoX(CogVideoXStage):
    def generate(self, rows, inputs):
        MARKS.mkdir(exist_ok=True)
        for row in rows:
            (MARKS / f"{row.id}.{os.getpid()}").touch()
        return super().generate(rows, inputs)
