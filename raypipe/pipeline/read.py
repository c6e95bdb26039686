"""A run's read of its manifests, prepared once in Ray tasks (raypipe/manifest.py has the reading).

    id pass      one task a manifest, in parallel: every id its lines claim (manifest_ids, Arrow);
    duplicates   one task: the ids claimed twice across all manifests, and per manifest the lines
                 that lose theirs (find_duplicates: exact, no Python object per id);
    index        one task: the resume index, the ids already `ok` in the output (an IdSet);
    read         then one Ray Data task a manifest (graph.records_dataset, batches.read_fn), in
                 parallel: its records in line order, with its share of the duplicates, checked
                 against the index a batch at a time.

All three results stay in Ray's object store (the driver holds their references, never the ids):
an IdSet's arrays and the duplicates' are numpy buffers, which every read task on a node maps
rather than copies. A run prepares once and reads twice (the count pass, then the execution), so
both see the same ids and the same index: the index as it was when the run started.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

from raypipe.manifest import find_duplicates, manifest_ids, manifest_sources
from raypipe.sink import build_done_index


@dataclass
class ManifestRead:
    uris: list[str]
    sources: list[str]  # how records name each manifest (manifest_sources)
    duplicates: list[Any]  # per manifest: the ObjectRef of its find_duplicates entry
    done: Any = None  # the ObjectRef of the resume index (an IdSet), or None: nothing to skip
    check_all: bool = False  # the sweep's read: every record is checked against `done`
    here: bool = False  # prepared in the driver (a small input, which the driver also counts)


def _duplicates(*claims):
    found = find_duplicates(list(claims))
    return found if len(found) > 1 else found[0]


@functools.cache
def _tasks():
    import ray

    return (
        ray.remote(num_cpus=1)(manifest_ids),
        ray.remote(num_cpus=1)(_duplicates),
        ray.remote(num_cpus=1)(build_done_index),
    )


def done_index(out: str | None, run_id: str | None = None, sweep: bool = False):
    """The ObjectRef of the resume index of `out` (None without an output). sweep: with every id
    this run has a row for, whatever its status (raypipe/run.py's sweep for lost rows)."""
    if not out:
        return None
    return _tasks()[2].remote(out, exclude_run=run_id, any_status_of_run=sweep)


def prepare_read(
    uris: list[str], out: str | None = None, run_id: str | None = None, sweep: bool = False, here: bool = False
):
    """Start the id pass, the duplicates and the index (nothing waits for them here: the read
    tasks do). run_id: this run's, whose own parts the index leaves out (see done_index).
    here: computed in this process and put in the object store instead, for small inputs
    (graph.DRIVER_COUNT_BYTES): three tasks would start worker processes ahead of the pools'."""
    if here:
        import ray

        entries = find_duplicates([manifest_ids(uri) for uri in uris])
        done = ray.put(build_done_index(out, exclude_run=run_id, any_status_of_run=sweep)) if out else None
        return ManifestRead(list(uris), manifest_sources(list(uris)), [ray.put(e) for e in entries], done, sweep, True)
    ids_task, duplicates_task, _ = _tasks()
    claims = [ids_task.remote(uri) for uri in uris]
    duplicates = duplicates_task.options(num_returns=len(uris)).remote(*claims)
    return ManifestRead(
        uris=list(uris),
        sources=manifest_sources(list(uris)),
        duplicates=duplicates if len(uris) > 1 else [duplicates],
        done=done_index(out, run_id, sweep),
        check_all=sweep,
    )


def for_sweep(read: ManifestRead, out: str, run_id: str) -> ManifestRead:
    """The same read, checked against the index of the sweep for lost rows."""
    return replace(read, done=done_index(out, run_id, sweep=True), check_all=True)
