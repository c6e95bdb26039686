"""Where a million-row `raypipe validate` spends its time, part by part (BENCHMARKS.md).

    .venv/bin/python benchmarks/validate_parts.py [--rows 1000000] [--keep DIR]

Prints, on the manifest benchmarks/validate_million.py writes:
- JSON parsing a line: json.loads against pydantic_core.from_json (what the reader uses);
- the sequential read (raypipe.manifest.read_batches) on one core, alone;
- one reader batch to an Arrow block: Ray Data's conversion of a dict of lists against the
  typed table raypipe's read task yields;
- validating a row (raypipe.pipeline.batches.validate_batch, as the validating tasks run it);
- a whole validation in this process, in phases (ray.init, Ray Data execution, shutdown), with
  and without a job-level runtime_env carrying one environment variable (what raypipe used to
  pass workers when it started Ray itself).
"""

from __future__ import annotations

import argparse
import json
import time

from validate_million import the_manifest  # benchmarks/validate_million.py (this folder is on sys.path)


def per_item_us(function, items) -> float:
    started = time.perf_counter()
    for item in items:
        function(item)
    return (time.perf_counter() - started) / len(items) * 1e6


def phases(manifest: str, runtime_env: dict | None) -> str:
    import ray

    from raypipe import run
    from raypipe.config import load_config

    config = load_config()
    started = time.perf_counter()
    ray.init(address="local", include_dashboard=False, logging_level="WARNING", runtime_env=runtime_env)
    ready = time.perf_counter()
    total, rejected = run.rejected_rows([manifest], config)
    executed = time.perf_counter()
    ray.shutdown()
    done = time.perf_counter()
    return (
        f"ray.init {ready - started:.1f} s, execution {executed - ready:.1f} s, shutdown {done - executed:.1f} s "
        f"({total} rows, {len(rejected)} rejected)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the manifest here and keep it")
    args = parser.parse_args()
    manifest = the_manifest(args.rows, args.keep)

    import pyarrow as pa
    from pydantic_core import from_json
    from ray.data.block import BlockAccessor

    from raypipe.config import load_config
    from raypipe.manifest import RECORD_TYPES, read_batches
    from raypipe.pipeline.batches import rejected_and_tally, validate_batch
    from raypipe.pipeline.records import READ_BATCH_ROWS

    lines = manifest.read_text().splitlines()[:200_000]
    print(
        f"JSON a line: json.loads {per_item_us(json.loads, lines):.2f} us, "
        f"pydantic_core.from_json {per_item_us(from_json, lines):.2f} us"
    )

    started = time.perf_counter()
    batches = []
    for batch in read_batches([str(manifest)], size=READ_BATCH_ROWS):
        if len(batches) < 8:
            batches.append(batch)
    print(f"read_batches of {args.rows} rows, one core: {time.perf_counter() - started:.1f} s")

    rows = sum(len(b["id"]) for b in batches)
    per_million = 1e6 / rows
    started = time.perf_counter()
    for batch in batches:
        BlockAccessor.batch_to_block(batch)
    inferred = (time.perf_counter() - started) * per_million
    started = time.perf_counter()
    for batch in batches:
        BlockAccessor.batch_to_block(pa.table({n: pa.array(batch[n], type=t) for n, t in RECORD_TYPES.items()}))
    typed = (time.perf_counter() - started) * per_million
    print(f"to Arrow blocks, per million rows: dict of lists {inferred:.2f} s, typed table {typed:.2f} s")

    config = load_config()
    defaults = {kind: kc.defaults for kind, kc in config.kinds.items()}
    kinds = {kind: kc.model_dump() for kind, kc in config.kinds.items()}
    started = time.perf_counter()
    for batch in batches:
        validate_batch(batch, defaults, kinds, keep_rows=False, then=rejected_and_tally)
    print(f"validation: {(time.perf_counter() - started) / rows * 1e6:.2f} us a row")

    print(f"in-process, no runtime_env:        {phases(str(manifest), None)}")
    print(f"in-process, a job-level runtime_env: {phases(str(manifest), {'env_vars': {'RAYPIPE_BENCH': '1'}})}")


if __name__ == "__main__":
    main()
