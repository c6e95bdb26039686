"""Deforum's ControlNet units (cn_1_* .. cn_5_*), as the A1111 ControlNet extension runs them:
each enabled unit turns its input (a frame of cn_N_vid_path, an image, or with loopback_mode
the frame's init) into a control map with its preprocessor, fitted to the frame by resize_mode,
and conditions the UNet with weight cn_N_weight between cn_N_guidance_start and
cn_N_guidance_end (fractions of the steps; all three are schedules).

Preprocessors: `canny` (the extension's: the input resized so its short side is processor_res,
cv2.Canny with threshold_a / threshold_b) and the depth ones (`depth`, `depth_midas`,
`depth_leres`, `depth_leres++`, `depth_zoe`, `depth_anything`, `depth_anything_v2`): the run
config's depth model (models.depth), min-max normalised to 0..255 as the extension's MiDaS map.
`none` uses the input as the map. The unit's ControlNet model comes from the run config by the
preprocessor's kind: models.controlnet_canny / models.controlnet_depth (for `none`, by the kind
the unit's cn_N_model names). Pure functions here; the stage loads the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

UNITS = range(1, 6)
CANNY_MODULES = ("canny",)
DEPTH_MODULES = (
    "depth",
    "depth_midas",
    "depth_leres",
    "depth_leres++",
    "depth_zoe",
    "depth_anything",
    "depth_anything_v2",
)
# Deforum's names of the extension's resize modes.
RESIZE_MODES = ("Inner Fit (Scale to Fit)", "Outer Fit (Shrink to Fit)", "Just Resize")
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
# The keys of one unit, without the cn_N_ prefix, and Deforum's defaults.
UNIT_DEFAULTS = {
    "enabled": False,
    "module": "none",
    "model": "None",
    "weight": "0:(1)",
    "guidance_start": "0:(0.0)",
    "guidance_end": "0:(1.0)",
    "processor_res": 64,
    "threshold_a": 64,
    "threshold_b": 64,
    "resize_mode": "Inner Fit (Scale to Fit)",
    "control_mode": "Balanced",
    "loopback_mode": False,
    "pixel_perfect": False,
    "low_vram": False,  # memory only
    "overwrite_frames": True,  # Deforum's frame files only
    "vid_path": "",
    "mask_vid_path": "",
}
SCHEDULE_KEYS = ("weight", "guidance_start", "guidance_end")
# cn_N_vid_path ending so is one image for every frame (else a video), as Deforum tells them apart.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def kind_of(module: str, model: str) -> str | None:
    """ "canny" or "depth" (which ControlNet model a unit needs), None if neither."""
    if module in CANNY_MODULES:
        return "canny"
    if module in DEPTH_MODULES:
        return "depth"
    if module == "none":
        for kind in ("canny", "depth"):
            if kind in model.lower():
                return kind
    return None


def role(kind: str) -> str:
    """The run config's `models` role of a ControlNet kind."""
    return f"controlnet_{kind}"


@dataclass(frozen=True)
class Unit:
    """One enabled unit, checked at validation."""

    number: int
    module: str
    model: str  # as the file names it (recorded; the run config's model of `kind` runs)
    kind: str  # canny / depth
    processor_res: int
    threshold_a: float
    threshold_b: float
    resize_mode: str
    loopback: bool
    pixel_perfect: bool
    source: str  # cn_N_vid_path: a video or an image URI ("" with loopback)

    @property
    def prefix(self) -> str:
        return f"cn_{self.number}"


# ---- preprocessing ---------------------------------------------------------------------------


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The image scaled so its short side is `resolution` (cubic up, area down), padded to
    multiples of 64 by repeating the edge; and the scaled size (H, W) to crop back to (the
    extension's resize_image_with_pad)."""
    import cv2

    height, width = image.shape[:2]
    scale = float(resolution) / float(min(height, width))
    target_h, target_w = int(np.round(height * scale)), int(np.round(width * scale))
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    scaled = cv2.resize(image, (target_w, target_h), interpolation=interpolation)
    pad_h, pad_w = -target_h % 64, -target_w % 64
    return np.pad(scaled, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge"), (target_h, target_w)


def canny(image: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    """The extension's canny preprocessor: uint8 [h, w] edges at `resolution` (short side)."""
    import cv2

    padded, (height, width) = resize_with_pad(image, resolution)
    return cv2.Canny(padded, low, high)[:height, :width]


def depth_map(depth: np.ndarray) -> np.ndarray:
    """A depth prediction (larger = nearer, as MiDaS's) as the extension's depth map: min-max to
    0..255, truncated to uint8."""
    depth = depth.astype(np.float64) - depth.min()
    top = depth.max()
    depth = depth / top if top > 0 else depth
    return (depth * 255.0).clip(0, 255).astype(np.uint8)


def resolution(unit: Unit, image_shape: tuple[int, ...], height: int, width: int) -> int:
    """processor_res, or with pixel_perfect the extension's estimate from the frame's size."""
    if not unit.pixel_perfect:
        return unit.processor_res
    raw_h, raw_w = image_shape[:2]
    scale_h, scale_w = height / raw_h, width / raw_w
    scale = min(scale_h, scale_w) if unit.resize_mode == "Outer Fit (Shrink to Fit)" else max(scale_h, scale_w)
    return int(np.round(scale * min(raw_h, raw_w)))


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The extension's control-map resize for maps of many levels: area down, cubic up,
    nearest for maps of 3 to 199 colours; binary maps (edges) are thresholded back to black and
    white (Otsu). (The extension also thins one-pixel edges after upscaling; raypipe does not.)"""
    import cv2

    width, height = size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    colours = len(np.unique(image.reshape(-1, image.shape[2]), axis=0))
    binary = colours == 2 and image.min() < 16 and image.max() > 240
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < image.shape[0] * image.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    out = cv2.resize(image, size, interpolation=interpolation)
    if binary:
        grey = np.mean(out.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, grey = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        out = np.stack([grey] * 3, axis=2)
    return out


def fit(control: np.ndarray, mode: str, height: int, width: int) -> np.ndarray:
    """A control map (uint8 [h, w] or [h, w, 3]) fitted to the frame: `Just Resize` stretches,
    `Inner Fit` scales to cover and crops the centre, `Outer Fit` scales to fit inside and fills
    the rest with the median of the map's border."""
    if control.ndim == 2:
        control = np.stack([control] * 3, axis=-1)
    if mode == "Just Resize":
        return _resize(control, (width, height))
    old_h, old_w = control.shape[:2]
    scale_h, scale_w = height / old_h, width / old_w
    if mode == "Outer Fit (Shrink to Fit)":
        scale = min(scale_h, scale_w)
        borders = np.concatenate([control[0], control[-1], control[:, 0], control[:, -1]], axis=0)
        background = np.tile(np.median(borders, axis=0).astype(control.dtype)[None, None], [height, width, 1])
        scaled = _resize(control, (int(np.round(old_w * scale)), int(np.round(old_h * scale))))
        top, left = max(0, (height - scaled.shape[0]) // 2), max(0, (width - scaled.shape[1]) // 2)
        background[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
        return background
    scale = max(scale_h, scale_w)
    scaled = _resize(control, (int(np.round(old_w * scale)), int(np.round(old_h * scale))))
    top, left = max(0, (scaled.shape[0] - height) // 2), max(0, (scaled.shape[1] - width) // 2)
    return scaled[top : top + height, left : left + width]
