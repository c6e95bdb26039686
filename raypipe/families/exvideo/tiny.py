"""Tiny ExVideo: the ExVideo-CogVideoX LoRA for tiny:cogvideox, and SVD with an ExVideo-SVD checkpoint,
written in the released formats under the released files' names.

Both files are written from DiffSynth-Studio's own facts (the project ExVideo was released with), never
through raypipe's mapping of them (raypipe/families/exvideo/svd_extension.py, raypipe/families/cogvideox/lora.py),
so a naming mistake there fails the tests that load these files:
- ExVideo-SVD: the key list of DiffSynth's SVDUNet temporal blocks (`released_svd_layout`); at SVD-XT's widths
  it has the md5 DiffSynth recognises the released file by (tests/test_real_configs.py checks it).
- ExVideo-CogVideoX LoRA: the keys DiffSynth's LoRA trainer writes on its CogVideoX DiT (`blocks.<i>.attn1.to_q
  .lora_A.default.weight`, ...).
"""

from __future__ import annotations

from pathlib import Path

from raypipe.models.tiny import seeded

EXVIDEO_LORA_FILE = "ExVideo-CogVideoX-LoRA-129f-v1.safetensors"
EXVIDEO_SVD_FILE = "model.fp16.safetensors"

# DiffSynth-Studio's SVDUNet (diffsynth/models/svd_unet.py, in the tree before its 2.0 rewrite, 72af7122^)
# is one flat `blocks` list; a TemporalAttentionBlock sits at these indices. The value is the UNet level
# whose width the block has (block_out_channels[level]: 320, 640, 1280, 1280 for SVD): two per down level,
# one in the mid block, three per up level (up_blocks.1 is level 2, up_blocks.3 level 0).
DIFFSYNTH_SVD_TEMPORAL_BLOCKS = {
    7: 0, 17: 0, 29: 1, 39: 1, 51: 2, 61: 2, 83: 3,
    113: 2, 123: 2, 133: 2, 144: 1, 154: 1, 164: 1, 175: 0, 185: 0, 195: 0,
}  # fmt: skip


