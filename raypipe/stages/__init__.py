"""The model families. A stage file per family; this table maps a manifest `kind` to it.

Stages are imported lazily (by name) so that the runner imports no model code it does not run.
"""

from __future__ import annotations

import importlib

from raypipe.stages.base import Generated, Result, Stage

STAGES: dict[str, str] = {
    "cogvideox": "raypipe.stages.cogvideox:CogVideoXStage",
    "exvideo": "raypipe.stages.exvideo:ExVideoStage",
    "deforum": "raypipe.stages.deforum:DeforumStage",
    "sdxl_video": "raypipe.stages.sdxl_video:SDXLVideoStage",
    "animatediff": "raypipe.stages.animatediff:AnimateDiffStage",
}


def stage_class(kind: str) -> type[Stage]:
    module, _, name = STAGES[kind].partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = ["STAGES", "Generated", "Result", "Stage", "stage_class"]
