"""The CPU cost of the quality gate's scores (raypipe/quality.py) per frame, at 480x720.

A 49-frame 480x720 video (CogVideoX's shape): a smooth random texture panning 3 px a frame, so the
optical flow has something to follow. Each score is timed apart (the median of --repeats runs),
then score_video as the writer calls it, beside the H.264 encode the same writer task does
(raypipe/video.py write_video) for scale, and the DIS optical flow beside Farneback's on the same
downscaled frames. --clip adds clip_score with a CLIP of ViT-B/32's architecture (transformers'
CLIPConfig defaults: 224 px, 12 + 12 layers) at random weights: the cost is the architecture's,
the weights do not matter for it. One thread (--threads) unless told: a CPU task's share.

    .venv/bin/python benchmarks/quality_cost.py [--frames 49] [--height 480] [--width 720] [--clip]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def panning(num_frames: int, height: int, width: int, shift: int = 3) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (height, width + shift * num_frames, 3), dtype=np.uint8)
    big = cv2.GaussianBlur(big, (0, 0), 3)
    return np.stack([big[:, i * shift : i * shift + width] for i in range(num_frames)])


def timed(fn, repeats: int) -> float:
    """The median seconds of `repeats` calls of fn()."""
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def random_clip_b32(path: Path) -> str:
    """A CLIP of ViT-B/32's shape with random weights and a CLIPProcessor, saved for load_clip."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from raypipe.models.tiny import tiny_clip_tokenizer

    config = CLIPConfig()  # the defaults are openai/clip-vit-base-patch32's architecture
    tokenizer = tiny_clip_tokenizer(max_length=config.text_config.max_position_embeddings)
    text = config.text_config
    text.vocab_size = len(tokenizer)
    text.bos_token_id, text.eos_token_id, text.pad_token_id = (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(path)
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV and torch threads")
    parser.add_argument("--clip", action="store_true", help="also clip_score with a ViT-B/32-sized CLIP")
    args = parser.parse_args()

    import cv2
    import torch

    from raypipe import quality
    from raypipe.config import QualitySettings
    from raypipe.video import write_video

    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    frames = panning(args.frames, args.height, args.width)
    n = len(frames)
    grey = quality._grey(frames)
    scale = min(1.0, 160 / max(args.height, args.width))
    small = [cv2.resize(g, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for g in grey]

    def farneback():
        for a, b in zip(small[:-1], small[1:]):
            cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)

    def changes():
        return [cv2.mean(cv2.absdiff(b, a)) for a, b in zip(frames[:-1], frames[1:])]

    parts = {
        "grey conversion": lambda: quality._grey(frames),
        "black/blank (mean, std of grey)": lambda: [quality._mean_std(g) for g in grey],
        "frozen + flicker (frame differences)": changes,
        "sharpness (Laplacian variance)": lambda: [quality._mean_std(cv2.Laplacian(g, cv2.CV_64F)) for g in grey],
        "motion_score (DIS, 160 px, incl. downscale)": lambda: quality.motion_score(grey, 160),
        "  Farneback on the same 160 px frames": farneback,
    }
    loads = os.getloadavg()
    print(
        f"quality scores of a {n}-frame {args.height}x{args.width} video, {args.threads} thread(s), "
        f"median of {args.repeats}; load average {loads[0]:.2f} {loads[1]:.2f} {loads[2]:.2f} "
        f"on {os.cpu_count()} CPUs"
    )
    for name, fn in parts.items():
        print(f"  {name:46s} {1000 * timed(fn, args.repeats) / n:7.2f} ms/frame")
    total = timed(lambda: quality.score_video(frames), args.repeats)
    name = "score_video (all of the above but Farneback)"
    print(f"  {name:46s} {1000 * total / n:7.2f} ms/frame  ({total:.2f} s a video)")
    with tempfile.TemporaryDirectory() as tmp:
        encode = timed(lambda: write_video(frames, 8, os.path.join(tmp, "v.mp4")), max(1, args.repeats // 2))
        print(f"  {'for scale: H.264 encode + commit (write_video)':46s} {1000 * encode / n:7.2f} ms/frame")
        if args.clip:
            settings = QualitySettings(clip_model=random_clip_b32(Path(tmp) / "clip-b32"), clip_frames=8)
            quality.clip_score(frames, "a cat", settings.clip_model, 8)  # load once, as a worker process does
            clip = timed(lambda: quality.clip_score(frames, "a cat", settings.clip_model, 8), args.repeats)
            name = "clip_score (ViT-B/32 shape, 8 frames sampled)"
            print(f"  {name:46s} {1000 * clip / n:7.2f} ms/frame  ({clip:.2f} s a video)")
    loads = os.getloadavg()
    print(f"load average after: {loads[0]:.2f} {loads[1]:.2f} {loads[2]:.2f}")


if __name__ == "__main__":
    main()
