"""Ulysses sequence parallelism over a gang: the video token sequence sharded, attention by heads.

With N ranks, the video tokens (in the transformer's own order) are cut into N equal shards, the
last one(s) padded so that any token count works (TokenLayout): rank r holds tokens
[r*per, (r+1)*per). Every other layer of a diffusion transformer works token by token, so it
runs on the shard as it is; only attention mixes tokens:

- one all-to-all turns "my tokens, all heads" into "all tokens, my heads" (yunchang's
  SeqAllToAll4D; the heads must be a multiple of N), the padded tokens are dropped (their keys
  are never attended to, their queries never computed), attention runs as in one process, the
  output is padded again and a second all-to-all brings each rank its own tokens back;
- text tokens that take part in the same attention (CogVideoX's joint attention) are NOT
  sharded: every rank holds all of them and computes the same text stream; the rank's slice of
  the text heads is put in front, so each query sees every text and video key exactly as in one
  process, and an all-gather over heads rebuilds the text output on every rank.

Getting the text tokens wrong (sharding them with the video, or leaving them out of the keys)
silently changes the output: xDiT #295, VideoSys #210. Here the output equals the
single-process output up to float summation order, for any token count.

Which modules get sharded (where the tokens enter, the rotary tables, where they leave) is the
family's wiring: raypipe/families/<kind>/parallel.py, attached as named hooks (hooks.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from raypipe.parallel.context import SPContext, TokenLayout

# attention(text_q, text_k, text_v, q, k, v) -> (text_out, out), all [batch, tokens, heads, head_dim]:
# text (or None: no text in this attention) full, the video tokens this rank's shard, heads all.
Attention = Callable[..., tuple[torch.Tensor | None, torch.Tensor]]


def check_heads(heads: int, sp_size: int) -> None:
    """The ranks' own check, in case validation could not read the model's config."""
    if heads % sp_size:
        raise ValueError(f"sp_degree: must divide the {heads} attention heads of the model, got {sp_size}")


# ---- sharding the video tokens -----------------------------------------------------------------


def shard_tokens(tokens: torch.Tensor, layout: TokenLayout, rank: int, dim: int = 1) -> torch.Tensor:
    """Rank's shard of `tokens` along `dim` (layout.total long there): `layout.per` tokens, the
    padding (zeros) after the real ones."""
    start = rank * layout.per
    valid = layout.valid(rank)
    shard = tokens.narrow(dim, min(start, tokens.shape[dim]), valid)
    if valid < layout.per:
        shape = list(tokens.shape)
        shape[dim] = layout.per - valid
        shard = torch.cat([shard, tokens.new_zeros(shape)], dim=dim)
    return shard


def gather_tokens(local: torch.Tensor, layout: TokenLayout, group, dim: int = 1) -> torch.Tensor:
    """Inverse of shard_tokens over the group: every rank gets all `layout.total` tokens."""
    parts = [torch.empty_like(local) for _ in range(layout.size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=dim).narrow(dim, 0, layout.total)


def gather_batch(local: torch.Tensor, group, size: int) -> torch.Tensor:
    parts = [torch.empty_like(local) for _ in range(size)]
    dist.all_gather(parts, local.contiguous(), group=group)
    return torch.cat(parts, dim=0)


# ---- attention -----------------------------------------------------------------------------------


def ulysses_attention(ctx: SPContext) -> Attention:
    """Attention with Ulysses all-to-all over ctx.sp_group (gloo or NCCL), padded tokens left out."""
    from yunchang.comm.all_to_all import SeqAllToAll4D

    group, size, rank = ctx.sp_group, ctx.sp_size, ctx.sp_rank

    def attention(tq, tk, tv, vq, vk, vv):
        total = ctx.layout.total
        # video: my tokens x all heads -> all tokens x my heads (one collective for q, k and v)
        qkv = SeqAllToAll4D.apply(group, torch.cat([vq, vk, vv], dim=0).contiguous(), 2, 1)
        padded = qkv.shape[1]
        q, k, v = qkv[:, :total].chunk(3, dim=0)  # the padding's keys and queries are dropped here
        text_len = 0
        if tq is not None:  # every rank holds all text: take my heads and put them in front, as one process would
            text_len = tq.shape[1]
            per = tq.shape[2] // size
            mine = slice(rank * per, (rank + 1) * per)
            q = torch.cat([tq[:, :, mine], q], dim=1)
            k = torch.cat([tk[:, :, mine], k], dim=1)
            v = torch.cat([tv[:, :, mine], v], dim=1)
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=0.0, is_causal=False
        ).transpose(1, 2)  # [B, text + all video, my heads, D]
        text_out, video_out = out[:, :text_len], out[:, text_len:]
        if padded > total:
            pad = video_out.new_zeros(video_out.shape[0], padded - total, *video_out.shape[2:])
            video_out = torch.cat([video_out, pad], dim=1)
        video_out = SeqAllToAll4D.apply(group, video_out.contiguous(), 1, 2)  # back to my tokens x all heads
        if tq is None:
            return None, video_out
        text_parts = [torch.empty_like(text_out) for _ in range(size)]
        dist.all_gather(text_parts, text_out.contiguous(), group=group)
        return torch.cat(text_parts, dim=2), video_out

    return attention
