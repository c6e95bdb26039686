"""LoRAs on a CogVideoX pipeline: the ExVideo LoRA and a row's `lora` list.

Two file formats load:
- diffusers' own (`transformer.transformer_blocks.<i>....lora_A.weight`), as written by
  diffusers / CogVideo's fine-tuning scripts;
- DiffSynth-Studio's, in which ExVideo-CogVideoX-LoRA-129f-v1 was released: peft LoRA weights
  on DiffSynth's CogVideoX DiT (`CogDiT`, diffsynth/models/cog_dit.py before its 2.0 rewrite),
  `<module>.lora_A[.<adapter>].weight`, optionally behind `diffusion_model.` (DiffSynth strips it). Its
  blocks are `blocks.<i>` and its layers are named a little differently from diffusers'
  (`attn1.to_out` for `attn1.to_out.0`, `ff.0` for `ff.net.0.proj`, `context_embedder` for
  `patch_embed.text_proj`, ...). `diffsynth_to_diffusers` renames every layer of CogDiT a LoRA can
  sit on (the inverse of DiffSynth's own from_diffusers tables); DiffSynth merges them at scale 1,
  which is what diffusers does for a LoRA without alphas.

Every key is accounted for before anything loads (`check_targets`): a key that is no CogVideoX LoRA
key, or whose layer the loaded transformer lacks (a 5B LoRA on the 2B model) or has in another
shape, is named in the error, so the rows that use the LoRA fail with it instead of running with a
LoRA that diffusers loaded only in part (it only warns about keys it does not place).

Loading and activating is raypipe/families/lora.py's (`cogvideox_loras` gives a pipeline's
LoraAdapters with this renaming).
"""

from __future__ import annotations

import re

from raypipe.families.lora import LoraAdapters, named_keys, raise_key_problems

# DiffSynth CogDiT layer inside blocks.<i> -> diffusers CogVideoXBlock layer.
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
# DiffSynth CogDiT layers outside the blocks -> diffusers CogVideoXTransformer3DModel's.
DIFFSYNTH_MODULES = {
    "patchify.proj": "patch_embed.proj",  # a Conv3d of kernel (1, p, p) there, a Conv2d here
    "context_embedder": "patch_embed.text_proj",
    "time_embedder.timestep_embedder.0": "time_embedding.linear_1",
    "time_embedder.timestep_embedder.2": "time_embedding.linear_2",
    "norm_out.linear": "norm_out.linear",
    "proj_out": "proj_out",
}
_DIFFSYNTH_KEY = re.compile(r"^(?:diffusion_model\.)?(.+)\.(lora_[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
_DIFFUSERS_KEY = re.compile(r"^transformer\.(.+)\.(lora_[AB])\.(weight|bias)$")


def is_diffsynth_lora(state_dict: dict) -> bool:
    """diffusers' files name every key `transformer.<module>...`; anything else is read as DiffSynth's."""
    return not all(key.startswith("transformer.") for key in state_dict)


def from_any_format(state_dict: dict) -> dict:
    return diffsynth_to_diffusers(state_dict) if is_diffsynth_lora(state_dict) else state_dict


def cogvideox_loras(pipe) -> LoraAdapters:
    """The LoRA adapters of a CogVideoX pipeline (diffusers' or DiffSynth-Studio's files), every key
    checked against the pipeline's transformer before it loads."""
    return LoraAdapters(
        pipe,
        what="the CogVideoX transformer",
        convert=lambda state_dict: check_targets(from_any_format(state_dict), pipe.transformer),
    )


def _diffusers_module(module: str) -> str | None:
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if block:
        layer = DIFFSYNTH_LAYERS.get(block.group(2))
        return None if layer is None else f"transformer_blocks.{block.group(1)}.{layer}"
    return DIFFSYNTH_MODULES.get(module)


def diffsynth_to_diffusers(state_dict: dict) -> dict:
    """DiffSynth-Studio CogVideoX LoRA keys -> diffusers' (`transformer.` prefixed). Every key must map:
    the error names those that do not."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        match = _DIFFSYNTH_KEY.match(key)
        module = _diffusers_module(match.group(1)) if match else None
        if module is None:
            unknown.append(key)
            continue
        if module == "patch_embed.proj" and value.ndim == 5:  # DiffSynth's (1, p, p) conv -> diffusers' 2D one
            value = value.squeeze(2)
        out[f"transformer.{module}.{match.group(2)}.weight"] = value
    if unknown:
        raise ValueError(f"lora: {named_keys(unknown, 'not a CogVideoX LoRA key (DiffSynth or diffusers names)')}")
    return out


def check_targets(state_dict: dict, transformer) -> dict:
    """Every key of a diffusers-named LoRA must sit on a layer of `transformer` that has its shape
    (lora_A [rank, in], lora_B [out, rank]); the error names every key that does not."""
    modules = dict(transformer.named_modules())
    unknown, missing, misshapen = [], [], []
    for key, value in state_dict.items():
        match = _DIFFUSERS_KEY.match(key)
        if not match:
            unknown.append(key)
            continue
        name, ab, leaf = match.groups()
        module = modules.get(name)
        weight = getattr(module, "weight", None)
        if weight is None:
            missing.append(key)
            continue
        if leaf == "bias":
            fits = ab == "lora_B" and value.shape[0] == weight.shape[0]
        elif ab == "lora_A":  # [rank, in, *kernel] against the layer's [out, in, *kernel]
            fits = value.ndim == weight.ndim and tuple(value.shape[1:]) == tuple(weight.shape[1:])
        else:
            fits = value.shape[0] == weight.shape[0]
        if not fits:
            misshapen.append(f"{key} {tuple(value.shape)} (layer {tuple(weight.shape)})")
    raise_key_problems(unknown, missing, misshapen, "a CogVideoX transformer LoRA key", "this transformer")
    return state_dict
