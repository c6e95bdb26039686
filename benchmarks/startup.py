"""Where the seconds before a run's first generation go: `raypipe run` timed phase by phase.

    .venv/bin/python benchmarks/startup.py [--rows 8] [--pool-size 2] [--batch-size 1] [--repeat 3]
        [--compare DIR]

Each repeat runs `raypipe run MANIFEST --out DIR --config C --address local` as a fresh process
(the overhead benchmark's rows and pool: tiny CogVideoX, 25x96x96, 20 steps, `pool_size` actors
of 1/pool_size CPU each), the tiny model built beforehand. The phases come from the run's own
summary (OUT/runs/<run_id>.json: Unix seconds the driver and each pool actor recorded) and are
printed as seconds from the launch of the command:

    python, imports, config   the interpreter, `raypipe.cli`, the config and the manifests' check
    ray.init                  a fresh local Ray (GCS, raylet, the dashboard process Ray always starts)
    run set-up                `import ray.data`, the output folder, the metadata sink
    count                     rows per pool (on the driver for small manifests, else a Ray Data pass)
    pools start               datasets built, the streaming execution started
    actor process             the first pool actor's process up, its class and arguments loaded
    model load                its __init__: imports (torch, diffusers) and the model's from_pretrained
    first batch               the first row reaching that actor: read, validate, inputs, the call

The last columns are the first generation's start and the process's exit, from the launch, and
the CPU seconds of the whole run (every process of it, Ray's included: benchmarks/proctree.py;
the work done, which other jobs on the machine change far less than the wall times), and each
pool actor's CPU seconds until its model was loaded (its process's: Ray's worker start, imports,
the load; the run summary's load_cpu_seconds).

--compare DIR: the same runs alternate with another copy of raypipe (e.g. the last commit:
`git archive HEAD | tar -x -C DIR`), run as `python -m raypipe.cli` with DIR first on PYTHONPATH
(its workers inherit it), so both see the same load. A version without run summaries gets only
its first generation (the metadata's earliest started_at) and its exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from overhead import rows  # noqa: E402 - the overhead benchmark's rows
from proctree import LAST, run_measured  # noqa: E402

PHASES = [
    ("python, imports, config", "launch", "ray_init_started"),
    ("ray.init", "ray_init_started", "ray_ready"),
    ("run set-up", "ray_ready", "run_started"),
    ("count", "run_started", "counted"),
    ("pools start", "counted", "pools_started"),
    ("actor process", "pools_started", "first_actor_created"),
    ("model load", "first_actor_created", "first_actor_loaded"),
    ("first batch", "first_actor_loaded", "first_generation"),
]


def one_run(manifest: Path, config: Path, out: Path, env: dict[str, str], tree: Path | None = None) -> dict:
    """Seconds from the launch to each step of one run (from its run summary). tree: another
    copy of raypipe to run instead of this checkout."""
    command = [str(Path(sys.executable).with_name("raypipe"))]
    if tree is not None:
        command = [sys.executable, "-m", "raypipe.cli"]
        env = {**env, "PYTHONPATH": str(tree)}
    launch = time.time()
    result, cpu = run_measured(
        [*command, "run", str(manifest), "--out", str(out), "--config", str(config), "--address", "local"],
        cwd=tree or REPO,
        env=env,
    )
    exited = time.time() - launch
    if result.returncode != 0:
        if "timed out during startup" in result.stderr:  # Ray itself did not start (a busy machine): again
            print("(Ray did not start in time: again)", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            return one_run(manifest, config, out, env, tree)
        raise SystemExit(f"raypipe run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    summaries = list((out / "runs").glob("*.json"))
    if not summaries:  # a version that writes none: the metadata's first start
        import pyarrow.parquet as pq

        starts = pq.read_table(out / "metadata", columns=["started_at"]).column("started_at").to_pylist()
        first = min(s.timestamp() for s in starts if s is not None)
        return {
            "launch": 0.0,
            "first_generation": first - launch,
            "exit": exited,
            "cpu": cpu,
            "busy_ratio": {},
            "load_cpu": [],
        }
    summary = json.loads(summaries[0].read_text())
    # phases are seconds from the process start: move them to the launch
    offset = (summary["started_at"] - summary["phases"]["run_started"]) - launch
    steps = {name: seconds + offset for name, seconds in summary["phases"].items()}
    steps["launch"] = 0.0
    steps["exit"] = exited
    steps["cpu"] = cpu
    steps["load_cpu"] = [a["load_cpu_seconds"] for a in summary["actors"] if a.get("load_cpu_seconds")]
    steps["busy_ratio"] = {name: pool["busy_ratio"] for name, pool in summary["pools"].items()}
    return steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compare", type=Path, metavar="DIR", help="alternate with the raypipe copy in DIR")
    parser.add_argument("--processes", action="store_true", help="print each run's CPU seconds by process")
    args = parser.parse_args()

    from raypipe.config import load_config
    from raypipe.run import prepare_models

    work = Path(tempfile.mkdtemp(prefix="raypipe-startup-"))
    env = {**os.environ, "RAYPIPE_CACHE": os.environ.get("RAYPIPE_CACHE", str(work / "cache"))}
    os.environ["RAYPIPE_CACHE"] = env["RAYPIPE_CACHE"]
    manifest = work / "rows.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows, args.frames, args.size, args.steps)))
    config = work / "config.yaml"
    config.write_text(
        f"kinds:\n  cogvideox:\n    pool_size: {args.pool_size}\n    num_cpus: {1.0 / args.pool_size}\n"
        f"    batch_size: {args.batch_size}\n"
    )
    prepare_models(load_config(str(config)), ["cogvideox"])  # the kind's tiny models, built before timing
    if args.compare:  # and the other copy's (its cache layout may differ)
        build = "from raypipe.config import load_config; from raypipe.run import prepare_models; "
        build += f"prepare_models(load_config({str(config)!r}), ['cogvideox'])"
        env_other = {**env, "PYTHONPATH": str(args.compare.resolve())}
        subprocess.run([sys.executable, "-c", build], cwd=args.compare, env=env_other, check=True)
    print(
        f"{args.rows} rows of {args.frames}x{args.size}x{args.size}, {args.steps} steps, tiny CogVideoX; "
        f"{args.pool_size} actors, batch_size {args.batch_size}; {os.cpu_count()} cores",
        flush=True,
    )
    header = " | ".join(f"{name:>{max(8, len(name))}}" for name, _, _ in PHASES)
    print(f"{'tree':>7} | {'load':>5} | {header} | first generation | exit   | CPU s | actors' CPU s to loaded | busy")
    firsts: dict[str, list[float]] = {}
    trees = [("this", None)] + ([("compare", args.compare.resolve())] if args.compare else [])
    for repeat, (label, tree) in ((r, t) for r in range(args.repeat) for t in trees):
        load = os.getloadavg()[0]
        steps = one_run(manifest, config, work / f"out-{label}-{repeat}", env, tree)
        cells = " | ".join(
            f"{steps[end] - steps[start]:>{max(8, len(name))}.2f}"
            if start in steps and end in steps
            else f"{'-':>{max(8, len(name))}}"
            for name, start, end in PHASES
        )
        firsts.setdefault(label, []).append(steps["first_generation"])
        busy = ", ".join(f"{pool} {ratio:.0%}" for pool, ratio in steps["busy_ratio"].items() if ratio is not None)
        print(
            f"{label:>7} | {load:5.2f} | {cells} | {steps['first_generation']:16.2f} | {steps['exit']:6.1f} | "
            f"{steps['cpu']:5.1f} | {', '.join(f'{c:.1f}' for c in steps['load_cpu']) or '-':>23} | {busy}",
            flush=True,
        )
        if args.processes:
            top = sorted(LAST.items(), key=lambda item: -item[1])
            print("        CPU s by process: " + ", ".join(f"{name} {cpu:.1f}" for name, cpu in top), flush=True)
    for label, values in firsts.items():
        print(f"{label}: first_generation_s median={statistics.median(values):.2f} min={min(values):.2f}")
    print(f"outputs in {work}")


if __name__ == "__main__":
    main()
