"""The `cogvideox` row: t2v from the prompt, i2v from the prompt and a first frame, v2v from a video."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from raypipe.schema import RowBase, check_positive, check_size_multiple, only_for, require_prompt


def check_cogvideox_shapes(row: RowBase, max_frames: int, limit_note: str) -> None:
    check_positive("num_frames", row.num_frames)
    # CogVideoX's VAE compresses time by 4: frame counts are 4k+1 and the transformer
    # (patch_size_t in 1.5) wants an even latent count; the model cards use 8k+1.
    if row.num_frames is not None and (row.num_frames - 1) % 8 != 0:
        raise ValueError(f"num_frames: must be 8k+1 (9, 17, 25, 33, 41, 49, ...), got {row.num_frames}")
    if row.num_frames is not None and row.num_frames > max_frames:
        raise ValueError(f"num_frames: at most {max_frames} {limit_note}, got {row.num_frames}")
    check_size_multiple(row, 16)


class CogVideoXRow(RowBase):
    """CogVideoX (raypipe/families/cogvideox/stage.py): `t2v` from the prompt; `i2v` from the
    prompt and `image` (the first frame; the config's image-to-video model); `v2v` re-noises
    `video` by `strength` and denoises it toward the prompt. Up to 49 frames (longer: exvideo)."""

    kind: Literal["cogvideox"]
    mode: Literal["t2v", "i2v", "v2v"] = "t2v"
    # i2v: the first frame (any fsspec URI), resized to height x width.
    image: str | None = None
    # v2v: the input video (any fsspec URI), sampled to num_frames and resized.
    video: str | None = None
    # v2v: how much of the video is re-noised, (0, 1]; 1 keeps only its colours' layout. Default 0.8.
    strength: float | None = Field(default=None, gt=0.0, le=1.0)
    sp_degree: int = Field(default=1, ge=1, le=64)

    @model_validator(mode="after")
    def _cogvideox_shapes(self):
        check_cogvideox_shapes(self, 49, "for CogVideoX (longer videos: kind exvideo, up to 129)")
        if self.mode == "i2v" and not self.image:
            raise ValueError("image: required for mode i2v (the URI of the first frame)")
        if self.mode == "v2v" and not self.video:
            raise ValueError("video: required for mode v2v (the URI of the input video)")
        if self.mode != "i2v":
            only_for(self, ("image",), "mode i2v")
        if self.mode != "v2v":
            only_for(self, ("video", "strength"), "mode v2v")
        if self.mode == "v2v":
            if self.strength is None:
                self.strength = 0.8
            if self.num_inference_steps is not None and int(self.num_inference_steps * self.strength) < 1:
                raise ValueError(
                    f"strength: {self.strength} of {self.num_inference_steps} steps runs no step; "
                    f"raise strength or num_inference_steps"
                )
        if self.mode == "t2v":
            require_prompt(self, "t2v")
        return self
