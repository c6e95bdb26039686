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

Each file is loaded once per pipeline as a peft adapter named after its URI; every call then
activates the adapters it needs with their weights (`activate_loras`).
"""

from __future__ import annotations

import hashlib
import re

from raypipe.models.weights import read_safetensors

# DiffSynth CogDiT layer (inside blocks.<i>) -> diffusers CogVideoXBlock layer.
DIFFSYNTH_LAYERS = {
    "attn1.to_q": "attn1.to_q", "attn1.to_k": "attn1.to_k", "attn1.to_v": "attn1.to_v",
    "attn1.to_out": "attn1.to_out.0",
    "norm1.linear": "norm1.linear", "norm2.linear": "norm2.linear",
    "ff.0": "ff.net.0.proj", "ff.2": "ff.net.2",
}
_DIFFSYNTH_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(lora_[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")


def is_diffsynth_lora(state_dict: dict) -> bool:
    return any(key.startswith("blocks.") for key in state_dict)


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


def adapter_name(uri: str) -> str:
    return "lora_" + hashlib.sha1(uri.encode()).hexdigest()[:12]


def load_lora(pipe, uri: str) -> str:
    """Load the LoRA at `uri` into `pipe` as an adapter (once); returns the adapter's name."""
    name = adapter_name(uri)
    if name in _adapters(pipe):
        return name
    state_dict = read_safetensors(uri)
    if is_diffsynth_lora(state_dict):
        state_dict = diffsynth_to_diffusers(state_dict)
    pipe.load_lora_weights(state_dict, adapter_name=name)
    if name not in _adapters(pipe):  # diffusers only warns when no key matches
        raise ValueError(f"lora: {uri} matched no layer of the CogVideoX transformer")
    return name


def _adapters(pipe) -> set[str]:
    return {name for names in pipe.get_list_adapters().values() for name in names}


def _lora_layers(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return (m for m in module.modules() if isinstance(m, BaseTunerLayer))


def activate_loras(pipe, loras: list[tuple[str, float]]) -> None:
    """Make exactly these (uri, weight) LoRAs active on `pipe`, loading new ones."""
    names = [load_lora(pipe, uri) for uri, _ in loras]
    if names:
        pipe.enable_lora()
        pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
    elif any(True for _ in _lora_layers(pipe.transformer)):
        pipe.disable_lora()
