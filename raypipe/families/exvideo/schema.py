"""The `exvideo` row: base cogvideox (text-to-video with the ExVideo LoRA) or base svd (image-to-video)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raypipe.families.cogvideox.schema import check_cogvideox_shapes
from raypipe.schema import RowBase, only_for, require_prompt

# ExVideo's frame limits and, per base, the size and length a row gets when neither it nor the
# run config's defaults say (the released models' own).
EXVIDEO_MAX_FRAMES = {"cogvideox": 129, "svd": 128}
EXVIDEO_BASE_DEFAULTS = {
    "cogvideox": {
        "num_frames": 129,
        "height": 480,
        "width": 720,
        "num_inference_steps": 50,
        "guidance_scale": 6.0,
        "fps": 8,
    },
    "svd": {
        "num_frames": 128,
        "height": 512,
        "width": 512,
        "num_inference_steps": 50,
        "guidance_scale": 2.0,
        "fps": 30,
    },
}
SVD_FIELDS = ("motion_bucket_id", "noise_aug_strength", "min_guidance_scale")


class ExVideoRow(RowBase):
    """ExVideo (raypipe/families/exvideo/stage.py): long videos from post-tuned models. `base: cogvideox`:
    CogVideoX text-to-video with the ExVideo LoRA, 8k+1 frames up to 129. `base: svd`: Stable
    Video Diffusion image-to-video (`image`) with the ExVideo-SVD extension, up to 128 frames."""

    kind: Literal["exvideo"]
    base: Literal["cogvideox", "svd"] = "cogvideox"
    # svd: the conditioning image (any fsspec URI), resized to height x width.
    image: str | None = None
    sp_degree: int = Field(default=1, ge=1, le=64)
    # svd only: SVD's motion conditioning (default 127), the noise added to the conditioning
    # image (default 0.02), and the classifier-free guidance at the first frame (default 1.0;
    # it rises linearly to guidance_scale at the last frame).
    motion_bucket_id: int | None = Field(default=None, ge=0, le=1023)
    noise_aug_strength: float | None = Field(default=None, ge=0.0, le=1.0)
    min_guidance_scale: float | None = Field(default=None, ge=0.0, le=100.0)

    @model_validator(mode="after")
    def _exvideo_checks(self):
        for name, value in EXVIDEO_BASE_DEFAULTS[self.base].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.base == "cogvideox":
            check_cogvideox_shapes(self, EXVIDEO_MAX_FRAMES["cogvideox"], "for ExVideo-CogVideoX")
            only_for(self, ("image", *SVD_FIELDS), "base svd")
            require_prompt(self, "t2v (base cogvideox)")
            return self
        if not self.image:
            raise ValueError("image: required for base svd (the URI of the conditioning image)")
        if self.sp_degree > 1:
            raise ValueError("sp_degree: sequence parallelism runs base cogvideox only")
        if self.lora:
            raise ValueError("lora: LoRAs apply to base cogvideox only")
        if not 2 <= self.num_frames <= EXVIDEO_MAX_FRAMES["svd"]:
            limit = EXVIDEO_MAX_FRAMES["svd"]
            raise ValueError(f"num_frames: from 2 to {limit} for ExVideo-SVD, got {self.num_frames}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value <= 0 or value % 64 != 0:
                raise ValueError(f"{name}: must be a positive multiple of 64 for base svd, got {value}")
        return self
