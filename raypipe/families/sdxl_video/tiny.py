"""Tiny SDXL (2D, what SDXLVideoPipeline.from_sdxl inflates) and tiny SDXL video."""

from __future__ import annotations

from pathlib import Path

from raypipe.models.tiny import seeded, tiny_clip_text_encoder, tiny_clip_tokenizer, tiny_image_vae


def tiny_sdxl_components() -> dict:
    """StableDiffusionXLPipeline's components at SDXL's layout: two CLIP text encoders (the
    second with projection), an 8x VAE, a UNet with addition_embed_type text_time."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(max_length=16)
    text_encoder = tiny_clip_text_encoder(tokenizer, hidden_size=32, seed=10)
    text_encoder_2 = tiny_clip_text_encoder(tokenizer, hidden_size=32, projection_dim=32, seed=11)
    seeded(12)
    vae = tiny_image_vae(scaling_factor=0.13025)
    seeded(13)
    # 64 px -> 8x8 latents; cross-attention (and so the temporal modules) at 4x4 in the second level.
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 1),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )  # SDXL base's
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )


def build_sdxl(path: Path) -> None:
    """A plain 2D SDXL pipeline (what SDXLVideoPipeline.from_sdxl inflates)."""
    from diffusers import StableDiffusionXLPipeline

    StableDiffusionXLPipeline(**tiny_sdxl_components()).save_pretrained(path)


def build_sdxl_video(path: Path) -> None:
    """tiny SDXL inflated to video, then its temporal output projections given random weights,
    as training would, so that the temporal modules and the conditioning act."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from raypipe.models.sdxl_video import SDXLVideoPipeline

    pipe = SDXLVideoPipeline.from_sdxl(
        StableDiffusionXLPipeline(**tiny_sdxl_components()), temporal_num_attention_heads=2, max_conditioning_frames=8
    )
    seeded(14)
    for module in pipe.unet.temporal_modules():
        torch.nn.init.normal_(module.proj_out.weight, std=0.2)
    pipe.save_pretrained(path)
