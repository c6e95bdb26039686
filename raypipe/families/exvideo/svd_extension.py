"""ExVideo-SVD: Stable Video Diffusion extended from 25 to 128 frames.

ExVideo (Duan et al. 2024, arXiv:2406.14130) post-tunes the temporal blocks of a video model.
On SVD it changes every TransformerSpatioTemporalModel of the UNet in two ways:

1. the fixed sinusoidal frame-position embedding becomes a trainable table with one row per
   frame (128 rows). The table starts as the sinusoid of "folded" positions: frames 0-24 keep
   their own position, later frames walk back and forth over positions the base model knows;
2. a 3D convolution (kernel 3 over frames, height, width; reflect padding) is applied to the
   input of the temporal transformer block, initialised to the identity.

An untouched extension therefore computes exactly what SVD computes for up to 25 frames.

The released checkpoint (ECNU-CILab/ExVideo-SVD-128f-v1, `model.fp16.safetensors`) holds the
fine-tuned weights of the 16 temporal transformer blocks together with both additions, named
the way DiffSynth-Studio's SVD UNet names them: one flat list `blocks.<n>.`, where <n> counts
every layer of that UNet (resnets, pushes, pops, mixers, ...). `RELEASED_BLOCKS` says which
diffusers module each of the 16 <n> is, `RELEASED_SUFFIXES` how the names inside a block map.
DiffSynth recognises the file by the md5 of its names and shapes (`diffsynth_keys_md5`,
`EXVIDEO_SVD_MD5`): the extension of SVD-XT's UNet, mapped to the released names, has exactly that
md5 (tests/test_real_configs.py, on the meta device).

DiffSynth's SVD pipeline also post-processes the final latents before decoding them
(`post_process_latents`: each frame normalised to the video's mean and std, then scaled by
`contrast_enhance_scale`, 1.2 in its ExVideo example and by default); the exvideo stage does the same
(options `post_normalize`, `contrast_enhance_scale`).
"""

from __future__ import annotations

import torch
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.transformers.transformer_temporal import (
    TransformerSpatioTemporalModel,
    TransformerTemporalModelOutput,
)
from torch import nn

# The frame count ExVideo-SVD-128f-v1 was trained for (its position table has this many rows).
EXVIDEO_SVD_FRAMES = 128
# DiffSynth-Studio's fingerprint of ExVideo-SVD-128f-v1's model.fp16.safetensors (its
# patch_model_loader_configs, diffsynth/configs/model_config.py before the 2.0 rewrite).
EXVIDEO_SVD_MD5 = "9a4ab6869ac9b7d6e31f9854e397c867"
# DiffSynth's SVD pipeline defaults (diffsynth/pipelines/svd_video.py), used by its ExVideo example.
CONTRAST_ENHANCE_SCALE = 1.2

# DiffSynth-Studio's block index of each temporal transformer -> its module in diffusers'
# UNetSpatioTemporalConditionModel (SVD / SVD-XT layout: 3 cross-attention down blocks of 2
# layers, a mid block, 3 cross-attention up blocks of 3 layers).
RELEASED_BLOCKS: dict[int, str] = {
    7: "down_blocks.0.attentions.0",
    17: "down_blocks.0.attentions.1",
    29: "down_blocks.1.attentions.0",
    39: "down_blocks.1.attentions.1",
    51: "down_blocks.2.attentions.0",
    61: "down_blocks.2.attentions.1",
    83: "mid_block.attentions.0",
    113: "up_blocks.1.attentions.0",
    123: "up_blocks.1.attentions.1",
    133: "up_blocks.1.attentions.2",
    144: "up_blocks.2.attentions.0",
    154: "up_blocks.2.attentions.1",
    164: "up_blocks.2.attentions.2",
    175: "up_blocks.3.attentions.0",
    185: "up_blocks.3.attentions.1",
    195: "up_blocks.3.attentions.2",
}

