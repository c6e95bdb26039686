"""SDXL video: arbitrarily long video, chunk by chunk (raypipe/models/sdxl_video.py).

A row runs `num_repeats + 1` pipeline calls of `num_frames` frames. Each call is conditioned on
the last `num_conditioning_frames` latents made so far (normalised: the UNet's latent space,
as the pipeline returns them); the first call has nothing to look back on, so its chunk only
seeds the conditioning and is dropped. With an init `image`, the image's latents, repeated,
are the first conditioning, so every one of the `num_repeats` calls is kept. Either way the
video has num_repeats * num_frames frames.

Memory does not grow with the video's length on the model side: only the last
num_conditioning_frames latents are kept between calls, and each chunk is decoded right after
it is made, `decode_chunk_size` frames (config option, default 8) at a time. Only the finished
uint8 frames accumulate (the stage returns the whole video).

A row's `lora` list (SDXL LoRAs: the 2D weights keep SDXL's names) is loaded once per pipeline
through SDXL's LoRA loader, as peft adapters, and made active per row (raypipe/families/lora.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.families.inputs import input_image
from raypipe.families.lora import LoraAdapters
from raypipe.families.sdxl_video.schema import SDXLVideoRow
from raypipe.stage import Generated, Stage, to_uint8


class SDXLVideoStage(Stage):
    kind = "sdxl_video"

    def load_pipeline(self, path: str) -> Any:
        from diffusers import DiffusionPipeline

        from raypipe.models.sdxl_video import SDXLVideoPipeline

        if DiffusionPipeline.load_config(path).get("_class_name") == "StableDiffusionXLPipeline":
            # A plain SDXL checkpoint: inflated on load, its temporal modules identities (each
            # frame is what SDXL makes) until a trained sdxl_video checkpoint replaces it.
            pipe = SDXLVideoPipeline.from_sdxl(path, dtype=self.torch_dtype)
        else:
            pipe = SDXLVideoPipeline.from_pretrained(path, dtype=self.torch_dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(self.device)

    def load_inputs(self, row: SDXLVideoRow) -> dict[str, Any]:
        if not row.image:
            return {}
        return {"image": input_image("image", row.image, size=(row.height, row.width))}

    def use_loras(self, row: SDXLVideoRow) -> list[dict[str, Any]]:
        """Make exactly the row's LoRAs active, at the row's weights (loading new ones)."""
        make = lambda pipe: LoraAdapters(pipe, what="the SDXL UNet or text encoders")  # noqa: E731
        self.loras_of(self.model_for(row), make).activate([(spec.path, spec.weight) for spec in row.lora])
        return [spec.model_dump() for spec in row.lora]

    def generate(self, rows: list[SDXLVideoRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        # One row at a time: a row is already many pipeline calls, and its chunks depend on each other.
        return [self._video(row, inp) for row, inp in zip(rows, inputs)]

    def _video(self, row: SDXLVideoRow, inputs: dict[str, Any]) -> Generated:
        import torch

        pipe = self.pipeline(self.model_for(row))
        loras = self.use_loras(row)
        decode_chunk_size = int(self.config.options.get("decode_chunk_size", 8))
        keep = row.num_conditioning_frames
        # One CPU generator per row: initial noise and the SDE noise of every step of every call.
        generator = torch.Generator("cpu").manual_seed(row.seed)
        last = None  # normalised latents of the last `keep` frames made so far, [1, keep, C, h, w]
        calls = row.num_repeats + 1
        if "image" in inputs:
            last = pipe.encode_image_latents(inputs["image"], row.height, row.width).repeat(1, keep, 1, 1, 1)
            calls = row.num_repeats
        frames = np.empty((row.num_repeats * row.num_frames, row.height, row.width, 3), dtype=np.uint8)
        filled = 0
        for _ in range(calls):
            latents = pipe(
                prompt=row.prompt,
                negative_prompt=row.negative_prompt or None,
                num_frames=row.num_frames,
                height=row.height,
                width=row.width,
                num_inference_steps=row.num_inference_steps,
                guidance_scale=row.guidance_scale,
                conditioning_latents=last,
                conditioning_strength=row.conditioning_strength,
                generator=generator,
                output_type="latent",
            ).latents
            dropped = last is None  # the unconditioned first chunk only seeds the conditioning
            last = (latents if last is None else torch.cat([last, latents], dim=1))[:, -keep:].clone()
            if not dropped:
                chunk = to_uint8(pipe.decode_latents(latents, decode_chunk_size)[0])
                frames[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
        scheduler = pipe.scheduler
        return Generated(
            frames,
            fps=row.fps,
            params={
                "num_repeats": row.num_repeats,
                "frames_per_chunk": row.num_frames,
                "num_conditioning_frames": keep,
                "conditioning_strength": row.conditioning_strength,
                "image": row.image,
                "pipeline_calls": calls,
                "first_chunk_dropped": "image" not in inputs,
                "decode_chunk_size": decode_chunk_size,
                "lora": loras,
                "scheduler": f"{type(scheduler).__name__}({getattr(scheduler.config, 'algorithm_type', '')})",
            },
        )
