"""Sequence parallelism attached to a rank's transformer as named diffusers hooks.

A rank's stage (built with its SPContext: raypipe/stage.py) wires each pipeline it loads with
`enable_sequence_parallel`: the family's wiring (raypipe/families/<kind>/parallel.py:parallelize)
sets the attention processors with diffusers' own `set_attn_processor` and registers ModelHooks
(diffusers.hooks.HookRegistry) under stable names, so they can be found and removed:

    registry = HookRegistry.check_if_exists_or_initialize(pipe.transformer)
    registry.get_hook("raypipe_sp_shard")      # the hook, or None where the transformer is not wired
    disable_sequence_parallel(pipe.transformer)  # every raypipe_sp_* hook removed, processors restored

- raypipe_sp_shard (the transformer): the CFG half of the batch on CFG-parallel gangs (and the
  halves gathered after), the timestep agreed across the gang, inputs indexed by token (rotary
  tables) sharded; restores the attention processors when removed;
- raypipe_sp_tokens (where the video tokens enter: CogVideoX's patch_embed): this rank's shard;
- raypipe_sp_rope (Wan's rotary module): this rank's rows of the rotary tables;
- raypipe_sp_gather (where the tokens leave: proj_out): all tokens back, padding dropped;
- raypipe_sp_rank_stats (the transformer): when the denoising loop ended, and the peak memory.

Step caches under a gang (raypipe/families/options.py): first-block cache decides per call
whether to skip the remaining blocks from a measure of the first block's output; each rank holds
only its tokens, so the measure is summed over the whole gang (padding left out) before deciding,
or the ranks would take different branches and wait for each other forever in their collectives.
Pyramid attention broadcast decides from the timestep and a call count, the same on every rank;
the timestep it reads is the one agreed here (rank 0's).
"""

from __future__ import annotations

import inspect
from importlib import import_module
from typing import Any

import torch
import torch.distributed as dist
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK, FBCHeadBlockHook

from raypipe.parallel.context import SPContext, TokenLayout
from raypipe.parallel.ulysses import check_heads, gather_batch, gather_tokens, shard_tokens

SHARD = "raypipe_sp_shard"
TOKENS = "raypipe_sp_tokens"
ROPE = "raypipe_sp_rope"
GATHER = "raypipe_sp_gather"
STATS = "raypipe_sp_rank_stats"
HOOK_NAMES = (SHARD, TOKENS, ROPE, GATHER, STATS)