# Released layer name inside a block -> layer inside ExVideoSpatioTemporalTransformer (the
# parameter's own name, weight / bias / embeddings, is kept). SVD has one temporal transformer
# block per module.
_T = "temporal_transformer_blocks.0."
RELEASED_SUFFIXES: dict[str, str] = {
    "positional_embedding": "time_proj",
    "positional_embedding_proj.0": "time_pos_embed.linear_1",
    "positional_embedding_proj.2": "time_pos_embed.linear_2",
    "positional_conv": "positional_conv",
    "norm_in": _T + "norm_in",
    "act_fn_in.proj": _T + "ff_in.net.0.proj",
    "ff_in": _T + "ff_in.net.2",
    "norm1": _T + "norm1",
    "attn1.to_q": _T + "attn1.to_q",
    "attn1.to_k": _T + "attn1.to_k",
    "attn1.to_v": _T + "attn1.to_v",
    "attn1.to_out": _T + "attn1.to_out.0",
    "norm2": _T + "norm2",
    "attn2.to_q": _T + "attn2.to_q",
    "attn2.to_k": _T + "attn2.to_k",
    "attn2.to_v": _T + "attn2.to_v",
    "attn2.to_out": _T + "attn2.to_out.0",
    "norm_out": _T + "norm3",
    "act_fn_out.proj": _T + "ff.net.0.proj",
    "ff_out": _T + "ff.net.2",
}


def folded_positions(num_frames: int, known: int = 25, swing: int = 20) -> list[int]:
    """The base position each frame's embedding starts from: frames below `known` (SVD's 25)
    keep their own; later frames swing back and forth over the last `swing` known positions
    (known-2 down to known-1-swing, then up again, ...)."""
    positions = []
    for frame in range(num_frames):
        if frame < known:
            positions.append(frame)
            continue
        phase = (frame - known) % (2 * swing)
        positions.append(known - 2 - phase if phase < swing else known - 2 * swing + phase)
    return positions


class FramePositionEmbedding(nn.Module):
    """A learned embedding per frame index, in place of SVD's sinusoidal `time_proj`."""

    def __init__(self, channels: int, max_frames: int = EXVIDEO_SVD_FRAMES):
        super().__init__()
        positions = torch.tensor(folded_positions(max_frames))
        # The same sinusoid as diffusers' Timesteps(channels, flip_sin_to_cos=True, shift=0).
        self.embeddings = nn.Parameter(get_timestep_embedding(positions, channels, True, 0))

    @property
    def max_frames(self) -> int:
        return self.embeddings.shape[0]

    def forward(self, frame_ids: torch.Tensor) -> torch.Tensor:
        if not frame_ids.is_meta and int(frame_ids.max()) >= self.max_frames:  # (meta: FLOP counts)
            raise ValueError(
                f"num_frames: ExVideo-SVD has position embeddings for {self.max_frames} frames, "
                f"asked for {int(frame_ids.max()) + 1}"
            )
        return self.embeddings[frame_ids]


def identity_conv3d(channels: int) -> nn.Conv3d:
    """A 3x3x3 convolution that returns its input unchanged until trained."""
    conv = nn.Conv3d(channels, channels, kernel_size=3, padding=1, padding_mode="reflect")
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :, 1, 1, 1] = torch.eye(channels)
        conv.bias.zero_()
    return conv


