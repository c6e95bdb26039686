"""raypipe against a plain sequential diffusers loop: the same small generations, the same MP4s.

    .venv/bin/python benchmarks/overhead.py [--rows 48] [--frames 25] [--size 96] [--steps 20]
        [--pool-size 2] [--batch-size 2] [--side-by-side]

Both run as separate processes and are timed whole: Python start-up, imports, model loading and
(for raypipe) a fresh local Ray are inside the time.

- loop: this file with --loop: CogVideoXPipeline.from_pretrained of the tiny CogVideoX, then for
  each row the pipeline call with the row's seed and the MP4 written with raypipe.video.write_video
  (the same H.264 encoder and commit raypipe uses). torch uses both cores (its default).
- raypipe: `raypipe run MANIFEST --out DIR --config C --address local`, C giving the CogVideoX
  pool two actors of 0.5 CPU each (Ray sets OMP_NUM_THREADS=1 for them: one torch thread
  each), which leaves a CPU for the CPU stages that decode, encode and commit.

--side-by-side: then two single-threaded loops at once, each on half the rows (the pool's two
actors without Ray or CPU stages around them), timed whole.

The last line is ratio=<raypipe videos per second / loop videos per second>.
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


def side_by_side(manifest: Path, work: Path, env: dict[str, str]) -> None:
    """Two single-threaded loops at once, each on half the rows: what the pool's two actors would
    get from the 2 cores with no Ray and no CPU stages around them."""
    lines = manifest.read_text().splitlines(keepends=True)
    halves = [work / "half-0.jsonl", work / "half-1.jsonl"]
    for i, half in enumerate(halves):
        half.write_text("".join(lines[i::2]))
    started = time.perf_counter()
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
    print(
        f"side by side, one torch thread each: {seconds:6.1f} s  {len(lines) / seconds:.3f} videos/s "
        f"({', '.join(medians)}; the one that ends first leaves the other alone)"
    )


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds the command took, and its standard output."""
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=48)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="also time two single-threaded loops running at once (the pool's share of the cores)",
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

    loop_seconds, loop_out = timed([sys.executable, __file__, "--loop", str(manifest), str(work / "loop")], env)
    print(
        f"loop:    {loop_seconds:6.1f} s  {args.rows / loop_seconds:.3f} videos/s  "
        f"({loop_out.strip().splitlines()[-1]}, torch's default threads)",
        flush=True,
    )
    raypipe = str(Path(sys.executable).with_name("raypipe"))
    ray_seconds, _ = timed(
        [raypipe, "run", str(manifest), "--out", str(work / "raypipe"), "--config", str(config), "--address", "local"],
        env,
    )
    print(f"raypipe: {ray_seconds:6.1f} s  {args.rows / ray_seconds:.3f} videos/s", flush=True)
    if args.side_by_side:
        side_by_side(manifest, work, env)

    for name in ("loop", "raypipe"):  # both wrote every video, complete
        videos = sorted((work / name / "videos").glob("*.mp4"))
        assert len(videos) == args.rows, (name, len(videos))
        assert all(len(decord.VideoReader(str(v))) == args.frames for v in videos), name
    print(f"load average after: {os.getloadavg()[0]:.2f}; outputs in {work}")
    print(f"ratio={(args.rows / ray_seconds) / (args.rows / loop_seconds):.3f}")


if __name__ == "__main__":
    main()
