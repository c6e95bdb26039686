"""Deforum: animation from a text-to-image model, frame by frame, driven by keyframe schedules.

Built on diffusers' StableDiffusionPipeline (first frame, Interpolation frames) and
StableDiffusionImg2ImgPipeline (every later frame), which share every component. The row's
settings (Deforum's own keys, raypipe/families/deforum/settings.py) were resolved and checked at
validation; here they run:

- 2D / 3D: frame 0 is text-to-image; each next frame is the previous one moved by the
  camera (warps.py: 2D affine, or 3D through a depth map from a transformers depth model),
  colour-matched to frame 0 (colour.py), contrast-scaled, noised (noise.py), then repaired by
  img2img at 1 - strength_schedule. With diffusion_cadence N only every Nth frame is
  diffused; the frames between are tweened as Deforum does: the last two diffused frames,
  moved along the camera path, cross-faded.
- Video Input: each frame is img2img of the input video's frame (decoded with decord in
  load_inputs, off the model actor).
- Interpolation: text-to-image at every frame, with the prompt embeddings interpolated
  linearly between the prompt keyframes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from raypipe.families.deforum.schema import DeforumRow
from raypipe.families.inputs import input_image, input_video
from raypipe.models.tiny import resolve_model
from raypipe.stage import Generated, Stage, to_uint8

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


class DeforumStage(Stage):
    kind = "deforum"

    def __init__(self, config):
        super().__init__(config)
        self._depth: tuple[Any, Any, bool] | None = None  # (processor, model, predicts disparity)

    def batch_key(self, row: DeforumRow):
        return row.id  # every row is its own animation: one pipeline call sequence per row

    # ---- loading -----------------------------------------------------------------------------

    def load_pipeline(self, path: str) -> Any:
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        txt2img = StableDiffusionPipeline.from_pretrained(
            path, dtype=self.torch_dtype, safety_checker=None, requires_safety_checker=False
        ).to(self.device)
        img2img = StableDiffusionImg2ImgPipeline(**txt2img.components)  # the same modules, not copies
        for pipe in (txt2img, img2img):
            pipe.set_progress_bar_config(disable=True)
        return txt2img, img2img

    def depth_model(self) -> tuple[Any, Any, bool]:
        """The config's `models.depth` (a transformers depth-estimation model), loaded once."""
        if self._depth is None:
            import torch
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            name = self.config.models.get("depth")
            if not name:
                raise RuntimeError(
                    "3D animation needs a depth model: set models.depth in the run config "
                    "(e.g. Intel/dpt-hybrid-midas, or tiny:depth)"
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
        settings = row.settings
        size = (settings["H"], settings["W"])
        inputs: dict[str, Any] = {}
        if settings.mode == "Video Input":
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
        elif settings["use_init"]:
            inputs["init_image"] = np.asarray(input_image(settings.where("init_image"), settings["init_image"], size))
        return inputs

    # ---- generation ----------------------------------------------------------------------------

    def generate(self, rows: list[DeforumRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        return [Animation(self, row, inp).render() for row, inp in zip(rows, inputs)]


class Animation:
    """One row's render: the per-frame state of Deforum's render loop."""

    def __init__(self, stage: DeforumStage, row: DeforumRow, inputs: dict[str, Any]):
        self.stage, self.row, self.inputs = stage, row, inputs
        self.settings = settings = row.settings
        self.mode = settings.mode
        self.txt2img, self.img2img = stage.pipeline(row.model)
        self.frames = len(inputs["video"]) if self.mode == "Video Input" else settings["max_frames"]
        self.keys = settings.series(self.frames)
        self.scheduler = make_scheduler(settings["sampler"], self.txt2img.scheduler.config)
        self.txt2img.scheduler = self.img2img.scheduler = self.scheduler
        self._embeds: dict[tuple[str, str], Any] = {}
        self.colour_sample: np.ndarray | None = None
        self.seeds: dict[int, int] = {}
        self.depth_calls = 0

    # ---- pieces ----

    def embeds(self, positive: str, negative: str):
        """(prompt_embeds, negative_prompt_embeds) of a prompt, encoded once per row."""
        if (positive, negative) not in self._embeds:
            import torch

            with torch.no_grad():
                self._embeds[(positive, negative)] = self.txt2img.encode_prompt(
                    positive, self.stage.device, 1, True, negative
                )
        return self._embeds[(positive, negative)]

    def frame_embeds(self, frame: int):
        if self.mode != "Interpolation":
            return self.embeds(*self.settings.prompt_for_frame(frame, self.frames))
        keys = self.settings.prompt_keyframes(self.frames)
        before = [k for k in keys if k[0] <= frame] or keys[:1]
        after = [k for k in keys if k[0] > frame] or keys[-1:]
        (f0, text0), (f1, text1) = before[-1], after[0]
        weight = 0.0 if f1 <= f0 else min(max((frame - f0) / (f1 - f0), 0.0), 1.0)
        pos0, neg0 = self.embeds(*self.settings.prompt_at(text0, frame, self.frames))
        pos1, neg1 = self.embeds(*self.settings.prompt_at(text1, frame, self.frames))
        return (1 - weight) * pos0 + weight * pos1, (1 - weight) * neg0 + weight * neg1

    def diffuse(self, frame: int, init: np.ndarray | None, strength: float = 0.0) -> np.ndarray:
        """Frame `frame` by text-to-image (no init) or img2img of `init` keeping `strength` of it."""
        import torch
        from PIL import Image

        settings, keys = self.settings, self.keys
        prompt_embeds, negative_embeds = self.frame_embeds(frame)
        steps = int(keys["steps_schedule"][frame]) if settings["enable_steps_scheduling"] else settings["steps"]
        steps = max(steps, 1)
        common = dict(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            guidance_scale=float(keys["cfg_scale_schedule"][frame]),
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(self.seeds[frame]),
        )
        if hasattr(self.scheduler, "noise_sampler_seed"):  # DPM++ SDE's Brownian noise: the frame's seed too
            self.scheduler.noise_sampler_seed = self.seeds[frame]
        with torch.no_grad():
            if init is None:
                out = self.txt2img(height=settings["H"], width=settings["W"], num_inference_steps=steps, **common)
            else:
                denoise = 1.0 - min(max(strength, 0.0), 1.0)
                if denoise <= 0.0:
                    return init  # strength 1 keeps the init frame as it is
                out = self.img2img(
                    image=Image.fromarray(init),
                    strength=denoise,
                    num_inference_steps=img2img_steps(steps, denoise),
                    **common,
                )
        return to_uint8(out.images[0])

    def warp(self, image: np.ndarray, frame: int, depth: np.ndarray | None = None) -> np.ndarray:
        from raypipe.families.deforum.warps import warp_2d, warp_3d

        k, s = self.keys, self.settings
        if self.mode == "2D":
            return warp_2d(
                image,
                k["angle"][frame],
                k["zoom"][frame],
                k["translation_x"][frame],
                k["translation_y"][frame],
                k["transform_center_x"][frame],
                k["transform_center_y"][frame],
                s["border"],
            )
        disparity = True
        if s["use_depth_warping"]:
            if depth is None:
                depth = self.depth(image)
            disparity = self.stage.depth_model()[2]
        else:
            depth = None
        aspect = s["W"] / s["H"] if s["aspect_ratio_use_old_formula"] else k["aspect_ratio_schedule"][frame]
        return warp_3d(
            image,
            depth,
            k["translation_x"][frame],
            k["translation_y"][frame],
            k["translation_z"][frame],
            k["rotation_3d_x"][frame],
            k["rotation_3d_y"][frame],
            k["rotation_3d_z"][frame],
            fov=k["fov_schedule"][frame],
            near=k["near_schedule"][frame],
            far=k["far_schedule"][frame],
            aspect_ratio=aspect,
            padding_mode=s["padding_mode"],
            sampling_mode=s["sampling_mode"],
            disparity=disparity,
        )

    def depth(self, image: np.ndarray) -> np.ndarray | None:
        if self.mode != "3D" or not self.settings["use_depth_warping"]:
            return None
        self.depth_calls += 1
        return self.stage.predict_depth(image)

    def match_colours(self, image: np.ndarray) -> np.ndarray:
        from raypipe.families.deforum.colour import maintain_colors

        mode = self.settings["color_coherence"]
        if mode == "None" or self.colour_sample is None:
            return image
        return maintain_colors(image, self.colour_sample, mode)

    def prepare_init(self, previous: np.ndarray, frame: int) -> np.ndarray:
        """The previous frame, moved to `frame` and made ready for img2img (Deforum's order:
        warp, colour match, contrast, noise)."""
        from raypipe.families.deforum.noise import add_noise

        s = self.settings
        image = self.match_colours(self.warp(previous, frame))
        image = np.clip(np.round(image * float(self.keys["contrast_schedule"][frame])), 0, 255).astype(np.uint8)
        return add_noise(
            image,
            float(self.keys["noise_schedule"][frame]),
            self.seeds[frame],
            s["noise_type"],
            (s["perlin_w"], s["perlin_h"]),
            s["perlin_octaves"],
            s["perlin_persistence"],
        )

    # ---- the render loops ----

    def render(self) -> Generated:
        from raypipe.families.deforum.settings import frame_seeds

        cadence = self.settings["diffusion_cadence"] if self.mode in ("2D", "3D") else 1
        diffused = list(range(0, self.frames, cadence))
        self.seeds = frame_seeds(self.settings, diffused, self.frames)
        if self.mode == "Video Input":
            video = self._render_video()
        elif self.mode == "Interpolation":
            video = np.stack([self.diffuse(f, None) for f in range(self.frames)])
        else:
            video = self._render_camera(cadence)
        s = self.settings
        params = {
            "animation_mode": self.mode,
            "deforum": s.summary(),
            "deforum_settings": self.row.deforum_settings or "",
            "deforum_unimplemented": s.unimplemented,
            "scheduler": type(self.scheduler).__name__,
            "diffused_frames": len(diffused),
            "seeds": [self.seeds[f] for f in diffused],
            "depth_predictions": self.depth_calls,
        }
        return Generated(video, fps=s["fps"], params=params)

    def _render_video(self) -> np.ndarray:
        out = []
        for frame, source in enumerate(self.inputs["video"]):
            image = self.diffuse(frame, source, float(self.keys["strength_schedule"][frame]))
            if self.colour_sample is None:
                self.colour_sample = image
            else:
                image = self.match_colours(image)
            out.append(image)
        return np.stack(out)

    def _render_camera(self, cadence: int) -> np.ndarray:
        """Deforum's render loop for 2D and 3D (render.py), tweening with cadence > 1; unlike
        Deforum, the frames after the last diffused one are tweened too, so the video always
        has max_frames frames."""
        out: list[np.ndarray | None] = [None] * self.frames
        previous: np.ndarray | None = None
        turbo_prev: np.ndarray | None = None
        turbo_next: np.ndarray | None = None
        turbo_prev_idx = turbo_next_idx = 0
        frame = 0

        def tween(start: int, stop: int, span: int) -> None:
            nonlocal turbo_prev, turbo_next, turbo_prev_idx, turbo_next_idx
            for j in range(start, stop):
                weight = (j - start + 1) / span
                move_prev, move_next = turbo_prev is not None and j > turbo_prev_idx, j > turbo_next_idx
                # One depth map (of the newer frame) moves both, as in Deforum.
                depth = self.depth(turbo_next) if move_prev or move_next else None
                if move_prev:
                    turbo_prev = self.warp(turbo_prev, j, depth)
                if move_next:
                    turbo_next = self.warp(turbo_next, j, depth)
                turbo_prev_idx = turbo_next_idx = j
                if turbo_prev is not None and weight < 1.0:
                    blend = turbo_prev.astype(np.float32) * (1 - weight) + turbo_next.astype(np.float32) * weight
                    out[j] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
                else:
                    out[j] = turbo_next

        while frame < self.frames:
            if cadence > 1 and turbo_next is not None:
                start = max(0, frame - cadence)
                tween(start, frame, frame - start)
                previous = turbo_next
            if previous is not None:
                init, strength = self.prepare_init(previous, frame), float(self.keys["strength_schedule"][frame])
            elif self.settings["use_init"]:
                init, strength = self.inputs["init_image"], self.settings["strength"]
            else:
                init, strength = None, 0.0
            image = self.diffuse(frame, init, strength)
            if self.colour_sample is None:
                self.colour_sample = image  # colour coherence matches every frame to frame 0
            else:
                image = self.match_colours(image)
            if cadence > 1:
                turbo_prev, turbo_prev_idx = turbo_next, turbo_next_idx
                turbo_next, turbo_next_idx = image, frame
                frame += cadence
            else:
                out[frame] = image
                frame += 1
            previous = image
        if cadence > 1:  # the last diffused frame and the tweens after it
            tween(turbo_next_idx, self.frames, cadence)
        return np.stack(out)