class ExVideoSpatioTemporalTransformer(TransformerSpatioTemporalModel):
    """diffusers' TransformerSpatioTemporalModel with ExVideo's two additions (see the module
    docstring): `time_proj` is a FramePositionEmbedding and `positional_conv` runs on the
    temporal block's input. Everything else is the base module's code and weights."""

    def __init__(
        self,
        num_attention_heads: int,
        attention_head_dim: int,
        in_channels: int,
        num_layers: int = 1,
        cross_attention_dim: int | None = None,
        max_frames: int = EXVIDEO_SVD_FRAMES,
    ):
        super().__init__(
            num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim,
            in_channels=in_channels,
            num_layers=num_layers,
            cross_attention_dim=cross_attention_dim,
        )
        self.time_proj = FramePositionEmbedding(in_channels, max_frames)
        self.positional_conv = identity_conv3d(self.inner_dim)

    @classmethod
    def from_base(cls, base: TransformerSpatioTemporalModel, max_frames: int) -> ExVideoSpatioTemporalTransformer:
        """The extended module with `base`'s weights (on its device and dtype)."""
        param = next(base.parameters())
        extended = cls(
            num_attention_heads=base.num_attention_heads,
            attention_head_dim=base.attention_head_dim,
            in_channels=base.in_channels,
            num_layers=len(base.transformer_blocks),
            cross_attention_dim=base.transformer_blocks[0].attn2.cross_attention_dim,
            max_frames=max_frames,
        )
        missing, unexpected = extended.load_state_dict(base.state_dict(), strict=False)
        added = {"time_proj.embeddings", "positional_conv.weight", "positional_conv.bias"}
        if set(missing) != added or unexpected:
            raise RuntimeError(f"not an SVD temporal transformer: missing {missing}, unexpected {unexpected}")
        return extended.to(device=param.device, dtype=param.dtype)

    def _positional_conv(
        self, hidden_states: torch.Tensor, batch_size: int, num_frames: int, height: int, width: int
    ) -> torch.Tensor:
        # [B*F, H*W, C] -> [B, C, F, H, W] -> conv -> back
        channels = hidden_states.shape[-1]
        video = hidden_states.reshape(batch_size, num_frames, height, width, channels).permute(0, 4, 1, 2, 3)
        video = self.positional_conv(video)
        return video.permute(0, 2, 3, 4, 1).reshape(batch_size * num_frames, height * width, channels)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        image_only_indicator: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        # The base forward (diffusers 0.42), with ExVideo's positional conv before the temporal block.
        batch_frames, _, height, width = hidden_states.shape
        num_frames = image_only_indicator.shape[-1]
        batch_size = batch_frames // num_frames

        # Temporal cross-attention sees the first frame's context, for every pixel.
        time_context = encoder_hidden_states
        time_context = time_context[None, :].reshape(batch_size, num_frames, -1, time_context.shape[-1])[:, 0]
        time_context = time_context[:, None].broadcast_to(
            batch_size, height * width, time_context.shape[-2], time_context.shape[-1]
        )
        time_context = time_context.reshape(batch_size * height * width, -1, time_context.shape[-1])

        residual = hidden_states
        hidden_states = self.norm(hidden_states)
        inner_dim = hidden_states.shape[1]
        hidden_states = hidden_states.permute(0, 2, 3, 1).reshape(batch_frames, height * width, inner_dim)
        hidden_states = self.proj_in(hidden_states)

        frame_ids = torch.arange(num_frames, device=hidden_states.device).repeat(batch_size)
        emb = self.time_pos_embed(self.time_proj(frame_ids).to(dtype=hidden_states.dtype))[:, None, :]

        for block, temporal_block in zip(self.transformer_blocks, self.temporal_transformer_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, None, encoder_hidden_states, None
                )
            else:
                hidden_states = block(hidden_states, encoder_hidden_states=encoder_hidden_states)
            hidden_states_mix = self._positional_conv(hidden_states + emb, batch_size, num_frames, height, width)
            hidden_states_mix = temporal_block(
                hidden_states_mix, num_frames=num_frames, encoder_hidden_states=time_context
            )
            hidden_states = self.time_mixer(
                x_spatial=hidden_states, x_temporal=hidden_states_mix, image_only_indicator=image_only_indicator
            )

        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch_frames, height, width, inner_dim).permute(0, 3, 1, 2).contiguous()
        output = hidden_states + residual
        if not return_dict:
            return (output,)
        return TransformerTemporalModelOutput(sample=output)


# ---- the UNet -------------------------------------------------------------------------------


def extend_unet(unet, max_frames: int = EXVIDEO_SVD_FRAMES):
    """Replace each TransformerSpatioTemporalModel of an SVD UNet by its ExVideo extension
    (identity-initialised: the UNet computes what it did for up to 25 frames). In place."""
    targets = [name for name, module in unet.named_modules() if type(module) is TransformerSpatioTemporalModel]
    missing = sorted(set(RELEASED_BLOCKS.values()) - set(targets))
    if missing:
        raise ValueError(f"not an SVD UNet layout: no temporal transformer at {', '.join(missing)}")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = unet.get_submodule(parent_name)
        parent.register_module(child, ExVideoSpatioTemporalTransformer.from_base(getattr(parent, child), max_frames))
    return unet


def diffsynth_keys_md5(state_dict: dict) -> str:
    """The md5 by which DiffSynth-Studio recognises a checkpoint (its hash_state_dict_keys with shapes):
    for every tensor, the entries `<name>:<d0>_<d1>_...` and `<name>`, sorted, joined by commas."""
    import hashlib

    entries = []
    for name, value in state_dict.items():
        entries += [f"{name}:{'_'.join(str(d) for d in value.shape)}", name]
    return hashlib.md5(",".join(sorted(entries)).encode("utf-8")).hexdigest()


