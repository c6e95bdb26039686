"""Tiny random-weight pipelines of every family, in diffusers' on-disk layout.

No model hub is reachable here, so each family has a `tiny:<name>` model: the real
component classes at a few kilobytes of random weights, written with `save_pretrained`
and loaded back by the stages through the same `from_pretrained` that loads released
checkpoints. They make noise, not art, but they exercise every line of the real path.

`tiny_path("tiny:cogvideox")` builds the model into the cache folder on first use
(RAYPIPE_CACHE, default ~/.cache/raypipe) and returns its directory.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from collections.abc import Callable
from pathlib import Path

TINY_PREFIX = "tiny:"
# Bump when a builder changes, so cached copies of the old layout are rebuilt.
TINY_VERSION = "3"


def cache_dir() -> Path:
    return Path(os.environ.get("RAYPIPE_CACHE", Path.home() / ".cache" / "raypipe"))


def _seeded(seed: int = 0):
    import torch

    torch.manual_seed(seed)


def tiny_t5(max_length: int = 16, d_model: int = 32):
    """A T5 encoder and a character-level tokenizer, built without the hub.

    The tokenizer is a `tokenizers` WordLevel model over single characters (so every
    prompt maps to distinct ids), wrapped in PreTrainedTokenizerFast.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    specials = ["<pad>", "</s>", "<unk>"]
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation))
    vocab = {tok: i for i, tok in enumerate(specials + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("."), behavior="isolated")]
    )
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=max_length)
    _seeded(0)
    encoder = T5EncoderModel(T5Config(vocab_size=len(vocab), d_model=d_model, d_ff=2 * d_model, d_kv=8,
                                      num_layers=1, num_heads=2, relative_attention_num_buckets=8,
                                      pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return tokenizer, encoder


# ---- CLIP text encoders and tokenizers (shared by the SD / SDXL families) ------------------

CLIP_CHARS = string.ascii_lowercase + string.digits + ".,!?'-"


def tiny_clip_tokenizer(max_length: int = 16):
    """A real CLIPTokenizer from a few-line local vocab.json / merges.txt: single characters
    (as word pieces and as word ends) and two merges; anything else maps to <|endoftext|>."""
    import json

    from transformers import CLIPTokenizer

    vocab = ["<|startoftext|>", "<|endoftext|>", *CLIP_CHARS, *(c + "</w>" for c in CLIP_CHARS), "th", "the</w>"]
    with tempfile.TemporaryDirectory(prefix="raypipe-clip-") as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=max_length)


def tiny_clip_text_encoder(tokenizer, hidden_size: int = 32, projection_dim: int | None = None, seed: int = 0):
    """A 2-layer CLIP text encoder for `tokenizer`: CLIPTextModel, or CLIPTextModelWithProjection
    (SDXL's second encoder, pooled `text_embeds`) when projection_dim is given."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or hidden_size, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    _seeded(seed)
    return (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config)


def tiny_cogvideox_components(in_channels: int = 4) -> dict:
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

    tokenizer, text_encoder = tiny_t5(max_length=32, d_model=32)
    _seeded(1)
    # 4 blocks: 8x spatial compression; temporal compression 4, as the released VAE.
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, layers_per_block=1,
        norm_num_groups=2, temporal_compression_ratio=4,
    )
    _seeded(2)
    # The I2V model (8 input channels) uses 3D rotary embeddings, as CogVideoX-5b-I2V: they split
    # a head into 1/4 time + 3/8 height + 3/8 width, each even, so heads are 16 wide there.
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8 if in_channels == 4 else 16, in_channels=in_channels,
        out_channels=4,
        time_embed_dim=8, text_embed_dim=32, num_layers=2, sample_width=8, sample_height=8,
        sample_frames=9, patch_size=2, temporal_compression_ratio=4, max_text_seq_length=32,
        use_rotary_positional_embeddings=in_channels != 4,
    )
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
        prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    return dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                scheduler=scheduler)


def build_cogvideox(path: Path) -> None:
    from diffusers import CogVideoXPipeline

    CogVideoXPipeline(**tiny_cogvideox_components()).save_pretrained(path)


# ---- CogVideoX image-to-video, ExVideo (raypipe/stages/cogvideox.py, exvideo.py) ---------

# The released files' own names, so a config reads the same for tiny and real weights.
EXVIDEO_LORA_FILE = "ExVideo-CogVideoX-LoRA-129f-v1.safetensors"
EXVIDEO_SVD_FILE = "model.fp16.safetensors"


def build_cogvideox_i2v(path: Path) -> None:
    from diffusers import CogVideoXImageToVideoPipeline

    # The I2V transformer takes the noise and the image latents side by side: 2 x 4 channels.
    CogVideoXImageToVideoPipeline(**tiny_cogvideox_components(in_channels=8)).save_pretrained(path)


def build_exvideo_lora(path: Path) -> None:
    """A LoRA for tiny:cogvideox in ExVideo-CogVideoX-LoRA-129f-v1's format (DiffSynth-Studio's
    names: blocks.<i>.attn1.to_q.lora_A.default.weight, ...), rank 4, non-zero B so it acts."""
    import torch
    from safetensors.torch import save_file

    _seeded(3)
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
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from raypipe.models.exvideo_svd import diffusers_to_released, extend_unet

    _seeded(4)
    # 3 blocks: 4x spatial compression, so 64 px frames give the UNet's 4 levels 16, 8, 4, 2 rows
    # (ExVideo's reflect-padded conv needs 2). GroupNorm(32) in these blocks fixes the width at 32.
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 32, 32), layers_per_block=1,
                                       down_block_types=("DownEncoderBlock2D",) * 3, latent_channels=4)
    _seeded(5)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16, in_channels=8, out_channels=4, block_out_channels=(32, 32, 32, 32),
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=24, layers_per_block=2,
        cross_attention_dim=32, num_attention_heads=(2, 2, 2, 2), num_frames=25)
    _seeded(6)
    # The pipeline resizes the conditioning image to 224 px for the CLIP image encoder.
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        image_size=224, patch_size=32))
    scheduler = EulerDiscreteScheduler(  # SVD-XT's scheduler settings
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, interpolation_type="linear",
        prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
        timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=CLIPImageProcessor(crop_size=224, size=224))
    pipe.save_pretrained(path)

    # The extension: identity-initialised, then moved off the identity as training would.
    extend_unet(unet)
    _seeded(7)
    released = diffusers_to_released(unet.state_dict())
    for key, value in released.items():
        scale = 0.02 if key.endswith(("positional_conv.weight", "embeddings")) else 0.1
        released[key] = (value + scale * torch.randn_like(value)).to(torch.float16).contiguous()
    save_file(released, str(path / EXVIDEO_SVD_FILE))


# ---- SDXL and SDXL video (raypipe/stages/sdxl_video.py) ------------------------------------


def tiny_image_vae(scaling_factor: float):
    """An 8x image VAE (4 levels, 4 latent channels), as SD 1.5's and SDXL's (their scaling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8),
                         layers_per_block=1, latent_channels=4, norm_num_groups=2, sample_size=64,
                         scaling_factor=scaling_factor)


