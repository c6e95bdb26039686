"""AnimateDiff: Stable Diffusion 1.5 animated by a motion adapter (diffusers' AnimateDiff pipelines).

    mode t2v         AnimateDiffPipeline
    mode v2v         AnimateDiffVideoToVideoPipeline            (`video`, `strength`)
    mode controlnet  AnimateDiffControlNetPipeline              (`video` -> `control` maps: canny, depth)
                     AnimateDiffVideoToVideoControlNetPipeline  (... and `strength`: the video is also the start)

The config's `model` is the SD 1.5 base and `models.motion_adapter` the MotionAdapter; both are
loaded once per actor. The other modes' pipelines are made from the t2v one with `from_pipe`, so
every mode shares one UNet, VAE and text encoder. ControlNets (`models.controlnet_canny`,
`models.controlnet_depth`) and the depth estimator (`models.depth_estimator`, a transformers
depth-estimation model) are loaded on the first row that needs them. Canny maps are computed with
OpenCV in `load_inputs` (CPU), depth maps on the actor's device in `generate`.

LoRAs (`lora` and `motion_lora`) are loaded into the shared pipeline once per path, as named peft
adapters, and each row switches to its own set and weights with `set_adapters` (`disable_lora`
for a row without LoRAs). Motion LoRAs load in diffusers' format or in the `.ckpt` layout guoyww
released them in (raypipe/families/animatediff/motion_lora.py). A LoRA at weight 0 leaves the output
exactly as without it.

FreeNoise (`free_noise`) makes clips longer than the motion adapter's window, with prompt travel
(`prompt: {"0": ..., "32": ...}`). The motion modules' transformer blocks are turned into
FreeNoise blocks once, when the pipeline is loaded, and each row only sets their window: a row
without free_noise gets one window over the whole clip, where a FreeNoise block computes exactly
what the original block does. (diffusers' disable_free_noise rebuilds the blocks with
load_state_dict(strict=True), which fails once LoRA layers are injected into them.)

Config `options`: `scheduler` (ddim: DDIM with linear betas, as the AnimateDiff seeds use;
euler_ancestral; lcm: for AnimateLCM), `decode_chunk_size` (frames the VAE decodes at once) and
the memory options of raypipe/families/options.py (vae_slicing, vae_tiling, cpu_offload,
step_cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raypipe.families.animatediff.motion_lora import animatediff_loras
from raypipe.families.animatediff.schema import AnimateDiffRow
from raypipe.families.inputs import input_video
from raypipe.families.lora import LoraAdapters
from raypipe.families.options import COMMON_OPTIONS, apply_options, check_options, skipped_options
from raypipe.models.tiny import resolve_model
from raypipe.stage import Generated, Stage, to_uint8

OPTIONS = (*COMMON_OPTIONS, "scheduler", "decode_chunk_size")
SCHEDULERS = ("ddim", "euler_ancestral", "lcm")
# control -> the role of its ControlNet in the config's `models`
CONTROLNET_ROLES = {"canny": "controlnet_canny", "depth": "controlnet_depth"}
CANNY_THRESHOLDS = (100, 200)  # as the ControlNet canny models were trained with


def make_scheduler(name: str, base_config):
    """The scheduler `name` from the base model's scheduler config, with linear betas (the
    AnimateDiff motion modules were trained with them)."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, LCMScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(
            base_config, beta_schedule="linear", clip_sample=False, timestep_spacing="linspace", steps_offset=1
        )
    if name == "euler_ancestral":
        return EulerAncestralDiscreteScheduler.from_config(
            base_config, beta_schedule="linear", timestep_spacing="linspace", steps_offset=1
        )
    if name == "lcm":
        return LCMScheduler.from_config(base_config, beta_schedule="linear")
    raise ValueError(f"options.scheduler: one of {', '.join(SCHEDULERS)}, got {name!r}")


def canny_maps(frames: np.ndarray) -> list:
    """uint8 [F, H, W, 3] frames -> canny edge maps as RGB PIL images (white edges on black)."""
    import cv2
    from PIL import Image

    maps = []
    for frame in frames:
        edges = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), *CANNY_THRESHOLDS)
        maps.append(Image.fromarray(np.stack([edges] * 3, axis=-1)))
    return maps


@dataclass
class LoadedAnimateDiff:
    """One base model with the motion adapter: the t2v pipeline, the other modes' pipelines made
    from it (sharing its modules), and the LoRA adapters loaded into it, by path."""

    base: Any
    variants: dict[tuple, Any] = field(default_factory=dict)
    loras: LoraAdapters | None = None

    def __post_init__(self):
        if self.loras is None:  # its modules are every mode's modules: LoRAs load into the base
            self.loras = animatediff_loras(self.base)

    @property
    def adapters(self) -> dict[str, str]:
        """LoRA path -> its peft adapter name."""
        return self.loras.names

    @property
    def window(self) -> int:
        """The motion adapter's window: frames its positional embeddings cover."""
        return int(self.base.motion_adapter.config.motion_max_seq_length)


