"""Deforum's optical flow and hybrid video (hybrid_video.py), on OpenCV: pure functions of uint8
RGB frames [H, W, 3].

- flow(a, b, method): dense optical flow from a to b, [H, W, 2] (x, y) in pixels, by DIS
  (`DIS Medium`: OpenCV's medium preset; `DIS Fine`: finest scale 0, 192 gradient descent
  iterations, patches of 8 every 4 px) or Farneback (5 levels, window 21, 5 iterations,
  poly_n 7, sigma 1.2), as Deforum configures them. RAFT (torchvision) is not implemented.
- warp_by_flow(image, flow, factor): the image moved along factor x flow, sampled bilinearly from
  a frame extended by a quarter on each side with BORDER_REFLECT_101 (Deforum's remap).
- motion_matrix(a, b, kind): the camera move between two frames, SIFT features matched with
  Lowe's ratio 0.75 and fitted by RANSAC: `Perspective` a homography, `Affine` a rotation +
  scale + shift (estimateAffinePartial2D); identity with 8 matches or fewer.
- composite(frame, video_frame, ...): Deforum's hybrid_composite: the video frame blended into
  the frame (alpha), through a mask made from both (Blend, Difference).

Deforum computes its frames in BGR; the grey images its flow and features see are the same
luminance either way (OpenCV's weights follow the channel order it is told), so raypipe keeps
RGB and converts with RGB2GRAY.
"""

from __future__ import annotations

import numpy as np

FLOW_METHODS = ("DIS Medium", "DIS Fine", "Farneback")
MOTIONS = ("None", "Optical Flow", "Perspective", "Affine")
COMPOSITES = ("None", "Normal", "Before Motion", "After Generation")
COMP_MASKS = ("None", "Blend", "Difference")
EQUALIZE = ("None", "Before", "After", "Both")


