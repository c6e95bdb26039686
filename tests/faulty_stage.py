"""Fault injection for tests/test_orchestration.py: the real CogVideoX stage, except that a row
whose prompt is POISON kills the worker process generating it (as the kernel's OOM killer or a
segfault in a CUDA kernel would), every time. Loaded by the pool actors through
`run(..., stages={"cogvideox": "tests.faulty_stage:PoisonCogVideoX"})`."""

from __future__ import annotations

import os

from raypipe.stages.cogvideox import CogVideoXStage

POISON = "kill the worker"


class PoisonCogVideoX(CogVideoXStage):
    def generate(self, rows, inputs):
        if any(row.prompt == POISON for row in rows):
            os._exit(1)  # no exception, no cleanup: the process is gone
        return super().generate(rows, inputs)