class AnimateDiffStage(Stage):
    kind = "animatediff"

    def __init__(self, config):
        super().__init__(config)
        self._motion_adapter = None
        self._controlnets: dict[str, Any] = {}
        self._depth: tuple[Any, Any] | None = None

    # ---- loading ----------------------------------------------------------------------

    def setup(self) -> None:
        check_options(self.config.options, OPTIONS)
        if self.scheduler_name not in SCHEDULERS:
            raise ValueError(f"options.scheduler: one of {', '.join(SCHEDULERS)}, got {self.scheduler_name!r}")
        super().setup()

    @property
    def scheduler_name(self) -> str:
        return self.config.options.get("scheduler", "ddim")

    def _model(self, role: str) -> str:
        if role not in self.config.models:
            raise ValueError(f"models.{role}: not in the run config's animatediff models")
        return resolve_model(self.config.models[role])

    def motion_adapter(self):
        if self._motion_adapter is None:
            from diffusers import MotionAdapter

            self._motion_adapter = MotionAdapter.from_pretrained(self._model("motion_adapter"), dtype=self.torch_dtype)
        return self._motion_adapter

    def load_pipeline(self, path: str) -> LoadedAnimateDiff:
        from diffusers import AnimateDiffPipeline

        pipe = AnimateDiffPipeline.from_pretrained(path, motion_adapter=self.motion_adapter(), dtype=self.torch_dtype)
        pipe.scheduler = make_scheduler(self.scheduler_name, pipe.scheduler.config)
        # FreeNoise blocks from the start, before any LoRA is injected (see the module docstring).
        pipe.enable_free_noise(context_length=pipe.motion_adapter.config.motion_max_seq_length)
        self._free_noise_off(pipe)
        pipe.set_progress_bar_config(disable=True)
        apply_options(pipe, self.config.options, self.device)
        return LoadedAnimateDiff(pipe)

    def controlnet(self, control: str):
        if control not in self._controlnets:
            from diffusers import ControlNetModel

            model = ControlNetModel.from_pretrained(self._model(CONTROLNET_ROLES[control]), dtype=self.torch_dtype)
            self._controlnets[control] = model.to(self.device)
        return self._controlnets[control]

    def depth_estimator(self):
        if self._depth is None:
            from transformers import AutoImageProcessor, AutoModelForDepthEstimation

            path = self._model("depth_estimator")
            model = AutoModelForDepthEstimation.from_pretrained(path, dtype=self.torch_dtype).to(self.device).eval()
            self._depth = (AutoImageProcessor.from_pretrained(path), model)
        return self._depth

    def mode_pipeline(self, loaded: LoadedAnimateDiff, row: AnimateDiffRow):
        """The pipeline of the row's mode, made from the base t2v pipeline once."""
        if row.mode == "t2v":
            return loaded.base
        key = (row.mode, row.control, row.strength is not None)
        if key not in loaded.variants:
            from diffusers import (
                AnimateDiffControlNetPipeline,
                AnimateDiffVideoToVideoControlNetPipeline,
                AnimateDiffVideoToVideoPipeline,
            )

            if row.mode == "v2v":
                pipe = AnimateDiffVideoToVideoPipeline.from_pipe(loaded.base)
            else:
                cls = AnimateDiffControlNetPipeline
                if row.strength is not None:  # the input video is also the starting point
                    cls = AnimateDiffVideoToVideoControlNetPipeline
                pipe = cls.from_pipe(loaded.base, controlnet=self.controlnet(row.control))
            pipe.set_progress_bar_config(disable=True)
            loaded.variants[key] = pipe
        return loaded.variants[key]

    # ---- per row: LoRAs, FreeNoise, control maps ----------------------------------------

    def use_loras(self, loaded: LoadedAnimateDiff, row: AnimateDiffRow) -> list[dict[str, Any]]:
        """Activate the row's LoRAs (loading those not loaded yet) at the row's weights."""
        specs = [*row.lora, *row.motion_lora]
        names = loaded.loras.activate([(spec.path, spec.weight) for spec in specs])
        return [{"path": spec.path, "weight": spec.weight, "adapter": name} for spec, name in zip(specs, names)]

    @staticmethod
    def _free_noise_off(pipe) -> None:
        # What disable_free_noise sets first: the pipeline's own FreeNoise path (latents, prompt
        # interpolation) off. The blocks stay FreeNoise blocks (see the module docstring).
        pipe._free_noise_context_length = None

    def use_free_noise(self, pipe, row: AnimateDiffRow, window: int) -> dict[str, Any] | None:
        """Set the FreeNoise window of the shared motion modules for this row."""
        spec = row.free_noise
        if spec is None:
            if row.num_frames > window:
                raise ValueError(
                    f"num_frames: {row.num_frames} frames is longer than the motion adapter's window "
                    f"of {window} frames; set free_noise to generate long clips"
                )
            # One window over the whole clip, flat weights: the blocks compute what the originals do.
            pipe.enable_free_noise(
                context_length=row.num_frames, context_stride=row.num_frames, weighting_scheme="flat"
            )
            self._free_noise_off(pipe)
            return None
        length = spec.context_length or window
        if length > window or length > row.num_frames:
            raise ValueError(
                f"free_noise.context_length: {length} must not exceed the motion adapter's window "
                f"({window}) or num_frames ({row.num_frames})"
            )
        pipe.enable_free_noise(
            context_length=length,
            context_stride=min(spec.context_stride, length),
            weighting_scheme=spec.weighting_scheme,
            noise_type=spec.noise_type,
        )
        return {**spec.model_dump(), "context_length": length}

    def depth_maps(self, frames: list, height: int, width: int) -> list:
        """Depth of each frame (near = bright), normalised over the whole clip so it does not flicker."""
        import torch
        from PIL import Image

        processor, model = self.depth_estimator()
        with torch.no_grad():
            pixels = processor(images=frames, return_tensors="pt")["pixel_values"]
            depth = model(pixel_values=pixels.to(self.device, model.dtype)).predicted_depth.float()
            depth = torch.nn.functional.interpolate(depth[:, None], size=(height, width), mode="bicubic")[:, 0]
        depth = (depth - depth.min()) / (depth.max() - depth.min()).clamp(min=1e-6)
        maps = (depth.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return [Image.fromarray(np.stack([m] * 3, axis=-1)) for m in maps]

    # ---- the stage's hooks ------------------------------------------------------------

    def batch_key(self, row: AnimateDiffRow):
        # One row per pipeline call: rows differ in LoRAs, FreeNoise windows, prompt travel and inputs.
        return row.id

    def load_inputs(self, row: AnimateDiffRow) -> dict[str, Any]:
        if row.video is None:
            return {}
        from PIL import Image

        frames = input_video("video", row.video, row.num_frames, size=(row.height, row.width))
        inputs: dict[str, Any] = {"video": [Image.fromarray(frame) for frame in frames]}
        if row.control == "canny":
            inputs["control"] = canny_maps(frames)
        return inputs

    def generate(self, rows: list[AnimateDiffRow], inputs: list[dict[str, Any]]) -> list[Generated]:
        return [self._video(row, inp) for row, inp in zip(rows, inputs)]

    def _video(self, row: AnimateDiffRow, inputs: dict[str, Any]) -> Generated:
        import torch

        loaded = self.pipeline(row.model)
        pipe = self.mode_pipeline(loaded, row)
        free_noise = self.use_free_noise(pipe, row, loaded.window)
        loras = self.use_loras(loaded, row)
        prompt = {int(k): v for k, v in row.prompt.items()} if isinstance(row.prompt, dict) else row.prompt
        kwargs: dict[str, Any] = dict(
            prompt=prompt,
            negative_prompt=row.negative_prompt or None,
            height=row.height,
            width=row.width,
            num_inference_steps=row.num_inference_steps,
            guidance_scale=row.guidance_scale,
            generator=torch.Generator("cpu").manual_seed(row.seed),
            output_type="np",
        )
        if "decode_chunk_size" in self.config.options:
            kwargs["decode_chunk_size"] = int(self.config.options["decode_chunk_size"])
        if row.strength is not None:  # v2v, or controlnet starting from the input video
            kwargs.update(video=inputs["video"], strength=row.strength)
        else:
            kwargs["num_frames"] = row.num_frames
        if row.mode == "controlnet":
            control = inputs.get("control") or self.depth_maps(inputs["video"], row.height, row.width)
            scale = 1.0 if row.control_scale is None else row.control_scale
            kwargs.update(conditioning_frames=control, controlnet_conditioning_scale=scale)
        frames = to_uint8(pipe(**kwargs).frames[0])
        return Generated(
            frames,
            fps=row.fps,
            params={
                "pipeline": type(pipe).__name__,
                "scheduler_class": type(pipe.scheduler).__name__,
                "motion_adapter": self.config.models["motion_adapter"],
                "motion_window": loaded.window,
                "video": row.video,
                "strength": row.strength,
                "control": row.control,
                "control_scale": kwargs.get("controlnet_conditioning_scale"),
                "free_noise": free_noise,
                "loras": loras,
            },
        )

    def common_params(self) -> dict[str, Any]:
        params = super().common_params()
        loaded = self._pipelines.get(self.config.model)
        if loaded is not None:
            skipped = skipped_options(loaded.base, self.config.options, self.device)
            if skipped:
                params["skipped_options"] = skipped
        return params
