"""Checks of a sequence-parallel row, before any model runs (validation rejects the row).

The schema checks what a row alone can tell; these checks also need the run config, the
model's own config files (heads, patch size, VAE compression) and the cluster's node sizes,
so the runner calls them in its validation tasks. Each raises ValueError("field: problem").
These are the mistakes xDiT users hit (xDiT #265, #358, #492): a degree that does not divide
the heads or the token rows, forgetting that CFG parallel doubles the GPUs, and a gang that
no node can hold. No torch here: validation runs on light CPU workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from raypipe.config import KindConfig

# CogVideoX (1.0 and 1.5, 2B and 5B): 8x spatial VAE, 2x2 patches. Used when a model's
# config files cannot be read here (a hub id that is not in the local cache).
DEFAULT_VAE_SCALE = 8
DEFAULT_PATCH_SIZE = 2


@dataclass(frozen=True)
class TransformerShape:
    """What sequence parallelism needs to know about a model."""

    heads: int | None  # None: unknown here (checked again on the ranks)
    patch_size: int = DEFAULT_PATCH_SIZE
    vae_scale: int = DEFAULT_VAE_SCALE


@lru_cache(maxsize=64)
def transformer_shape(model: str) -> TransformerShape:
    """Heads and patch size of `model`'s transformer, from its config.json (a `tiny:` model is
    built on first use, as the stage would)."""
    from raypipe.models.weights import read_model_config

    transformer = read_model_config(model, "transformer/config.json") or {}
    vae = read_model_config(model, "vae/config.json") or {}
    blocks = vae.get("block_out_channels")
    return TransformerShape(
        heads=transformer.get("num_attention_heads"),
        patch_size=int(transformer.get("patch_size") or DEFAULT_PATCH_SIZE),
        vae_scale=2 ** (len(blocks) - 1) if blocks else DEFAULT_VAE_SCALE,
    )


def row_model(row: Any, kind_config: KindConfig) -> str:
    """The model a row runs on: its own `model`, else the config's for its mode (the family's rule)."""
    from raypipe.families import family

    return family(row.kind).model_of(row, kind_config)


def gang_ranks(sp_degree: int, kind_config: KindConfig) -> int:
    """Rank actors a row of this degree needs: CFG parallel doubles them."""
    return sp_degree * (2 if kind_config.sp.cfg_parallel else 1)


def rank_resources(kind_config: KindConfig) -> dict[str, float]:
    """One rank actor's bundle in the gang's placement group."""
    sp = kind_config.sp
    gpus = sp.rank_num_gpus if sp.rank_num_gpus is not None else kind_config.num_gpus
    if kind_config.device.startswith("cuda"):
        gpus = max(gpus, 1.0)  # NCCL and xDiT want a whole GPU per rank
    cpus = sp.rank_num_cpus if sp.rank_num_cpus is not None else kind_config.num_cpus
    bundle = {"CPU": float(cpus)}
    if gpus:
        bundle["GPU"] = float(gpus)
    return bundle


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


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_gang_fits(sp_degree: int, kind_config: KindConfig, nodes: list[dict[str, float]]) -> None:
    """A gang larger than any node (STRICT_PACK) or than the cluster is refused, with numbers."""
    ranks = gang_ranks(sp_degree, kind_config)
    bundle = rank_resources(kind_config)
    strategy = kind_config.sp.placement_strategy
    cfg = " (x2 for CFG parallel)" if kind_config.sp.cfg_parallel else ""
    for resource, per_rank in bundle.items():
        need = per_rank * ranks
        have = [node.get(resource, 0.0) for node in nodes]
        if strategy == "STRICT_PACK":
            if not have or max(have) + 1e-9 < need:
                listed = ", ".join(_fmt(h) for h in have) or "none"
                raise ValueError(
                    f"sp_degree: a gang of {ranks} ranks{cfg} x {_fmt(per_rank)} {resource} needs {_fmt(need)} "
                    f"{resource} on one node (placement STRICT_PACK), but the largest node has "
                    f"{_fmt(max(have, default=0))} {resource} (alive nodes: {listed})"
                )
        elif sum(have) + 1e-9 < need:
            raise ValueError(
                f"sp_degree: a gang of {ranks} ranks{cfg} x {_fmt(per_rank)} {resource} needs {_fmt(need)} "
                f"{resource}, but the cluster has {_fmt(sum(have))} {resource}"
            )
        if strategy == "STRICT_SPREAD" and sum(1 for h in have if h + 1e-9 >= per_rank) < ranks:
            raise ValueError(
                f"sp_degree: a gang of {ranks} ranks on distinct nodes (STRICT_SPREAD) needs {ranks} "
                f"nodes with {_fmt(per_rank)} {resource}, the cluster has {len(have)} nodes"
            )


def check_sequence_parallel(
    row: Any, kind_config: KindConfig, nodes: list[dict[str, float]] | None = None, check_nodes: bool = True
) -> None:
    """Raise ValueError("field: problem") if `row` cannot run sequence-parallel as configured.

    nodes: the alive nodes' resources; read from Ray when None (skipped without Ray)."""
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
        if row.height is not None:
            rows = row.height // (shape.vae_scale * shape.patch_size)
            if row.height % (shape.vae_scale * shape.patch_size) == 0 and rows % sp_degree:
                raise ValueError(
                    f"sp_degree: must divide the latent rows (height {row.height} / {shape.vae_scale} (VAE) / "
                    f"{shape.patch_size} (patch) = {rows} rows of tokens), got {sp_degree}"
                )
    if check_nodes:
        nodes = alive_node_resources() if nodes is None else nodes
        if nodes is not None:
            check_gang_fits(sp_degree, kind_config, nodes)
