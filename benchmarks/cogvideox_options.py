"""CogVideoX memory and speed options, and batching: what each costs on CPU (tiny:cogvideox).

    .venv/bin/python benchmarks/cogvideox_options.py                  # ~2-4 min on 2 idle cores
    .venv/bin/python benchmarks/cogvideox_options.py --size 256 384 --frames 25 --steps 4

Each line runs through CogVideoXStage in a fresh process (the stage's own code, no Ray), with the
config's `options` of that line: one row, or two rows of one batch_key (one pipeline call, or
two calls). After the pipeline is loaded the peak RSS is reset (/proc/self/clear_refs), so
"peak over loaded" is what the rows needed on top of the loaded model. CPU seconds are for one
torch thread, so they hold on a shared machine where wall time does not. "vs plain" is the
largest difference from the plain line's frames (levels of 255): slicing and batching change
nothing beyond float rounding; tiling blends overlapping tiles and step caching reuses earlier
results, so both change the video by design.

The tiny model's proportions are not CogVideoX-5B's (its transformer is 2 layers of width 32, so
the VAE dominates): the step-cache lines show that the hooks run and what they skip, not the
speed-up on the released model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from memory import rss_mib  # benchmarks/memory.py (scripts run from benchmarks/ on sys.path)

VARIANTS = {
    "plain": ({}, 1, True),
    "vae_tiling": ({"vae_tiling": True}, 1, True),
    "first_block_cache": ({"step_cache": {"type": "first_block_cache", "threshold": 0.05}}, 1, True),
    "pyramid_attention_broadcast": (
        {
            "step_cache": {
                "type": "pyramid_attention_broadcast",
                "spatial_attention_block_skip_range": 2,
                "spatial_attention_timestep_skip_range": [-1, 1001],
            }
        },
        1,
        True,
    ),
    "2 rows, 2 calls": ({}, 2, False),
    "2 rows, 1 call": ({}, 2, True),
    "2 rows, 1 call, vae_slicing": ({"vae_slicing": True}, 2, True),
}


def run(variant: str, height: int, width: int, frames: int, steps: int, out: str) -> dict:
    import numpy as np
    import torch

    from raypipe.config import load_config
    from raypipe.families.cogvideox.stage import CogVideoXStage
    from raypipe.schema import validate_row

    options, num_rows, together = VARIANTS[variant]
    config = load_config().kinds["cogvideox"].model_copy(update={"options": options})
    stage = CogVideoXStage(config)
    stage.setup()
    torch.set_num_threads(1)  # comparable CPU seconds whatever else runs on the machine
    rows = [
        validate_row(
            {
                "id": f"bench-{i}",
                "kind": "cogvideox",
                "prompt": "a lighthouse at dusk",
                "seed": i,
                "num_frames": frames,
                "height": height,
                "width": width,
                "num_inference_steps": steps,
            },
            config.defaults,
        )
        for i in range(num_rows)
    ]
    loaded = rss_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    cpu = time.process_time()
    results = stage.process(rows) if together else [stage.process([row])[0] for row in rows]
    cpu = time.process_time() - cpu
    assert all(r.meta["status"] == "ok" for r in results), [r.meta["error"] for r in results]
    peak = rss_mib("VmHWM")
    first = results[0].frames
    if variant == "plain":
        np.save(out, first)
    vs_plain = int(np.abs(first.astype(int) - np.load(out).astype(int)).max())
    return {
        "variant": variant,
        "rows": num_rows,
        "loaded_rss_mib": round(loaded),
        "peak_over_loaded_mib": round(peak - loaded, 1),
        "cpu_s_per_video": round(cpu / num_rows, 2),
        "vs_plain": vs_plain,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[256, 384], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run(**json.loads(args.child))))
        return
    import tempfile

    plain = tempfile.mktemp(suffix=".npy", prefix="cogvideox-plain-")
    (height, width) = args.size
    print(f"tiny:cogvideox, {args.frames} frames at {height}x{width}, {args.steps} steps, CPU, 1 thread")
    header = ("variant", "rows", "loaded_rss_mib", "peak_over_loaded_mib", "cpu_s_per_video", "vs_plain")
    print(" | ".join(header))
    for variant in VARIANTS:  # "plain" first: the others compare with its frames
        child = json.dumps(
            {
                "variant": variant,
                "height": height,
                "width": width,
                "frames": args.frames,
                "steps": args.steps,
                "out": plain,
            }
        )
        done = subprocess.run([sys.executable, __file__, "--child", child], capture_output=True, text=True)
        if done.returncode:
            sys.exit(done.stderr)
        line = json.loads(done.stdout.strip().splitlines()[-1])
        print(" | ".join(str(line[name]) for name in header), flush=True)


if __name__ == "__main__":
    main()