def released_to_diffusers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ExVideo-SVD's released names (`blocks.<n>.<name>.<weight|bias>`) -> extended-UNet names.
    Every key must be one: the error names the ones that are not."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        index, _, rest = rest.partition(".")
        name, _, leaf = rest.rpartition(".")
        known = head == "blocks" and index.isdigit() and int(index) in RELEASED_BLOCKS
        if not known or name not in RELEASED_SUFFIXES:
            unknown.append(key)
            continue
        out[f"{RELEASED_BLOCKS[int(index)]}.{RELEASED_SUFFIXES[name]}.{leaf}"] = value
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        raise ValueError(
            f"not an ExVideo-SVD key: {shown}" + (f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else "")
        )
    return out


def diffusers_to_released(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of released_to_diffusers, for the extension's weights of an extended UNet
    (other keys are left out): what the released file holds."""
    blocks = {path: index for index, path in RELEASED_BLOCKS.items()}
    suffixes = {ours: theirs for theirs, ours in RELEASED_SUFFIXES.items()}
    out = {}
    for key, value in state_dict.items():
        for path, index in blocks.items():
            if key.startswith(path + "."):
                name, _, leaf = key[len(path) + 1 :].rpartition(".")
                if name in suffixes:
                    out[f"blocks.{index}.{suffixes[name]}.{leaf}"] = value
    return out


def load_exvideo_svd(unet, checkpoint: str | dict[str, torch.Tensor]):
    """Extend an SVD UNet with ExVideo-SVD and load the released checkpoint (a .safetensors path
    or its state dict) into it. Every key of the checkpoint must land and every extension
    weight must be in it. In place; returns the UNet."""
    if isinstance(checkpoint, str):
        from safetensors.torch import load_file

        checkpoint = load_file(checkpoint)
    weights = released_to_diffusers(checkpoint)
    table = next((v for k, v in weights.items() if k.endswith("time_proj.embeddings")), None)
    if table is None:
        raise ValueError("not an ExVideo-SVD checkpoint: no positional_embedding.embeddings")
    extend_unet(unet, max_frames=table.shape[0])
    expected = set(released_to_diffusers(diffusers_to_released(unet.state_dict())))
    if set(weights) != expected:
        lacking = sorted(expected - set(weights))
        raise ValueError(f"incomplete ExVideo-SVD checkpoint: {len(lacking)} weights missing, e.g. {lacking[:3]}")
    own = unet.state_dict()
    for key, value in weights.items():
        if own[key].shape != value.shape:
            raise ValueError(
                f"ExVideo-SVD checkpoint: {key} has shape {tuple(value.shape)}, the UNet wants {tuple(own[key].shape)}"
            )
    unet.load_state_dict(weights, strict=False)
    return unet


# ---- DiffSynth's post-processing of the final latents ---------------------------------------------


def post_process_latents(
    latents: torch.Tensor, post_normalize: bool = True, contrast_enhance_scale: float = CONTRAST_ENHANCE_SCALE
) -> torch.Tensor:
    """DiffSynth's SVD post-processing, on diffusers' latents [B, F, C, H, W], one video at a time: each
    frame normalised to the mean and std of its whole video (post_normalize), then all scaled by
    contrast_enhance_scale. Linear in the latents' scale, so the same before or after the VAE's scaling."""
    if post_normalize:
        dims = (2, 3, 4)
        mean = latents.mean(dim=(1, *dims), keepdim=True)
        std = latents.std(dim=(1, *dims), keepdim=True)
        latents = (latents - latents.mean(dim=dims, keepdim=True)) / latents.std(dim=dims, keepdim=True) * std + mean
    return latents * contrast_enhance_scale


def post_process_callback(post_normalize: bool, contrast_enhance_scale: float):
    """A diffusers `callback_on_step_end` that post-processes the latents after the last step, so that
    StableVideoDiffusionPipeline decodes the post-processed latents."""

    def callback(pipe, step: int, timestep, tensors: dict) -> dict:
        if step == pipe.num_timesteps - 1:
            tensors["latents"] = post_process_latents(tensors["latents"], post_normalize, contrast_enhance_scale)
        return tensors

    return callback
