"""The `sdxl_video` row: a video made chunk by chunk by SDXL with temporal modules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raypipe.schema import RowBase, check_positive, check_size_multiple, require_prompt


class SDXLVideoRow(RowBase):
    """SDXL video by chunks (raypipe/families/sdxl_video/stage.py): `num_repeats` chunks of `num_frames`
    frames each, every chunk conditioned on the last `num_conditioning_frames` latents made so far
    (or on the init `image`); the video has num_repeats * num_frames frames."""

    kind: Literal["sdxl_video"]
    num_repeats: int = Field(default=2, ge=1, le=1000)
    num_conditioning_frames: int = Field(default=2, ge=1)
    # Scales the temporal conditioner's residual: 0 ignores the previous frames.
    conditioning_strength: float = Field(default=1.0, ge=0.0, le=10.0)
    # Init image (any fsspec URI): encoded and repeated as the first conditioning latents.
    image: str | None = None

    @property
    def mode(self) -> str:
        return "i2v" if self.image else "t2v"

    @model_validator(mode="after")
    def _sdxl_video_chunks(self):
        check_positive("num_frames", self.num_frames)
        if self.num_frames is not None and self.num_conditioning_frames > self.num_frames:
            raise ValueError(
                f"num_conditioning_frames: must not exceed num_frames ({self.num_frames}), "
                f"got {self.num_conditioning_frames}"
            )
        check_size_multiple(self, 8)  # the VAE's 8x downsampling
        if self.image is not None and not self.image.strip():
            raise ValueError("image: must be a URI, got an empty string")
        if self.image is None:
            require_prompt(self, "t2v")
        return self
