"""Sequence parallelism: long CogVideoX / ExVideo rows on a gang of N rank actors.

- validate.py: the checks a row gets at validation (heads, latent rows, CFG parallel, gang size);
- gang.py: the gang (placement group + rank actors), its life cycle, timeouts and retries;
- ulysses.py: the transformer wiring and Ulysses attention (gloo on CPU, NCCL on GPU);
- xdit.py: xDiT's USP attention and CFG parallel on GPU ranks (optional `gpu` extra).

A stage hands its rows here with two calls (see raypipe/families/cogvideox/stage.py):

    if parallel.wants_gang(self, rows):
        return parallel.generate_on_gangs(self, rows, inputs)

This module stays light (no torch, no ray at import): the validation tasks import it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from raypipe.parallel.validate import check_sequence_parallel, gang_ranks, rank_resources

__all__ = [
    "check_sequence_parallel",
    "gang_ranks",
    "generate_on_gangs",
    "rank_resources",
    "shutdown_gangs",
    "wants_gang",
]


def sp_degree(row: Any) -> int:
    return int(getattr(row, "sp_degree", 1) or 1)


def wants_gang(stage: Any, rows: list) -> bool:
    """True when some row asks for sp_degree > 1 and `stage` is not itself a rank of a gang."""
    return getattr(stage, "sp_context", None) is None and any(sp_degree(row) > 1 for row in rows)


def _gangs(stage: Any) -> OrderedDict:
    gangs = getattr(stage, "_sp_gangs", None)
    if gangs is None:
        gangs = stage._sp_gangs = OrderedDict()
    return gangs


def gang_for(stage: Any, degree: int):
    """The stage's gang of this degree, created on first use and kept (at most sp.max_gangs)."""
    from raypipe.parallel.gang import Gang

    gangs = _gangs(stage)
    if degree in gangs:
        gangs.move_to_end(degree)
        return gangs[degree]
    while len(gangs) >= stage.config.sp.max_gangs:
        _, old = gangs.popitem(last=False)
        old.shutdown()
    gangs[degree] = gang = Gang(type(stage), stage.config, degree)
    return gang


def generate_on_gangs(stage: Any, rows: list, inputs: list[dict[str, Any]]) -> list:
    """stage.generate for a mix of rows: sp_degree 1 rows on the stage itself, the others on
    the gang of their degree. Results in the order of `rows`."""
    out: list = [None] * len(rows)
    by_degree: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_degree.setdefault(sp_degree(row), []).append(i)
    for degree, indices in by_degree.items():
        part_rows, part_inputs = [rows[i] for i in indices], [inputs[i] for i in indices]
        if degree <= 1:
            results = stage.generate(part_rows, part_inputs)
        else:
            results = gang_for(stage, degree).generate(part_rows, part_inputs)
        for i, result in zip(indices, results):
            out[i] = result
    return out


def shutdown_gangs(stage: Any) -> None:
    """Kill the stage's gangs now (they also die with the process that owns them)."""
    gangs = _gangs(stage)
    while gangs:
        gangs.popitem()[1].shutdown()
