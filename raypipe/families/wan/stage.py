"""Wan 2.x: text-to-video and image-to-video.

- `t2v`: WanPipeline on the config's `model` (Wan2.1-T2V-1.3B / -14B, Wan2.2-T2V-A14B).
- `i2v`: WanImageToVideoPipeline on the config's `models.i2v` (Wan2.1-I2V-14B-480P / -720P,
  Wan2.2-I2V-A14B); the row's `image` is the first frame.

A row's `model` replaces the config's model of its mode. The VAE and the CLIP image encoder load
in float32 whatever the kind's `dtype`, as Wan's model cards load them (a bfloat16 VAE decodes
visibly worse); the transformers and the text encoder load in `dtype`. The config's `options`
(raypipe/families/options.py, plus `flow_shift`: the flow-matching shift of the scheduler, 3.0 in
the released checkpoints, 5.0 recommended for 720P) apply to every pipeline loaded; a row's
`lora` list is made active for its call (raypipe/families/lora.py; diffusers' Wan LoRA loader
also reads the original Wan / musubi-tuner key names).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from raypipe.families.inputs import input_image
from raypipe.families.lora import LoraAdapters
from raypipe.families.options import COMMON_OPTIONS, apply_options, check_options, skipped_options
from raypipe.families.wan.schema import WanRow
from raypipe.stage import Generated, Stage, to_uint8

OPTIONS = (*COMMON_OPTIONS, "flow_shift")
# Wan's text context: UMT5 tokens padded to 512. The I2V attention splits the image tokens off the
# context by this length (diffusers' WanAttnProcessor), so it is not a tunable.
TEXT_TOKENS = 512


def check_wan_options(options: dict[str, Any]) -> None:
    check_options(options, OPTIONS)
    shift = options.get("flow_shift")
    if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int | float) or shift <= 0):
        raise ValueError(f"options.flow_shift: a positive number, got {shift!r}")


def wan_loras(pipe) -> LoraAdapters:
    return LoraAdapters(pipe, what="the Wan transformer")


def set_flow_shift(pipe, shift: float) -> None:
    """The scheduler with another flow shift (UniPC / DPM-Solver: `flow_shift`; FlowMatchEuler: `shift`)."""
    config = pipe.scheduler.config
    name = "flow_shift" if "flow_shift" in config else "shift" if "shift" in config else None
    if name is None:
        raise ValueError(f"options.flow_shift: {type(pipe.scheduler).__name__} has no flow shift")
    pipe.scheduler = type(pipe.scheduler).from_config(config, **{name: float(shift)})


def encode_prompts(pipe, rows: list[WanRow], guidance: bool):
    """The rows' prompt and negative prompt embeddings, TEXT_TOKENS long. Through a WanPipeline on
    the same text encoder: diffusers 0.42's WanImageToVideoPipeline cleans prompts with ftfy
    without checking that it is installed (WanPipeline checks)."""
    from diffusers import WanPipeline

    text = pipe
    if type(pipe) is not WanPipeline:
        text = WanPipeline(
            tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=pipe.scheduler
        )
    return text.encode_prompt(
        prompt=[row.prompt for row in rows],
        negative_prompt=[row.negative_prompt for row in rows],
        do_classifier_free_guidance=guidance,
        max_sequence_length=TEXT_TOKENS,
    )


class WanStage(Stage):
    kind = "wan"

    def setup(self) -> None:
        check_wan_options(self.config.options)
        super().setup()

    def load_pipeline(self, path: str) -> Any:
        import torch
        from diffusers import DiffusionPipeline

        # The checkpoint's model_index.json says which pipeline it is (t2v or i2v).
        dtypes = {"default": self.torch_dtype, "vae": torch.float32, "image_encoder": torch.float32}
        pipe = DiffusionPipeline.from_pretrained(path, dtype=dtypes)
        pipe.set_progress_bar_config(disable=True)
        if "flow_shift" in self.config.options:
            set_flow_shift(pipe, self.config.options["flow_shift"])
        return apply_options(pipe, self.config.options, self.device)

    def mode_pipeline(self, row: WanRow) -> Any:
        from diffusers import WanImageToVideoPipeline, WanPipeline

        wanted = WanImageToVideoPipeline if row.mode == "i2v" else WanPipeline
        return self.pipeline_of_type(self.model_for(row), wanted, f"mode {row.mode}")

    def batch_key(self, row: WanRow) -> Hashable:
        loras = tuple((spec.path, spec.weight) for spec in row.lora)
        return (
            row.mode,
            row.model,
            # diffusers' Wan I2V takes one image per call: rows batch with their own first frame only
            row.image,
            row.num_frames,
            row.height,
            row.width,
            row.num_inference_steps,
            row.guidance_scale,
            loras,
        )

    def load_inputs(self, row: WanRow) -> dict[str, Any]:
        if row.mode == "i2v":
            return {"image": np.asarray(input_image("image", row.image, (row.height, row.width)))}
        return {}

    def generate(self, rows: list[WanRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        # Rows with sp_degree > 1 reach here on each rank of a gang (raypipe/stage.py dispatches them;
        # raypipe/families/wan/parallel.py wires the transformer).
        import torch
        from PIL import Image

        first = rows[0]
        pipe = self.mode_pipeline(first)
        self.loras_of(self.model_for(first), wan_loras).activate([(spec.path, spec.weight) for spec in first.lora])
        args: dict[str, Any] = {}
        if first.mode == "i2v":
            args["image"] = Image.fromarray(inputs[0]["image"])  # the rows' batch_key holds one image
        prompt_embeds, negative_embeds = encode_prompts(pipe, rows, first.guidance_scale > 1.0)
        # One CPU generator per row: a row's video depends on its seed alone, batched or not.
        generators = [torch.Generator("cpu").manual_seed(row.seed) for row in rows]
        out = pipe(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            height=first.height,
            width=first.width,
            num_frames=first.num_frames,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            generator=generators,
            output_type=self.output_type,  # "latent" on the ranks of a gang that only help denoise
            max_sequence_length=TEXT_TOKENS,
            **args,
        )
        if self.output_type == "latent":
            return self.not_decoded(rows)
        scheduler = pipe.scheduler.config
        params: dict[str, Any] = {
            "pipeline": type(pipe).__name__,
            "scheduler": type(pipe.scheduler).__name__,
            "flow_shift": scheduler.get("flow_shift", scheduler.get("shift")),
        }
        if first.lora:
            params["lora"] = [spec.model_dump() for spec in first.lora]
        skipped = skipped_options(pipe, self.config.options, self.device)
        if skipped:
            params["skipped_options"] = skipped
        return [Generated(to_uint8(video), fps=row.fps, params=params) for video, row in zip(out.frames, rows)]
