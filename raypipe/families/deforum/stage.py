"""Deforum: animation from a text-to-image model, frame by frame, driven by keyframe schedules.

Built on diffusers' Stable Diffusion pipelines, all made from one checkpoint's components (no
copies): StableDiffusionPipeline (first frame, Interpolation frames), StableDiffusionImg2Img-
Pipeline (every later frame), StableDiffusionInpaintPipeline (frames with a mask), and their
ControlNet variants (StableDiffusionControlNet[Img2Img|Inpaint]Pipeline) when ControlNet units
are on. The row's settings (Deforum's own keys, raypipe/families/deforum/settings.py) were
resolved and checked at validation; render.py runs them frame by frame:

- 2D / 3D: frame 0 is text-to-image (or img2img of init_image); each next frame is the previous
  one moved by the camera (warps.py: 2D affine with the perspective flip, or 3D through a depth
  map from a transformers depth model), by the hybrid video's motion (flow.py), composited with
  it, colour-matched to frame 0 (colour.py), contrast-scaled, sharpened (anti-blur) and noised
  (noise.py, within the noise mask), then repaired by img2img at 1 - strength_schedule (inside
  the mask, masks.py). With diffusion_cadence N only every Nth frame is diffused; the frames
  between are Deforum's tweens, optionally moved along the optical flow between the two
  diffused frames (optical_flow_cadence).
- Video Input: each frame is img2img of the input video's frame (decoded with decord in
  load_inputs, off the model actor).
- Interpolation: text-to-image at every frame, with the prompt embeddings interpolated
  linearly between the prompt keyframes.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from raypipe.families.deforum.schema import DeforumRow
from raypipe.families.inputs import input_image, input_video
from raypipe.models.tiny import resolve_model
from raypipe.stage import Generated, Stage

log = logging.getLogger("raypipe")

# transformers depth models that predict distance; the others (DPT/MiDaS, Depth Anything,
# ...) predict relative inverse depth, as MiDaS does for Deforum.
METRIC_DEPTH_MODELS = ("zoedepth", "glpn", "depth_pro")


def make_scheduler(sampler: str, config):
    """A diffusers scheduler for a Deforum sampler name, from the pipeline's scheduler config."""
    import diffusers

    from raypipe.families.deforum.settings import sampler_scheduler

    class_name, options = sampler_scheduler(sampler)
    return getattr(diffusers, class_name).from_config(config, **options)


def img2img_steps(steps: int, denoise: float) -> int:
    """img2img runs int(steps * denoise) steps; A1111 (Deforum's host) runs at least one, so
    raise `steps` until it does (a strength_schedule of 0.65 at 2 steps would give none)."""
    while int(steps * denoise) < 1:
        steps += 1
    return steps