def _shard_each(value: Any, ctx: SPContext, dim: int) -> Any:
    """This rank's shard of a tensor (or of each tensor of a tuple) indexed by token along `dim`."""
    if isinstance(value, tuple | list):
        return type(value)(_shard_each(v, ctx, dim) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    return shard_tokens(value, TokenLayout(value.shape[dim], ctx.sp_size), ctx.sp_rank, dim)


class TransformerShardHook(ModelHook):
    """On the transformer. batch_inputs: the forward's arguments split in CFG halves on a
    CFG-parallel gang; token_inputs: arguments indexed by token (name -> token dim), sharded."""

    def __init__(self, ctx: SPContext, batch_inputs: tuple[str, ...] = (), token_inputs: dict[str, int] | None = None):
        super().__init__()
        self.ctx, self.batch_inputs, self.token_inputs = ctx, batch_inputs, dict(token_inputs or {})
        self.parameters: list[str] = []
        self.processors: dict[str, Any] = {}

    def initialize_hook(self, module):
        self.parameters = list(inspect.signature(type(module).forward).parameters)[1:]
        self.processors = dict(module.attn_processors)  # before the wiring sets its own
        return module

    def deinitalize_hook(self, module):  # diffusers' spelling
        module.set_attn_processor(self.processors)
        return module

    def pre_forward(self, module, *args, **kwargs):
        ctx = self.ctx
        kwargs.update(zip(self.parameters, args))  # the pipelines call with keywords; positional too
        timestep = kwargs.get("timestep")
        if isinstance(timestep, torch.Tensor) and ctx.world_size > 1:
            timestep = timestep.contiguous().clone()
            dist.broadcast(timestep, src=0)  # rank 0's: what step caches decide from is the gang's
            kwargs["timestep"] = timestep
        if ctx.cfg_size > 1:
            batch = kwargs["hidden_states"].shape[0]
            if batch % ctx.cfg_size:
                raise ValueError(
                    f"sp.cfg_parallel: needs classifier-free guidance (guidance_scale > 1): the batch of "
                    f"{batch} cannot be split in {ctx.cfg_size}"
                )
            for name in self.batch_inputs:
                value = kwargs.get(name)
                if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
                    kwargs[name] = value.chunk(ctx.cfg_size, dim=0)[ctx.cfg_rank]
        for name, dim in self.token_inputs.items():
            if kwargs.get(name) is not None:
                kwargs[name] = _shard_each(kwargs[name], ctx, dim)
        return (), kwargs

    def post_forward(self, module, output):
        ctx = self.ctx
        if ctx.cfg_size == 1:
            return output
        if isinstance(output, tuple):
            return (gather_batch(output[0], ctx.cfg_group, ctx.cfg_size), *output[1:])
        output.sample = gather_batch(output.sample, ctx.cfg_group, ctx.cfg_size)
        return output


class ShardTokensHook(ModelHook):
    """On the module whose output is the token sequence [B, front + video tokens, ...]: keeps the
    first `front(args, kwargs)` tokens (text, replicated on every rank) and this rank's shard of the
    video tokens, and sets the call's TokenLayout on the context."""

    def __init__(self, ctx: SPContext, front=None):
        super().__init__()
        self.ctx, self.front = ctx, front
        self.front_len = 0

    def pre_forward(self, module, *args, **kwargs):
        self.front_len = self.front(args, kwargs) if self.front is not None else 0
        return args, kwargs

    def post_forward(self, module, output):
        ctx, front = self.ctx, self.front_len
        ctx.layout = TokenLayout(output.shape[1] - front, ctx.sp_size)
        video = shard_tokens(output[:, front:], ctx.layout, ctx.sp_rank)
        return torch.cat([output[:, :front], video], dim=1) if front else video


class ShardOutputHook(ModelHook):
    """On a module whose output is indexed by token along `dim` (Wan's rotary tables): this rank's shard."""

    def __init__(self, ctx: SPContext, dim: int):
        super().__init__()
        self.ctx, self.dim = ctx, dim

    def post_forward(self, module, output):
        return _shard_each(output, self.ctx, self.dim)


class GatherTokensHook(ModelHook):
    """On the module whose output is the per-token prediction: every rank gets all tokens back."""

    def __init__(self, ctx: SPContext):
        super().__init__()
        self.ctx = ctx

    def post_forward(self, module, output):
        return gather_tokens(output, self.ctx.layout, self.ctx.sp_group)


class RankStatsHook(ModelHook):
    """On the transformer: after each call, the time and peak memory so far; after the last call
    of a row that is the end of its denoising loop (the gang reads ctx.stats)."""

    def __init__(self, ctx: SPContext):
        super().__init__()
        self.ctx = ctx

    def post_forward(self, module, output):
        self.ctx.stats.mark()
        return output


class GangFirstBlockCacheHook(FBCHeadBlockHook):
    """diffusers' first-block-cache decision taken by the whole gang: the mean change of the first
    block's residual over every rank's real tokens (sums all-reduced; padding left out), so every
    rank skips or computes the remaining blocks together, as one process would decide."""

    def __init__(self, state_manager, threshold: float, ctx: SPContext):
        super().__init__(state_manager, threshold)
        self.ctx = ctx

    @torch.compiler.disable
    def _should_compute_remaining_blocks(self, hidden_states_residual: torch.Tensor) -> bool:
        previous = self.state_manager.get_state().head_block_residual
        if previous is None:
            return True
        valid = self.ctx.valid_tokens()
        change = (hidden_states_residual - previous)[:, :valid].double().abs().sum()
        sums = torch.stack([change, previous[:, :valid].double().abs().sum()])
        dist.all_reduce(sums)  # the whole gang (both CFG halves too): the same numbers on every rank
        return (sums[0] / sums[1]).item() > self.threshold


def _swap_first_block_cache(transformer, make) -> None:
    """Replace each first-block-cache decision hook under `transformer` by make(old), same name."""
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        old = registry.get_hook(_FBC_LEADER_BLOCK_HOOK) if registry is not None else None
        if old is not None:
            registry.remove_hook(_FBC_LEADER_BLOCK_HOOK, recurse=False)
            registry.register_hook(make(old), _FBC_LEADER_BLOCK_HOOK)


def enable_sequence_parallel(pipe, ctx: SPContext, wiring: str) -> None:
    """Wire `pipe`'s transformer for this rank: wiring is "module:function", the family's
    parallelize(transformer, ctx). A transformer already wired (a pipeline built from another's
    modules, e.g. CogVideoX v2v) is left as it is."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is None:
        raise TypeError(f"sequence parallelism: {type(pipe).__name__} has no transformer to shard")
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    if registry.get_hook(SHARD) is not None:
        return
    check_heads(transformer.config.num_attention_heads, ctx.sp_size)
    module, _, function = wiring.partition(":")
    getattr(import_module(module), function)(transformer, ctx)
    if ctx.world_size > 1:
        _swap_first_block_cache(transformer, lambda old: GangFirstBlockCacheHook(old.state_manager, old.threshold, ctx))
    registry.register_hook(RankStatsHook(ctx), STATS)
    registry.invalidate_child_registries_cache()


def disable_sequence_parallel(transformer) -> None:
    """Remove every raypipe_sp_* hook from `transformer` and its modules, restoring its attention
    processors and diffusers' own first-block-cache decision."""
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    for name in HOOK_NAMES:
        registry.remove_hook(name, recurse=True)
    _swap_first_block_cache(transformer, lambda old: FBCHeadBlockHook(old.state_manager, old.threshold))
    registry.invalidate_child_registries_cache()


def register(module, hook: ModelHook, name: str) -> None:
    """Register `hook` on `module` under `name` (the families' wirings use it)."""
    HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)
