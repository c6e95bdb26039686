"""Checks of a sequence-parallel row, before any model runs (validation rejects the row).

The schema checks what a row alone can tell; these checks also need the run config, the
model's own config (its attention heads) and the cluster's node sizes,
so the runner calls them in its validation tasks. Each raises ValueError("field: problem").
These are the mistakes xDiT users hit (xDiT #265, #358, #492): a degree that does not divide
the heads, forgetting that CFG parallel doubles the GPUs, and a gang that no node can hold.
(The token count needs no check: the video tokens are padded to a multiple of the degree.)
No torch here: validation runs on light CPU workers.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from raypipe.config import KindConfig, RunConfig


@dataclass(frozen=True)
class TransformerShape:
    """What sequence parallelism needs to know about a model."""

    heads: int | None  # None: unknown here (checked again on the ranks)


@lru_cache(maxsize=64)
def transformer_shape(model: str) -> TransformerShape:
    """The attention heads of `model`'s transformer, from its config.json (a `tiny:` model is
    built on first use, as the stage would)."""
    from raypipe.models.weights import read_model_config

    transformer = read_model_config(model, "transformer/config.json") or {}
    return TransformerShape(heads=transformer.get("num_attention_heads"))


def row_model(row: Any, kind_config: KindConfig) -> str:
    """The model a row runs on: its own `model`, else the config's for its mode (the family's rule)."""
    from raypipe.families import family

    return family(row.kind).model_of(row, kind_config)


def gang_ranks(sp_degree: int, kind_config: KindConfig) -> int:
    """Rank actors a row of this degree needs: CFG parallel doubles them."""
    return sp_degree * (2 if kind_config.sp.cfg_parallel else 1)


def rank_resources(kind_config: KindConfig) -> dict[str, float]:
    """One rank actor's bundle in the gang's placement group, in Ray's resource names. A rank
    holds a whole model as a pool actor does, so it carries the kind's memory, custom resources
    (the kind's node group: raypipe_<kind> in configs/kuberay.yaml) and accelerator type."""
    sp = kind_config.sp
    gpus = sp.rank_num_gpus if sp.rank_num_gpus is not None else kind_config.num_gpus
    if kind_config.device.startswith("cuda"):
        gpus = max(gpus, 1.0)  # NCCL and xDiT want a whole GPU per rank
    cpus = sp.rank_num_cpus if sp.rank_num_cpus is not None else kind_config.num_cpus
    bundle = {"CPU": float(cpus)}
    if gpus:
        bundle["GPU"] = float(gpus)
    if kind_config.memory_gb:
        bundle["memory"] = float(int(kind_config.memory_gb * 2**30))
    bundle.update({name: float(amount) for name, amount in kind_config.resources.items()})
    if kind_config.accelerator_type:  # what Ray's accelerator_type option asks of a node
        bundle[f"{ACCELERATOR_PREFIX}{kind_config.accelerator_type}"] = ACCELERATOR_AMOUNT
    return bundle


# Ray's accelerator_type option is a request for this much of the node resource "accelerator_type:<type>".
ACCELERATOR_PREFIX, ACCELERATOR_AMOUNT = "accelerator_type:", 0.001


def gang_gpus(sp_degree: int, kind_config: KindConfig) -> float:
    """GPUs a gang of this degree holds (its ranks'; the actor driving it holds none)."""
    return gang_ranks(sp_degree, kind_config) * rank_resources(kind_config).get("GPU", 0.0)


_nodes_cache: tuple[float, list[dict[str, float]]] | None = None
NODES_CACHE_S = 10.0  # one cluster query per validation worker every few seconds, not one per row


def alive_node_resources() -> list[dict[str, float]] | None:
    """Total resources of each alive Ray node, or None when Ray is not running here."""
    global _nodes_cache
    if _nodes_cache is not None and time.monotonic() - _nodes_cache[0] < NODES_CACHE_S:
        return _nodes_cache[1]
    try:
        import ray

        if not ray.is_initialized():
            return None
        nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    except Exception:  # noqa: BLE001 - no cluster view: the gang's own placement reports it
        return None
    _nodes_cache = (time.monotonic(), nodes)
    return nodes


# A node group counts at most this many times (enough for any gang; an autoscaler group may be unbounded).
MAX_GROUP_NODES = 16


def autoscaler_node_resources() -> list[dict[str, float]]:
    """One entry per node the cluster's autoscaler may add (its node groups up to max_count; Ray's
    cluster config, written by the autoscaler: KubeRay's GPU groups start at 0 pods), else []."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler, or an older Ray
        return []
    nodes = []
    for group in getattr(config, "node_group_configs", None) or []:
        count = MAX_GROUP_NODES if group.max_count < 0 else min(group.max_count, MAX_GROUP_NODES)
        nodes += [{name: float(amount) for name, amount in group.resources.items()}] * count
    return nodes


@dataclass(frozen=True)
class GangNodes:
    """The nodes a gang must fit at validation, and what they are (said in rejections)."""

    nodes: list[dict[str, float]]
    source: str


def gang_nodes(config: RunConfig, joined: bool) -> tuple[GangNodes | None, str]:
    """What the gang-fits check of a pass uses, read once on the driver, and a line saying so.

    joined (a run, or --address / RAY_ADDRESS): the cluster this process is connected to, its
    alive nodes and the nodes it may add: its autoscaler's node groups (Ray's cluster config, where
    the autoscaler reports one) and the config's `cluster` (KubeRay's GPU groups start at 0 pods).
    Otherwise (`raypipe validate` / `plan` on a laptop, in a Ray started for the pass) never the
    machine's own size: the config's `cluster` if it has one, else no check (None) and a note."""
    declared = [group.ray_resources() for group in config.cluster for _ in range(group.count)]
    if joined:
        alive, more = alive_node_resources(), autoscaler_node_resources()
        if alive is None:
            return None, f"{SP_ROWS}gang size not checked: cannot read the cluster's nodes"
        source = "alive nodes" + (", nodes the autoscaler may add" if more else "")
        source += ", nodes of the config's `cluster`" if declared else ""
        said = f"gang size checked against the cluster's {len(alive)} alive nodes"
        said += f", {len(more)} its autoscaler may add" if more else ""
        said += f", the config's `cluster` ({len(declared)} nodes)" if declared else ""
        return GangNodes(alive + more + declared, source), SP_ROWS + said
    if declared:
        said = (
            f"gang size checked against the config's `cluster` ({len(declared)} nodes); --address checks a running one"
        )
        return GangNodes(declared, "nodes of the config's `cluster`"), SP_ROWS + said
    return (
        None,
        SP_ROWS
        + "gang size not checked: no cluster given; pass --address (or describe it as `cluster:` in the config)",
    )


SP_ROWS = "sequence-parallel rows: "


def _fmt(x: float) -> str:
    return f"{x:g}"


def _num(resource: str, x: float) -> str:
    return _fmt(round(x / 2**30, 2)) if resource == "memory" else _fmt(x)  # Ray counts memory in bytes


def resource_amount(resource: str, x: float) -> str:
    """E.g. "2 GPU", "80 GiB memory", "1 raypipe_cogvideox"."""
    return f"{_num(resource, x)} GiB memory" if resource == "memory" else f"{_fmt(x)} {resource}"


def _listed(resource: str, have: list[float], limit: int = 8) -> str:
    """Each node's amount, largest first (Ray lists nodes in no set order); past `limit` nodes, how
    many nodes have each amount ("6 x 4, 40 x 1")."""
    if len(have) <= limit:
        return ", ".join(_num(resource, h) for h in sorted(have, reverse=True)) or "none"
    return ", ".join(f"{n} x {_num(resource, h)}" for h, n in sorted(Counter(have).items(), reverse=True))


def check_gang_fits(
    sp_degree: int, kind_config: KindConfig, nodes: list[dict[str, float]], source: str = "alive nodes"
) -> None:
    """A gang larger than any node (STRICT_PACK) or than the cluster is refused, with numbers.
    source: what `nodes` are, for the message."""
    ranks = gang_ranks(sp_degree, kind_config)
    bundle = rank_resources(kind_config)
    strategy = kind_config.sp.placement_strategy
    cfg = " (x2 for CFG parallel)" if kind_config.sp.cfg_parallel else ""
    gang = f"a gang of {ranks} ranks{cfg}"
    for resource, per_rank in bundle.items():
        need = per_rank * ranks
        have = [node.get(resource, 0.0) for node in nodes]
        if strategy == "STRICT_PACK":
            if not have or max(have) + 1e-9 < need:
                each, largest = resource_amount(resource, per_rank), resource_amount(resource, max(have, default=0))
                raise ValueError(
                    f"sp_degree: {gang} x {each} needs {resource_amount(resource, need)} "
                    f"on one node (placement STRICT_PACK), but the largest node has {largest} "
                    f"({source}: {_listed(resource, have)})"
                )
        elif sum(have) + 1e-9 < need:
            raise ValueError(
                f"sp_degree: {gang} x {resource_amount(resource, per_rank)} needs {resource_amount(resource, need)}, "
                f"but the cluster has {resource_amount(resource, sum(have))} ({source})"
            )
        if strategy == "STRICT_SPREAD" and sum(1 for h in have if h + 1e-9 >= per_rank) < ranks:
            raise ValueError(
                f"sp_degree: a gang of {ranks} ranks on distinct nodes (STRICT_SPREAD) needs {ranks} "
                f"nodes with {resource_amount(resource, per_rank)}, the cluster has {len(have)} nodes ({source})"
            )
    whole = {resource: per_rank * ranks for resource, per_rank in bundle.items()}
    if strategy == "STRICT_PACK" and not any(
        all(node.get(resource, 0.0) + 1e-9 >= need for resource, need in whole.items()) for node in nodes
    ):  # each resource fits some node, but none holds all of them (GPUs here, the kind's resource there)
        needs = ", ".join(resource_amount(resource, need) for resource, need in whole.items())
        raise ValueError(
            f"sp_degree: {gang} needs {needs} on one node (placement STRICT_PACK), but no node has all of it "
            f"(among {len(nodes)} {source})"
        )


def check_sequence_parallel(
    row: Any,
    kind_config: KindConfig,
    nodes: list[dict[str, float]] | None = None,
    check_nodes: bool = True,
    source: str = "alive nodes",
) -> None:
    """Raise ValueError("field: problem") if `row` cannot run sequence-parallel as configured.

    nodes: the nodes' resources (a pass reads them once: gang_nodes); read from the Ray running
    here when None (skipped without Ray). check_nodes=False: no gang-fits check. source: what the
    nodes are, for the message."""
    sp_degree = int(getattr(row, "sp_degree", 1) or 1)
    if sp_degree <= 1:
        return
    from raypipe.families import family

    if not family(row.kind).sequence_parallel:
        raise ValueError(f"sp_degree: kind {row.kind} does not run sequence parallel")
    sp = kind_config.sp
    if sp_degree % sp.ring_degree:
        raise ValueError(
            f"sp_degree: must be a multiple of the config's sp.ring_degree {sp.ring_degree}, got {sp_degree}"
        )
    if sp.cfg_parallel and row.guidance_scale is not None and row.guidance_scale <= 1.0:
        raise ValueError(
            f"guidance_scale: CFG parallel (sp.cfg_parallel) splits the two CFG branches and needs "
            f"guidance_scale > 1, got {row.guidance_scale:g}"
        )
    for model in [row_model(row, kind_config)]:
        shape = transformer_shape(model)
        if shape.heads is not None and shape.heads % sp_degree:
            raise ValueError(f"sp_degree: must divide the {shape.heads} attention heads of {model}, got {sp_degree}")
    if check_nodes:
        nodes = alive_node_resources() if nodes is None else nodes
        if nodes is not None:
            check_gang_fits(sp_degree, kind_config, nodes, source)
