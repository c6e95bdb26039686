"""Tiny random-weight models, in diffusers' on-disk layout: the cache and the shared parts.

No model hub is reachable here, so each family has `tiny:<name>` models: the real component
classes at a few kilobytes of random weights, written with `save_pretrained` and loaded back by
the stages through the same `from_pretrained` that loads released checkpoints. They make noise,
not art, but they exercise every line of the real path. Each family's builders are in its
package (raypipe/families/<kind>/tiny.py) and registered with it; here are the parts several
families share (a T5 and CLIP text encoders, an image VAE, Stable Diffusion 1.5, a depth model).

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


def seeded(seed: int = 0):
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
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=max_length
    )
    seeded(0)
    encoder = T5EncoderModel(
        T5Config(
            vocab_size=len(vocab),
            d_model=d_model,
            d_ff=2 * d_model,
            d_kv=8,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
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
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    seeded(seed)
    return (CLIPTextModelWithProjection if projection_dim else CLIPTextModel)(config)


def build_clip(path: Path) -> None:
    """tiny:clip, the quality gate's CLIP (raypipe/quality.py clip_score; no family owns it): a
    CLIPModel (2-layer text and vision towers, 32 px images in 8 px patches) and its
    CLIPProcessor (the tiny tokenizer, a CLIPImageProcessor resizing and cropping to 32 px)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer = tiny_clip_tokenizer(max_length=16)
    text = tiny_clip_text_encoder(tokenizer, hidden_size=32).config.to_dict()
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
    )
    seeded(30)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    model.save_pretrained(path)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


# Tiny models no family owns, by name.
SHARED_TINY: dict[str, Callable[[Path], None]] = {"clip": build_clip}


# ---- image VAE, Stable Diffusion 1.5 and a depth model (deforum, animatediff, sdxl_video) --------


def tiny_image_vae(scaling_factor: float):
    """An 8x image VAE (4 levels, 4 latent channels), as SD 1.5's and SDXL's (their scaling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=2,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def tiny_sd15_components() -> dict:
    """StableDiffusionPipeline's components at SD 1.5's layout: one CLIP text encoder, an 8x
    VAE (scaling 0.18215), a cross-attention UNet, SD 1.5's PNDM scheduler settings."""
    from diffusers import PNDMScheduler, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(max_length=16)
    text_encoder = tiny_clip_text_encoder(tokenizer, hidden_size=32, seed=20)
    seeded(21)
    vae = tiny_image_vae(scaling_factor=0.18215)
    seeded(22)
    # 64 px -> 8x8 latents; cross-attention in the first level, as SD 1.5's first three.
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=4,
        norm_num_groups=8,
        cross_attention_dim=32,
    )
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )  # SD 1.5's
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def build_sd15(path: Path) -> None:
    """A plain text-to-image SD 1.5 pipeline (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(
        **tiny_sd15_components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False
    ).save_pretrained(path)


def build_depth(path: Path) -> None:
    """A DPT depth-estimation model (MiDaS 3's architecture, as Intel/dpt-hybrid-midas, without
    the hybrid backbone) and its image processor, at 32 px."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    seeded(23)
    model = DPTForDepthEstimation(
        DPTConfig(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            num_hidden_layers=4,
            backbone_out_indices=[0, 1, 2, 3],
            num_attention_heads=2,
            intermediate_size=64,
            neck_hidden_sizes=[8, 16, 32, 32],
            fusion_hidden_size=16,
            reassemble_factors=[4, 2, 1, 0.5],
            is_hybrid=False,
        )
    )
    model.save_pretrained(path)
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False, ensure_multiple_of=8).save_pretrained(
        path
    )


# ---- building and the cache ----------------------------------------------------------------


def builders() -> dict[str, Callable[[Path], None]]:
    """tiny model name -> builder, from every family's registration."""
    from raypipe.families import families

    out: dict[str, Callable[[Path], None]] = dict(SHARED_TINY)
    for family in families():
        for name, builder in family.tiny.items():
            if out.get(name, builder) is not builder:
                raise ValueError(f"tiny model {name!r} is registered by two families with different builders")
            out[name] = builder
    return out


# name -> builder(path). Each family's issue registers its tiny models here.


def build(name: str, path: Path) -> Path:
    """Build tiny model `name` at `path`, atomically (a half-built folder is never used)."""
    known = builders()
    if name not in known:
        raise KeyError(f"unknown tiny model {name!r} (known: {', '.join(sorted(known))})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        known[name](tmp)
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
    name = model[len(TINY_PREFIX) :] if model.startswith(TINY_PREFIX) else model
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
    for name in builders():
        out[name] = build(name, Path(directory) / name)
    return out
