"""CogVideoX's FLOP model: a diffusion transformer (raypipe/flops.py, dit_forward_flops)."""

from __future__ import annotations

import functools

from raypipe.flops import DiTShape, cfg_passes, dit_forward_flops, strength_steps
from raypipe.models.weights import read_model_config

COGVIDEOX_2B = DiTShape(layers=30, hidden=30 * 64, text_tokens=226)
COGVIDEOX_5B = DiTShape(layers=42, hidden=48 * 64, text_tokens=226)
COGVIDEOX_15_5B = DiTShape(layers=42, hidden=48 * 64, text_tokens=224, patch_t=2)
# Released checkpoints by a piece of their hub id (lower case; the first match wins).
KNOWN_DITS: list[tuple[str, DiTShape]] = [
    ("cogvideox1.5-5b", COGVIDEOX_15_5B),
    ("cogvideox-5b", COGVIDEOX_5B),  # also CogVideoX-5b-I2V
    ("cogvideox-2b", COGVIDEOX_2B),
]


@functools.lru_cache(maxsize=64)
def dit_shape(model: str) -> DiTShape | None:
    """The transformer shapes of a CogVideoX model: its config files when they can be read here
    (a local folder, a `tiny:` model, the hub cache), else the table of released checkpoints."""
    config = read_model_config(model, "transformer/config.json")
    if config:
        vae = read_model_config(model, "vae/config.json") or {}
        blocks = len(vae.get("block_out_channels", [0, 0, 0, 0]))
        return DiTShape(
            layers=config["num_layers"],
            hidden=config["num_attention_heads"] * config["attention_head_dim"],
            text_tokens=config.get("max_text_seq_length", 226),
            patch=config.get("patch_size", 2),
            patch_t=config.get("patch_size_t") or 1,
            temporal_compression=config.get("temporal_compression_ratio", 4),
            spatial_compression=2 ** (blocks - 1),
        )
    lowered = model.lower()
    for piece, shape in KNOWN_DITS:
        if piece in lowered:
            return shape
    return None


def cogvideox_flops(row, kc) -> float | None:
    from raypipe.families import family

    shape = dit_shape(family("cogvideox").model_of(row, kc))
    if shape is None:
        return None
    steps = strength_steps(row.num_inference_steps, row.strength if row.mode == "v2v" else None)
    return steps * cfg_passes(row.guidance_scale) * dit_forward_flops(shape, row.num_frames, row.height, row.width)
