"""AnimateDiff motion LoRAs in the layout guoyww released them (`v2_lora_ZoomIn.ckpt`, ...).

AnimateDiff's own UNet3D holds a motion module as
`<block>.motion_modules.<j>.temporal_transformer.transformer_blocks.<k>.attention_blocks.<a>`
(animatediff/models/motion_module.py), and its motion LoRAs are the old diffusers attention-processor
LoRA layers on those attentions: `...attention_blocks.<a>.processor.to_q_lora.down.weight` ([rank, in])
and `.up.weight` ([out, rank]), for to_q, to_k, to_v and to_out (AnimateDiff's loader,
animatediff/utils/convert_lora_safetensor_to_diffusers.py, merges up @ down into `to_out.0` for the
last). diffusers' UNetMotionModel names the same module `<block>.motion_modules.<j>.transformer_blocks.<k>
.attn1|attn2` (diffusers' scripts/convert_animatediff_motion_lora_to_diffusers.py: drop
`.temporal_transformer`, attention_blocks.0/1 -> attn1/attn2, prefix `unet.`), and its LoRA loader reads
the processor-LoRA names. `original_to_diffusers` does that renaming; diffusers' own format (the hub's
`guoyww/animatediff-motion-lora-*` repos) loads as it is.

Every key of an original-layout file must be a motion-module LoRA key and land on a layer of the
loaded UNet with its shape: the error names every key that does not.
"""

from __future__ import annotations

import re

from raypipe.families.lora import LoraAdapters, raise_key_problems

_ORIGINAL_KEY = re.compile(
    r"^(?P<block>(?:down_blocks|up_blocks)\.\d+|mid_block)\.motion_modules\.(?P<module>\d+)"
    r"\.temporal_transformer\.transformer_blocks\.(?P<layer>\d+)\.attention_blocks\.(?P<attn>[01])"
    r"\.processor\.to_(?P<proj>q|k|v|out)_lora\.(?P<part>down|up)\.weight$"
)
# The diffusers Linear each processor LoRA sits on.
_TARGET = {"q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}


def is_original_layout(state_dict: dict) -> bool:
    return any(".temporal_transformer." in key or ".attention_blocks." in key for key in state_dict)


def original_to_diffusers(state_dict: dict, unet=None) -> dict:
    """AnimateDiff's released motion-LoRA names -> diffusers' (`unet.` prefixed, processor-LoRA names).
    With `unet` (a UNetMotionModel), every key must also fit a layer of it."""
    out, unknown, missing, misshapen = {}, [], [], []
    modules = dict(unet.named_modules()) if unet is not None else {}
    for key, value in state_dict.items():
        match = _ORIGINAL_KEY.match(key)
        if not match:
            unknown.append(key)
            continue
        g = match.groupdict()
        module = f"{g['block']}.motion_modules.{g['module']}.transformer_blocks.{g['layer']}.attn{int(g['attn']) + 1}"
        if unet is not None:
            layer = modules.get(f"{module}.{_TARGET[g['proj']]}")
            weight = getattr(layer, "weight", None)
            if weight is None:
                missing.append(key)
                continue
            want = (value.shape[0] == weight.shape[0]) if g["part"] == "up" else (value.shape[1:] == weight.shape[1:])
            if not want:
                misshapen.append(f"{key} {tuple(value.shape)} (layer {tuple(weight.shape)})")
        out[f"unet.{module}.processor.to_{g['proj']}_lora.{g['part']}.weight"] = value
    raise_key_problems(unknown, missing, misshapen, "an AnimateDiff motion-LoRA key", "the motion modules")
    return out


def animatediff_loras(pipe) -> LoraAdapters:
    """The LoRA adapters of an AnimateDiff pipeline: diffusers' files as they are, AnimateDiff's
    original motion-LoRA layout renamed and checked against the pipeline's UNet."""

    def convert(state_dict: dict) -> dict:
        return original_to_diffusers(state_dict, pipe.unet) if is_original_layout(state_dict) else state_dict

    return LoraAdapters(pipe, what="the AnimateDiff UNet or text encoder", convert=convert)
