"""CogVideoX: text-to-video, image-to-video and video-to-video.

- `t2v`: CogVideoXPipeline on the config's `model` (CogVideoX-2b, CogVideoX-5b).
- `i2v`: CogVideoXImageToVideoPipeline on the config's `models.i2v` (CogVideoX-5b-I2V); the
  row's `image` is the first frame.
- `v2v`: CogVideoXVideoToVideoPipeline on the t2v model's own modules (no second copy of the
  weights); the row's `video` is re-noised by `strength` and denoised toward the prompt.

A row's `model` replaces the config's model of its mode. The config's `options` (memory and
speed: raypipe/families/options.py) apply to every pipeline loaded; a row's `lora` list
is made active for its call (raypipe/families/lora.py, with DiffSynth's names renamed by
raypipe/families/cogvideox/lora.py).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from raypipe.families.cogvideox.lora import cogvideox_loras
from raypipe.families.cogvideox.schema import CogVideoXRow
from raypipe.families.inputs import input_image, input_video
from raypipe.families.options import apply_options, check_options, skipped_options
from raypipe.stage import Generated, Stage, to_uint8


class CogVideoXStage(Stage):
    kind = "cogvideox"

    def setup(self) -> None:
        check_options(self.config.options)
        super().setup()

    def load_pipeline(self, path: str) -> Any:
        from diffusers import DiffusionPipeline

        # The checkpoint's model_index.json says which pipeline it is (t2v or i2v).
        pipe = DiffusionPipeline.from_pretrained(path, dtype=self.torch_dtype)
        pipe.set_progress_bar_config(disable=True)
        return apply_options(pipe, self.config.options, self.device)

    def mode_pipeline(self, row: CogVideoXRow) -> Any:
        """The pipeline that runs the row's mode, loaded once."""
        from diffusers import CogVideoXImageToVideoPipeline, CogVideoXPipeline, CogVideoXVideoToVideoPipeline

        wanted = CogVideoXImageToVideoPipeline if row.mode == "i2v" else CogVideoXPipeline
        pipe = self.pipeline_of_type(self.model_for(row), wanted, f"mode {row.mode}")
        if row.mode == "v2v":  # the same modules, the video-to-video loop
            pipe = CogVideoXVideoToVideoPipeline(**pipe.components)
            pipe.set_progress_bar_config(disable=True)
        return pipe

    def batch_key(self, row: CogVideoXRow) -> Hashable:
        loras = tuple((spec.path, spec.weight) for spec in row.lora)
        return (
            row.mode,
            row.model,
            row.num_frames,
            row.height,
            row.width,
            row.num_inference_steps,
            row.guidance_scale,
            row.strength,
            loras,
        )

    def load_inputs(self, row: CogVideoXRow) -> dict[str, Any]:
        size = (row.height, row.width) if row.height and row.width else None
        if row.mode == "i2v":
            return {"image": np.asarray(input_image("image", row.image, size))}
        if row.mode == "v2v":
            return {"video": input_video("video", row.video, row.num_frames, size)}
        return {}

    def generate(self, rows: list[CogVideoXRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        import torch
        from PIL import Image

        first = rows[0]
        pipe = self.mode_pipeline(first)
        if first.mode == "v2v" and len(rows) > 1 and pipe.transformer.config.patch_size_t:
            # CogVideoX 1.5's v2v checks the frame count as len(video): a batch would read as frames.
            return [video for row, inp in zip(rows, inputs) for video in self.generate([row], [inp])]
        self.loras_of(self.model_for(first), cogvideox_loras).activate(
            [(spec.path, spec.weight) for spec in first.lora]
        )
        args: dict[str, Any] = {}
        if first.mode == "i2v":
            args["image"] = [Image.fromarray(inp["image"]) for inp in inputs]
        if first.mode == "v2v":
            videos = [[Image.fromarray(frame) for frame in inp["video"]] for inp in inputs]
            args.update(video=videos[0] if len(videos) == 1 else videos, strength=first.strength)
        else:
            args["num_frames"] = first.num_frames
        # One CPU generator per row: a row's video depends on its seed alone, batched or not.
        generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
        out = pipe(
            prompt=[row.prompt for row in rows],
            negative_prompt=[row.negative_prompt for row in rows],
            height=first.height,
            width=first.width,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            generator=generators,
            output_type=self.output_type,  # "latent" on the ranks of a gang that only help denoise
            max_sequence_length=pipe.transformer.config.max_text_seq_length,
            **args,
        )
        if self.output_type == "latent":
            return self.not_decoded(rows)
        params: dict[str, Any] = {"pipeline": type(pipe).__name__}
        if first.mode == "v2v":
            params["strength"] = first.strength
        if first.lora:
            params["lora"] = [spec.model_dump() for spec in first.lora]
        skipped = skipped_options(pipe, self.config.options, self.device)
        if skipped:
            params["skipped_options"] = skipped
        # CogVideoX makes 8 fps video: the rate when neither the row nor the config's defaults say.
        return [Generated(to_uint8(video), fps=row.fps or 8, params=params) for video, row in zip(out.frames, rows)]
