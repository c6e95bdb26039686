"""Writes manifests/inputs/sunset.png and sunset.mp4, the inputs of the CogVideoX-family example
manifests: a 64x64 sunset (sky gradient, sun disc, dark sea) as the i2v / ExVideo-SVD first
frame, and 17 frames of it at 8 fps with the sun drifting right as the v2v input video.

    .venv/bin/python manifests/inputs/make_sunset.py
"""

from pathlib import Path

import numpy as np
from PIL import Image

from raypipe.video import write_video


def sunset(shift: int = 0, size: int = 64) -> np.ndarray:
    """uint8 [H, W, 3], the sun `shift` pixels right of its start (no randomness)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    frame = np.stack([200 + 40 * ys / size, 90 + 80 * ys / size, 150 - 100 * ys / size], axis=-1)
    frame[(xs - 20 - shift) ** 2 + (ys - 26) ** 2 < 81] = (255, 220, 120)  # the sun
    frame[ys >= size * 11 // 16] = (30, 50, 90)  # the sea
    return frame.clip(0, 255).astype(np.uint8)


if __name__ == "__main__":
    here = Path(__file__).parent
    Image.fromarray(sunset()).save(here / "sunset.png", optimize=True)
    written = write_video(np.stack([sunset(i) for i in range(17)]), 8, str(here / "sunset.mp4"))
    print(f"{here / 'sunset.png'}; {written.uri}: {written.bytes} bytes")
