"""Writes manifests/inputs/moving_shapes.mp4, the input video of the example manifests
(v2v and ControlNet rows): a bright disc crossing a gradient in front of a dark square, 16
frames of 64x64 at 8 fps, clear edges for canny and clear depth layers.

    .venv/bin/python manifests/inputs/make_moving_shapes.py
"""

from pathlib import Path

import numpy as np

from raypipe.video import write_video


def moving_shapes(num_frames: int = 16, height: int = 64, width: int = 64) -> np.ndarray:
    """uint8 [F, H, W, 3]: the same clip every time (no randomness)."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        frame = np.stack([40 + 120 * ys / height, 60 + 80 * xs / width, np.full_like(xs, 140.0)], axis=-1)
        frame[height // 2 : height - 8, 8:28] = (30, 30, 40)  # a square that stays put
        cx, cy = 8 + (width - 16) * i / max(1, num_frames - 1), height / 3
        frame[(xs - cx) ** 2 + (ys - cy) ** 2 <= 64] = (250, 230, 120)  # a disc crossing the frame
        frames[i] = frame.astype(np.uint8)
    return frames


if __name__ == "__main__":
    out = Path(__file__).with_name("moving_shapes.mp4")
    written = write_video(moving_shapes(), 8, str(out))
    print(f"{written.uri}: {written.bytes} bytes")