def tiny_sdxl_components() -> dict:
    """StableDiffusionXLPipeline's components at SDXL's layout: two CLIP text encoders (the
    second with projection), an 8x VAE, a UNet with addition_embed_type text_time."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(max_length=16)
    text_encoder = tiny_clip_text_encoder(tokenizer, hidden_size=32, seed=10)
    text_encoder_2 = tiny_clip_text_encoder(tokenizer, hidden_size=32, projection_dim=32, seed=11)
    _seeded(12)
    vae = tiny_image_vae(scaling_factor=0.13025)
    _seeded(13)
    # 64 px -> 8x8 latents; cross-attention (and so the temporal modules) at 4x4 in the second level.
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 1), use_linear_projection=True,
        norm_num_groups=8, cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="leading", steps_offset=1)  # SDXL base's
    return dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)


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

    pipe = SDXLVideoPipeline.from_sdxl(StableDiffusionXLPipeline(**tiny_sdxl_components()),
                                       temporal_num_attention_heads=2, max_conditioning_frames=8)
    _seeded(14)
    for module in pipe.unet.temporal_modules():
        torch.nn.init.normal_(module.proj_out.weight, std=0.2)
    pipe.save_pretrained(path)



# ---- Stable Diffusion 1.5 and a depth model (raypipe/stages/deforum.py) --------------------


def tiny_sd15_components() -> dict:
    """StableDiffusionPipeline's components at SD 1.5's layout: one CLIP text encoder, an 8x
    VAE (scaling 0.18215), a cross-attention UNet, SD 1.5's PNDM scheduler settings."""
    from diffusers import PNDMScheduler, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(max_length=16)
    text_encoder = tiny_clip_text_encoder(tokenizer, hidden_size=32, seed=20)
    _seeded(21)
    vae = tiny_image_vae(scaling_factor=0.18215)
    _seeded(22)
    # 64 px -> 8x8 latents; cross-attention in the first level, as SD 1.5's first three.
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4, norm_num_groups=8, cross_attention_dim=32)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)  # SD 1.5's
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def build_sd15(path: Path) -> None:
    """A plain text-to-image SD 1.5 pipeline (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**tiny_sd15_components(), safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(path)


def build_depth(path: Path) -> None:
    """A DPT depth-estimation model (MiDaS 3's architecture, as Intel/dpt-hybrid-midas, without
    the hybrid backbone) and its image processor, at 32 px."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    _seeded(23)
    model = DPTForDepthEstimation(DPTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, backbone_out_indices=[0, 1, 2, 3],
        num_attention_heads=2, intermediate_size=64, neck_hidden_sizes=[8, 16, 32, 32], fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5], is_hybrid=False))
    model.save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8).save_pretrained(path)


