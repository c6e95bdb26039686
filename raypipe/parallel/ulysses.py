"""Sequence-parallel CogVideoX: video tokens sharded by latent rows, Ulysses attention.

CogVideoX's blocks run joint attention over [text tokens, video tokens]. With N ranks:

- the video tokens are split by rows of patches: rank r holds rows [r*R/N, (r+1)*R/N) of
  every latent frame (R = latent height / patch size), so R must be a multiple of N;
- the text tokens are NOT split: every rank holds all of them (they are few: 226) and
  computes the same text stream, so every rank's text state stays identical;
- in attention, one all-to-all turns "my video rows, all heads" into "all video rows, my
  heads" (yunchang's SeqAllToAll4D; heads must be a multiple of N); the rank's slice of the
  text heads is put in front, so each query sees every text and video key exactly as in
  one process; a second all-to-all brings the video rows back, and an all-gather over heads
  rebuilds the text output on every rank.

Getting the text tokens wrong (sharding them with the video, or leaving them out of the
keys) silently changes the output: xDiT #295, VideoSys #210. Here the output equals the
single-process output up to float summation order.

CFG parallel (optional): the gang is a grid of cfg x sp ranks; each half runs one of the two
CFG branches (the batch halves) and the noise predictions are all-gathered at the end.

Nothing here is CogVideoX-pipeline specific beyond the transformer's modules (patch_embed,
proj_out, the attention processor slot), so t2v, i2v, v2v and LoRA (ExVideo) run the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

# attention(text_q, text_k, text_v, video_q, video_k, video_v) -> (text_out, video_out), all in
# [batch, tokens, heads, head_dim]: text full, video this rank's rows, heads all.
JointAttention = Callable[..., tuple[torch.Tensor, torch.Tensor]]


@dataclass
class SPContext:
    """One rank's place in the gang and its process groups."""

    sp_rank: int
    sp_size: int
    sp_group: Any  # torch ProcessGroup of the ranks sharing one video
    cfg_rank: int = 0
    cfg_size: int = 1
    cfg_group: Any = None  # ranks holding the same rows of the other CFG branch
    attention: JointAttention | None = None  # None: Ulysses over sp_group
    backend: str = "ulysses"
    # Set per transformer call: the latent token grid (frames, rows, columns).
    grid: tuple[int, int, int] | None = field(default=None, repr=False)


# ---- sharding the video tokens by rows ------------------------------------------------


def check_divisible(heads: int, grid_rows: int, sp_size: int) -> None:
    """The ranks' own check, in case validation could not read the model's config."""
    if heads % sp_size:
        raise ValueError(f"sp_degree: must divide the {heads} attention heads of the model, got {sp_size}")
    if grid_rows % sp_size:
        raise ValueError(f"sp_degree: must divide the latent rows ({grid_rows} rows of tokens), got {sp_size}")


def shard_rows(tokens: torch.Tensor, grid: tuple[int, int, int], rank: int, size: int) -> torch.Tensor:
    """[B, T*R*C, ...] in (frame, row, column) order -> this rank's rows: [B, T*(R/size)*C, ...]."""
    frames, rows, cols = grid
    batch, rest = tokens.shape[0], tokens.shape[2:]
    per = rows // size
    grid_view = tokens.reshape(batch, frames, rows, cols, *rest)
    return grid_view[:, :, rank * per : (rank + 1) * per].reshape(batch, frames * per * cols, *rest)


def gather_rows(local: torch.Tensor, grid: tuple[int, int, int], group, size: int) -> torch.Tensor:
    """Inverse of shard_rows over the group: every rank gets the full [B, T*R*C, ...]."""
    frames, rows, cols = grid
    batch, rest = local.shape[0], local.shape[2:]
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    per = rows // size
    parts = [p.reshape(batch, frames, per, cols, *rest) for p in parts]
    return torch.cat(parts, dim=2).reshape(batch, frames * rows * cols, *rest)


def gather_batch(local: torch.Tensor, group, size: int) -> torch.Tensor:
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=0)


# ---- attention ----------------------------------------------------------------------------


def ulysses_joint_attention(ctx: SPContext) -> JointAttention:
    """Joint text+video attention with Ulysses all-to-all over ctx.sp_group (gloo or NCCL)."""
    from yunchang.comm.all_to_all import SeqAllToAll4D

    group, size, rank = ctx.sp_group, ctx.sp_size, ctx.sp_rank

    def attention(tq, tk, tv, vq, vk, vv):
        batch, text_len, heads, head_dim = tq.shape
        per = heads // size
        mine = slice(rank * per, (rank + 1) * per)
        # video: my rows x all heads -> all rows x my heads (one collective for q, k and v)
        qkv = torch.cat([vq, vk, vv], dim=0).contiguous()
        qkv = SeqAllToAll4D.apply(group, qkv, 2, 1)
        vq, vk, vv = qkv.chunk(3, dim=0)
        # text: every rank holds all of it; take my heads and put them in front, as one process would
        q = torch.cat([tq[:, :, mine], vq], dim=1).transpose(1, 2)
        k = torch.cat([tk[:, :, mine], vk], dim=1).transpose(1, 2)
        v = torch.cat([tv[:, :, mine], vv], dim=1).transpose(1, 2)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2)  # [B, text + all video, my heads, D]
        text_out, video_out = out[:, :text_len], out[:, text_len:]
        video_out = SeqAllToAll4D.apply(group, video_out.contiguous(), 1, 2)  # back to my rows x all heads
        text_parts = [torch.empty_like(text_out) for _ in range(size)]
        dist.all_gather(text_parts, text_out.contiguous(), group=group)
        return torch.cat(text_parts, dim=2), video_out

    return attention