def diffsynth_temporal_block(width: int, cross_attention_dim: int, frames: int) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of DiffSynth's TemporalAttentionBlock(heads, 64, width, cross_attention_dim,
    add_positional_conv=frames): the trainable frame table and 3D conv ExVideo adds, then SVD's temporal
    transformer under DiffSynth's names (GEGLU feed-forwards of 4x width; attention projections without
    bias, outputs with bias; heads x head_dim = width)."""
    inner = 4 * width
    return {
        "positional_embedding.embeddings": (frames, width),
        "positional_embedding_proj.0.weight": (inner, width),
        "positional_embedding_proj.0.bias": (inner,),
        "positional_embedding_proj.2.weight": (width, inner),
        "positional_embedding_proj.2.bias": (width,),
        "positional_conv.weight": (width, width, 3, 3, 3),
        "positional_conv.bias": (width,),
        **{f"{norm}.{p}": (width,) for norm in ("norm_in", "norm1", "norm2", "norm_out") for p in ("weight", "bias")},
        "act_fn_in.proj.weight": (2 * inner, width),
        "act_fn_in.proj.bias": (2 * inner,),
        "ff_in.weight": (width, inner),
        "ff_in.bias": (width,),
        "act_fn_out.proj.weight": (2 * inner, width),
        "act_fn_out.proj.bias": (2 * inner,),
        "ff_out.weight": (width, inner),
        "ff_out.bias": (width,),
        **{f"attn1.to_{x}.weight": (width, width) for x in "qkv"},
        "attn1.to_out.weight": (width, width),
        "attn1.to_out.bias": (width,),
        "attn2.to_q.weight": (width, width),
        "attn2.to_k.weight": (width, cross_attention_dim),
        "attn2.to_v.weight": (width, cross_attention_dim),
        "attn2.to_out.weight": (width, width),
        "attn2.to_out.bias": (width,),
    }


def released_svd_layout(
    block_out_channels=(320, 640, 1280, 1280), cross_attention_dim: int = 1024, frames: int = 128
) -> dict[str, tuple[int, ...]]:
    """Every key of an ExVideo-SVD checkpoint (`blocks.<n>.<name>`) with its shape, for an SVD UNet of
    these widths (the defaults: SVD-XT's, ExVideo-SVD-128f-v1's 128 frames)."""
    return {
        f"blocks.{index}.{name}": shape
        for index, level in DIFFSYNTH_SVD_TEMPORAL_BLOCKS.items()
        for name, shape in diffsynth_temporal_block(block_out_channels[level], cross_attention_dim, frames).items()
    }


def build_exvideo_lora(path: Path) -> None:
    """A LoRA for tiny:cogvideox in ExVideo-CogVideoX-LoRA-129f-v1's format, rank 4, non-zero B so it acts.

    DiffSynth-Studio's LoRA trainer (diffsynth/trainers/text_to_image.py at the ExVideo-CogVideoX release,
    2e487a2c) injects peft adapters named `default` into target_modules "to_q,to_k,to_v,to_out" of its
    CogDiT, whose blocks are `blocks.<i>` with attention `attn1` (diffsynth/models/cog_dit.py); peft saves
    `<module>.lora_A.default.weight` [rank, in] and `<module>.lora_B.default.weight` [out, rank]."""
    import torch
    from safetensors.torch import save_file

    seeded(3)
    dim, rank, weights = 32, 4, {}
    for block in range(2):  # tiny:cogvideox has 2 transformer blocks of width 32
        for layer in ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out"):
            weights[f"blocks.{block}.{layer}.lora_A.default.weight"] = torch.randn(rank, dim) * 0.5
            weights[f"blocks.{block}.{layer}.lora_B.default.weight"] = torch.randn(dim, rank) * 0.5
    path.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(path / EXVIDEO_LORA_FILE))


def build_svd(path: Path) -> None:
    """Stable Video Diffusion (SVD-XT's UNet layout at width 32) and, beside it, an ExVideo-SVD
    checkpoint for it in the released layout (fp16, DiffSynth-Studio's names, 128 frames)."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    seeded(4)
    # 3 blocks: 4x spatial compression, so 64 px frames give the UNet's 4 levels 16, 8, 4, 2 rows
    # (ExVideo's reflect-padded conv needs 2). GroupNorm(32) in these blocks fixes the width at 32.
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32, 32),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3,
        latent_channels=4,
    )
    seeded(5)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,
        out_channels=4,
        block_out_channels=(32, 32, 32, 32),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        layers_per_block=2,
        cross_attention_dim=32,
        num_attention_heads=(2, 2, 2, 2),
        num_frames=25,
    )
    seeded(6)
    # The pipeline resizes the conditioning image to 224 px for the CLIP image encoder.
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=224,
            patch_size=32,
        )
    )
    scheduler = EulerDiscreteScheduler(  # SVD-XT's scheduler settings
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        interpolation_type="linear",
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae,
        image_encoder=image_encoder,
        unet=unet,
        scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size=224),
    )
    pipe.save_pretrained(path)

    # The extension, in the released layout with random weights (as if trained): the 3D convs near the
    # identity, layer norms near 1, so the tiny video stays in range.
    seeded(7)
    released = {}
    layout = released_svd_layout(unet.config.block_out_channels, unet.config.cross_attention_dim, 128)
    for key, shape in layout.items():
        value = torch.randn(shape)
        if key.endswith("positional_conv.weight"):
            value = 0.02 * value
            value[:, :, 1, 1, 1] += torch.eye(shape[0])
        elif key.rpartition(".")[0].endswith(("norm_in", "norm1", "norm2", "norm_out")) and key.endswith("weight"):
            value = 1 + 0.1 * value
        else:
            value = (0.5 if key.endswith("embeddings") else 0.1) * value
        released[key] = value.to(torch.float16).contiguous()
    save_file(released, str(path / EXVIDEO_SVD_FILE))