# ---- AnimateDiff: motion adapter, ControlNet, motion LoRA for tiny:sd15 (stages/animatediff.py) --

MOTION_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name


def tiny_motion_adapter(unet=None):
    """A MotionAdapter that fits tiny:sd15's UNet (same block widths and layers), with a window
    (motion_max_seq_length) of 16 frames, so long clips need FreeNoise."""
    from diffusers import MotionAdapter

    unet = unet or tiny_sd15_components()["unet"]
    _seeded(30)
    return MotionAdapter(block_out_channels=tuple(unet.config.block_out_channels),
                         motion_layers_per_block=unet.config.layers_per_block, motion_num_attention_heads=2,
                         motion_norm_num_groups=unet.config.norm_num_groups, motion_max_seq_length=16)


def build_animatediff_motion_adapter(path: Path) -> None:
    tiny_motion_adapter().save_pretrained(path)


def build_animatediff_controlnet(path: Path) -> None:
    """A ControlNet made from tiny:sd15's UNet (as ControlNet training starts), its zero
    convolutions given random weights so that the control maps act."""
    from diffusers import ControlNetModel

    unet = tiny_sd15_components()["unet"]
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    _seeded(32)
    for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                   controlnet.controlnet_cond_embedding.conv_out):
        module.weight.data.normal_(std=0.1)
    controlnet.save_pretrained(path)


def build_motion_lora(path: Path) -> None:
    """A motion LoRA for tiny:sd15 + tiny:animatediff-motion-adapter in diffusers' LoRA format
    (pytorch_lora_weights.safetensors, keys unet.<module>.lora_A/B.weight), on the motion modules'
    attention projections as the released MotionLoRAs, rank 4, with non-zero B so that it acts."""
    from diffusers import AnimateDiffPipeline, UNetMotionModel
    from peft import LoraConfig, get_peft_model_state_dict

    unet = tiny_sd15_components()["unet"]
    motion_unet = UNetMotionModel.from_unet2d(unet, tiny_motion_adapter(unet))
    _seeded(33)
    motion_unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=r".*motion_modules.*\.(to_q|to_k|to_v|to_out\.0)"))
    AnimateDiffPipeline.save_lora_weights(path, unet_lora_layers=get_peft_model_state_dict(motion_unet),
                                          weight_name=MOTION_LORA_FILE)


# name -> builder(path). Each family's issue registers its tiny models here.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "cogvideox": build_cogvideox,
    "cogvideox-i2v": build_cogvideox_i2v,
    "exvideo-lora": build_exvideo_lora,
    "svd": build_svd,
    "sdxl": build_sdxl,
    "sdxl_video": build_sdxl_video,
    "sd15": build_sd15,
    "depth": build_depth,
    "animatediff-motion-adapter": build_animatediff_motion_adapter,
    "animatediff-controlnet": build_animatediff_controlnet,
    "motion-lora": build_motion_lora,
}


def build(name: str, path: Path) -> Path:
    """Build tiny model `name` at `path`, atomically (a half-built folder is never used)."""
    if name not in BUILDERS:
        raise KeyError(f"unknown tiny model {name!r} (known: {', '.join(sorted(BUILDERS))})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        BUILDERS[name](tmp)
        (tmp / ".raypipe-tiny").write_text(TINY_VERSION)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def tiny_path(model: str) -> Path:
    """The directory of `tiny:<name>`, built into the cache on first use; `tiny:<name>/<file>`
    is a file inside it (e.g. tiny:svd/model.fp16.safetensors, the ExVideo-SVD weights)."""
    name = model[len(TINY_PREFIX):] if model.startswith(TINY_PREFIX) else model
    name, _, inner = name.partition("/")
    if inner:
        return tiny_path(name) / inner
    path = cache_dir() / "tiny" / name
    marker = path / ".raypipe-tiny"
    if marker.exists() and marker.read_text() == TINY_VERSION:
        return path
    # Several actors may ask at once: one builds, the others wait on the lock.
    import filelock

    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path) + ".lock", timeout=600):
        if not (marker.exists() and marker.read_text() == TINY_VERSION):
            build(name, path)
    return path


def resolve_model(model: str) -> str:
    """What `from_pretrained` gets: a tiny model's folder, or the path / hub id as given."""
    return str(tiny_path(model)) if model.startswith(TINY_PREFIX) else model


def build_all(directory: str | os.PathLike) -> dict[str, Path]:
    """`raypipe models tiny DIR`: every tiny model under DIR/<name>."""
    out = {}
    for name in BUILDERS:
        out[name] = build(name, Path(directory) / name)
    return out

