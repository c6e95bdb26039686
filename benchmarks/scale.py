"""Dataset scale: a 10M-row manifest through validate and plan, a resume index of 10M ids, and a
100k-row run through the whole graph (BENCHMARKS.md, "Dataset scale").

    .venv/bin/python benchmarks/scale.py [--rows 10000000] [--index-ids N] [--run-rows 100000]
        [--parts validate,plan,index,run] [--keep DIR]

- validate / plan: `raypipe validate|plan MANIFEST --address local` on a generated JSONL manifest
  of --rows CogVideoX rows (~90 bytes a row; one in a thousand rejected), timed as whole
  processes; the driver's peak RSS (VmHWM) and that of the Ray workers that ran the read.
- index: --index-ids `ok` ids in metadata parts of 100k rows, then in a fresh process the resume
  index built from them (raypipe.sink.build_done_index; load_done_ids on code that predates it):
  seconds, the process's peak RSS over its start, the index's own bytes, and the check of every id
  against it in blocks of 16384 (the read's per-block test).
- run: --run-rows rows through `raypipe.run.run` with OneFrameStage below in place of the
  CogVideoX stage (a one-frame 16x16 video a row, no model), so the figure is raypipe's own
  per-row cost: read, validate, route, the pool actor, the MP4 writer, the driver's sink and the
  end-of-run reconcile. Rows/s over the run() call, the driver's RSS sampled through the run
  (flat: the last quarter against the first), the read workers' peak, the metadata bytes.

The manifests and outputs go to a temporary folder under /tmp (or --keep DIR), removed at the end
unless --keep. The last line is
`index_mb_10m=<n> validate_10m_s=<s> validate_10m_driver_mb=<m> run_100k_rows_per_s=<r>`
(the figures of this run's sizes, whatever --rows says).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from raypipe.stage import Generated, Stage

REPO = Path(__file__).resolve().parents[1]
PART_ROWS = 100_000


class OneFrameStage(Stage):
    """A benchmark-only stage: a one-frame 16x16 gradient a row (no model), so that a run measures
    raypipe's own work around the generation."""

    kind = "cogvideox"

    def setup(self) -> None:
        pass

    def generate(self, rows, inputs):
        ramp = np.linspace(0, 255, 16, dtype=np.float32)
        frames = []
        for row in rows:
            shade = (ramp[None, :, None] + ramp[:, None, None] + row.seed % 64) % 256
            frames.append(np.broadcast_to(shade, (1, 16, 16, 3)).astype(np.uint8))
        return [Generated(frames=f, fps=8) for f in frames]


# ---- measuring processes ------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Watch:
    """Polls a process while it runs: its peak RSS (VmHWM), its RSS over time, and the peak RSS of
    its descendant processes whose command line names `task` (Ray sets a worker's to its task)."""

    def __init__(self, pid: int, task: str = "read"):
        import psutil

        self.process = psutil.Process(pid)
        self.task = task
        self.peak_kib = 0
        self.samples: list[tuple[float, int]] = []
        self.task_pids: set[int] = set()
        self.task_peak_kib = 0
        self._last_sample = 0.0

    def poll(self) -> None:
        import psutil

        pid = self.process.pid
        self.peak_kib = max(self.peak_kib, _status_kib(pid, "VmHWM"))
        now = time.monotonic()
        if now - self._last_sample >= 0.5:
            self._last_sample = now
            self.samples.append((now, _status_kib(pid, "VmRSS")))
            try:
                children = self.process.children(recursive=True)
            except psutil.Error:
                children = []
            for child in children:
                try:
                    if self.task in " ".join(child.cmdline()):
                        self.task_pids.add(child.pid)
                except psutil.Error:
                    pass
        for task_pid in list(self.task_pids):
            self.task_peak_kib = max(self.task_peak_kib, _status_kib(task_pid, "VmHWM"))

    def flatness(self) -> str:
        """RSS at the second and last quarter of the samples, and its maximum in each tenth (MB):
        a plateau and a climb read differently there."""
        if len(self.samples) < 10:
            return "too short to tell"
        values = [kib for _, kib in self.samples]
        quarter, tenth = len(values) // 4, len(values) / 10
        first, last = max(values[quarter : 2 * quarter]), max(values[-quarter:])
        tenths = [max(values[round(i * tenth) : round((i + 1) * tenth)]) // 1024 for i in range(10)]
        return (
            f"RSS max {first / 1024:.0f} MB in the second quarter, {last / 1024:.0f} MB in the last "
            f"(by tenths: {' '.join(map(str, tenths))})"
        )


def watched(command: list[str], folder: Path, name: str, task: str = "read") -> tuple[float, Watch, str, str, int]:
    """Runs `command` (output to files), polling it; returns seconds, the Watch, stdout, stderr, exit code."""
    with open(folder / f"{name}.out", "w+") as out_file, open(folder / f"{name}.err", "w+") as err_file:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=out_file, stderr=err_file, text=True)
        watch = Watch(process.pid, task)
        while process.poll() is None:
            watch.poll()
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        out_file.seek(0)
        err_file.seek(0)
        return seconds, watch, out_file.read(), err_file.read(), process.returncode


