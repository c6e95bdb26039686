"""LoRAs on a CogVideoX pipeline: the ExVideo LoRA and a row's `lora` list.

Two file formats load:
- diffusers' own (`transformer.transformer_blocks.<i>....lora_A.weight`), as written by
  diffusers / CogVideo's fine-tuning scripts;
- DiffSynth-Studio's, in which ExVideo-CogVideoX-LoRA-129f-v1 was released: peft LoRA weights
  on DiffSynth's CogVideoX DiT, whose blocks are `blocks.<i>` and whose layers are named a
  little differently (`attn1.to_out` for diffusers' `attn1.to_out.0`, `ff.0` for
  `ff.net.0.proj`, ...), sometimes with peft's adapter name (`lora_A.default.weight`).
  `diffsynth_to_diffusers` renames them; DiffSynth merges them at scale 1, which is what
  diffusers does for a LoRA without alphas.

Loading and activating is raypipe/families/lora.py's (`cogvideox_loras` gives a pipeline's
LoraAdapters with this renaming).
"""

from __future__ import annotations

import re

from raypipe.families.lora import LoraAdapters

# DiffSynth CogDiT layer (inside blocks.<i>) -> diffusers CogVideoXBlock layer.
DIFFSYNTH_LAYERS = {
    "attn1.to_q": "attn1.to_q",
    "attn1.to_k": "attn1.to_k",
    "attn1.to_v": "attn1.to_v",
    "attn1.to_out": "attn1.to_out.0",
    "norm1.linear": "norm1.linear",
    "norm2.linear": "norm2.linear",
    "ff.0": "ff.net.0.proj",
    "ff.2": "ff.net.2",
}
_DIFFSYNTH_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(lora_[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def is_diffsynth_lora(state_dict: dict) -> bool:
    return any(key.startswith("blocks.") for key in state_dict)


def from_any_format(state_dict: dict) -> dict:
    return diffsynth_to_diffusers(state_dict) if is_diffsynth_lora(state_dict) else state_dict


def cogvideox_loras(pipe) -> LoraAdapters:
    """The LoRA adapters of a CogVideoX pipeline (diffusers' or DiffSynth-Studio's files)."""
    return LoraAdapters(pipe, what="the CogVideoX transformer", convert=from_any_format)


def diffsynth_to_diffusers(state_dict: dict) -> dict:
    """DiffSynth-Studio CogVideoX LoRA keys -> diffusers' (`transformer.` prefixed)."""
    out = {}
    for key, value in state_dict.items():
        match = _DIFFSYNTH_KEY.match(key)
        if not match or match.group(2) not in DIFFSYNTH_LAYERS:
            raise ValueError(f"lora: not a CogVideoX LoRA key: {key!r}")
        block, layer, ab = match.groups()
        out[f"transformer.transformer_blocks.{block}.{DIFFSYNTH_LAYERS[layer]}.{ab}.weight"] = value
    return out
