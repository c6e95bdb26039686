"""The actors of a run: a kind's pool actor (StageActor) and the per-row death count (RowAttempts).

Faults: a pool actor whose process or node dies is restarted by Ray and its batch retried (Ray
Data's actor defaults, max_restarts=-1 and max_task_retries=-1, are kept on purpose: in Ray 2.60
bounded values lose rows instead of bounding work. A task sent to the actor of a lost node fails
at once with "actor temporarily unavailable" until the GCS declares the node dead, which spends a
bounded max_task_retries in seconds; and a pool actor out of restarts stays in the pool as a dead
member, which stalls the run.) What is bounded is each row: a row that was being generated when
its worker died is counted (RowAttempts), and after `max_row_attempts` such deaths it ends
`failed` with the reason instead of being retried forever.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import numpy as np

from raypipe.config import KindConfig
from raypipe.metadata import metadata_from_row
from raypipe.metrics import StageMeter
from raypipe.pipeline.records import NONE, pack, unpack
from raypipe.stage import Result


class RowAttempts:
    """Which rows pool actors are generating now, and how often a worker died doing one.

    A pool actor marks its rows before generating and clears them after; a mark still there when
    the batch comes back (Ray retried it on a restarted actor) means the worker died with that
    row: one death. One small actor per run, on the driver's node; it holds only rows in flight
    and rows that died."""

    def __init__(self):
        self._running: dict[str, str] = {}
        self._deaths: dict[str, tuple[int, str]] = {}

    def check(self, ids: list[str]) -> list[tuple[int, str]]:
        for row_id in ids:
            worker = self._running.pop(row_id, None)
            if worker is not None:
                self._deaths[row_id] = (self._deaths.get(row_id, (0, ""))[0] + 1, worker)
        return [self._deaths.get(row_id, (0, "")) for row_id in ids]

    def start(self, ids: list[str], worker: str) -> None:
        for row_id in ids:
            self._running[row_id] = worker

    def finish(self, ids: list[str]) -> None:
        for row_id in ids:
            self._running.pop(row_id, None)
            self._deaths.pop(row_id, None)


def row_attempts_actor():
    """The run's RowAttempts, pinned to the driver's node (if that node is lost, so is the run)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    return ray.remote(RowAttempts).options(num_cpus=0, scheduling_strategy=here).remote()


class StageActor:
    """A Ray Data actor of one kind's pool: the stage is set up once, in __init__. In a pool of
    gangs ("<kind>/sp<N>", load_model=False) it loads no model: its rows run on its gang."""

    def __init__(
        self,
        kind: str,
        stage_path: str,
        kind_config: dict[str, Any],
        attempts=None,
        max_row_attempts: int = 3,
        load_model: bool = True,
    ):
        from raypipe.families import stage_class

        self.kind = kind
        self.setup_error = ""
        self.attempts = attempts
        self.max_row_attempts = max_row_attempts
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.meter = StageMeter(kind, self.worker)  # its Ray metrics and utilisation (raypipe/metrics.py)
        self.stage = stage_class(stage_path)(KindConfig.model_validate(kind_config))
        try:
            if load_model:
                self.stage.setup()
        except Exception as err:  # noqa: BLE001 - every row of this actor fails with the reason
            self.setup_error = f"loading the {kind} model failed: {type(err).__name__}: {err}"
        self.meter.loaded()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        n = len(batch["row"])
        metas: list[bytes] = list(batch["meta"])  # rows rejected by validation pass through as they are
        frames = [NONE] * n
        todo = [i for i in range(n) if not metas[i]]
        rows = [unpack(batch["row"][i]) for i in todo]
        inputs = [unpack(batch["inputs"][i]) for i in todo]
        self.meter.started(len(rows))
        if self.setup_error:
            done = [metadata_from_row(row, "failed", self.setup_error) for row in rows]
        else:
            results = self._generate(rows, inputs)
            done = [r.meta for r in results]
            for i, result in zip(todo, results):
                frames[i] = pack(result.frames) if result.frames is not None else NONE
        self.meter.done(done)
        for i, meta in zip(todo, done):
            metas[i] = pack(meta)
        return {"meta": metas, "frames": frames}

    def _generate(self, rows, inputs) -> list[Result]:
        import ray

        if self.attempts is None or not rows:
            return self.stage.process(rows, inputs)
        ids = [row.id for row in rows]
        deaths = ray.get(self.attempts.check.remote(ids))
        if not any(count for count, _ in deaths):
            ray.get(self.attempts.start.remote(ids, self.worker))
            results = self.stage.process(rows, inputs)
            self.attempts.finish.remote(ids)
            return results
        # A retry after a worker died holding these rows: one row at a time, so that a row that
        # kills its worker is found, and fails alone once it has done so max_row_attempts times.
        # Said on stderr, which Ray forwards to the driver (Ray itself says nothing of it).
        died = ", ".join(f"{row.id} ({count}x, last {worker})" for row, (count, worker) in zip(rows, deaths) if count)
        print(
            f"raypipe: a {self.kind} worker died generating {died}; this batch runs again one row at a time, "
            f"and a row whose worker died {self.max_row_attempts} times fails",
            file=sys.stderr,
            flush=True,
        )
        results = []
        for row, inp, (count, last_worker) in zip(rows, inputs, deaths):
            if count >= self.max_row_attempts:
                meta = metadata_from_row(
                    row,
                    "failed",
                    f"the worker generating this row died {count} times (last: {last_worker}); not tried again",
                )
                meta.update(worker=last_worker, model=row.model or self.stage.config.model)
                results.append(Result(meta))
            else:
                ray.get(self.attempts.start.remote([row.id], self.worker))
                results.extend(self.stage.process([row], [inp]))
            self.attempts.finish.remote([row.id])
        return results
