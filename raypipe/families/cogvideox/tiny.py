"""Tiny CogVideoX: tiny:cogvideox (t2v, also v2v) and tiny:cogvideox-i2v."""

from __future__ import annotations

from pathlib import Path

from raypipe.models.tiny import seeded, tiny_t5


def tiny_cogvideox_components(in_channels: int = 4) -> dict:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    tokenizer, text_encoder = tiny_t5(max_length=32, d_model=32)
    seeded(1)
    # 4 blocks: 8x spatial compression; temporal compression 4, as the released VAE.
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    seeded(2)
    # The I2V model (8 input channels) uses 3D rotary embeddings, as CogVideoX-5b-I2V: they split
    # a head into 1/4 time + 3/8 height + 3/8 width, each even, so heads are 16 wide there.
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4,
        attention_head_dim=8 if in_channels == 4 else 16,
        in_channels=in_channels,
        out_channels=4,
        time_embed_dim=8,
        text_embed_dim=32,
        num_layers=2,
        sample_width=8,
        sample_height=8,
        sample_frames=9,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=32,
        use_rotary_positional_embeddings=in_channels != 4,
    )
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)


def build_cogvideox(path: Path) -> None:
    from diffusers import CogVideoXPipeline

    CogVideoXPipeline(**tiny_cogvideox_components()).save_pretrained(path)


def build_cogvideox_i2v(path: Path) -> None:
    from diffusers import CogVideoXImageToVideoPipeline

    # The I2V transformer takes the noise and the image latents side by side: 2 x 4 channels.
    CogVideoXImageToVideoPipeline(**tiny_cogvideox_components(in_channels=8)).save_pretrained(path)
