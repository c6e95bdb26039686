"""One Deforum row's render loop (Deforum's render.py, in its order), on a DeforumStage's models.

Per diffused frame of 2D / 3D: the tweens before it (cadence), then the previous frame warped
by the camera, hybrid-composited ("Before Motion"), moved by the hybrid video's motion,
composited ("Normal"), colour-matched, contrast-scaled, sharpened, noised; optionally replaced
by an optical-flow redo; then diffused (img2img, inside the mask, with the ControlNet units, at
the frame's checkpoint and noise multiplier), composited "After Generation", colour-matched and
laid under the init image outside the mask (overlay_mask).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy as np

from raypipe.families.deforum.schema import DeforumRow
from raypipe.stage import Generated, to_uint8


@contextmanager
def noise_multiplier(scheduler, factor: float):
    """A1111's initial noise multiplier (Deforum's noise_multiplier_schedule): img2img noises the
    init latents with factor x the noise."""
    if factor == 1.0:
        yield
        return
    add_noise = scheduler.add_noise
    scheduler.add_noise = lambda samples, noise, timesteps: add_noise(samples, noise * factor, timesteps)
    try:
        yield
    finally:
        del scheduler.add_noise  # the class's own again


class Interrupted(Exception):
    """reroll_blank_frames: a frame came out blank and Deforum stops the animation there."""


class Animation:
    """One row's render: the per-frame state of Deforum's render loop."""

    def __init__(self, stage, row: DeforumRow, inputs: dict[str, Any]):
        from raypipe.families.deforum.settings import checkpoint_model

        self.stage, self.row, self.inputs = stage, row, inputs
        self.settings = settings = row.settings
        self.mode = settings.mode
        video = inputs.get("video")
        # Video Input and hybrid video take their frame count from the video (as Deforum).
        from_video = self.mode == "Video Input" or (video is not None and not settings["hybrid_use_init_image"])
        self.frames = len(video) if from_video and video is not None else settings["max_frames"]
        self.keys = settings.series(self.frames)
        base = stage.model_for(row)
        names = settings.checkpoints(self.frames)
        self.models = [checkpoint_model(n, stage.config.models) for n in names] if names else [base] * self.frames
        self.checkpoint_names = sorted(set(names))
        self._schedulers: dict[str, Any] = {}
        self._embeds: dict[tuple[str, str, str], Any] = {}
        self.colour_sample: np.ndarray | None = None
        self.seeds: dict[int, int] = {}
        self.depth_calls = 0
        self.rerolls = 0
        self.prev_flow: np.ndarray | None = None  # the last hybrid optical flow (seeds DIS)
        self.last_mask: np.ndarray | None = None  # the frame's composed mask (overlay of the tweens)
        self._texts: dict[str, list[str]] = {}  # mask schedules, per frame
        self.control_frames: dict[int, int] = {}  # unit -> frames it conditioned

    # ---- models ----

    def checkpoint(self, frame: int):
        return self.stage.pipeline(self.models[frame])

    def scheduler(self, frame: int):
        from raypipe.families.deforum.stage import make_scheduler

        model = self.models[frame]
        if model not in self._schedulers:
            config = self.checkpoint(frame).txt2img.scheduler.config
            self._schedulers[model] = make_scheduler(self.settings["sampler"], config)
        return self._schedulers[model]

    def embeds(self, frame: int, positive: str, negative: str):
        """(prompt_embeds, negative_prompt_embeds) of a prompt, encoded once per row and checkpoint."""
        key = (self.models[frame], positive, negative)
        if key not in self._embeds:
            import torch

            with torch.no_grad():
                self._embeds[key] = self.checkpoint(frame).txt2img.encode_prompt(
                    positive, self.stage.device, 1, True, negative
                )
        return self._embeds[key]

    def frame_embeds(self, frame: int):
        if self.mode != "Interpolation":
            return self.embeds(frame, *self.settings.prompt_for_frame(frame, self.frames))
        keys = self.settings.prompt_keyframes(self.frames)
        before = [k for k in keys if k[0] <= frame] or keys[:1]
        after = [k for k in keys if k[0] > frame] or keys[-1:]
        (f0, text0), (f1, text1) = before[-1], after[0]
        weight = 0.0 if f1 <= f0 else min(max((frame - f0) / (f1 - f0), 0.0), 1.0)
        pos0, neg0 = self.embeds(frame, *self.settings.prompt_at(text0, frame, self.frames))
        pos1, neg1 = self.embeds(frame, *self.settings.prompt_at(text1, frame, self.frames))
        return (1 - weight) * pos0 + weight * pos1, (1 - weight) * neg0 + weight * neg1

    # ---- ControlNet ----

    def control(self, frame: int, init: np.ndarray | None) -> list[tuple[Any, np.ndarray, int]]:
        """(unit, control map [H, W, 3], unit number) of the units that act at `frame`: their
        input is their video's frame (or image), else the frame's init (as the ControlNet
        extension takes img2img's input); a text-to-image frame without one skips the unit, as
        does a guidance window of no steps (start >= end: diffusers refuses it)."""
        from raypipe.families.deforum import controlnet as cn

        s, out = self.settings, []
        for unit in s.units:
            if self.keys[f"{unit.prefix}_guidance_start"][frame] >= self.keys[f"{unit.prefix}_guidance_end"][frame]:
                continue  # a window of no steps
            source = self.inputs.get(unit.prefix)
            if source is not None:
                image = source[0] if len(source) == 1 else source[frame] if frame < len(source) else init
            else:
                image = init
            if image is None:
                continue
            height, width = s["H"], s["W"]
            res = cn.resolution(unit, image.shape, height, width)
            if unit.module == "canny":
                raw = cn.canny(image, res, unit.threshold_a, unit.threshold_b)
            elif unit.module == "none":
                raw = image
            else:
                padded, (h, w) = cn.resize_with_pad(image, res)
                raw = cn.depth_map(self.stage.predict_depth(padded))[:h, :w]
                if not self.stage.depth_model()[2]:  # a metric model: near must be bright, as MiDaS's
                    raw = 255 - raw
            out.append((unit, cn.fit(raw, unit.resize_mode, height, width), unit.number))
        return out

    # ---- diffusion ----

    def diffuse(self, frame: int, init: np.ndarray | None, strength: float = 0.0, mask=None, seed=None) -> np.ndarray:
        """Frame `frame` by text-to-image (no init) or img2img of `init` keeping `strength` of it,
        inside `mask` (float [H, W], white = repaint) when given; reroll_blank_frames applied."""
        seed = self.seeds[frame] if seed is None else seed
        image = self._diffuse(frame, init, strength, mask, seed)
        if self.settings["reroll_blank_frames"] == "ignore" or image.any():
            return image
        if self.settings["reroll_blank_frames"] == "interrupt":
            raise Interrupted(frame)
        for attempt in range(1, self.settings["reroll_patience"] + 1):  # +1 seed a try, as Deforum
            self.rerolls += 1
            image = self._diffuse(frame, init, strength, mask, seed + attempt)
            if image.any():
                return image
        raise Interrupted(frame)

    def _diffuse(self, frame: int, init, strength: float, mask, seed: int) -> np.ndarray:
        import torch
        from PIL import Image

        from raypipe.families.deforum.masks import prepare_inpaint
        from raypipe.families.deforum.stage import img2img_steps

        s, keys = self.settings, self.keys
        prompt_embeds, negative_embeds = self.frame_embeds(frame)
        steps = int(keys["steps_schedule"][frame]) if s["enable_steps_scheduling"] else s["steps"]
        steps = max(steps, 1)
        denoise = 1.0 - min(max(strength, 0.0), 1.0)
        if init is not None and denoise <= 0.0:
            return init  # strength 1 keeps the init frame as it is
        units = self.control(frame, init)
        task = "txt2img" if init is None else "inpaint" if mask is not None else "img2img"
        pipe = self.checkpoint(frame).pipe(task, tuple(unit.kind for unit, _, _ in units))
        scheduler = self.scheduler(frame)
        pipe.scheduler = scheduler
        if hasattr(scheduler, "noise_sampler_seed"):  # DPM++ SDE's Brownian noise: the frame's seed too
            scheduler.noise_sampler_seed = seed
        call: dict[str, Any] = dict(
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_embeds,
            guidance_scale=float(keys["cfg_scale_schedule"][frame]),
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(seed),
        )
        inpaint = None
        if task == "inpaint":
            inpaint = prepare_inpaint(
                init, mask, s["mask_overlay_blur"], s["fill"], s["full_res_mask"], s["full_res_mask_padding"]
            )
        for _, _, number in units:
            self.control_frames[number] = self.control_frames.get(number, 0) + 1
        if units:
            maps = [control for _, control, _ in units]
            if inpaint is not None and inpaint.region is not None:  # the ControlNet sees the same area
                x1, y1, x2, y2 = inpaint.region
                maps = [
                    np.asarray(Image.fromarray(m[y1:y2, x1:x2]).resize((s["W"], s["H"]), Image.LANCZOS)) for m in maps
                ]
            images = [Image.fromarray(m) for m in maps]
            one = len(units) == 1
            call.update(
                controlnet_conditioning_scale=[float(keys[f"cn_{n}_weight"][frame]) for _, _, n in units],
                control_guidance_start=[float(keys[f"cn_{n}_guidance_start"][frame]) for _, _, n in units],
                control_guidance_end=[float(keys[f"cn_{n}_guidance_end"][frame]) for _, _, n in units],
            )
            if one:
                call["controlnet_conditioning_scale"] = call["controlnet_conditioning_scale"][0]
            call["image" if task == "txt2img" else "control_image"] = images[0] if one else images
        multiplier = float(keys["noise_multiplier_schedule"][frame]) if s.on("noise_multiplier") else 1.0
        with torch.no_grad():
            if task == "txt2img":
                out = pipe(height=s["H"], width=s["W"], num_inference_steps=steps, **call)
                return to_uint8(out.images[0])
            call.update(strength=denoise, num_inference_steps=img2img_steps(steps, denoise))
            with noise_multiplier(scheduler, multiplier):
                if inpaint is None:
                    out = pipe(image=Image.fromarray(init), **call)
                else:
                    out = pipe(image=inpaint.init, mask_image=inpaint.mask, height=s["H"], width=s["W"], **call)
        image = to_uint8(out.images[0])
        return image if inpaint is None else inpaint.paste(image, init)

    # ---- pieces of the 2D / 3D loop ----

    def warp(self, image: np.ndarray, frame: int, depth: np.ndarray | None = None) -> np.ndarray:
        """The camera move of `frame` (with the perspective flip); `image` may be a flow field."""
        from raypipe.families.deforum.warps import perspective_flip, warp_2d, warp_3d

        k, s = self.keys, self.settings
        flip = None
        if s.on("flip"):
            flip = tuple(float(k[f"perspective_flip_{p}"][frame]) for p in ("theta", "phi", "gamma", "fv"))
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
                flip=flip,
            )
        disparity = True
        if s["use_depth_warping"]:
            if depth is None:
                depth = self.depth(image)
            disparity = self.stage.depth_model()[2]
        else:
            depth = None
        if flip is not None:
            image = perspective_flip(image, *flip, border=s["border"])
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
        if self.mode != "3D" or not self.settings["use_depth_warping"] or image.dtype != np.uint8:
            return None
        self.depth_calls += 1
        return self.stage.predict_depth(image)

    def match_colours(self, image: np.ndarray) -> np.ndarray:
        from raypipe.families.deforum.colour import maintain_colors

        mode = self.settings["color_coherence"]
        if mode == "None" or self.colour_sample is None:
            return image
        return maintain_colors(image, self.colour_sample, mode)

    def video_frame(self, frame: int) -> np.ndarray:
        video = self.inputs["video"]
        return video[min(frame, len(video) - 1)]

    def hybrid_motion(self, images: list[np.ndarray | None], frame: int, prev_img: np.ndarray | None) -> list:
        """Deforum's hybrid motion of `frame`: the video's move from frame - 1 to frame (or, with
        hybrid_motion_use_prev_img, from the last frame made to the video's frame), applied to each image."""
        from raypipe.families.deforum import flow

        s, motion = self.settings, self.settings["hybrid_motion"]
        if not s.on("hybrid") or motion == "None" or frame < 1:
            return images
        start = prev_img if s["hybrid_motion_use_prev_img"] and prev_img is not None else self.video_frame(frame - 1)
        if motion == "Optical Flow":
            moved = flow.flow(start, self.video_frame(frame), s["hybrid_flow_method"], self.prev_flow)
            self.prev_flow = moved
            factor = float(self.keys["hybrid_flow_factor_schedule"][frame])
            return [None if im is None else flow.warp_by_flow(im, moved, factor) for im in images]
        matrix = flow.motion_matrix(start, self.video_frame(frame), motion)
        return [None if im is None else flow.warp_by_matrix(im, matrix, motion) for im in images]

    def composite(self, image: np.ndarray, frame: int, when: str) -> np.ndarray:
        """Deforum's hybrid_composite at `when` (Before Motion / Normal / After Generation)."""
        from raypipe.families.deforum import flow

        s, k = self.settings, self.keys
        if not s.on("hybrid") or s["hybrid_composite"] != when:
            return image
        other = self.inputs["init_image"] if s["hybrid_use_init_image"] else self.video_frame(frame)
        return flow.composite(
            image,
            other,
            float(k["hybrid_comp_alpha_schedule"][frame]),
            s["hybrid_comp_mask_type"],
            float(k["hybrid_comp_mask_blend_alpha_schedule"][frame]),
            float(k["hybrid_comp_mask_contrast_schedule"][frame]),
            s["hybrid_comp_mask_inverse"],
            s["hybrid_comp_mask_equalize"],
            s["hybrid_comp_mask_auto_contrast"],
            int(k["hybrid_comp_mask_auto_contrast_cutoff_low_schedule"][frame]),
            int(k["hybrid_comp_mask_auto_contrast_cutoff_high_schedule"][frame]),
        )

    # ---- masks ----

    def composed(self, name: str, frame: int) -> np.ndarray | None:
        """The mask expression of schedule `name` at `frame` (float [H, W] 0/1), None if blank."""
        from PIL import Image

        from raypipe.families.deforum.masks import compose, parse_expression, to_array

        s = self.settings
        masks = self.inputs["masks"]
        white = Image.new("L", (s["W"], s["H"]), 255)

        def operand(kind: str, value: str):
            if kind == "var":
                return white if value == "everywhere" else masks["{video_mask}"]
            return masks[value]

        if name not in self._texts:
            self._texts[name] = s.text_series(name, self.frames)
        return to_array(compose(parse_expression(self._texts[name][frame], s.where(name)), operand))

    def masks_at(self, frame: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(img2img mask, noise mask) of `frame`, invert_mask applied; None where there is none."""
        s = self.settings
        mask = self.composed("mask_schedule", frame) if s.on("mask") else None
        noise_mask = None
        if s.on("noise_mask"):
            noise_mask = self.composed("noise_mask_schedule", frame)
        elif s.on("mask"):
            noise_mask = mask  # Deforum: without use_noise_mask the noise follows the mask
        if s["invert_mask"]:
            mask = None if mask is None or mask.min() >= 1.0 else 1.0 - mask
            noise_mask = None if noise_mask is None else 1.0 - noise_mask
        return mask, noise_mask

    def overlay(self, image: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
        """overlay_mask: the init image (or the Video Input frame) kept outside the last mask."""
        from raypipe.families.deforum.masks import overlay

        s = self.settings
        if not (s.on("mask") and s["overlay_mask"]) or self.last_mask is None or keep is None:
            return image
        return overlay(image, keep, self.last_mask)

    def prepare_init(self, previous: np.ndarray, frame: int, prev_img: np.ndarray | None, noise_mask):
        """(the previous frame moved to `frame` before noising, the init for img2img) in Deforum's
        order: warp, composite, hybrid motion, composite, colour match, contrast, anti-blur, noise."""
        from raypipe.families.deforum.noise import add_noise, unsharp_mask

        s, k = self.settings, self.keys
        image = self.composite(self.warp(previous, frame), frame, "Before Motion")
        image = self.hybrid_motion([image], frame, prev_img)[0]
        moved = self.match_colours(self.composite(image, frame, "Normal"))
        image = np.clip(np.round(moved * float(k["contrast_schedule"][frame])), 0, 255).astype(np.uint8)
        amount = float(k["amount_schedule"][frame])
        if amount > 0:
            kernel = int(k["kernel_schedule"][frame])
            image = unsharp_mask(
                image, kernel, float(k["sigma_schedule"][frame]), amount, float(k["threshold_schedule"][frame])
            )
        noised = add_noise(
            image,
            float(k["noise_schedule"][frame]),
            self.seeds[frame],
            s["noise_type"],
            (s["perlin_w"], s["perlin_h"]),
            s["perlin_octaves"],
            s["perlin_persistence"],
            mask=noise_mask,
        )
        return moved, noised

    def redo(self, frame: int, moved: np.ndarray, init: np.ndarray, strength: float, mask) -> np.ndarray:
        """optical_flow_redo_generation: a throwaway diffusion of the frame (another seed), moved
        by the flow from the warped previous frame to it, becomes the init."""
        from raypipe.families.deforum import flow

        s = self.settings
        if not s.on("redo") or strength <= 0:
            return init
        seed = int(np.random.default_rng(self.seeds[frame]).integers(0, 2**32))
        throwaway = self.diffuse(frame, init, strength, mask, seed=seed)
        moved_flow = flow.flow(moved, throwaway, s["optical_flow_redo_generation"])
        return flow.warp_by_flow(throwaway, moved_flow, float(self.keys["redo_flow_factor_schedule"][frame]))

    # ---- the render loops ----

    def render(self) -> Generated:
        from raypipe.families.deforum import controlnet as cn
        from raypipe.families.deforum.settings import frame_seeds

        cadence = self.settings["diffusion_cadence"] if self.mode in ("2D", "3D") else 1
        diffused = list(range(0, self.frames, cadence))
        self.seeds = frame_seeds(self.settings, diffused, self.frames)
        interrupted = None
        out: list[np.ndarray | None] = [None] * self.frames
        try:
            if self.mode == "Video Input":
                self._render_video(out)
            elif self.mode == "Interpolation":
                for f in range(self.frames):
                    out[f] = self.diffuse(f, None)
            else:
                self._render_camera(cadence, out)
        except Interrupted as stop:
            interrupted = stop.args[0]
        made = next((i for i, frame in enumerate(out) if frame is None), len(out))
        if made == 0:
            raise RuntimeError(f"reroll_blank_frames {self.settings['reroll_blank_frames']}: frame 0 came out blank")
        video = np.stack(out[:made])
        s = self.settings
        params = {
            "animation_mode": self.mode,
            "deforum": s.summary(),
            "deforum_settings": self.row.deforum_settings or "",
            "deforum_unimplemented": s.unimplemented,
            "deforum_unknown_keys": s.unknown_keys,
            "deforum_features": sorted(s.features),
            "scheduler": type(self.scheduler(0)).__name__,
            "diffused_frames": len(diffused),
            "seeds": [self.seeds[f] for f in diffused],
            "depth_predictions": self.depth_calls,
        }
        if s.units:
            params["controlnet"] = [
                {
                    "unit": u.number,
                    "module": u.module,
                    "model": self.stage.config.models.get(cn.role(u.kind)),
                    "frames": self.control_frames.get(u.number, 0),
                }
                for u in s.units
            ]
        if self.checkpoint_names:
            params["checkpoints"] = self.checkpoint_names
        if s.on("reroll"):
            params.update(rerolls=self.rerolls, interrupted_at_frame=interrupted)
        return Generated(video, fps=s["fps"], params=params)

    def _render_video(self, out: list) -> None:
        for frame, source in enumerate(self.inputs["video"]):
            mask, _ = self.masks_at(frame)
            self.last_mask = mask
            image = self.diffuse(frame, source, float(self.keys["strength_schedule"][frame]), mask)
            if self.colour_sample is None:
                self.colour_sample = image
            else:
                image = self.match_colours(image)
            out[frame] = self.overlay(image, source)

    def _render_camera(self, cadence: int, out: list) -> None:
        """Deforum's render loop for 2D and 3D (render.py), tweening with cadence > 1; unlike
        Deforum, the frames after the last diffused one are tweened too, so the video always
        has max_frames frames."""
        from raypipe.families.deforum import flow

        s, k = self.settings, self.keys
        previous: np.ndarray | None = None  # the last diffused frame (or tween)
        prev_img: np.ndarray | None = None  # the last frame made (hybrid_motion_use_prev_img)
        turbo_prev: np.ndarray | None = None
        turbo_next: np.ndarray | None = None
        turbo_prev_idx = turbo_next_idx = 0
        first_video_frame = s.on("hybrid") and s["hybrid_use_first_frame_as_init_image"] and "video" in self.inputs
        use_init = s["use_init"] or first_video_frame
        init_image = self.inputs.get("init_image") if s["use_init"] else None
        if init_image is None and use_init:
            init_image = self.video_frame(0)  # hybrid_use_first_frame_as_init_image
        keep = init_image if use_init else None  # what overlay_mask keeps outside the mask
        frame = 0

        def tween(start: int, stop: int, span: int) -> None:
            nonlocal turbo_prev, turbo_next, turbo_prev_idx, turbo_next_idx, prev_img
            cadence_flow = None
            for j in range(start, stop):
                weight = (j - start + 1) / span
                move_prev, move_next = turbo_prev is not None and j > turbo_prev_idx, j > turbo_next_idx
                if s.on("flow_cadence") and k["strength_schedule"][start] > 0:
                    if cadence_flow is None and turbo_prev is not None and turbo_next is not None:
                        cadence_flow = flow.flow(turbo_prev, turbo_next, s["optical_flow_cadence"]) / 2
                        turbo_next = flow.warp_by_flow(turbo_next, -cadence_flow, 1)
                # One depth map (of the newer frame) moves both, as in Deforum.
                depth = self.depth(turbo_next) if move_prev or move_next else None
                if move_prev:
                    turbo_prev = self.warp(turbo_prev, j, depth)
                if move_next:
                    turbo_next = self.warp(turbo_next, j, depth)
                moved_prev, moved_next = self.hybrid_motion(
                    [turbo_prev if move_prev else None, turbo_next if move_next else None], j, prev_img
                )
                turbo_prev = moved_prev if move_prev else turbo_prev
                turbo_next = moved_next if move_next else turbo_next
                if cadence_flow is not None:  # the flow moves with the camera, then a tween's share of it
                    relative = self.warp(flow.relative_flow(cadence_flow, s["W"], s["H"]).astype(np.float32), j, depth)
                    cadence_flow = relative
                    step = flow.absolute_flow(relative, s["W"], s["H"]) * weight
                    factor = float(k["cadence_flow_factor_schedule"][j])
                    if move_prev:
                        turbo_prev = flow.warp_by_flow(turbo_prev, step, factor)
                    if move_next:
                        turbo_next = flow.warp_by_flow(turbo_next, step, factor)
                turbo_prev_idx = turbo_next_idx = j
                if turbo_prev is not None and weight < 1.0:
                    blend = turbo_prev.astype(np.float32) * (1 - weight) + turbo_next.astype(np.float32) * weight
                    image = np.clip(np.round(blend), 0, 255).astype(np.uint8)
                else:
                    image = turbo_next
                out[j] = prev_img = self.overlay(image, keep)

        while frame < self.frames:
            if cadence > 1 and turbo_next is not None:
                start = max(0, frame - cadence)
                tween(start, frame, frame - start)
                previous = prev_img  # the last tween (Deforum's prev_img)
            mask, noise_mask = self.masks_at(frame)
            if previous is not None:
                strength = float(k["strength_schedule"][frame])
                moved, init = self.prepare_init(previous, frame, prev_img, noise_mask)
                init = self.redo(frame, moved, init, strength, mask)
            elif use_init:
                init, strength = init_image, s["strength"]
            else:
                init, strength, mask = None, 0.0, None
            self.last_mask = mask if init is not None else self.last_mask
            image = self.diffuse(frame, init, strength, mask)
            if frame > 0:
                image = self.composite(image, frame, "After Generation")
            if self.colour_sample is None:
                self.colour_sample = image  # colour coherence matches every frame to frame 0
            else:
                image = self.match_colours(image)
            image = self.overlay(image, keep)
            if cadence > 1:
                turbo_prev, turbo_prev_idx = turbo_next, turbo_next_idx
                turbo_next, turbo_next_idx = image, frame
                frame += cadence
            else:
                out[frame] = image
                frame += 1
            previous = prev_img = image
        if cadence > 1:  # the last diffused frame and the tweens after it
            tween(turbo_next_idx, self.frames, cadence)