class Checkpoint:
    """One SD 1.5 checkpoint's pipelines, made on first use from its components (shared)."""

    def __init__(self, stage: DeforumStage, txt2img):
        self.stage, self.txt2img = stage, txt2img
        self._pipes: dict[tuple[str, tuple[str, ...]], Any] = {}

    def pipe(self, task: str, controlnets: tuple[str, ...] = ()):
        """task: txt2img / img2img / inpaint; controlnets: the ControlNet kinds of the active units."""
        import diffusers

        key = (task, controlnets)
        if key not in self._pipes:
            if task == "txt2img" and not controlnets:
                pipe = self.txt2img
            else:
                name = {"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[task]
                extra = {}
                if controlnets:
                    models = [self.stage.controlnet(kind) for kind in controlnets]
                    extra["controlnet"] = models[0] if len(models) == 1 else diffusers.MultiControlNetModel(models)
                    cls = getattr(diffusers, f"StableDiffusionControlNet{name}Pipeline")
                else:
                    cls = getattr(diffusers, f"StableDiffusion{name}Pipeline")
                components = {k: v for k, v in self.txt2img.components.items() if k != "image_encoder"}
                pipe = cls(**components, **extra, requires_safety_checker=False)  # the same modules, not copies
            pipe.set_progress_bar_config(disable=True)
            self._pipes[key] = pipe
        return self._pipes[key]


class DeforumStage(Stage):
    kind = "deforum"

    def __init__(self, config):
        super().__init__(config)
        self._depth: tuple[Any, Any, bool] | None = None  # (processor, model, predicts disparity)
        self._controlnets: dict[str, Any] = {}

    def batch_key(self, row: DeforumRow):
        return row.id  # every row is its own animation: one pipeline call sequence per row

    # ---- loading -----------------------------------------------------------------------------

    def load_pipeline(self, path: str) -> Any:
        from diffusers import StableDiffusionPipeline

        txt2img = StableDiffusionPipeline.from_pretrained(
            path, dtype=self.torch_dtype, safety_checker=None, requires_safety_checker=False
        ).to(self.device)
        return Checkpoint(self, txt2img)

    def controlnet(self, kind: str):
        """The run config's ControlNet for a unit kind (models.controlnet_canny / _depth), loaded once."""
        if kind not in self._controlnets:
            from diffusers import ControlNetModel

            from raypipe.families.deforum.controlnet import role

            name = self.config.models.get(role(kind))
            if not name:
                raise RuntimeError(f"a {kind} ControlNet unit needs models.{role(kind)} in the run config")
            model = ControlNetModel.from_pretrained(resolve_model(name), dtype=self.torch_dtype)
            self._controlnets[kind] = model.to(self.device)
        return self._controlnets[kind]

    def depth_model(self) -> tuple[Any, Any, bool]:
        """The config's `models.depth` (a transformers depth-estimation model), loaded once."""
        if self._depth is None:
            import torch
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            name = self.config.models.get("depth")
            if not name:
                raise RuntimeError(
                    "3D animation and depth ControlNet units need a depth model: set models.depth in the run "
                    "config (e.g. Intel/dpt-hybrid-midas, or tiny:depth)"
                )
            path = resolve_model(name)
            processor = AutoImageProcessor.from_pretrained(path)
            model = AutoModelForDepthEstimation.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
            metric = (
                model.config.model_type in METRIC_DEPTH_MODELS
                or getattr(model.config, "depth_estimation_type", "") == "metric"
            )
            self._depth = (processor, model, not metric)
        return self._depth

    def predict_depth(self, image: np.ndarray) -> np.ndarray:
        """Depth of a uint8 RGB frame, [H, W] float (the model's own units)."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        processor, model, _ = self.depth_model()
        inputs = processor(images=Image.fromarray(image), return_tensors="pt").to(self.device)
        with torch.no_grad():
            predicted = model(**inputs).predicted_depth
        predicted = F.interpolate(
            predicted.unsqueeze(1).float(), size=image.shape[:2], mode="bicubic", align_corners=False
        )
        return predicted[0, 0].cpu().numpy()

    # ---- inputs (CPU side) ---------------------------------------------------------------------

    def load_inputs(self, row: DeforumRow) -> dict[str, Any]:
        from raypipe.families.deforum.controlnet import IMAGE_SUFFIXES
        from raypipe.families.deforum.masks import files_of, parse_expression, prepare_mask
        from raypipe.families.deforum.settings import check_run_config

        settings = row.settings
        check_run_config(settings, self.config)  # a stage driven without the runner's validation
        size = (settings["H"], settings["W"])
        inputs: dict[str, Any] = {}
        hybrid_video = settings.on("hybrid") and not (
            settings["hybrid_use_init_image"] and settings["hybrid_motion"] == "None"
        )
        if settings.mode == "Video Input" or hybrid_video:
            uri = row.video or settings["video_init_path"]
            field = "video" if row.video else settings.where("video_init_path")
            video = input_video(field, uri, size=size)
            stop = None if settings["extract_to_frame"] == -1 else settings["extract_to_frame"] + 1
            video = video[settings["extract_from_frame"] : stop : settings["extract_nth_frame"]]
            if settings.max_frames_given:
                video = video[: settings["max_frames"]]
            if len(video) == 0:
                raise ValueError(f"{field}: no frames between extract_from_frame and extract_to_frame in {uri}")
            inputs["video"] = video
        if settings["use_init"] or (settings.on("hybrid") and settings["hybrid_use_init_image"]):
            image = input_image(settings.where("init_image"), settings["init_image"])
            inputs["init_image"] = _lanczos(image, size)
        if settings.on("mask") or settings.on("noise_mask"):
            wanted = (settings["W"], settings["H"])
            adjust = (settings["mask_brightness_adjust"], settings["mask_contrast_adjust"])
            masks: dict[str, Any] = {}
            if settings["mask_file"]:
                masks["{video_mask}"] = prepare_mask(
                    input_image(settings.where("mask_file"), settings["mask_file"]), wanted, *adjust
                )
            for name, feature in (("mask_schedule", "mask"), ("noise_mask_schedule", "noise_mask")):
                texts = set(settings.text_series(name, settings["max_frames"])) if settings.on(feature) else set()
                for text in texts:
                    for uri in files_of(parse_expression(text, settings.where(name))):
                        if uri not in masks:
                            masks[uri] = prepare_mask(input_image(settings.where(name), uri), wanted, *adjust)
            inputs["masks"] = masks
        for unit in settings.units:
            if not unit.source:
                continue
            field = settings.where(f"{unit.prefix}_vid_path")
            if unit.source.lower().endswith(IMAGE_SUFFIXES):
                inputs[unit.prefix] = np.asarray(input_image(field, unit.source))[None]
            else:
                video = input_video(field, unit.source)
                if settings.mode == "Video Input":  # the same frames as the init video
                    stop = None if settings["extract_to_frame"] == -1 else settings["extract_to_frame"] + 1
                    video = video[settings["extract_from_frame"] : stop : settings["extract_nth_frame"]]
                inputs[unit.prefix] = video
        return inputs

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, rows: list[DeforumRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        from raypipe.families.deforum.render import Animation

        out = []
        for row, inp in zip(rows, inputs):
            if row.settings.unimplemented:
                log.warning(
                    "raypipe: deforum row %s renders without Deforum features raypipe does not implement "
                    "(options.allow_unimplemented): %s",
                    row.id,
                    "; ".join(row.settings.unimplemented),
                )
            out.append(Animation(self, row, inp).render())
        return out


def _lanczos(image, size: tuple[int, int]) -> np.ndarray:
    """A PIL image resized to size (H, W) with Lanczos, as Deforum loads init images."""
    from PIL import Image

    return np.asarray(image.convert("RGB").resize((size[1], size[0]), Image.LANCZOS))
