"""CogVideoX-2B's transformer at its real size with random bf16 weights: one forward on CPU, sequence
parallel 1 against 2 (Ulysses over gloo), at a tiny latent grid.

    .venv/bin/python benchmarks/real_size_forward.py                 # all 30 layers (~3.4 GB a rank)
    .venv/bin/python benchmarks/real_size_forward.py --layers 2      # the suite's reduced depth

Two processes join a gloo group and build the same weights (benchmarks/random_weights.py: seeded by
parameter name, made in bf16 from the meta device, so a rank never holds an fp32 copy). Rank 0 runs
the unsharded forward first (SP 1); then both ranks wire the transformer the way a gang's rank does
(raypipe.parallel: an SPContext, `enable_sequence_parallel` with CogVideoX's wiring) and run it
sharded (SP 2: each rank holds half the video tokens and all text tokens; Ulysses attention over
gloo). Prints one JSON object: seconds of each forward, peak RSS of each rank, and the difference
of the two outputs relative to the output's largest value (only the order of float sums in
attention may differ, in bf16).

tests/test_real_configs.py runs the 2-layer variant (full width, 30 heads) and checks the
difference against TOLERANCE; BENCHMARKS.md has the figures of the full model.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# CogVideoX-2B's transformer/config.json differs from diffusers' CogVideoXTransformer3DModel defaults in
# nothing but these (tests/test_real_configs.py checks the built config against the published values).
COGVIDEOX_2B_ARGS = {"num_attention_heads": 30, "num_layers": 30, "use_rotary_positional_embeddings": False}
# SP 2 against SP 1, in bf16: max |sp2 - sp1| / max |sp1| over the output.
TOLERANCE = 2e-2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_inputs(config, frames: int, rows: int, cols: int, dtype, seed: int = 1) -> dict:
    """Latents of frames x (2 rows) x (2 cols) per token grid cell, 226 text tokens, one timestep."""
    import torch

    g = torch.Generator().manual_seed(seed)
    p = config.patch_size
    latents = torch.randn(1, frames, config.in_channels, rows * p, cols * p, generator=g).to(dtype)
    text = torch.randn(1, config.max_text_seq_length, config.text_embed_dim, generator=g).to(dtype)
    return {"hidden_states": latents, "encoder_hidden_states": text, "timestep": torch.tensor([500])}


def sequence_parallel(transformer, rank: int, world: int, group) -> None:
    """Wire a CogVideoX transformer as rank `rank` of a `world`-rank gang on `group` (raypipe.parallel's
    public entry points: the rank's context, the family's named-hook wiring)."""
    from types import SimpleNamespace

    from raypipe.parallel.context import SPContext
    from raypipe.parallel.hooks import enable_sequence_parallel

    ctx = SPContext(sp_rank=rank, sp_size=world, sp_group=group)
    enable_sequence_parallel(
        SimpleNamespace(transformer=transformer), ctx, "raypipe.families.cogvideox.parallel:parallelize"
    )


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rank(rank: int, world: int, port: int, args: dict, grid: tuple[int, int, int], out_dir: str, threads: int):
    import torch
    import torch.distributed as dist

    from benchmarks.random_weights import random_cogvideox

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    report: dict = {"rank": rank}
    t0 = time.perf_counter()
    model = random_cogvideox(args, torch.bfloat16)
    report["build_s"] = time.perf_counter() - t0
    report["parameters"] = sum(p.numel() for p in model.parameters())
    inputs = random_inputs(model.config, *grid, torch.bfloat16)
    with torch.no_grad():
        if rank == 0:
            t0, c0 = time.perf_counter(), time.process_time()
            reference = model(**inputs, return_dict=False)[0]
            report["sp1_forward_s"] = time.perf_counter() - t0
            report["sp1_forward_cpu_s"] = time.process_time() - c0
            torch.save(reference, os.path.join(out_dir, "sp1.pt"))
        report["rss_after_sp1_mib"] = peak_rss_mib()
        dist.barrier()
        sequence_parallel(model, rank, world, dist.group.WORLD)
        seen = []  # the video tokens this rank's blocks hold: its half of the rows
        model.transformer_blocks[0].register_forward_hook(
            lambda m, a, kw, out: seen.append(out[0].shape[1]), with_kwargs=True
        )
        t0, c0 = time.perf_counter(), time.process_time()
        sharded = model(**inputs, return_dict=False)[0]
        report["sp2_forward_s"] = time.perf_counter() - t0
        report["sp2_forward_cpu_s"] = time.process_time() - c0
        report["sp2_video_tokens"] = seen[0]
        report["processor"] = type(model.transformer_blocks[0].attn1.processor).__name__
    if rank == 0:
        torch.save(sharded, os.path.join(out_dir, "sp2.pt"))
    report["peak_rss_mib"] = peak_rss_mib()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()


def run(layers: int = 30, grid: tuple[int, int, int] = (2, 4, 4), threads: int = 1) -> dict:
    """The SP 1 and SP 2 forwards of CogVideoX-2B (`layers` deep) at a latent token grid of
    (frames, rows, columns); returns the figures (see the module docstring)."""
    import torch
    import torch.multiprocessing as mp

    args = {**COGVIDEOX_2B_ARGS, "num_layers": layers}
    with tempfile.TemporaryDirectory(prefix="raypipe-real-size-") as out_dir:
        t0 = time.perf_counter()
        mp.spawn(_rank, args=(2, free_port(), args, grid, out_dir, threads), nprocs=2, join=True)
        wall = time.perf_counter() - t0
        sp1 = torch.load(os.path.join(out_dir, "sp1.pt")).float()
        sp2 = torch.load(os.path.join(out_dir, "sp2.pt")).float()
        ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(2)]
    scale = sp1.abs().max().item()
    frames, rows, cols = grid
    return {
        "model": "CogVideoX-2B transformer (random bf16 weights)",
        "layers": layers,
        "parameters": ranks[0]["parameters"],
        "latent_grid": {"frames": frames, "rows": rows, "cols": cols},
        "tokens": 226 + frames * rows * cols,
        "threads_per_rank": threads,
        "build_s": [r["build_s"] for r in ranks],
        "sp1_forward_s": ranks[0]["sp1_forward_s"],
        "sp2_forward_s": max(r["sp2_forward_s"] for r in ranks),
        # CPU seconds hold on a shared machine where wall seconds do not (gloo waits count a little)
        "sp1_forward_cpu_s": ranks[0]["sp1_forward_cpu_s"],
        "sp2_forward_cpu_s": [r["sp2_forward_cpu_s"] for r in ranks],
        "peak_rss_mib": [round(r["peak_rss_mib"]) for r in ranks],
        "sp2_video_tokens_per_rank": [r["sp2_video_tokens"] for r in ranks],
        "sp2_processor": ranks[0]["processor"],
        "finite": bool(torch.isfinite(sp1).all() and torch.isfinite(sp2).all()),
        "max_abs_diff": (sp2 - sp1).abs().max().item(),
        "max_abs_output": scale,
        "relative_diff": (sp2 - sp1).abs().max().item() / scale,
        "tolerance": TOLERANCE,
        "wall_s": wall,
        "shape": list(sp1.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30, help="transformer blocks (CogVideoX-2B: 30)")
    parser.add_argument("--frames", type=int, default=2, help="latent frames")
    parser.add_argument("--rows", type=int, default=4, help="rows of tokens (even: split over 2 ranks)")
    parser.add_argument("--cols", type=int, default=4, help="columns of tokens")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    args = parser.parse_args()
    result = run(args.layers, (args.frames, args.rows, args.cols), args.threads)
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
