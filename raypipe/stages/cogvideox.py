"""CogVideoX: text-to-video (CogVideoXPipeline)."""

from __future__ import annotations

from typing import Any

from raypipe.schema import CogVideoXRow
from raypipe.stages.base import Generated, Stage, to_uint8


class CogVideoXStage(Stage):
    kind = "cogvideox"

    def load_pipeline(self, path: str) -> Any:
        from diffusers import CogVideoXPipeline

        pipe = CogVideoXPipeline.from_pretrained(path, dtype=self.torch_dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def generate(self, rows: list[CogVideoXRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        import torch

        pipe = self.pipeline(rows[0].model)
        first = rows[0]
        # One CPU generator per row: a row's video depends on its seed alone, batched or not.
        generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
        out = pipe(
            prompt=[row.prompt for row in rows],
            negative_prompt=[row.negative_prompt for row in rows],
            num_frames=first.num_frames, height=first.height, width=first.width,
            num_inference_steps=first.num_inference_steps, guidance_scale=first.guidance_scale,
            generator=generators, output_type="np",
            max_sequence_length=pipe.transformer.config.max_text_seq_length,
        )
        return [Generated(to_uint8(video), fps=row.fps) for video, row in zip(out.frames, rows)]
