"""Real-size diffusers models with random weights, without ever holding them in float32.

A model is built on the meta device (its architecture, no memory), then each parameter is made
directly in the wanted dtype and device from a generator seeded by the parameter's name, so two
processes (the ranks of a sequence-parallel gang) build the same weights in any order: linear and
conv weights and biases N(0, 0.5 / sqrt(fan_in)) (about PyTorch's default scale), layer norms 1 and 0.
Only torch and diffusers are imported (benchmarks/gpu_check.sh runs this where raypipe's other
dependencies may be missing).
"""

from __future__ import annotations

import math
import zlib


def materialize(model, dtype, device="cpu", seed: int = 0):
    """Give every meta parameter of `model` seeded random values (see the module docstring) and
    recompute its meta buffers; returns the model in eval mode, without gradients."""
    import torch

    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            full = f"{module_name}.{name}" if module_name else name
            value = torch.empty(param.shape, dtype=dtype, device=device)
            if isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm):
                value.fill_(1.0 if name == "weight" else 0.0)
            else:
                weight = getattr(module, "weight", None)
                weight = param if weight is None else weight
                fan_in = weight[0].numel() if weight.ndim > 1 else weight.numel()
                generator = torch.Generator(device=device).manual_seed(seed + zlib.crc32(full.encode()))
                value.normal_(0.0, 0.5 / math.sqrt(fan_in), generator=generator)
            module._parameters[name] = torch.nn.Parameter(value, requires_grad=False)
    _recompute_buffers(model, device)
    return model.eval().requires_grad_(False)


def _recompute_buffers(model, device) -> None:
    """The buffers a model computes in __init__ (meta after a meta build): CogVideoX's sincos (or, for
    a learned table, a stand-in sincos) positional embedding. Any other meta buffer is an error."""
    patch_embed = getattr(model, "patch_embed", None)
    table = getattr(patch_embed, "pos_embedding", None)
    if table is not None and table.is_meta:
        config = model.config
        patch_embed.pos_embedding = patch_embed._get_positional_embeddings(
            config.sample_height, config.sample_width, config.sample_frames, device=device
        )
    left = [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if left:
        raise RuntimeError(f"meta buffers this helper cannot recompute: {left[:5]}")


def random_cogvideox(args: dict, dtype, device="cpu", seed: int = 0):
    """CogVideoXTransformer3DModel(**args) with seeded random weights in `dtype` on `device`."""
    import torch
    from diffusers import CogVideoXTransformer3DModel

    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**args)
    return materialize(model, dtype, device, seed)
