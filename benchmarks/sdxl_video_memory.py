"""SDXL video by chunks: does memory grow with the video's length? (CPU, tiny:sdxl_video)

    .venv/bin/python benchmarks/sdxl_video_memory.py                      # ~1-2 min on 2 idle cores
    .venv/bin/python benchmarks/sdxl_video_memory.py --size 256 --frames 8 --repeats 1 4 16

Each configuration runs one row through SDXLVideoStage in a fresh process (the stage's own
code, no Ray). After the pipeline is loaded the process's peak RSS is reset
(/proc/self/clear_refs), so "peak during row" is what the row itself needed on top of the loaded
model. "model-side" = that peak minus the finished uint8 frames, which the stage must hand over
whole: it should stay flat as num_repeats grows (only the last num_conditioning_frames latents
are kept, each chunk is decoded as soon as it is made) and move with decode_chunk_size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from memory import rss_mib  # benchmarks/memory.py (scripts run from benchmarks/ on sys.path)


def one_row(size: int, frames: int, repeats: int, decode_chunk_size: int, steps: int) -> dict:
    import torch

    from raypipe.config import load_config
    from raypipe.families.sdxl_video.stage import SDXLVideoStage
    from raypipe.schema import validate_row

    config = load_config().kinds["sdxl_video"]
    config.options["decode_chunk_size"] = decode_chunk_size
    stage = SDXLVideoStage(config)
    stage.setup()
    torch.set_num_threads(1)  # comparable CPU seconds whatever else runs on the machine
    row = validate_row(
        {
            "id": "bench",
            "kind": "sdxl_video",
            "prompt": "a lighthouse at dusk",
            "num_frames": frames,
            "num_repeats": repeats,
            "height": size,
            "width": size,
            "num_inference_steps": steps,
        },
        config.defaults,
    )
    loaded = rss_mib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    cpu = time.process_time()
    [result] = stage.process([row])
    cpu = time.process_time() - cpu
    assert result.meta["status"] == "ok", result.meta["error"]
    peak = rss_mib("VmHWM")
    output = result.frames.nbytes / 2**20
    return {
        "repeats": repeats,
        "video_frames": int(result.frames.shape[0]),
        "decode_chunk_size": decode_chunk_size,
        "loaded_rss_mib": round(loaded),
        "peak_over_loaded_mib": round(peak - loaded, 1),
        "output_frames_mib": round(output, 1),
        "model_side_mib": round(peak - loaded - output, 1),
        "cpu_s_per_frame": round(cpu / result.frames.shape[0], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=8, help="frames per chunk")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--decode-chunk-sizes", type=int, nargs="+", default=[8, 2])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_row(**json.loads(args.child))))
        return
    runs = [(r, args.decode_chunk_sizes[0]) for r in args.repeats]
    runs += [(args.repeats[-1], d) for d in args.decode_chunk_sizes[1:]]
    print(f"tiny:sdxl_video, {args.size}x{args.size}, {args.frames} frames a chunk, {args.steps} steps, CPU")
    header = (
        "repeats",
        "video_frames",
        "decode_chunk_size",
        "loaded_rss_mib",
        "peak_over_loaded_mib",
        "output_frames_mib",
        "model_side_mib",
        "cpu_s_per_frame",
    )
    print(" | ".join(header))
    for repeats, decode in runs:
        child = json.dumps(
            {
                "size": args.size,
                "frames": args.frames,
                "repeats": repeats,
                "decode_chunk_size": decode,
                "steps": args.steps,
            }
        )
        out = subprocess.run([sys.executable, __file__, "--child", child], check=True, capture_output=True, text=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(" | ".join(str(result[k]) for k in header), flush=True)


if __name__ == "__main__":
    main()
