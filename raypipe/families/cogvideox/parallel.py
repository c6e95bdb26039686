"""Sequence parallelism for CogVideoX (CogVideoXTransformer3DModel; also ExVideo's base cogvideox).

CogVideoX's blocks run joint attention over [text tokens, video tokens], with the text tokens in
front. A rank holds all text tokens and its shard of the video tokens (raypipe/parallel/ulysses.py);
the hooks (raypipe/parallel/hooks.py) put the shard in place:

- raypipe_sp_shard on the transformer: the CFG half of the batch, and this rank's rows of the RoPE
  tables (`image_rotary_emb`, one row per video token) when the model has them (5B, 1.5, I2V);
- raypipe_sp_tokens on patch_embed: its output is [text, video] tokens: all text, my video shard;
- the attention processor: the joint attention across the gang;
- raypipe_sp_gather on proj_out: all video tokens back, so unpatchify sees the whole video.

Nothing here depends on the pipeline (t2v, i2v, v2v and LoRAs run the same) or on the frame
and patch grid: any token count works, padded to a multiple of the degree.
"""

from __future__ import annotations

import torch

from raypipe.parallel import hooks
from raypipe.parallel.context import SPContext
from raypipe.parallel.ulysses import ulysses_attention


class SequenceParallelCogVideoXAttnProcessor:
    """CogVideoXAttnProcessor2_0 with the attention itself spread over the gang.

    hidden_states are this rank's video tokens, encoder_hidden_states all text tokens, and
    image_rotary_emb (if any) this rank's rows of the RoPE table."""

    def __init__(self, attention):
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


def _text_len(args, kwargs) -> int:
    """CogVideoXPatchEmbed(text_embeds, image_embeds): the text tokens come first in its output."""
    text = args[0] if args else kwargs["text_embeds"]
    return text.shape[1]


def parallelize(transformer, ctx: SPContext) -> None:
    """Wire a CogVideoXTransformer3DModel for this rank (raypipe/parallel/hooks.py names the hooks)."""
    from diffusers import CogVideoXTransformer3DModel

    if not isinstance(transformer, CogVideoXTransformer3DModel):
        raise TypeError(f"sequence parallelism: needs a CogVideoXTransformer3DModel, got {type(transformer).__name__}")
    if ctx.attention is None:
        ctx.attention = ulysses_attention(ctx)
    # first, so that it keeps the processors it restores when removed
    hooks.register(
        transformer,
        hooks.TransformerShardHook(
            ctx,
            batch_inputs=("hidden_states", "encoder_hidden_states", "timestep", "timestep_cond", "ofs"),
            token_inputs={"image_rotary_emb": 0},  # (cos, sin), each [video tokens, head_dim]
        ),
        hooks.SHARD,
    )
    transformer.set_attn_processor(SequenceParallelCogVideoXAttnProcessor(ctx.attention))
    hooks.register(transformer.patch_embed, hooks.ShardTokensHook(ctx, front=_text_len), hooks.TOKENS)
    hooks.register(transformer.proj_out, hooks.GatherTokensHook(ctx), hooks.GATHER)
