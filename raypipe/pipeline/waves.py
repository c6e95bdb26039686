"""What each pool holds, and which pools run at the same time.

A pool is a kind's (its actors load the model and hold the kind's GPUs) or, for rows with
sp_degree N > 1, the kind's pool of gangs "<kind>/sp<N>": its actors ask for CPU only and load
no model; each drives one gang of N ranks (2N with CFG parallel), which holds the GPUs. So an
SP-N row holds exactly its gang's GPUs.
"""

from __future__ import annotations

import logging
from typing import Any

from raypipe.config import KindConfig, RunConfig
from raypipe.parallel.validate import gang_ranks, rank_resources
from raypipe.pipeline.records import split_route

log = logging.getLogger("raypipe")


def pool_actor_resources(route: str, kc: KindConfig, stage_path: str, config: RunConfig) -> dict[str, Any]:
    """Ray resources of one actor of the pool (map_batches arguments)."""
    from raypipe.families import stage_class

    if split_route(route)[1] > 1:  # drives a gang: CPU as a CPU stage's, no GPU, none of the kind's resources
        return {"num_cpus": config.cpu_stage_num_cpus}
    return stage_class(stage_path).ray_resources(kc)


def pool_sizes(route: str, kc: KindConfig, rows: int) -> tuple[int, int]:
    """(min, max) actors of the pool for `rows` rows: the kind's pool_size..max_pool_size, or for a
    pool of gangs sp.pool_size..sp.max_pool_size (gangs at once)."""
    low, high = (
        (kc.sp.pool_size, kc.sp.max_pool_size) if split_route(route)[1] > 1 else (kc.pool_size, kc.max_pool_size)
    )
    size = min(low, rows)
    return size, max(size, min(high or size, rows))


def actor_holds(route: str, kc: KindConfig, stage_path: str, config: RunConfig) -> dict[str, float]:
    """What one actor of the pool holds while it works, in Ray's names: its own resources, and for
    a pool of gangs its gang's (the ranks' bundles)."""
    args = pool_actor_resources(route, kc, stage_path, config)
    holds = {"CPU": args.get("num_cpus", 0), "GPU": args.get("num_gpus", 0), "memory": args.get("memory", 0)}
    for name, amount in (args.get("resources") or {}).items():
        holds[name] = amount
    degree = split_route(route)[1]
    if degree > 1:
        for name, amount in rank_resources(kc).items():
            holds[name] = holds.get(name, 0.0) + amount * gang_ranks(degree, kc)
    return {name: amount for name, amount in holds.items() if amount}


def pool_needs(route: str, kc: KindConfig, rows: int, stage_path: str, config: RunConfig) -> dict[str, float]:
    """The Ray resources a pool holds once its min_size actors run."""
    size = pool_sizes(route, kc, rows)[0]
    return {name: amount * size for name, amount in actor_holds(route, kc, stage_path, config).items()}


def pool_waves(
    pools: list[str], routes: dict[str, int], config: RunConfig, stage_paths: dict[str, str], capacity: dict[str, float]
) -> list[list[str]]:
    """Pools (routes: a kind, or "<kind>/sp<N>") that run at the same time, in order. A pool's actors
    hold their resources for the whole execution: pools that together leave no CPU for the CPU
    stages would stall it (two 1-CPU pools on a 2-CPU laptop). Such pools run in waves, one
    streaming execution each; on a cluster with room for every pool (capacity:
    ray.cluster_resources()) there is one wave. A pool that does not fit even alone gets a wave of
    its own (an autoscaler may add nodes). stage_paths: by kind."""
    # Room beside the pools for the CPU stages: a task or two, and the block splitting before
    # each pool (Ray Data's StreamingRepartition, whose tasks take a whole CPU).
    cpu_stages = max(1.0, 2 * config.cpu_stage_num_cpus)
    waves: list[list[str]] = []
    free: dict[str, float] = {}
    for pool in pools:
        kind = split_route(pool)[0]
        needs = pool_needs(pool, config.kinds[kind], routes[pool], stage_paths[kind], config)
        if waves and all(free.get(name, 0.0) >= amount for name, amount in needs.items()):
            waves[-1].append(pool)
        else:
            waves.append([pool])
            free = {name: capacity.get(name, 0.0) for name in capacity}
            free["CPU"] = free.get("CPU", 0.0) - cpu_stages
        for name, amount in needs.items():
            free[name] = free.get(name, 0.0) - amount
        if len(waves[-1]) == 1 and any(free.get(name, 0.0) < 0 for name in needs):
            log.warning(
                "raypipe: the %s pool needs %s, more than the cluster has beside a CPU for the CPU "
                "stages (%s); it waits for resources (an autoscaler) or stalls",
                pool,
                needs,
                capacity,
            )
    return waves
