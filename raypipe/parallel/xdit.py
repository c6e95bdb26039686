"""The xDiT (xfuser) backend: USP attention (Ulysses x ring) and CFG parallel on GPU ranks.

Chosen by context.join when sp.backend is "xdit", or "auto" where xfuser is installed; any
failure to import or initialise xfuser falls back to raypipe's own Ulysses (ulysses.py) under
"auto" and fails the row under "xdit", saying why. The model wiring is the same as the Ulysses
path (video tokens sharded, text replicated: see hooks.py and the families' parallel.py); only
the process groups and the attention kernel come from xDiT: xFuserLongContextAttention with the
text tokens as a replicated "joint" tensor in front (joint_strategy="front"), which is how xDiT
keeps text intact under sequence parallelism. A call whose video tokens were padded to a multiple
of the degree runs raypipe's Ulysses attention over xDiT's group instead, as xDiT's attention
cannot leave the padded keys out.

Untested in this repository's CI (no GPU there); written against xfuser 0.7.0.
"""

from __future__ import annotations

from raypipe.parallel.context import SPContext, error_line


def unusable(on_cuda: bool) -> str | None:
    """Why xDiT cannot run in this process, or None when it can: xfuser's parts must import (any
    error counts: xfuser raises more than ImportError without a GPU) and the rank must be on CUDA."""
    try:
        from xfuser.core.distributed import init_distributed_environment  # noqa: F401
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention  # noqa: F401
    except Exception as err:  # noqa: BLE001 - the reason goes into the row's sp_backend
        return f"xfuser failed to import: {error_line(err)}"
    if not on_cuda:
        return "xfuser needs CUDA ranks (device is not cuda)"
    return None


def init(rank: int, world_size: int, init_method: str, sp_degree: int, ring_degree: int, cfg_degree: int) -> SPContext:
    """Initialise xDiT's distributed state for this rank (torch's process group is already up:
    context.join) and return its context.

    Rank order follows xDiT's "tp-sp-pp-cfg-dp": the sp ranks of one CFG branch are consecutive,
    the same grid as the Ulysses backend (rank = cfg_rank * sp_degree + sp_rank)."""
    from xfuser.core.distributed import (
        get_cfg_group,
        get_classifier_free_guidance_rank,
        get_classifier_free_guidance_world_size,
        get_sequence_parallel_rank,
        get_sequence_parallel_world_size,
        get_sp_group,
        init_distributed_environment,
        initialize_model_parallel,
    )

    init_distributed_environment(
        world_size=world_size, rank=rank, distributed_init_method=init_method, local_rank=0, backend="nccl"
    )
    initialize_model_parallel(
        classifier_free_guidance_degree=cfg_degree,
        sequence_parallel_degree=sp_degree,
        ulysses_degree=sp_degree // ring_degree,
        ring_degree=ring_degree,
    )
    ctx = SPContext(
        sp_rank=get_sequence_parallel_rank(),
        sp_size=get_sequence_parallel_world_size(),
        sp_group=get_sp_group().device_group,
        rank=rank,
        cfg_rank=get_classifier_free_guidance_rank(),
        cfg_size=get_classifier_free_guidance_world_size(),
        cfg_group=get_cfg_group().device_group,
        backend=f"xdit (ulysses {sp_degree // ring_degree} x ring {ring_degree})",
    )
    ctx.attention = _usp_attention(ctx)
    return ctx


def _usp_attention(ctx: SPContext):
    from xfuser.core.long_ctx_attention import xFuserLongContextAttention
    from yunchang.kernels import AttnType

    from raypipe.parallel.ulysses import ulysses_attention

    try:
        import flash_attn  # noqa: F401

        attn_type = AttnType.FA
    except ImportError:
        attn_type = AttnType.TORCH_EFFICIENT
    usp = xFuserLongContextAttention(attn_type=attn_type)
    padded_fallback = ulysses_attention(ctx)

    def attention(tq, tk, tv, vq, vk, vv):
        if ctx.layout is not None and ctx.layout.padded != ctx.layout.total:
            return padded_fallback(tq, tk, tv, vq, vk, vv)
        if tq is None:  # no text in this attention (Wan's self-attention)
            return None, usp(None, vq.contiguous(), vk.contiguous(), vv.contiguous(), joint_strategy="none")
        text_len = tq.shape[1]
        out = usp(
            None,
            vq.contiguous(),
            vk.contiguous(),
            vv.contiguous(),
            joint_tensor_query=tq.contiguous(),
            joint_tensor_key=tk.contiguous(),
            joint_tensor_value=tv.contiguous(),
            joint_strategy="front",
        )
        return out[:, :text_len], out[:, text_len:]

    return attention
