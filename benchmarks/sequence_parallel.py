"""Sequence parallelism on CPU: seconds and peak memory per rank, SP 1 vs SP 2 (Ulysses, gloo).

    .venv/bin/python benchmarks/sequence_parallel.py            # the defaults below: minutes on 2 cores
    .venv/bin/python benchmarks/sequence_parallel.py --frames 49 --size 256 --steps 1 --repeat 2

Each configuration runs on a gang (raypipe/parallel/gang.py) in a local Ray, the same code a
pool actor drives: SP 1 is a gang of one rank, SP 2 two ranks that shard the video tokens by
latent rows. The model is a random-weight CogVideoX with a bigger transformer than `tiny:` (so
that the transformer, not process overhead, dominates); its text encoder and VAE are the tiny
ones. Per rank: wall and CPU seconds of the denoising loop (up to the VAE decode, which only
rank 0 runs; CPU seconds hold up on a busy machine, wall seconds do not), peak RSS during the
loop and during the whole row, RSS before the row (the loaded process); the row's wall time;
and the largest difference of the frames from SP 1's (levels of 255).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_model(path: Path, heads: int, head_dim: int, layers: int) -> Path:
    """A CogVideoX pipeline: tiny text encoder and VAE, a transformer of the given size."""
    if (path / "model_index.json").exists():
        return path
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    from raypipe.families.cogvideox.tiny import tiny_cogvideox_components

    components = tiny_cogvideox_components()
    components["transformer"] = CogVideoXTransformer3DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=4,
        time_embed_dim=64,
        text_embed_dim=32,
        num_layers=layers,
        sample_width=32,
        sample_height=32,
        sample_frames=49,
        patch_size=2,
        temporal_compression_ratio=4,
        max_text_seq_length=32,
    )
    CogVideoXPipeline(**components).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--size", type=int, default=256, help="height = width, pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1, help="timed rows per configuration (after a warm-up)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray")
    args = parser.parse_args(argv)

    import numpy as np
    import ray

    from raypipe.config import KindConfig
    from raypipe.families.cogvideox.stage import CogVideoXStage
    from raypipe.parallel.gang import Gang
    from raypipe.schema import validate_row

    cache = Path(os.environ.get("RAYPIPE_CACHE", Path.home() / ".cache" / "raypipe"))
    model = build_model(
        cache / "bench" / f"cogvideox-h{args.heads}x{args.head_dim}-l{args.layers}",
        args.heads,
        args.head_dim,
        args.layers,
    )
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    tokens = ((args.frames - 1) // 4 + 1) * (args.size // 16) ** 2
    print(
        f"model: {args.heads} heads x {args.head_dim}, {args.layers} layers; video {args.frames} frames "
        f"{args.size}x{args.size} = {tokens} video tokens (+32 text), {args.steps} steps, CFG (batch 2); "
        f"Ray with {args.cpus} CPUs",
        flush=True,
    )

    runs = [("SP1: 1 rank x 1 thread", 1, 1), ("SP1: 1 rank x 2 threads", 1, 2), ("SP2: 2 ranks x 1 thread", 2, 1)]
    frames_sp1 = None
    lines = [
        "| configuration | row s (wall) | denoise s per rank: wall (CPU) | "
        "peak RSS MiB per rank: denoise (whole row) | RSS before the row MiB per rank | max frame diff vs SP1 |",
        "|---|---|---|---|---|---|",
    ]
    for label, degree, threads in runs:
        config = KindConfig(
            model=str(model), sp={"backend": "ulysses", "rank_num_cpus": threads, "row_timeout_s": 3600, "retries": 0}
        )
        row = validate_row(
            {
                "id": "bench",
                "kind": "cogvideox",
                "prompt": "a red kite over a beach",
                "seed": 1,
                "num_frames": args.frames,
                "height": args.size,
                "width": args.size,
                "num_inference_steps": args.steps,
                "guidance_scale": 6.0,
                "sp_degree": degree,
            }
        )
        gang = Gang(CogVideoXStage, config, degree)
        t0 = time.perf_counter()
        gang.start()
        started = time.perf_counter() - t0
        gang.generate([row.model_copy(update={"num_inference_steps": 1, "num_frames": 9})], [{}])  # warm-up
        walls, stats = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            (video,) = gang.generate([row], [{}])
            walls.append(time.perf_counter() - t0)
            stats.append(gang.last_stats)
        gang.shutdown()
        last = stats[-1]
        if frames_sp1 is None:
            frames_sp1 = video.frames
        diff = int(np.abs(video.frames.astype(int) - frames_sp1.astype(int)).max())

        def per_rank(key: str, fmt: str = "{:.0f}", stats=stats, last=last) -> list[str]:
            return [fmt.format(statistics.median(s[r][key] for s in stats)) for r in range(len(last))]

        def pairs(first: list[str], second: list[str]) -> str:
            return " / ".join(f"{a} ({b})" for a, b in zip(first, second))

        seconds = pairs(per_rank("denoise_seconds", "{:.1f}"), per_rank("denoise_cpu_seconds", "{:.1f}"))
        peaks = pairs(per_rank("denoise_peak_rss_mb"), per_rank("peak_rss_mb"))
        lines.append(
            f"| {label} | {statistics.median(walls):.1f} | {seconds} | {peaks} | "
            f"{' / '.join(per_rank('rss_before_mb'))} | {diff} |"
        )
        print(f"{label}: gang started in {started:.1f}s, row {statistics.median(walls):.1f}s", flush=True)
    ray.shutdown()
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAYPIPE_CACHE", str(Path(tempfile.gettempdir()) / "raypipe-bench-cache"))
    sys.exit(main())
