"""What a stage is: one model family that turns validated rows into frames.

A stage declares its resources (from its KindConfig), loads its pipeline once in `setup`,
and turns a list of rows into frames in `generate`. `process` wraps `generate` the way
the pipeline needs it: rows are grouped into pipeline calls, a failing row records its
error on itself and the others flow on. Stages import neither Ray nor the runner, so a
benchmark or a notebook can drive one directly:

    stage = CogVideoXStage(load_config().kinds["cogvideox"]); stage.setup()
    results = stage.process([validate_row({...})])

Each family's stage is in its package (raypipe/families/<kind>/stage.py).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np

from raypipe import parallel
from raypipe.config import KindConfig
from raypipe.metadata import Metadata, metadata_from_row
from raypipe.models.tiny import resolve_model
from raypipe.schema import RowBase

# Frames holding NaN/Inf that to_uint8 converted in this thread since the last Generated was made.
_nonfinite = threading.local()


def take_nonfinite_frames() -> int:
    """The NaN/Inf frames to_uint8 counted in this thread since the last call (then 0 again)."""
    count = getattr(_nonfinite, "frames", 0)
    _nonfinite.frames = 0
    return count


@dataclass
class Generated:
    """One video: uint8 RGB frames [F, H, W, 3] and what it was made with.

    nonfinite_frames: frames of the pipeline's float output that held NaN or Inf. By default the
    count to_uint8 made in this thread since the previous Generated: a stage writes
    `Generated(to_uint8(video), ...)` (or converts a video's frames, then makes its Generated),
    and the count follows the video to the quality gate without the stage passing it."""

    frames: np.ndarray
    fps: int
    params: dict[str, Any] = field(default_factory=dict)
    nonfinite_frames: int = field(default_factory=take_nonfinite_frames)


@dataclass
class Result:
    """A row after its stage: metadata (status ok/failed) and, when ok, its frames."""

    meta: Metadata
    frames: np.ndarray | None = None


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_uint8(frames) -> np.ndarray:
    """Pipeline output in [0, 1] (float, [F, H, W, C], or one frame [H, W, C]) -> uint8.

    NaN and Inf (an fp16 VAE that overflowed) become 0, black; the frames that held any are
    counted for the quality gate (Generated.nonfinite_frames), as uint8 cannot show them."""
    array = np.asarray(frames, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        per_frame = finite.reshape(array.shape[0], -1).all(axis=1) if array.ndim == 4 else finite.all(keepdims=True)
        _nonfinite.frames = getattr(_nonfinite, "frames", 0) + int((~per_frame).sum())
        array = np.where(finite, array, 0.0)
    return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) < 2000 else text[:2000] + "..."


class _FamilySequenceParallel:
    """Stage.supports_sequence_parallel: its family's `sequence_parallel` (raypipe/families/<kind>/
    __init__.py), read from the registry, so that the stage and the family cannot disagree."""

    def __get__(self, stage, owner) -> bool:
        from raypipe.families import family

        try:
            return bool(owner.kind) and family(owner.kind).sequence_parallel
        except KeyError:  # a stage of a kind nobody registered: none
            return False


class Stage:
    kind: ClassVar[str] = ""
    # Rows may ask for sp_degree > 1: the Stage base runs them on gangs (self.gangs), whose ranks
    # build this stage with their SPContext (`sp`) and wire each pipeline they load with
    # `sequence_parallel_wiring` ("module:function(transformer, sp)"; by default the family's
    # raypipe/families/<kind>/parallel.py:parallelize). See raypipe/parallel/.
    supports_sequence_parallel = _FamilySequenceParallel()
    sequence_parallel_wiring: ClassVar[str] = ""
    # Pipelines kept loaded at once (the config's model plus per-row `model` overrides).
    max_loaded_pipelines: ClassVar[int] = 2

    def __init__(self, config: KindConfig, sp=None):
        self.config = config
        # This stage as a rank of a gang: its place there (raypipe.parallel.context.SPContext), else None.
        self.sp = sp
        # The gangs this stage sends its sp_degree > 1 rows to (none on a rank, or for a family without).
        self.gangs = parallel.Gangs(type(self), config) if self.supports_sequence_parallel and sp is None else None
        self._pipelines: OrderedDict[str, Any] = OrderedDict()
        self._loras: dict[str, Any] = {}  # model -> LoraAdapters of its pipeline (raypipe/families/lora.py)

    # ---- resources and device -------------------------------------------------------

    @classmethod
    def ray_resources(cls, config: KindConfig) -> dict[str, Any]:
        resources: dict[str, Any] = {"num_cpus": config.num_cpus, "num_gpus": config.num_gpus}
        if config.memory_gb:
            resources["memory"] = int(config.memory_gb * 2**30)
        if config.resources:
            resources["resources"] = dict(config.resources)
        if config.accelerator_type:
            resources["accelerator_type"] = config.accelerator_type
        return resources

    @property
    def device(self) -> str:
        return self.config.device

    @property
    def torch_dtype(self):
        import torch

        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.config.dtype]

    def device_name(self) -> str:
        import torch

        if self.device.startswith("cuda") and torch.cuda.is_available():
            index = torch.device(self.device).index or 0
            return f"{self.device} ({torch.cuda.get_device_name(index)})"
        return self.device

    @staticmethod
    def worker_name() -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    # ---- loading ----------------------------------------------------------------------

    def setup(self) -> None:
        """Load the config's pipeline once; called before the first row."""
        import torch
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        # Thousands of rows: no per-load progress bars or tokenizer-length chatter in the logs.
        diffusers_logging.disable_progress_bar()
        diffusers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_error()
        if self.device == "cpu" and self.config.num_cpus >= 1:
            torch.set_num_threads(max(1, int(self.config.num_cpus)))
        self.pipeline(self.config.model)

    def load_pipeline(self, path: str) -> Any:
        """Load the family's pipeline from a local folder or hub id (a `tiny:` name is resolved)."""
        raise NotImplementedError

    def pipeline(self, model: str | None = None) -> Any:
        """The pipeline for `model` (the config's by default), loaded at most once."""
        model = model or self.config.model
        if model in self._pipelines:
            self._pipelines.move_to_end(model)
            return self._pipelines[model]
        while len(self._pipelines) >= self.max_loaded_pipelines:
            evicted, _ = self._pipelines.popitem(last=False)
            self._loras.pop(evicted, None)
        try:
            pipe = self.load_pipeline(resolve_model(model))
        except Exception as err:
            from raypipe.preflight import hub_failure

            hub = hub_failure(err, model)  # gated, private or missing on the hub: say which id and HF_TOKEN
            if hub is None:
                raise
            raise ValueError(hub) from err
        if self.sp is not None:  # a rank of a gang: its transformer computes its shard of the tokens
            from raypipe.parallel.hooks import enable_sequence_parallel

            wiring = self.sequence_parallel_wiring or f"raypipe.families.{self.kind}.parallel:parallelize"
            enable_sequence_parallel(pipe, self.sp, wiring)
        self._pipelines[model] = pipe
        return pipe

    def loras_of(self, model: str, make) -> Any:
        """The LoRA adapters of the pipeline loaded for `model`: make(pipeline) on first use."""
        if model not in self._loras:
            self._loras[model] = make(self.pipeline(model))
        return self._loras[model]

    def model_for(self, row: RowBase) -> str:
        """The checkpoint `row` runs on: its `model`, else the config's for its mode (the family's
        rule, raypipe/families/<kind>/__init__.py). Raises ValueError('model: ...')."""
        from raypipe.families import family

        return family(self.kind).model_of(row, self.config)

    def _model_name(self, row: RowBase) -> str:
        try:
            return self.model_for(row)
        except ValueError:
            return row.model or self.config.model

    def pipeline_of_type(self, model: str, wanted: type, needed_by: str) -> Any:
        """pipeline(model), which must be a `wanted`: a row naming another kind of checkpoint fails
        on its `model` field ("<needed_by> needs a <wanted> checkpoint")."""
        pipe = self.pipeline(model)
        if type(pipe) is not wanted:
            raise ValueError(
                f"model: {model} is a {type(pipe).__name__}; {needed_by} needs a {wanted.__name__} checkpoint"
            )
        return pipe

    # ---- generation -----------------------------------------------------------------

    def batch_key(self, row: RowBase) -> Hashable:
        """Rows with equal keys may run as one pipeline call."""
        return (row.model, row.num_frames, row.height, row.width, row.num_inference_steps, row.guidance_scale)

    def load_inputs(self, row: RowBase) -> dict[str, Any]:
        """CPU work before generation: decode the row's input image / video into arrays or
        PIL images. Raise ValueError naming the field to fail the row (e.g. "image: cannot
        read s3://b/x.png: ..."). Kept apart from `generate` so that the runner can do it in
        a CPU stage, off the GPU actor; when a stage is driven directly, `process` calls it."""
        return {}

    def generate(self, rows: list[RowBase], inputs: list[dict[str, Any]]) -> list[Generated]:
        """Frames for `rows`, which share one batch_key; inputs[i] is load_inputs(rows[i]).
        Raise to fail them all (process then retries them one by one)."""
        raise NotImplementedError

    @property
    def output_type(self) -> str:
        """The pipelines' output_type: "np" (frames), or "latent" on a rank of a gang that is not its
        leader: only the leader's frames are kept, so the others skip the VAE decode."""
        return "latent" if self.sp is not None and not self.sp.is_leader else "np"

    def not_decoded(self, rows: list[RowBase]) -> list[Generated]:
        """What generate returns for `rows` where output_type is "latent": no frames."""
        return [Generated(np.zeros((0, 0, 0, 3), np.uint8), fps=0) for _ in rows]

    def _generate_here_or_on_gang(self, rows: list[RowBase], inputs: list[dict[str, Any]]) -> list[Generated]:
        """generate, or for rows with sp_degree > 1 (process groups rows by degree) their gang's."""
        degree = parallel.sp_degree(rows[0])
        if degree <= 1 or self.sp is not None:
            return self.generate(rows, inputs)
        if self.gangs is None:
            raise ValueError(f"sp_degree: kind {self.kind} does not run sequence parallel, got {degree}")
        return self.gangs.generate(degree, rows, inputs)

    def common_params(self) -> dict[str, Any]:
        """What every video of this stage was made with (goes into params_json)."""
        return {"dtype": self.config.dtype, **self.config.options}

    def _failed(self, row: RowBase, error: str, started: datetime, seconds: float, **params) -> Result:
        meta = metadata_from_row(row, "failed", error)
        meta.update(
            started_at=started,
            finished_at=utcnow(),
            gen_seconds=seconds,
            worker=self.worker_name(),
            device=self.device_name(),
            model=self._model_name(row),
            params_json=json.dumps({**meta.params, **self.common_params(), **params}, sort_keys=True, default=str),
        )
        return Result(meta)

    def _run_group(self, rows: list[RowBase], inputs: list[dict[str, Any]]) -> list[Result]:
        started = utcnow()
        t0 = time.perf_counter()
        take_nonfinite_frames()  # nothing counted by an earlier call that failed carries over
        try:
            generated = self._generate_here_or_on_gang(rows, inputs)
            if len(generated) != len(rows):
                raise RuntimeError(f"{self.kind} stage returned {len(generated)} videos for {len(rows)} rows")
        except Exception as err:  # noqa: BLE001 - a failing row records its error and flows on
            if len(rows) > 1:  # find which rows fail: retry them one by one
                return [r for row, inp in zip(rows, inputs) for r in self._run_group([row], [inp])]
            return [
                self._failed(
                    rows[0], error_text(err), started, time.perf_counter() - t0, traceback=traceback.format_exc(limit=4)
                )
            ]
        seconds = (time.perf_counter() - t0) / len(rows)
        results = []
        for row, gen in zip(rows, generated):
            meta = metadata_from_row(row, "ok")
            frames = gen.frames
            meta.update(
                num_frames=int(frames.shape[0]),
                height=int(frames.shape[1]),
                width=int(frames.shape[2]),
                fps=int(gen.fps),
                model=self._model_name(row),
                params_json=json.dumps(
                    {**meta.params, **self.common_params(), **gen.params, "batch_rows": len(rows)},
                    sort_keys=True,
                    default=str,
                ),
                gen_seconds=seconds,
                started_at=started,
                worker=self.worker_name(),
                device=self.device_name(),
                nonfinite_frames=int(gen.nonfinite_frames),  # for the quality gate (raypipe/quality.py)
            )
            results.append(Result(meta, frames))
        return results

    def load_all_inputs(self, rows: list[RowBase]) -> list[dict[str, Any] | str]:
        """load_inputs for each row: its inputs, or the error text when they cannot be loaded."""
        out: list[dict[str, Any] | str] = []
        for row in rows:
            try:
                out.append(self.load_inputs(row))
            except Exception as err:  # noqa: BLE001 - the row fails with the reason
                out.append(str(err) if isinstance(err, ValueError) else error_text(err))
        return out

    def process(self, rows: list[RowBase], inputs: list[dict[str, Any] | str] | None = None) -> list[Result]:
        """Every row in, one Result per row out (in the same order), failures included.

        inputs: load_all_inputs(rows) when the caller already ran it (in a CPU stage)."""
        if inputs is None:
            inputs = self.load_all_inputs(rows)
        out: list[Result | None] = [None] * len(rows)
        groups: dict[Hashable, list[int]] = {}
        for i, (row, inp) in enumerate(zip(rows, inputs)):
            if isinstance(inp, str):  # the inputs could not be loaded
                out[i] = self._failed(row, inp, utcnow(), 0.0)
            else:
                # rows of another sp_degree run elsewhere (a gang: raypipe/parallel), never in one call
                groups.setdefault((self.batch_key(row), getattr(row, "sp_degree", 1)), []).append(i)
        for indices in groups.values():
            group = self._run_group([rows[i] for i in indices], [inputs[i] for i in indices])  # type: ignore[misc]
            for i, result in zip(indices, group):
                out[i] = result
        return out  # type: ignore[return-value]
