"""Tiny ExVideo: the ExVideo-CogVideoX LoRA for tiny:cogvideox, and SVD with an ExVideo-SVD checkpoint,
written in the released formats (DiffSynth-Studio's key names) under the released files' names."""

from __future__ import annotations

from pathlib import Path

from raypipe.models.tiny import seeded

EXVIDEO_LORA_FILE = "ExVideo-CogVideoX-LoRA-129f-v1.safetensors"


EXVIDEO_SVD_FILE = "model.fp16.safetensors"


def build_exvideo_lora(path: Path) -> None:
    """A LoRA for tiny:cogvideox in ExVideo-CogVideoX-LoRA-129f-v1's format (DiffSynth-Studio's
    names: blocks.<i>.attn1.to_q.lora_A.default.weight, ...), rank 4, non-zero B so it acts."""
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
    checkpoint for it in the released format (fp16, DiffSynth-Studio names, 128 frames)."""
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from raypipe.families.exvideo.svd_extension import diffusers_to_released, extend_unet

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

    # The extension: identity-initialised, then moved off the identity as training would.
    extend_unet(unet)
    seeded(7)
    released = diffusers_to_released(unet.state_dict())
    for key, value in released.items():
        scale = 0.02 if key.endswith(("positional_conv.weight", "embeddings")) else 0.1
        released[key] = (value + scale * torch.randn_like(value)).to(torch.float16).contiguous()
    save_file(released, str(path / EXVIDEO_SVD_FILE))
