"""ExVideo: long videos from post-tuned CogVideoX and Stable Video Diffusion.

- `base: cogvideox`: CogVideoXPipeline on the config's `model` (CogVideoX-5b) with the ExVideo
  LoRA (`models.lora`, ExVideo-CogVideoX-LoRA-129f-v1) active: text-to-video, up to 129 frames.
- `base: svd`: StableVideoDiffusionPipeline on `models.svd` (SVD-XT) whose UNet carries the
  ExVideo-SVD extension loaded from `models.svd_extension` (ExVideo-SVD-128f-v1's
  model.fp16.safetensors; raypipe/families/exvideo/svd_extension.py): image-to-video, up to 128 frames.

A row's `model` replaces the base checkpoint of its base. Both bases load on first use, each
once per actor; the config's `options` apply to both (an option a base cannot use is skipped
and the video's params_json says so: see raypipe/families/options.py).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from raypipe.families.cogvideox.lora import cogvideox_loras
from raypipe.families.exvideo.schema import ExVideoRow
from raypipe.families.inputs import input_image
from raypipe.families.options import COMMON_OPTIONS, apply_options, check_options, skipped_options
from raypipe.stage import Generated, Stage, to_uint8

# post_normalize, contrast_enhance_scale: DiffSynth's post-processing of ExVideo-SVD's final latents
# (raypipe/families/exvideo/svd_extension.py post_process_latents; default on, scale 1.2 as DiffSynth).
OPTIONS = (*COMMON_OPTIONS, "decode_chunk_size", "post_normalize", "contrast_enhance_scale")
# What an svd row gets when it leaves these out (SVD's own defaults).
SVD_DEFAULTS = {"motion_bucket_id": 127, "noise_aug_strength": 0.02, "min_guidance_scale": 1.0}


class ExVideoStage(Stage):
    kind = "exvideo"
    # sp_degree rows (base cogvideox) run CogVideoX's transformer: its wiring
    sequence_parallel_wiring = "raypipe.families.cogvideox.parallel:parallelize"

    def setup(self) -> None:
        check_options(self.config.options, OPTIONS)
        self.svd_post_process()  # bad values fail the pool at once
        super().setup()

    def svd_post_process(self) -> dict[str, Any]:
        """DiffSynth's post-processing of base svd latents, from the options (its defaults)."""
        from raypipe.families.exvideo.svd_extension import CONTRAST_ENHANCE_SCALE

        normalize = self.config.options.get("post_normalize", True)
        scale = self.config.options.get("contrast_enhance_scale", CONTRAST_ENHANCE_SCALE)
        if not isinstance(normalize, bool):
            raise ValueError(f"options.post_normalize: must be true or false, got {normalize!r}")
        if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
            raise ValueError(f"options.contrast_enhance_scale: a positive number, got {scale!r}")
        return {"post_normalize": normalize, "contrast_enhance_scale": float(scale)}

    def role(self, name: str) -> str:
        """A model of the config's `models` by role (lora, svd, svd_extension)."""
        if name not in self.config.models:
            raise ValueError(f"model: the run config has no kinds.exvideo.models.{name}")
        return self.config.models[name]

    def load_pipeline(self, path: str) -> Any:
        from diffusers import CogVideoXPipeline, DiffusionPipeline, StableVideoDiffusionPipeline

        from raypipe.families.exvideo.svd_extension import load_exvideo_svd
        from raypipe.models.weights import read_safetensors

        pipe = DiffusionPipeline.from_pretrained(path, dtype=self.torch_dtype)
        # base cogvideox: the ExVideo LoRA is loaded with the row's own LoRAs, on the first call
        if type(pipe) is StableVideoDiffusionPipeline:
            load_exvideo_svd(pipe.unet, read_safetensors(self.role("svd_extension")))
        elif type(pipe) is not CogVideoXPipeline:
            raise ValueError(
                f"model: {path} is a {type(pipe).__name__}; exvideo needs a CogVideoX "
                f"text-to-video or a Stable Video Diffusion checkpoint"
            )
        pipe.set_progress_bar_config(disable=True)
        return apply_options(pipe, self.config.options, self.device)

    def base_pipeline(self, row: ExVideoRow) -> Any:
        from diffusers import CogVideoXPipeline, StableVideoDiffusionPipeline

        wanted = CogVideoXPipeline if row.base == "cogvideox" else StableVideoDiffusionPipeline
        return self.pipeline_of_type(self.model_for(row), wanted, f"base {row.base}")

    def batch_key(self, row: ExVideoRow) -> Hashable:
        loras = tuple((spec.path, spec.weight) for spec in row.lora)
        svd = (row.fps, row.motion_bucket_id, row.noise_aug_strength, row.min_guidance_scale)
        return (
            row.base,
            row.model,
            row.num_frames,
            row.height,
            row.width,
            row.num_inference_steps,
            row.guidance_scale,
            loras,
            svd if row.base == "svd" else None,
        )

    def load_inputs(self, row: ExVideoRow) -> dict[str, Any]:
        if row.base != "svd":
            return {}
        return {"image": np.asarray(input_image("image", row.image, (row.height, row.width)))}

    def generate(self, rows: list[ExVideoRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        import torch

        first = rows[0]
        pipe = self.base_pipeline(first)
        # One CPU generator per row: a row's video depends on its seed alone, batched or not.
        generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
        params: dict[str, Any] = {"pipeline": type(pipe).__name__}
        if first.base == "cogvideox":
            self.loras_of(self.model_for(first), cogvideox_loras).activate(
                [(self.role("lora"), 1.0)] + [(spec.path, spec.weight) for spec in first.lora]
            )
            params["exvideo_lora"] = self.role("lora")
            if first.lora:
                params["lora"] = [spec.model_dump() for spec in first.lora]
            out = pipe(
                prompt=[row.prompt for row in rows],
                negative_prompt=[row.negative_prompt for row in rows],
                num_frames=first.num_frames,
                height=first.height,
                width=first.width,
                num_inference_steps=first.num_inference_steps,
                guidance_scale=first.guidance_scale,
                generator=generators,
                output_type=self.output_type,  # "latent" on the ranks of a gang that only help denoise
                max_sequence_length=pipe.transformer.config.max_text_seq_length,
            )
            if self.output_type == "latent":
                return self.not_decoded(rows)
        else:
            from PIL import Image

            svd = {
                name: getattr(first, name) if getattr(first, name) is not None else default
                for name, default in SVD_DEFAULTS.items()
            }
            from raypipe.families.exvideo.svd_extension import post_process_callback

            post = self.svd_post_process()
            params.update(exvideo_svd=self.role("svd_extension"), **svd, **post)
            out = pipe(
                image=[Image.fromarray(inp["image"]) for inp in inputs],
                num_frames=first.num_frames,
                height=first.height,
                width=first.width,
                num_inference_steps=first.num_inference_steps,
                max_guidance_scale=first.guidance_scale,
                fps=first.fps,
                decode_chunk_size=self.config.options.get("decode_chunk_size"),
                generator=generators,
                output_type="np",
                callback_on_step_end=post_process_callback(**post),
                **svd,
            )
        skipped = skipped_options(pipe, self.config.options, self.device)
        if skipped:
            params["skipped_options"] = skipped
        return [Generated(to_uint8(video), fps=row.fps, params=params) for video, row in zip(out.frames, rows)]
