"""raypipe against a plain sequential diffusers loop: the same small generations, the same MP4s.

    .venv/bin/python benchmarks/overhead.py [--rows 64] [--frames 25] [--size 96] [--steps 20]
        [--pool-size 2] [--batch-size 2] [--no-side-by-side]

Both run as separate processes and are timed whole: Python start-up, imports, model loading and
(for raypipe) a fresh local Ray are inside the time. Beside each time: the CPU seconds of all its
processes (Ray's too: benchmarks/proctree.py), which the machine's other jobs change far less.

- loop: this file with --loop: CogVideoXPipeline.from_pretrained of the tiny CogVideoX, then for
  each row the pipeline call with the row's seed and the MP4 written with raypipe.video.write_video
  (the same H.264 encoder and commit raypipe uses). torch uses both cores (its default).
- raypipe: `raypipe run MANIFEST --out DIR --config C --address local`, C giving the CogVideoX
  pool two actors of 0.5 CPU each (Ray sets OMP_NUM_THREADS=1 for them: one torch thread
  each), which leaves a CPU for the CPU stages that decode, encode and commit.

Then, the upper bound (skipped with --no-side-by-side): two single-threaded loops at once, each on
half the rows (the pool's two actors without Ray or CPU stages around them), timed whole.

raypipe's own figures come from its run summary (OUT/runs/<run_id>.json): when its first
generation started, how busy its actors were from their models loaded to the pool's last video,
and the seconds from that last video to the process's exit.

The last lines are ratio=<raypipe videos per second / loop videos per second> and
bound_ratio=<side-by-side videos per second / loop videos per second>.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rows(n: int, frames: int, size: int, steps: int) -> list[dict]:
    return [
        {
            "id": f"bench-{i:03d}",
            "kind": "cogvideox",
            "prompt": f"a paper boat on a river, take {i}",
            "num_frames": frames,
            "height": size,
            "width": size,
            "num_inference_steps": steps,
            "guidance_scale": 6.0,
            "fps": 8,
        }
        for i in range(n)
    ]


def loop(manifest: str, out: str, threads: int | None = None) -> None:
    """The plain loop: what one would write without raypipe. Prints the median seconds of one
    pipeline call (threads: torch's intra-op threads; default torch's own, both cores here)."""
    import statistics

    import numpy as np
    import torch
    from diffusers import CogVideoXPipeline

    from raypipe.models.tiny import resolve_model
    from raypipe.schema import seed_from_id
    from raypipe.video import write_video

    if threads:
        torch.set_num_threads(threads)
    pipe = CogVideoXPipeline.from_pretrained(resolve_model("tiny:cogvideox"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    calls = []
    with open(manifest) as f:
        for line in f:
            row = json.loads(line)
            started = time.perf_counter()
            out_np = pipe(
                prompt=row["prompt"],
                num_frames=row["num_frames"],
                height=row["height"],
                width=row["width"],
                num_inference_steps=row["num_inference_steps"],
                guidance_scale=row["guidance_scale"],
                generator=torch.Generator("cpu").manual_seed(seed_from_id(row["id"])),
                output_type="np",
                max_sequence_length=pipe.transformer.config.max_text_seq_length,
            )
            calls.append(time.perf_counter() - started)
            frames = (np.clip(out_np.frames[0], 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            write_video(frames, row["fps"], f"{out}/videos/{row['id']}.mp4")
    print(f"median_call_s={statistics.median(calls):.3f}")


def side_by_side(manifest: Path, work: Path, env: dict[str, str]) -> float:
    """Two single-threaded loops at once, each on half the rows: what the pool's two actors would
    get from the 2 cores with no Ray and no CPU stages around them."""
    lines = manifest.read_text().splitlines(keepends=True)
    halves = [work / "half-0.jsonl", work / "half-1.jsonl"]
    for i, half in enumerate(halves):
        half.write_text("".join(lines[i::2]))
    started = time.perf_counter()
    cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2])
    loops = [
        subprocess.Popen(
            [sys.executable, __file__, "--loop", str(half), str(work / f"side-{i}"), "--threads", "1"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i, half in enumerate(halves)
    ]
    medians = [out.strip().splitlines()[-1] for out, _ in (p.communicate() for p in loops)]
    seconds = time.perf_counter() - started
    cpu = sum(resource.getrusage(resource.RUSAGE_CHILDREN)[:2]) - cpu  # the two loops, reaped here
    print(
        f"side by side, one torch thread each: {seconds:6.1f} s  {len(lines) / seconds:.3f} videos/s  "
        f"{cpu:6.1f} CPU s ({', '.join(medians)}; the one that ends first leaves the other alone)"
    )
    return seconds


def raypipe_figures(out: Path, launch: float, exited: float) -> str:
    """What raypipe's run summary says of its time: start-up, utilisation, the end."""
    [summary_file] = (out / "runs").glob("*.json")
    summary = json.loads(summary_file.read_text())
    zero = summary["started_at"] - summary["phases"]["run_started"]  # the process's start
    first = zero + summary["phases"]["first_generation"] - launch
    last = max(a["last_call_end"] for a in summary["actors"])
    busy = ", ".join(f"{a['busy_ratio']:.0%}" for a in summary["actors"])
    pool = summary["pools"]["cogvideox"]
    return (
        f"first generation {first:.1f} s after the launch; actors busy {pool['busy_ratio']:.0%} ({busy}) "
        f"from their models loaded to the last video; {exited - last:.1f} s from the last video to the exit"
    )


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str, float]:
    """Seconds the command took, its standard output, and the CPU seconds of all its processes."""
    from proctree import run_measured

    started = time.perf_counter()
    result, cpu = run_measured(command, cwd=REPO, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, result.stdout, cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--side-by-side",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time two single-threaded loops running at once, the upper bound (default: yes)",
    )
    parser.add_argument("--loop", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loop:
        loop(*args.loop, threads=args.threads)
        return

    import decord

    from raypipe.models.tiny import resolve_model

    work = Path(tempfile.mkdtemp(prefix="raypipe-overhead-"))
    env = {**os.environ, "RAYPIPE_CACHE": os.environ.get("RAYPIPE_CACHE", str(work / "cache"))}
    os.environ["RAYPIPE_CACHE"] = env["RAYPIPE_CACHE"]
    resolve_model("tiny:cogvideox")  # built once, before either is timed
    manifest = work / "bench.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows(args.rows, args.frames, args.size, args.steps)))
    config = work / "config.yaml"
    config.write_text(
        f"kinds:\n  cogvideox:\n    pool_size: {args.pool_size}\n    num_cpus: {1.0 / args.pool_size}\n"
        f"    batch_size: {args.batch_size}\n"
    )
    print(
        f"{args.rows} videos of {args.frames}x{args.size}x{args.size}, {args.steps} steps with CFG, tiny CogVideoX; "
        f"raypipe: {args.pool_size} actors, batch_size {args.batch_size}; {os.cpu_count()} cores; "
        f"load average before: {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    loop_seconds, loop_out, loop_cpu = timed(
        [sys.executable, __file__, "--loop", str(manifest), str(work / "loop")], env
    )
    print(
        f"loop:    {loop_seconds:6.1f} s  {args.rows / loop_seconds:.3f} videos/s  {loop_cpu:6.1f} CPU s "
        f"({loop_out.strip().splitlines()[-1]}, torch's default threads)",
        flush=True,
    )
    raypipe = str(Path(sys.executable).with_name("raypipe"))
    launch = time.time()
    ray_seconds, _, ray_cpu = timed(
        [raypipe, "run", str(manifest), "--out", str(work / "raypipe"), "--config", str(config), "--address", "local"],
        env,
    )
    print(f"raypipe: {ray_seconds:6.1f} s  {args.rows / ray_seconds:.3f} videos/s  {ray_cpu:6.1f} CPU s", flush=True)
    print(f"  ({raypipe_figures(work / 'raypipe', launch, launch + ray_seconds)})", flush=True)
    bound_seconds = side_by_side(manifest, work, env) if args.side_by_side else None

    for name in ("loop", "raypipe"):  # both wrote every video, complete
        videos = sorted((work / name / "videos").glob("*.mp4"))
        assert len(videos) == args.rows, (name, len(videos))
        assert all(len(decord.VideoReader(str(v))) == args.frames for v in videos), name
    print(f"load average after: {os.getloadavg()[0]:.2f}; outputs in {work}")
    print(f"ratio={(args.rows / ray_seconds) / (args.rows / loop_seconds):.3f}")
    if bound_seconds:
        print(f"bound_ratio={loop_seconds / bound_seconds:.3f} (raypipe at {bound_seconds / ray_seconds:.0%} of it)")


if __name__ == "__main__":
    main()
