"""Sequence parallelism on CPU: seconds and peak memory per rank, SP 1 vs SP 2 vs SP 4 (Ulysses, gloo).

    .venv/bin/python benchmarks/sequence_parallel.py        # rotary model, SP 1 / 2 / 4: minutes on 2 cores
    .venv/bin/python benchmarks/sequence_parallel.py --model plain --degrees 1,2 --frames 25 --size 256
    .venv/bin/python benchmarks/sequence_parallel.py --declare-gpus 4   # ranks hold 1 (declared) GPU each

Each configuration runs on a gang (raypipe/parallel/gang.py) in a local Ray, the same code a
pool actor drives: SP 1 is a gang of one rank, SP N N ranks that shard the video token sequence
(padded to a multiple of N: the default 240 px gives 15 x 15 patches a frame, 675 tokens at 9
frames, so SP 2 and SP 4 pad to 676; the old row sharding refused both). The model is a
random-weight CogVideoX with a bigger transformer than `tiny:` (so that the transformer, not
process overhead, dominates), with 3D rotary embeddings (`--model rotary`, as CogVideoX-5B and
1.5) or without (`plain`, as CogVideoX-2B); its text encoder and VAE are the tiny ones. Per
rank: wall and CPU seconds of the denoising loop (up to its last transformer call; CPU seconds
hold up on a busy machine, wall seconds do not), peak RSS during the loop and during the whole
row, RSS before the row (the loaded process); the row's wall time; the largest difference of
the frames from SP 1's (levels of 255); and the GPUs the gang holds, from its own bundles and
as Ray counts them while it is up (0 on CPU unless --declare-gpus: Ray then lends each rank one
declared GPU, and the ranks still compute on CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_model(path: Path, heads: int, head_dim: int, layers: int, rotary: bool) -> Path:
    """A CogVideoX pipeline: tiny text encoder and VAE, a transformer of the given size."""
    if (path / "model_index.json").exists():
        return path
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    from raypipe.families.cogvideox.tiny import tiny_cogvideox_components

    components = tiny_cogvideox_components()
    size = {"num_attention_heads": heads, "attention_head_dim": head_dim, "num_layers": layers, "time_embed_dim": 64}
    sample = {"sample_width": 32, "sample_height": 32, "sample_frames": 49}
    components["transformer"] = CogVideoXTransformer3DModel.from_config(
        {**components["transformer"].config, **size, **sample, "use_rotary_positional_embeddings": rotary}
    )
    CogVideoXPipeline(**components).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("rotary", "plain"), default="rotary")
    parser.add_argument("--degrees", default="1,2,4", help="sp_degree of each line, one rank thread each")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--size", type=int, default=240, help="height = width, pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1, help="timed rows per configuration (after a warm-up)")
    parser.add_argument("--cpus", type=int, default=0, help="CPUs of the local Ray (default: the largest degree)")
    parser.add_argument("--declare-gpus", type=int, default=0, help="GPUs the local Ray declares; ranks take 1 each")
    args = parser.parse_args(argv)
    degrees = [int(d) for d in args.degrees.split(",")]
    args.cpus = args.cpus or max(degrees)  # a rank holds one CPU: more ranks than cores share them

    import numpy as np
    import ray

    from raypipe.config import KindConfig
    from raypipe.families.cogvideox.stage import CogVideoXStage
    from raypipe.parallel.context import TokenLayout
    from raypipe.parallel.gang import Gang
    from raypipe.schema import validate_row

    cache = Path(os.environ.get("RAYPIPE_CACHE", Path.home() / ".cache" / "raypipe"))
    rotary = args.model == "rotary"
    model = build_model(
        cache / "bench" / f"cogvideox-{args.model}-h{args.heads}x{args.head_dim}-l{args.layers}",
        args.heads,
        args.head_dim,
        args.layers,
        rotary,
    )
    # address="local": a fresh Ray of these sizes, never a cluster someone started on this machine
    ray.init(
        address="local",
        num_cpus=args.cpus,
        num_gpus=args.declare_gpus,
        include_dashboard=False,
        logging_level="WARNING",
    )
    tokens = ((args.frames - 1) // 4 + 1) * (args.size // 16) ** 2
    print(
        f"model: {args.model}, {args.heads} heads x {args.head_dim}, {args.layers} layers; video {args.frames} frames "
        f"{args.size}x{args.size} = {tokens} video tokens (+32 text), {args.steps} steps, CFG (batch 2); "
        f"Ray with {args.cpus} CPUs, {args.declare_gpus} declared GPUs; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    frames_sp1 = None
    lines = [
        "| configuration | tokens a rank (padding) | row s (wall) | denoise s per rank: wall (CPU) | "
        "peak RSS MiB per rank: denoise (whole row) | RSS before the row MiB per rank | "
        "GPUs held: gang (Ray) | max frame diff vs SP1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for degree in degrees:
        label = f"SP{degree}: {degree} rank{'s' if degree > 1 else ''} x 1 thread"
        sp = {"backend": "ulysses", "rank_num_cpus": 1, "row_timeout_s": 3600, "retries": 0}
        if args.declare_gpus:
            sp["rank_num_gpus"] = 1
        config = KindConfig(model=str(model), sp=sp)
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
        ray_gpus = ray.cluster_resources().get("GPU", 0) - ray.available_resources().get("GPU", 0)
        gang.generate([row.model_copy(update={"num_inference_steps": 1})], [{}])  # warm-up
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

        layout = TokenLayout(tokens, degree)
        seconds = pairs(per_rank("denoise_seconds", "{:.1f}"), per_rank("denoise_cpu_seconds", "{:.1f}"))
        peaks = pairs(per_rank("denoise_peak_rss_mb"), per_rank("peak_rss_mb"))
        lines.append(
            f"| {label} | {layout.per} ({layout.padded - tokens}) | {statistics.median(walls):.1f} | {seconds} | "
            f"{peaks} | {' / '.join(per_rank('rss_before_mb'))} | {gang.gpus:g} ({ray_gpus:g}) | {diff} |"
        )
        print(f"{label}: gang started in {started:.1f}s, row {statistics.median(walls):.1f}s", flush=True)
    ray.shutdown()
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    print()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("RAYPIPE_CACHE", str(Path(tempfile.gettempdir()) / "raypipe-bench-cache"))
    sys.exit(main())
