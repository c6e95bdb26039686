"""The quality gate's re-rolls: a row whose video failed the gate (raypipe/quality.py) runs again
with its next seed, up to its kind's `quality.rerolls` times, the way Deforum's
reroll_blank_frames re-rolls a blank frame.

The gate runs after the pool, in the MP4 writer, so a re-roll is another generation: after the
run's main execution (and its sweep), the driver runs a follow-up execution of the rows that
failed the gate with re-rolls left: their manifests read again (only those ids kept), each row's
`seed` set to its first attempt's seed + the number of attempts so far, through the same pool
branches. It repeats while rows are left to re-roll. Every attempt is a metadata row (status
`failed` with the gate's reason, its video in quarantine/); a re-roll's row lists the attempts
before it in params_json (`rerolls: [{seed, error}, ...]`), and reconcile keeps one row per id
(the `ok` one, else the newest: the last attempt).

The driver holds only the rows that failed the gate and may run again (their attempts, their
last metadata row), never the manifest.
"""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
from pydantic_core import from_json

from raypipe.config import RunConfig
from raypipe.manifest import RECORD_TYPES, read_batches
from raypipe.metadata import Metadata
from raypipe.pipeline.records import READ_BATCH_ROWS, pool_route
from raypipe.quality import failed_gate


class Rerolls:
    """The driver's ledger of the rows to re-roll: fed every metadata row as it arrives."""

    def __init__(self, config: RunConfig):
        self.limits = {kind: kc.quality.rerolls for kind, kc in config.kinds.items()}
        self.history: dict[str, list[dict]] = {}  # id -> its failed attempts so far ({seed, error})
        self.held: dict[str, Metadata] = {}  # rows to run in the next pass: their last attempt
        self.running: dict[str, Metadata] = {}  # rows of the pass under way

    def observe(self, meta: Metadata) -> bool:
        """Record the earlier attempts of a re-rolled row in its params_json. True when the row
        failed the gate with re-rolls left: it is not final, it runs again in the next pass."""
        earlier = self.history.get(meta.id, []) if self.running.pop(meta.id, None) is not None else []
        if earlier:
            meta.params_json = json.dumps({**meta.params, "rerolls": earlier}, sort_keys=True)
        if meta.status == "failed" and failed_gate(meta.error) and len(earlier) < self.limits.get(meta.kind, 0):
            self.history[meta.id] = [*earlier, {"seed": meta.seed, "error": meta.error}]
            self.held[meta.id] = meta
            return True
        self.history.pop(meta.id, None)
        return False

    def start_pass(self) -> tuple[dict[str, int], dict[str, int]]:
        """The held rows' next seeds (the first attempt's + the attempts so far) by id, and
        their number per pool route (for the pools' sizes)."""
        self.running, self.held = self.held, {}
        seeds = {row_id: self.history[row_id][0]["seed"] + len(self.history[row_id]) for row_id in self.running}
        routes = Counter(pool_route(m.kind, m.sp_degree or 1) for m in self.running.values())
        return seeds, dict(routes)

    def lost(self) -> list[Metadata]:
        """Rows of the pass that ran whose metadata never came back (Ray Data dropped their
        blocks): their last attempt, already in the metadata, is their final row."""
        lost, self.running = list(self.running.values()), {}
        for meta in lost:
            self.history.pop(meta.id, None)
        return lost


class _AllBut:
    """The ids read_batches marks "skip": every id but the ones to re-roll."""

    def __init__(self, keep: dict[str, int]):
        self.keep = keep

    def __contains__(self, row_id: object) -> bool:
        return row_id not in self.keep


def _with_seed(raw_json: str, seed: int) -> str:
    return json.dumps({**from_json(raw_json), "seed": seed})


def reroll_read_fn(uris: list[str], seeds: dict[str, int]):
    """The read of a re-roll pass: the records of the rows in `seeds` only, each with its new seed."""

    def read(_batch):
        for table in read_batches(uris, _AllBut(seeds), READ_BATCH_ROWS):
            batch = table.to_pydict()
            keep = [i for i, route in enumerate(batch["route"]) if route == "pending"]
            if not keep:
                continue
            columns = {name: [batch[name][i] for i in keep] for name in RECORD_TYPES}
            columns["raw_json"] = [_with_seed(raw, seeds[i]) for raw, i in zip(columns["raw_json"], columns["id"])]
            yield pa.table({name: pa.array(columns[name], type=type_) for name, type_ in RECORD_TYPES.items()})

    return read


def reroll_records(uris: list[str], seeds: dict[str, int]):
    """The records dataset of a re-roll pass (as raypipe/pipeline/graph.py records_dataset)."""
    import ray.data

    from raypipe.pipeline.ray_init import quiet_ray_data

    quiet_ray_data()
    return ray.data.from_items([{"manifests": 0}]).map_batches(reroll_read_fn(uris, seeds), batch_size=None, num_cpus=0)
