"""A stage for tests/test_quality.py whose video depends on the row's seed, so that a re-roll (the
next seed) can mend a video that failed the quality gate: the real tiny CogVideoX stage, loaded
by the pool actors through `run(..., stages={"cogvideox": "tests.quality_stage:SeedDependentCogVideoX"})`."""

from __future__ import annotations

import numpy as np

from raypipe.families.cogvideox.stage import CogVideoXStage

BLACK_SEEDS = {1000}  # the video is made all black (its next seed, 1001, is not)
STILL_SEEDS = set(range(2000, 2010))  # the first frame held (frozen), for this seed and the next ones


class SeedDependentCogVideoX(CogVideoXStage):
    def generate(self, rows, inputs):
        videos = super().generate(rows, inputs)
        for row, video in zip(rows, videos):
            if row.seed in BLACK_SEEDS:
                video.frames = np.zeros_like(video.frames)
            elif row.seed in STILL_SEEDS:
                video.frames = np.repeat(video.frames[:1], len(video.frames), axis=0)
        return videos