def _grey(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def flow(a: np.ndarray, b: np.ndarray, method: str, previous: np.ndarray | None = None) -> np.ndarray:
    """Dense optical flow from frame a to frame b ([H, W, 2] float32, pixels); `previous` seeds
    DIS as Deforum passes the last hybrid flow."""
    import cv2

    if method in ("DIS Medium", "DIS Fine"):
        if method == "DIS Medium":
            dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        else:
            dis = cv2.DISOpticalFlow_create()
            dis.setGradientDescentIterations(192)
            dis.setFinestScale(0)
            dis.setPatchSize(8)
            dis.setPatchStride(4)
        return dis.calc(_grey(a), _grey(b), None if previous is None else previous.copy())
    if method == "Farneback":
        return cv2.calcOpticalFlowFarneback(_grey(a), _grey(b), None, 0.5, 5, 21, 5, 7, 1.2, 0)
    raise ValueError(f"unknown optical flow method {method!r} (one of {', '.join(FLOW_METHODS)})")


def warp_by_flow(image: np.ndarray, flow_xy: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """`image` moved along factor x flow: each pixel sampled at itself minus the flow."""
    import cv2

    height, width = image.shape[:2]
    pad_y, pad_x = int(height * 0.25), int(width * 0.25)
    larger = cv2.copyMakeBorder(image, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_REFLECT_101)
    big_h, big_w = larger.shape[:2]
    # sampling map of the larger frame: itself, except the frame's own area follows the flow
    grid_x, grid_y = np.meshgrid(np.arange(big_w), np.arange(big_h))
    grid = np.dstack((grid_x, grid_y)).astype(np.float32)
    off_x, off_y = (big_w - width) // 2, (big_h - height) // 2
    moved = -np.asarray(flow_xy, dtype=np.float32) * np.float32(factor)
    moved[..., 0] += np.arange(width) + off_x
    moved[..., 1] += np.arange(height)[:, None] + off_y
    grid[off_y : off_y + height, off_x : off_x + width] = moved
    remapped = cv2.remap(larger, grid, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return remapped[off_y : off_y + height, off_x : off_x + width]


def relative_flow(flow_xy: np.ndarray, width: int, height: int) -> np.ndarray:
    """Flow in fractions of the frame, scaled by its largest component (Deforum's
    abs_flow_to_rel_flow), so that a camera warp can move it as an image."""
    largest = max(float(np.max(np.abs(flow_xy[..., 0]))), float(np.max(np.abs(flow_xy[..., 1]))))
    return np.dstack((flow_xy[..., 0] / (largest * width), flow_xy[..., 1] / (largest * height)))


def absolute_flow(relative: np.ndarray, width: int, height: int) -> np.ndarray:
    """Back to pixels (Deforum's rel_flow_to_abs_flow: scaled by the largest moved component)."""
    largest = max(float(np.max(np.abs(relative[..., 0] * width))), float(np.max(np.abs(relative[..., 1] * height))))
    return np.dstack((relative[..., 0] * largest * width, relative[..., 1] * largest * height))


def identity_matrix(kind: str) -> np.ndarray:
    return np.eye(3) if kind == "Perspective" else np.eye(2, 3)


def motion_matrix(a: np.ndarray, b: np.ndarray, kind: str) -> np.ndarray:
    """The move from frame a to frame b: a 3x3 homography (Perspective) or a 2x3 similarity
    (Affine), from SIFT matches; the identity when they are too few to fit."""
    import cv2

    sift = cv2.SIFT_create()
    keys_a, found_a = sift.detectAndCompute(_grey(a), None)
    keys_b, found_b = sift.detectAndCompute(_grey(b), None)
    if found_a is None or found_b is None or len(keys_a) < 2 or len(keys_b) < 2:
        return identity_matrix(kind)
    pairs = cv2.BFMatcher().knnMatch(found_a, found_b, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.75 * n.distance]
    if len(good) <= 8:
        return identity_matrix(kind)
    source = np.float32([keys_a[m.queryIdx].pt for m in good]).reshape(-1, 1, 2)
    target = np.float32([keys_b[m.trainIdx].pt for m in good]).reshape(-1, 1, 2)
    if kind == "Perspective":
        matrix, _ = cv2.findHomography(source, target, cv2.RANSAC, 5.0)
    else:
        matrix, _ = cv2.estimateAffinePartial2D(source, target)
    return identity_matrix(kind) if matrix is None else matrix


def warp_by_matrix(image: np.ndarray, matrix: np.ndarray, kind: str) -> np.ndarray:
    """`image` moved by a motion_matrix (BORDER_REFLECT_101, as Deforum's image_transform_ransac)."""
    import cv2

    size = (image.shape[1], image.shape[0])
    if kind == "Perspective":
        return cv2.warpPerspective(image, matrix, size, borderMode=cv2.BORDER_REFLECT_101)
    return cv2.warpAffine(image, matrix, size, borderMode=cv2.BORDER_REFLECT_101)


def autocontrast(grey: np.ndarray, low: float, high: float) -> np.ndarray:
    """Stretch the low..high percentiles to 0..255 (Deforum's autocontrast_grayscale)."""
    lo, hi = np.percentile(grey, low), np.percentile(grey, high)
    return np.clip(255 * (grey - lo) / (hi - lo), 0, 255)


def composite(
    frame: np.ndarray,
    video_frame: np.ndarray,
    alpha: float,
    mask_type: str = "None",
    mask_blend_alpha: float = 0.5,
    mask_contrast: float = 1.0,
    inverse: bool = False,
    equalize: str = "None",
    auto_contrast: bool = False,
    cutoff_low: int = 0,
    cutoff_high: int = 100,
) -> np.ndarray:
    """Deforum's hybrid_composite of `frame` with the hybrid video's frame (same size): the
    composite is the video frame, or with a mask (Blend: the two frames' greys blended by
    mask_blend_alpha; Difference: their difference) the frame where the mask is white and the
    video where black, the mask inverted, equalised, contrast-scaled and auto-contrasted as
    asked; the result is the frame blended towards the composite by alpha (PIL, as Deforum)."""
    from PIL import Image, ImageChops, ImageEnhance, ImageOps

    own, video = Image.fromarray(frame), Image.fromarray(video_frame)
    if mask_type == "None":
        mixed = video
    else:
        if mask_type == "Blend":
            mask = Image.blend(ImageOps.grayscale(own), ImageOps.grayscale(video), mask_blend_alpha)
        else:  # Difference
            mask = ImageChops.difference(ImageOps.grayscale(own), ImageOps.grayscale(video))
        if inverse:
            mask = ImageOps.invert(mask)
        if equalize in ("Before", "Both"):
            mask = ImageOps.equalize(mask)
        mask = ImageEnhance.Contrast(mask).enhance(mask_contrast)
        if auto_contrast:
            mask = ImageOps.grayscale(Image.fromarray(autocontrast(np.array(mask), cutoff_low, cutoff_high)))
        if equalize in ("After", "Both"):
            mask = ImageOps.equalize(mask)
        mixed = Image.composite(own, video, mask)
    return np.asarray(Image.blend(own, mixed, alpha))
