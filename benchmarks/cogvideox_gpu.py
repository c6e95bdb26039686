"""The GPU check: CogVideoX-5B's transformer at its real size with random weights, denoising steps at
49 x 480 x 720 (13 x 60 x 90 latents, 17,776 tokens with the 226 text tokens), as the pipeline runs them.

    python benchmarks/cogvideox_gpu.py                          # one GPU, bf16
    python benchmarks/cogvideox_gpu.py --compile                # torch.compile'd transformer
    python benchmarks/cogvideox_gpu.py --sp 2                   # 2 GPUs: sequence parallel
    python benchmarks/cogvideox_gpu.py --sp 2 --cfg-parallel    # 4 GPUs: SP 2 x CFG 2
    python benchmarks/cogvideox_gpu.py --tiny --device cpu      # the same code on a tiny model, on CPU

A step is one transformer call on the CFG batch of 2 (unconditional and conditional), with the RoPE
tables the pipeline makes. Prints one JSON line: seconds a step (the mean of --steps after --warmup),
TFLOP a step (torch.utils.flop_counter on the meta device: exact for this architecture), TFLOP/s,
MFU (against --peak-tflops, default from the GPU's name: 989 dense BF16 for H100 / H200), peak GPU
memory. With --sp N (or --cfg-parallel) N x (2) ranks are spawned, one GPU each (CUDA_VISIBLE_DEVICES),
and wired the way raypipe's gang ranks are (raypipe.parallel.context.join: xDiT's USP attention where
xfuser is installed, raypipe's Ulysses over NCCL otherwise; gloo on CPU); MFU is then per GPU.

Only torch and diffusers are needed for one rank (benchmarks/random_weights.py); --sp / --cfg-parallel
also import raypipe.parallel (pydantic, PyYAML, fsspec, yunchang). benchmarks/gpu_check.sh brings
what a GPU machine lacks and runs the whole check.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# CogVideoX-5B's transformer/config.json differs from diffusers' CogVideoXTransformer3DModel defaults in
# these only (tests/test_real_configs.py checks the built config against the published values).
COGVIDEOX_5B_ARGS = {"num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True}
# The same code on a few-kilobyte model (CPU in seconds): heads of 16 for the 3D RoPE.
TINY_ARGS = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "num_layers": 2,
    "text_embed_dim": 32,
    "time_embed_dim": 16,
    "sample_width": 8,
    "sample_height": 8,
    "sample_frames": 9,
    "max_text_seq_length": 16,
    "use_rotary_positional_embeddings": True,
}
# Dense BF16 peak TFLOP/s by a piece of the GPU's name (the first match wins).
PEAK_TFLOPS = [("H200", 989.0), ("H100", 989.0), ("H800", 989.0), ("B200", 2250.0), ("A100", 312.0),
               ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0)]  # fmt: skip


def peak_tflops(device_name: str) -> float | None:
    return next((peak for piece, peak in PEAK_TFLOPS if piece in device_name), None)


def shapes(tiny: bool) -> tuple[dict, tuple[int, int, int]]:
    """Model arguments and the video (frames, height, width)."""
    return (TINY_ARGS, (9, 64, 64)) if tiny else (COGVIDEOX_5B_ARGS, (49, 480, 720))


def step_inputs(model, frames: int, height: int, width: int, dtype, device) -> dict:
    """The transformer's arguments for one denoising step on the CFG batch of 2, as CogVideoXPipeline
    makes them: latents, T5 text states, a timestep, and (5B) the 3D RoPE tables. The video is at the
    model's own sample size, where the pipeline's RoPE crop region is the whole token grid. (Built here
    from diffusers' get_3d_rotary_pos_embed, so that no pipeline, and so no transformers, is imported.)"""
    import torch
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    config = model.config
    g = torch.Generator().manual_seed(0)
    latent = ((frames - 1) // config.temporal_compression_ratio + 1, config.in_channels, height // 8, width // 8)
    text = (2, config.max_text_seq_length, config.text_embed_dim)
    inputs = {
        "hidden_states": torch.randn(2, *latent, generator=g).to(device, dtype),
        "encoder_hidden_states": torch.randn(*text, generator=g).to(device, dtype),
        "timestep": torch.tensor([500, 500], device=device),
    }
    if config.use_rotary_positional_embeddings:
        grid = (height // (8 * config.patch_size), width // (8 * config.patch_size))
        if grid != (config.sample_height // config.patch_size, config.sample_width // config.patch_size):
            raise ValueError(f"the video must be at the model's sample size, got {height}x{width}")
        inputs["image_rotary_emb"] = get_3d_rotary_pos_embed(
            embed_dim=config.attention_head_dim,
            crops_coords=((0, 0), grid),
            grid_size=grid,
            temporal_size=latent[0],
            device=torch.device(device),
        )
    return inputs


def tflop_per_step(args: dict, frames: int, height: int, width: int) -> float:
    """FLOPs of one step, counted by torch on the meta device (no weights)."""
    import torch
    from diffusers import CogVideoXTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = CogVideoXTransformer3DModel(**args)
    inputs = step_inputs(model, frames, height, width, torch.float32, "meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, return_dict=False)
    return counter.get_total_flops() / 1e12


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(model, inputs: dict, device: str, steps: int, warmup: int) -> float:
    """Mean seconds of a step (one transformer call) after `warmup` calls."""
    import torch

    with torch.no_grad():
        for _ in range(warmup):
            model(**inputs, return_dict=False)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            model(**inputs, return_dict=False)
        _sync(device)
    return (time.perf_counter() - started) / steps


def one_rank(opts, rank: int = 0, world: int = 1, init_method: str = "", out_dir: str = "") -> dict:
    import diffusers  # noqa: F401 - imported before the clock starts
    import torch

    from benchmarks.random_weights import random_cogvideox

    device = opts.device
    if device.startswith("cuda") and world > 1:
        device = "cuda"  # each rank sees one GPU (CUDA_VISIBLE_DEVICES)
    if device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[opts.dtype]
    args, (frames, height, width) = shapes(opts.tiny)
    report: dict = {"rank": rank}
    started = time.perf_counter()
    model = random_cogvideox(args, dtype, device)
    report["build_s"] = time.perf_counter() - started
    backend = "none"
    if world > 1:
        from raypipe.config import SequenceParallelConfig
        from raypipe.parallel.context import join
        from raypipe.parallel.hooks import enable_sequence_parallel

        sp = SequenceParallelConfig(backend=opts.backend, cfg_parallel=opts.cfg_parallel)
        ctx = join(rank, world, opts.sp, init_method, sp, device)
        wiring = "raypipe.families.cogvideox.parallel:parallelize"
        enable_sequence_parallel(SimpleNamespace(transformer=model), ctx, wiring)
        backend = ctx.backend
    if opts.compile:
        model = torch.compile(model)
    inputs = step_inputs(model, frames, height, width, dtype, device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    report["seconds_per_step"] = measure(model, inputs, device, opts.steps, opts.warmup)
    report["backend"] = backend
    if device.startswith("cuda"):
        report["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        report["device_name"] = torch.cuda.get_device_name()
    if out_dir:
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(report, f)
    return report


def _spawned(rank: int, opts, world: int, init_method: str, out_dir: str) -> None:
    if opts.device.startswith("cuda"):
        os.environ["CUDA_VISIBLE_DEVICES"] = str(rank)  # before CUDA starts in this process
    one_rank(opts, rank, world, init_method, out_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and video (the code path, in seconds)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation, allocator)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the transformer")
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel degree (ranks per CFG branch)")
    parser.add_argument("--cfg-parallel", action="store_true", help="the two CFG branches on two halves: 2 x sp ranks")
    parser.add_argument("--backend", default="auto", choices=["auto", "ulysses", "xdit"], help="as sp.backend")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense peak (default: from its name)")
    opts = parser.parse_args()

    import torch

    if opts.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: use --device cpu (with --tiny for a quick run)")
    world = opts.sp * (2 if opts.cfg_parallel else 1)
    if opts.device.startswith("cuda") and world > torch.cuda.device_count():
        parser.error(f"--sp {opts.sp}{' --cfg-parallel' if opts.cfg_parallel else ''} needs {world} GPUs, "
                     f"this machine has {torch.cuda.device_count()}")  # fmt: skip
    args, (frames, height, width) = shapes(opts.tiny)
    flops = tflop_per_step(args, frames, height, width)
    if world == 1:
        ranks = [one_rank(opts)]
    else:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory(prefix="raypipe-gpu-check-") as out_dir:
            init_method = f"tcp://127.0.0.1:{free_port()}"
            mp.spawn(_spawned, args=(opts, world, init_method, out_dir), nprocs=world, join=True)
            ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(world)]
    seconds = max(r["seconds_per_step"] for r in ranks)
    name = ranks[0].get("device_name", opts.device)
    peak = opts.peak_tflops or (peak_tflops(name) if opts.device.startswith("cuda") else None)
    tokens = args.get("max_text_seq_length", 226) + ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    result = {
        "model": "tiny CogVideoX" if opts.tiny else "CogVideoX-5B transformer (random weights)",
        "video": f"{frames}x{height}x{width}",
        "tokens": tokens,
        "cfg_batch": 2,
        "device": opts.device,
        "device_name": name,
        "dtype": opts.dtype,
        "compile": opts.compile,
        "sp": opts.sp,
        "cfg_parallel": opts.cfg_parallel,
        "ranks": world,
        "backend": ranks[0]["backend"],
        "steps": opts.steps,
        "warmup": opts.warmup,
        "build_s": max(r["build_s"] for r in ranks),
        "seconds_per_step": seconds,
        "tflop_per_step": flops,
        "tflop_per_second": flops / seconds,
        "peak_tflops_per_gpu": peak,
        "mfu": flops / seconds / (peak * world) if peak else None,
        "peak_memory_gib": max((r.get("peak_memory_gib", 0.0) for r in ranks), default=0.0) or None,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