def load() -> str:
    return "{:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


# ---- the parts ----------------------------------------------------------------------------------


def write_manifest(path: Path, rows: int) -> None:
    """CogVideoX rows (validate_million.py's), written in chunks: ~90 bytes a row."""
    with open(path, "w") as f:
        for start in range(0, rows, 100_000):
            lines = []
            for i in range(start, min(rows, start + 100_000)):
                extra = ', "num_frames": 12' if i % 1000 == 999 else ""  # rejected: not 8k+1
                prompt = f"a lighthouse in a storm, take {i}"
                lines.append(f'{{"id": "row-{i:08d}", "kind": "cogvideox", "prompt": "{prompt}"{extra}}}\n')
            f.write("".join(lines))


def cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("raypipe")), *args]


def bench_validate(manifest: Path, rows: int, folder: Path, results: dict) -> None:
    for command in ("validate", "plan"):
        if command not in results["parts"]:
            continue
        before = load()
        seconds, watch, out, err, code = watched(cli(command, str(manifest), "--address", "local"), folder, command)
        summary = [line for line in err.splitlines() if line.startswith("raypipe:")]
        tail = (summary[-1] if summary else err[-1500:]) if command == "validate" else out.strip().splitlines()[-2:]
        print(
            f"{command}: {rows} rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s), exit {code}; "
            f"driver peak {watch.peak_kib / 1024:.0f} MB, read worker peak {watch.task_peak_kib / 1024:.0f} MB; "
            f"load {before} -> {load()}\n  {tail}",
            flush=True,
        )
        results[f"{command}_s"] = seconds
        results[f"{command}_driver_mb"] = watch.peak_kib / 1024


