"""The xDiT (xfuser) backend: USP attention (Ulysses x ring) and CFG parallel on GPU ranks.

Imported only on CUDA ranks, and only when the optional `gpu` extra (xfuser) is installed;
otherwise raypipe's own Ulysses path runs (raypipe/parallel/ulysses.py). The model wiring is
the same as the Ulysses path (video rows sharded, text replicated, see ulysses.py); only the
process groups and the attention kernel come from xDiT: xFuserLongContextAttention with the
text tokens as a replicated "joint" tensor in front (joint_strategy="front"), which is how
xDiT keeps text intact under sequence parallelism.

Untested in this repository's CI (no GPU there); written against xfuser 0.7.0.
"""

from __future__ import annotations

import torch

from raypipe.parallel.ulysses import SPContext


def available() -> bool:
    """xfuser importable and a GPU present (its attention kernels are CUDA-only)."""
    if not torch.cuda.is_available():
        return False
    try:
        import xfuser  # noqa: F401
    except ImportError:
        return False
    return True


def init(
    rank: int, world_size: int, init_method: str, sp_degree: int, ring_degree: int, cfg_degree: int, timeout
) -> SPContext:
    """Initialise xDiT's distributed state (NCCL) for this rank and return its context.

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

    if not torch.distributed.is_initialized():
        # our own init first, for its timeout (xDiT's leaves torch's default)
        torch.cuda.set_device(0)  # Ray gives each rank one GPU: it is cuda:0 in the rank's process
        torch.distributed.init_process_group(
            "nccl", init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
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
        cfg_rank=get_classifier_free_guidance_rank(),
        cfg_size=get_classifier_free_guidance_world_size(),
        cfg_group=get_cfg_group().device_group,
        backend=f"xdit (ulysses {sp_degree // ring_degree} x ring {ring_degree})",
    )
    ctx.attention = _usp_attention()
    return ctx


def _usp_attention():
    from xfuser.core.long_ctx_attention import xFuserLongContextAttention
    from yunchang.kernels import AttnType

    try:
        import flash_attn  # noqa: F401

        attn_type = AttnType.FA
    except ImportError:
        attn_type = AttnType.TORCH_EFFICIENT
    usp = xFuserLongContextAttention(attn_type=attn_type)

    def attention(tq, tk, tv, vq, vk, vv):
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
