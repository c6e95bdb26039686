"""Wan's FLOP model: a diffusion transformer whose text (and image) tokens enter by cross-attention.

raypipe/flops.py's dit_forward_flops is for joint attention (text and video tokens in one
sequence, CogVideoX); Wan's self-attention sees only the N video tokens, and each block then
cross-attends from them to the T text tokens (UMT5, padded to 512) and, in Wan 2.1 I2V, to the I
image tokens of a CLIP ViT-H/14 (257). Per block of width d with an MLP f wide (a multiply-add
is 2 FLOPs):

    self-attention   8 N d^2 (Q, K, V, out)  +  4 N^2 d (scores, weighted sum)
    cross-attention  4 N d^2 (Q, out)  +  4 (T + I) d^2 (K, V)  +  4 N (T + I) d
    MLP              4 N d f

and once per forward the text projection 2 T (t d + d^2) (t: the text encoder's width, 4096)
and for I2V the image projection 2 I (c^2 + c d) (c: the CLIP width, 1280). Video tokens:
N = ((F - 1) / 4 + 1) / p_t * (H / 8 / p_h) * (W / 8 / p_w). Wan2.1-T2V-1.3B at 81 x 480 x 832:
N = 21 x 30 x 52 = 32,760 tokens, 283 TFLOP per forward; Wan2.1-T2V-14B: 1,678 TFLOP. A step
runs one transformer (Wan 2.2's A14B switches between two experts of the 14B shape), twice with
CFG. tests/test_wan.py checks the formula against torch.utils.flop_counter on the meta device.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from raypipe.flops import cfg_passes
from raypipe.models.weights import read_model_config


@dataclass(frozen=True)
class WanShape:
    layers: int
    hidden: int
    ffn: int
    text_tokens: int = 512
    text_dim: int = 4096
    image_tokens: int = 0  # CLIP tokens of Wan 2.1 I2V (257), none for t2v and Wan 2.2
    image_dim: int = 0
    patch: tuple[int, int, int] = (1, 2, 2)
    temporal_compression: int = 4
    spatial_compression: int = 8


# diffusers' scripts/convert_wan_to_diffusers.py: 12 / 40 heads of 128, ffn 8960 / 13824.
WAN_13B = WanShape(layers=30, hidden=12 * 128, ffn=8960)
WAN_14B = WanShape(layers=40, hidden=40 * 128, ffn=13824)
WAN_14B_I2V = WanShape(layers=40, hidden=40 * 128, ffn=13824, image_tokens=257, image_dim=1280)
# Released checkpoints by a piece of their hub id (lower case; the first match wins).
KNOWN_WANS: list[tuple[str, WanShape]] = [
    ("wan2.1-t2v-1.3b", WAN_13B),
    ("wan2.1-i2v-14b", WAN_14B_I2V),  # 480P and 720P
    ("wan2.1-flf2v-14b", WAN_14B_I2V),
    ("wan2.1-t2v-14b", WAN_14B),
    ("wan2.2-t2v-a14b", WAN_14B),  # two experts of this shape, one per step
    ("wan2.2-i2v-a14b", WAN_14B),  # image latents as input channels, no CLIP tokens
]


def wan_forward_flops(shape: WanShape, frames: int, height: int, width: int) -> float:
    """FLOPs of one Wan transformer forward over a video of frames x height x width (formula above)."""
    p_t, p_h, p_w = shape.patch
    latent_frames = (frames - 1) // shape.temporal_compression + 1
    s = shape.spatial_compression
    n = (latent_frames // p_t) * (height // s // p_h) * (width // s // p_w)
    d, f = shape.hidden, shape.ffn
    context = shape.text_tokens + shape.image_tokens
    block = 12 * n * d * d + 4 * n * d * f + 4 * n * n * d + 4 * context * d * d + 4 * n * context * d
    embed = 2 * shape.text_tokens * (shape.text_dim * d + d * d)
    embed += 2 * shape.image_tokens * (shape.image_dim * shape.image_dim + shape.image_dim * d)
    return shape.layers * block + embed


@functools.lru_cache(maxsize=64)
def wan_shape(model: str) -> WanShape | None:
    """The transformer shapes of a Wan model: its config files when they can be read here (a
    local folder, a `tiny:` model, the hub cache), else the table of released checkpoints."""
    config = read_model_config(model, "transformer/config.json")
    if config:
        vae = read_model_config(model, "vae/config.json") or {}
        image_tokens = 0
        if config.get("image_dim"):
            clip = read_model_config(model, "image_encoder/config.json") or {}
            image_tokens = (clip.get("image_size", 224) // clip.get("patch_size", 14)) ** 2 + 1
        return WanShape(
            layers=config["num_layers"],
            hidden=config["num_attention_heads"] * config["attention_head_dim"],
            ffn=config["ffn_dim"],
            text_dim=config.get("text_dim", 4096),
            image_tokens=image_tokens,
            image_dim=config.get("image_dim") or 0,
            patch=tuple(config.get("patch_size", (1, 2, 2))),
            temporal_compression=vae.get("scale_factor_temporal") or 4,
            spatial_compression=vae.get("scale_factor_spatial") or 8,
        )
    lowered = model.lower()
    for piece, shape in KNOWN_WANS:
        if piece in lowered:
            return shape
    return None


def wan_flops(row, kc) -> float | None:
    from raypipe.families import family

    shape = wan_shape(family("wan").model_of(row, kc))
    if shape is None:
        return None
    return (
        row.num_inference_steps
        * cfg_passes(row.guidance_scale)
        * wan_forward_flops(shape, row.num_frames, row.height, row.width)
    )
