"""`raypipe validate` on a million-row JSONL manifest: wall time and the driver's peak memory.

    .venv/bin/python benchmarks/validate_million.py [--rows 1000000] [--keep DIR]

Writes the manifest (valid CogVideoX rows, one row in a thousand with a mistake), then times
`raypipe validate MANIFEST --address local` as a whole process: Python start-up, a fresh local
Ray, reading, validating and the report. The driver's peak resident memory is its VmHWM in
/proc, polled while it runs. Targets (issue 11): under 20 s and under 1 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_manifest(path: Path, rows: int) -> None:
    with open(path, "w") as f:
        for i in range(rows):
            row = {"id": f"row-{i:07d}", "kind": "cogvideox", "prompt": f"a lighthouse in a storm, take {i}"}
            if i % 1000 == 999:
                row["num_frames"] = 12  # rejected: not 8k+1
            f.write(json.dumps(row) + "\n")


def the_manifest(rows: int, keep: str | None) -> Path:
    """The benchmark's manifest of `rows` rows, in `keep` (written there once) or a new temp folder."""
    folder = Path(keep or tempfile.mkdtemp(prefix="raypipe-validate-"))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / f"manifest-{rows}.jsonl"
    if not manifest.exists():
        write_manifest(manifest, rows)
    return manifest


def peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the manifest here and keep it")
    args = parser.parse_args()
    manifest = the_manifest(args.rows, args.keep)
    folder = manifest.parent
    print(
        f"manifest: {manifest} ({args.rows} rows, {manifest.stat().st_size / 1e6:.0f} MB); "
        f"load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    raypipe = Path(sys.executable).with_name("raypipe")
    command = [str(raypipe), "validate", str(manifest), "--address", "local"]
    # Output to files, not pipes: nobody reads a pipe while it runs, and a full one would block it.
    with open(folder / "validate.out", "w+") as out_file, open(folder / "validate.err", "w+") as err_file:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, stdout=out_file, stderr=err_file, text=True)
        peak = 0
        while process.poll() is None:
            peak = max(peak, peak_kib(process.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        out_file.seek(0)
        err_file.seek(0)
        out, err = out_file.read(), err_file.read()
    summary = [line for line in err.splitlines() if line.startswith("raypipe:")]
    print(summary[-1] if summary else err[-2000:])
    print(
        f"rejected rows printed: {len(out.splitlines())}; exit code {process.returncode}; "
        f"load average after: {os.getloadavg()[0]:.2f}"
    )
    print(f"seconds={seconds:.1f} driver_peak_mb={peak / 1024:.0f} rows_per_s={args.rows / seconds:,.0f}")


if __name__ == "__main__":
    main()
