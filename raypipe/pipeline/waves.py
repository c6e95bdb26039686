"""Which kinds' pools run at the same time."""

from __future__ import annotations

import logging

from raypipe.config import KindConfig, RunConfig

log = logging.getLogger("raypipe")


def pool_needs(kc: KindConfig, rows: int, stage_path: str) -> dict[str, float]:
    """The Ray resources a kind's pool holds once its min_size actors run."""
    from raypipe.families import stage_class

    args = stage_class(stage_path).ray_resources(kc)
    size = min(kc.pool_size, rows)
    needs = {
        "CPU": args.get("num_cpus", 0) * size,
        "GPU": args.get("num_gpus", 0) * size,
        "memory": args.get("memory", 0) * size,
    }
    for name, amount in (args.get("resources") or {}).items():
        needs[name] = amount * size
    return {name: amount for name, amount in needs.items() if amount}


def pool_waves(
    kinds: list[str], routes: dict[str, int], config: RunConfig, stage_paths: dict[str, str], capacity: dict[str, float]
) -> list[list[str]]:
    """Kinds whose pools run at the same time, in order. A pool's actors hold their resources for
    the whole execution: pools that together leave no CPU for the CPU stages would stall it
    (two 1-CPU pools on a 2-CPU laptop). Such kinds run in waves, one streaming execution each;
    on a cluster with room for every pool (capacity: ray.cluster_resources()) there is one wave.
    A kind that does not fit even alone gets a wave of its own (an autoscaler may add nodes)."""
    # Room beside the pools for the CPU stages: a task or two, and the block splitting before
    # each pool (Ray Data's StreamingRepartition, whose tasks take a whole CPU).
    cpu_stages = max(1.0, 2 * config.cpu_stage_num_cpus)
    waves: list[list[str]] = []
    free: dict[str, float] = {}
    for kind in kinds:
        needs = pool_needs(config.kinds[kind], routes[kind], stage_paths[kind])
        if waves and all(free.get(name, 0.0) >= amount for name, amount in needs.items()):
            waves[-1].append(kind)
        else:
            waves.append([kind])
            free = {name: capacity.get(name, 0.0) for name in capacity}
            free["CPU"] = free.get("CPU", 0.0) - cpu_stages
        for name, amount in needs.items():
            free[name] = free.get(name, 0.0) - amount
        if len(waves[-1]) == 1 and any(free.get(name, 0.0) < 0 for name in needs):
            log.warning(
                "raypipe: the %s pool needs %s, more than the cluster has beside a CPU for the CPU "
                "stages (%s); it waits for resources (an autoscaler) or stalls",
                kind,
                needs,
                capacity,
            )
    return waves
