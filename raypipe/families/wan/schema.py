"""The `wan` row: t2v from the prompt, i2v from the prompt and a first frame (Wan 2.1 / 2.2)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raypipe.schema import RowBase, check_positive, check_size_multiple, only_for, require_prompt

# Wan's VAE compresses time by 4 (frame counts 4k+1) and space by 8; the transformer's 1x2x2 patches
# make the grid 16 px (diffusers' WanPipeline.check_inputs rejects other sizes).
TEMPORAL_COMPRESSION = 4
SIZE_MULTIPLE = 16
# Wan 2.1 was trained on 81 frames (5 s at 16 fps), the pipelines' default: longer clips repeat.
MAX_FRAMES = 81
# The largest size of the released checkpoints: 720P (1280 x 720, either way round).
MAX_PIXELS = 1280 * 720
# The released models' own settings (Wan2.1-T2V-1.3B / -14B, I2V-14B-480P), for what a row and the
# config's defaults leave out.
MODEL_DEFAULTS = {
    "num_frames": 81,
    "height": 480,
    "width": 832,
    "num_inference_steps": 50,
    "guidance_scale": 5.0,
    "fps": 16,
}


def check_wan_shapes(row: RowBase) -> None:
    check_positive("num_frames", row.num_frames)
    if (row.num_frames - 1) % TEMPORAL_COMPRESSION != 0:
        raise ValueError(
            f"num_frames: must be 4k+1 (Wan's VAE compresses time by 4: 5, 9, ..., 81), got {row.num_frames}"
        )
    if row.num_frames > MAX_FRAMES:
        raise ValueError(f"num_frames: at most {MAX_FRAMES} for Wan (its training length), got {row.num_frames}")
    check_size_multiple(row, SIZE_MULTIPLE, " (Wan: 8x VAE x 2x2 patches)")
    if row.height * row.width > MAX_PIXELS:
        raise ValueError(
            f"height: {row.height} x {row.width} is larger than Wan's largest size, 1280 x 720 ({MAX_PIXELS} pixels)"
        )


class WanRow(RowBase):
    """Wan 2.x (raypipe/families/wan/stage.py): `t2v` from the prompt (WanPipeline, the config's
    `model`); `i2v` from the prompt and `image`, the first frame (WanImageToVideoPipeline, the
    config's `models.i2v`)."""

    kind: Literal["wan"]
    mode: Literal["t2v", "i2v"] = "t2v"
    # i2v: the first frame (any fsspec URI), resized to height x width.
    image: str | None = None
    sp_degree: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _wan_row(self):
        for name, value in MODEL_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        check_wan_shapes(self)
        if self.mode == "i2v" and not self.image:
            raise ValueError("image: required for mode i2v (the URI of the first frame)")
        if self.mode != "i2v":
            only_for(self, ("image",), "mode i2v")
        if self.mode == "t2v":
            require_prompt(self, "t2v")
        return self
