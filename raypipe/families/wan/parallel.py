"""Sequence parallelism for Wan (WanTransformer3DModel: Wan 2.1, Wan 2.2 A14B).

Wan's self-attention runs over the video tokens only; the text (and the I2V image tokens) enter
by cross-attention, where each query needs only its own token: so only self-attention is spread
over the gang (Ulysses, raypipe/parallel/ulysses.py), and cross-attention, the feed-forward and
the norms run on the rank's shard as they are. The hooks (raypipe/parallel/hooks.py):

- raypipe_sp_shard on the transformer: the timestep agreed across the gang;
- raypipe_sp_tokens on patch_embedding: its output [B, C, frames, rows, columns] becomes this
  rank's shard of the flattened tokens [B, C, tokens/N] (the forward's flatten(2).transpose(1, 2)
  then gives [B, tokens/N, C]);
- raypipe_sp_rope on rope: this rank's rows of the 3D rotary tables (cos, sin: [1, tokens, 1, D]);
- the self-attention processors (attn1 of each block) through diffusers' set_attn_processor;
- raypipe_sp_gather on proj_out: all tokens back for unpatchify.

Not here: CFG parallel (Wan's pipelines run the two CFG branches as two transformer calls, not
one batch) and Wan 2.2 TI2V's per-token timesteps; both fail the row saying so.
"""

from __future__ import annotations

import torch

from raypipe.parallel import hooks
from raypipe.parallel.context import SPContext, TokenLayout
from raypipe.parallel.ulysses import shard_tokens, ulysses_attention


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on x [B, tokens, heads, D]: each pair of channels (2i, 2i+1) rotated
    by the angle whose cos / sin the tables hold at 2i / 2i+1 (diffusers' real-valued form)."""
    even, odd = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)


class SequenceParallelWanSelfAttnProcessor:
    """WanAttnProcessor for self-attention (attn1), with the attention spread over the gang:
    hidden_states and rotary_emb hold this rank's tokens."""

    def __init__(self, attention):
        self.attention = attention

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None or attention_mask is not None or getattr(attn, "fused_projections", False):
            raise NotImplementedError("sequence-parallel Wan self-attention: no context, mask or fused projections")
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        _, out = self.attention(None, None, None, query, key, value)
        out = out.flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


class WanShardHook(hooks.TransformerShardHook):
    def pre_forward(self, module, *args, **kwargs):
        args, kwargs = super().pre_forward(module, *args, **kwargs)
        if kwargs["timestep"].ndim == 2:
            raise NotImplementedError("sp_degree: Wan 2.2 TI2V's per-token timesteps do not run sequence parallel")
        return args, kwargs


class WanPatchTokensHook(hooks.ShardTokensHook):
    def post_forward(self, module, output):
        ctx = self.ctx
        tokens = output.flatten(2)  # [B, C, frames * rows * columns], the transformer's token order
        ctx.layout = TokenLayout(tokens.shape[2], ctx.sp_size)
        return shard_tokens(tokens, ctx.layout, ctx.sp_rank, dim=2)


def parallelize(transformer, ctx: SPContext) -> None:
    """Wire a WanTransformer3DModel for this rank (raypipe/parallel/hooks.py names the hooks)."""
    from diffusers import WanTransformer3DModel

    if not isinstance(transformer, WanTransformer3DModel):
        raise TypeError(f"sequence parallelism: needs a WanTransformer3DModel, got {type(transformer).__name__}")
    if ctx.cfg_size > 1:
        raise ValueError(
            "sp.cfg_parallel: Wan's pipelines run the two CFG branches as two transformer calls, "
            "not one batch: CFG parallel does not apply to kind wan"
        )
    if ctx.attention is None:
        ctx.attention = ulysses_attention(ctx)
    hooks.register(transformer, WanShardHook(ctx), hooks.SHARD)  # first: it keeps the processors it restores
    self_attention = SequenceParallelWanSelfAttnProcessor(ctx.attention)
    transformer.set_attn_processor(
        {
            name: self_attention if name.endswith("attn1.processor") else processor
            for name, processor in transformer.attn_processors.items()
        }
    )
    hooks.register(transformer.patch_embedding, WanPatchTokensHook(ctx), hooks.TOKENS)
    hooks.register(transformer.rope, hooks.ShardOutputHook(ctx, dim=1), hooks.ROPE)
    hooks.register(transformer.proj_out, hooks.GatherTokensHook(ctx), hooks.GATHER)