class SequenceParallelCogVideoXAttnProcessor:
    """CogVideoXAttnProcessor2_0 with the attention itself spread over the gang.

    hidden_states are this rank's video rows, encoder_hidden_states all text tokens, and
    image_rotary_emb (if any) this rank's rows of the RoPE table."""

    def __init__(self, attention: JointAttention):
        self.attention = attention

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        if attention_mask is not None:
            raise NotImplementedError("sequence-parallel CogVideoX attention takes no attention_mask")
        text_len = encoder_hidden_states.size(1)
        states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch = states.shape[0]
        query, key, value = attn.to_q(states), attn.to_k(states), attn.to_v(states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim)
        key = key.view(batch, -1, attn.heads, head_dim)
        value = value.view(batch, -1, attn.heads, head_dim)
        # qk norms are per head over head_dim: the same in either layout
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:  # RoPE on the video tokens only, as diffusers does
            from diffusers.models.embeddings import apply_rotary_emb

            video_q = apply_rotary_emb(query[:, text_len:].transpose(1, 2), image_rotary_emb).transpose(1, 2)
            query = torch.cat([query[:, :text_len], video_q], dim=1)
            if not attn.is_cross_attention:
                video_k = apply_rotary_emb(key[:, text_len:].transpose(1, 2), image_rotary_emb).transpose(1, 2)
                key = torch.cat([key[:, :text_len], video_k], dim=1)
        text_out, video_out = self.attention(
            query[:, :text_len],
            key[:, :text_len],
            value[:, :text_len],
            query[:, text_len:],
            key[:, text_len:],
            value[:, text_len:],
        )
        out = torch.cat([text_out, video_out], dim=1).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        encoder_hidden_states, hidden_states = out.split([text_len, out.size(1) - text_len], dim=1)
        return hidden_states, encoder_hidden_states


# ---- wiring it into a CogVideoXTransformer3DModel -------------------------------------------


def _grid(transformer, latents: torch.Tensor) -> tuple[int, int, int]:
    """(frames, rows, columns) of the video tokens for latents [B, F, C, H, W]."""
    p, p_t = transformer.config.patch_size, transformer.config.patch_size_t
    frames = latents.shape[1] if p_t is None else (latents.shape[1] + p_t - 1) // p_t
    return frames, latents.shape[3] // p, latents.shape[4] // p


def parallelize_transformer(transformer, ctx: SPContext) -> None:
    """Make `transformer` (a CogVideoXTransformer3DModel) run sharded on this rank, with hooks:
    its forward keeps the diffusers code, only the token streams it sees change.

    - forward pre-hook: take this rank's CFG half of the batch and its rows of the RoPE table;
    - patch_embed hook: keep all text tokens and this rank's rows of video tokens;
    - attention processor: the joint attention across the gang;
    - proj_out hook: all-gather the video rows, so unpatchify sees the whole video;
    - forward hook: all-gather the CFG halves of the noise prediction."""
    heads = transformer.config.num_attention_heads
    if ctx.attention is None:
        ctx.attention = ulysses_joint_attention(ctx)
    transformer.set_attn_processor(SequenceParallelCogVideoXAttnProcessor(ctx.attention))

    def before_forward(module, args, kwargs):
        kwargs = dict(kwargs)
        if args:  # the pipelines call with keywords; accept hidden_states positionally too
            kwargs["hidden_states"], args = args[0], args[1:]
        latents = kwargs["hidden_states"]
        ctx.grid = _grid(module, latents)
        check_divisible(heads, ctx.grid[1], ctx.sp_size)
        if ctx.cfg_size > 1:
            batch = latents.shape[0]
            if batch % ctx.cfg_size:
                raise ValueError(
                    f"sp.cfg_parallel: needs classifier-free guidance (guidance_scale > 1): the batch of "
                    f"{batch} cannot be split in {ctx.cfg_size}"
                )
            for name in ("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"):
                value = kwargs.get(name)
                if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
                    kwargs[name] = value.chunk(ctx.cfg_size, dim=0)[ctx.cfg_rank]
        rope = kwargs.get("image_rotary_emb")
        if rope is not None:
            kwargs["image_rotary_emb"] = tuple(
                shard_rows(t.unsqueeze(0), ctx.grid, ctx.sp_rank, ctx.sp_size)[0] for t in rope
            )
        return args, kwargs

    def after_patch_embed(module, args, output):
        text_len = args[0].shape[1]
        video = shard_rows(output[:, text_len:], ctx.grid, ctx.sp_rank, ctx.sp_size)
        return torch.cat([output[:, :text_len], video], dim=1)

    def after_proj_out(module, args, output):
        return gather_rows(output, ctx.grid, ctx.sp_group, ctx.sp_size)

    def after_forward(module, args, kwargs, output):
        if ctx.cfg_size == 1:
            return output
        if isinstance(output, tuple):
            return (gather_batch(output[0], ctx.cfg_group, ctx.cfg_size), *output[1:])
        output.sample = gather_batch(output.sample, ctx.cfg_group, ctx.cfg_size)
        return output

    transformer.register_forward_pre_hook(before_forward, with_kwargs=True)
    transformer.register_forward_hook(after_forward, with_kwargs=True)
    transformer.patch_embed.register_forward_hook(after_patch_embed)
    transformer.proj_out.register_forward_hook(after_proj_out)
