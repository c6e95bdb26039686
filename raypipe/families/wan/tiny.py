"""Tiny Wan 2.1: tiny:wan (text-to-video) and tiny:wan-i2v (image-to-video).

The released Diffusers checkpoints' components, at a few kilobytes of random weights: a UMT5
text encoder (google/umt5-xxl's class) with raypipe's character tokenizer, Wan's causal 3D VAE
(8x spatial, 4x temporal compression, 16 latent channels with the released latents_mean/std),
a WanTransformer3DModel with 1x2x2 patches, and the UniPC flow-matching scheduler the released
checkpoints ship (flow_shift 3.0, the 480P setting). The I2V model adds a CLIP vision encoder
and its image processor (ViT-H/14 in Wan2.1-I2V-14B), whose penultimate hidden states enter the
transformer's cross-attention beside the text, and takes 16 noise + 4 mask + 16 image-latent
channels (36, as the released I2V transformer).
"""

from __future__ import annotations

from pathlib import Path

from raypipe.models.tiny import seeded, tiny_t5

TEXT_DIM = 32  # the tiny UMT5's width (umt5-xxl: 4096)
IMAGE_DIM = 16  # the tiny CLIP vision width (ViT-H/14: 1280)
FFN_DIM = 64
HEADS, HEAD_DIM = 4, 12  # 4 heads: room for sp_degree 2 and 4; 12 splits into Wan's 3D rotary (4+4+4)


def tiny_umt5():
    """The tiny T5 of raypipe.models.tiny (a character tokenizer, one layer) as a UMT5 encoder,
    the class of google/umt5-xxl that the Wan pipelines take: the same config, UMT5's layers."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer, t5 = tiny_t5(max_length=512, d_model=TEXT_DIM)
    fields = {k: v for k, v in t5.config.to_diff_dict().items() if k not in ("model_type", "transformers_version")}
    seeded(30)
    return tokenizer, UMT5EncoderModel(UMT5Config(**fields))


def tiny_wan_components(i2v: bool = False) -> dict:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    tokenizer, text_encoder = tiny_umt5()
    seeded(31)
    # 4 levels (3 spatial downsamplings: 8x), time downsampled in the last two (4x), as Wan2.1_VAE.
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    seeded(32 if i2v else 33)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=HEADS,
        attention_head_dim=HEAD_DIM,
        # I2V: the noise, the first-frame mask (one channel per frame of a latent frame: 4) and the
        # image latents side by side
        in_channels=16 + 4 + 16 if i2v else 16,
        out_channels=16,
        text_dim=TEXT_DIM,
        freq_dim=32,
        ffn_dim=FFN_DIM,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
        image_dim=IMAGE_DIM if i2v else None,
        added_kv_proj_dim=HEADS * HEAD_DIM if i2v else None,
    )
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0
    )
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler)


def tiny_clip_vision():
    """A CLIP vision tower and its processor at 32 px (Wan2.1-I2V: ViT-H/14 at 224 px)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    seeded(34)
    encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=IMAGE_DIM,
            intermediate_size=2 * IMAGE_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    return encoder, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_wan(path: Path) -> None:
    from diffusers import WanPipeline

    WanPipeline(**tiny_wan_components()).save_pretrained(path)


def build_wan_i2v(path: Path) -> None:
    from diffusers import WanImageToVideoPipeline

    image_encoder, image_processor = tiny_clip_vision()
    WanImageToVideoPipeline(
        **tiny_wan_components(i2v=True), image_encoder=image_encoder, image_processor=image_processor
    ).save_pretrained(path)
