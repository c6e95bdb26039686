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
TINY_VERSION = "2"


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
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=in_channels, out_channels=4,
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


# name -> builder(path). Each family's issue registers its tiny models here.
BUILDERS: dict[str, Callable[[Path], None]] = {
    "cogvideox": build_cogvideox,
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
    """The directory of `tiny:<name>`, built into the cache on first use."""
    name = model[len(TINY_PREFIX):] if model.startswith(TINY_PREFIX) else model
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