def write_ok_parts(out: Path, ids: int) -> None:
    """`ok` metadata rows for ids row-00000000.. in parts of PART_ROWS rows (the other columns null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raypipe.metadata import METADATA_SCHEMA

    folder = out / "metadata"
    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, ids, PART_ROWS)):
        n = min(ids, start + PART_ROWS) - start
        columns = {name: pa.nulls(n, type=field.type) for name, field in zip(METADATA_SCHEMA.names, METADATA_SCHEMA)}
        columns["id"] = pa.array([f"row-{i:08d}" for i in range(start, start + n)], pa.string())
        columns["status"] = pa.array(["ok"] * n, pa.string())
        name = f"part-20260101T000000000000-bench-{number:05d}.parquet"
        pq.write_table(pa.table(columns, schema=METADATA_SCHEMA), folder / name)


def index_child(out: str, ids: int) -> None:
    """In a fresh process: build the resume index of `out`, then check every id against it."""
    import pyarrow as pa
    from memory import rss_mib  # benchmarks/memory.py (this folder is on sys.path)

    from raypipe import sink

    base = rss_mib("VmRSS")
    started = time.perf_counter()
    if hasattr(sink, "build_done_index"):
        index = sink.build_done_index(out)
        own = index.nbytes / 2**20
        contains = index.contains
    else:  # the code before: a Python set
        index = sink.load_done_ids(out)
        own = float("nan")

        def contains(block):
            return np.fromiter((i in index for i in block.to_pylist()), dtype=bool, count=len(block))

    built = time.perf_counter() - started
    peak_built = rss_mib("VmHWM") - base
    started = time.perf_counter()
    found = 0
    for start in range(0, ids, 16384):
        block = pa.array([f"row-{i:08d}" for i in range(start, min(ids, start + 16384))], pa.string())
        found += int(np.count_nonzero(contains(block)))
    checked = time.perf_counter() - started
    assert found == ids == len(index), (found, ids, len(index))
    print(json.dumps({"build_s": built, "peak_mb": peak_built, "own_mb": own, "check_s": checked, "ids": len(index)}))


def bench_index(ids: int, folder: Path, results: dict) -> None:
    out = folder / "index-out"
    started = time.perf_counter()
    write_ok_parts(out, ids)
    print(f"index: wrote {ids} ok rows in {time.perf_counter() - started:.1f} s", flush=True)
    before = load()
    seconds, watch, stdout, err, code = watched(
        [sys.executable, __file__, "--index-child", str(out), str(ids)], folder, "index", task="-"
    )
    if code != 0:
        raise SystemExit(f"index child failed ({code}):\n{err[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    own = figures["own_mb"]
    print(
        f"index: {ids} ok ids built in {figures['build_s']:.1f} s, peak {figures['peak_mb']:.0f} MB over the "
        f"process's start, the index itself {own:.1f} MB; every id checked in blocks of 16384 in "
        f"{figures['check_s']:.1f} s; load {before} -> {load()}",
        flush=True,
    )
    results["index_mb"] = own if own == own else figures["peak_mb"]  # nan: the old code's set
    shutil.rmtree(out)


def run_child(manifest: str, out: str, config_path: str) -> None:
    from raypipe.config import load_config
    from raypipe.run import init_ray, run

    init_ray("local")
    started = time.perf_counter()
    summary = run([manifest], out, load_config(config_path), stages={"cogvideox": "benchmarks.scale:OneFrameStage"})
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "ok": summary.by_status["ok"], "total": summary.total}))


def bench_run(rows: int, folder: Path, results: dict) -> None:
    manifest = folder / f"run-{rows}.jsonl"
    with open(manifest, "w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": f"r-{i:07d}", "kind": "cogvideox", "prompt": f"a kite {i}"}) + "\n")
    config = folder / "run.yaml"
    config.write_text("kinds:\n  cogvideox:\n    pool_size: 2\n    num_cpus: 0.25\n    batch_size: 64\n")
    out = folder / "run-out"
    before = load()
    seconds, watch, stdout, err, code = watched(
        [sys.executable, __file__, "--run-child", str(manifest), str(out), str(config)], folder, "run"
    )
    if code != 0:
        raise SystemExit(f"run child failed ({code}):\n{err[-3000:]}")
    figures = json.loads(stdout.strip().splitlines()[-1])
    assert figures["ok"] == rows, figures
    parts = list((out / "metadata").glob("part-*.parquet"))
    meta_bytes = sum(p.stat().st_size for p in parts)
    videos = sum(1 for _ in (out / "videos").iterdir())
    rate = rows / figures["seconds"]
    print(
        f"run: {rows} rows ok ({videos} videos) in {figures['seconds']:.1f} s of run() = {rate:.0f} rows/s "
        f"({seconds:.1f} s with Python and Ray start-up); driver peak {watch.peak_kib / 1024:.0f} MB, "
        f"{watch.flatness()}; read worker peak {watch.task_peak_kib / 1024:.0f} MB; metadata {meta_bytes / 1e6:.1f} MB "
        f"in {len(parts)} parts ({meta_bytes / rows:.0f} bytes a row); load {before} -> {load()}",
        flush=True,
    )
    results["run_rows_per_s"] = rate
    shutil.rmtree(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--index-ids", type=int, help="default: --rows")
    parser.add_argument("--run-rows", type=int, default=100_000)
    parser.add_argument("--parts", default="validate,plan,index,run")
    parser.add_argument("--keep", help="write into this folder and keep it")
    parser.add_argument("--index-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--run-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.index_child:
        index_child(args.index_child[0], int(args.index_child[1]))
        return
    if args.run_child:
        run_child(*args.run_child)
        return

    parts = set(args.parts.split(","))
    folder = Path(args.keep or tempfile.mkdtemp(prefix="raypipe-scale-", dir="/tmp"))
    folder.mkdir(parents=True, exist_ok=True)
    results: dict = {"parts": parts}
    print(f"{os.cpu_count()} cores; load average {load()}; work in {folder}", flush=True)
    try:
        if parts & {"validate", "plan"}:
            manifest = folder / f"manifest-{args.rows}.jsonl"
            if not manifest.exists():
                started = time.perf_counter()
                write_manifest(manifest, args.rows)
                print(
                    f"manifest: {args.rows} rows, {manifest.stat().st_size / 1e9:.2f} GB, written in "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
            bench_validate(manifest, args.rows, folder, results)
        if "index" in parts:
            bench_index(args.index_ids or args.rows, folder, results)
        if "run" in parts:
            bench_run(args.run_rows, folder, results)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)

    def figure(key: str, fmt: str) -> str:
        return format(results[key], fmt) if key in results else "nan"

    print(
        f"index_mb_10m={figure('index_mb', '.0f')} validate_10m_s={figure('validate_s', '.1f')} "
        f"validate_10m_driver_mb={figure('validate_driver_mb', '.0f')} "
        f"run_100k_rows_per_s={figure('run_rows_per_s', '.0f')}"
    )


if __name__ == "__main__":
    main()
