"""Sequence parallelism: long videos on a gang of N rank actors (rows with `sp_degree` N > 1).

- validate.py: the checks a row gets at validation (heads, CFG parallel, gang size);
- gang.py: the gang (placement group + rank actors), its life cycle, timeouts and retries, and
  RankWorker (one rank: joins the gang, builds its stage with its context, runs rows);
- context.py: a rank's place in the gang (SPContext), its process groups and backend;
- hooks.py: the named diffusers hooks that wire a rank's transformer (and the step caches);
- ulysses.py: the video tokens sharded (padded to a multiple of N) and Ulysses attention;
- xdit.py: xDiT's USP attention and CFG parallel on GPU ranks (optional `gpu` extra);
- each family that runs sequence parallel wires its transformer in
  raypipe/families/<kind>/parallel.py (`parallelize(transformer, context)`).

A stage whose family has `sequence_parallel=True` holds a `Gangs` (stage.gangs), and the Stage
base sends it the rows with sp_degree > 1 (raypipe/stage.py); the families' `generate` does not
know about gangs. This module stays light (no torch, no ray at import): the validation tasks import it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from raypipe.parallel.validate import check_sequence_parallel, gang_ranks, rank_resources

__all__ = ["Gangs", "check_sequence_parallel", "gang_ranks", "rank_resources", "sp_degree"]


def sp_degree(row: Any) -> int:
    return int(getattr(row, "sp_degree", 1) or 1)


class Gangs:
    """The gangs of one stage: one per sp_degree in use, created on first use and kept (at most
    sp.max_gangs; the least recently used one is shut down first). They die with their owner."""

    def __init__(self, stage_cls: type, config):
        self.stage_cls, self.config = stage_cls, config
        self._gangs: OrderedDict[int, Any] = OrderedDict()

    def __contains__(self, degree: int) -> bool:
        return degree in self._gangs

    def get(self, degree: int):
        """The gang of this degree (raypipe.parallel.gang.Gang), created on first use (not started)."""
        from raypipe.parallel.gang import Gang

        if degree in self._gangs:
            self._gangs.move_to_end(degree)
            return self._gangs[degree]
        while len(self._gangs) >= self.config.sp.max_gangs:
            _, old = self._gangs.popitem(last=False)
            old.shutdown()
        self._gangs[degree] = gang = Gang(self.stage_cls, self.config, degree)
        return gang

    def generate(self, degree: int, rows: list, inputs: list[dict[str, Any]]) -> list:
        """The videos of `rows` (one batch_key, all of this degree), generated on the gang."""
        return self.get(degree).generate(rows, inputs)

    def shutdown(self) -> None:
        """Kill the gangs now."""
        while self._gangs:
            self._gangs.popitem()[1].shutdown()
