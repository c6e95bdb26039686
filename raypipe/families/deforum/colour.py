"""Deforum's colour coherence: match each frame's colours to frame 0's, so that the colours
do not drift over a long animation. Histogram matching per channel in LAB, HSV or RGB
(Deforum's maintain_colors uses scikit-image's match_histograms; this is the same
cumulative-histogram matching, in numpy)."""

from __future__ import annotations

import numpy as np

MODES = ("LAB", "HSV", "RGB")


def match_histograms(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each channel of `image` remapped so that its histogram matches `reference`'s."""
    out = np.empty(image.shape, dtype=np.float64)
    for c in range(image.shape[-1]):
        source, template = image[..., c].ravel(), reference[..., c].ravel()
        src_values, src_index, src_counts = np.unique(source, return_inverse=True, return_counts=True)
        tmpl_values, tmpl_counts = np.unique(template, return_counts=True)
        src_quantiles = np.cumsum(src_counts) / source.size
        tmpl_quantiles = np.cumsum(tmpl_counts) / template.size
        out[..., c] = np.interp(src_quantiles, tmpl_quantiles, tmpl_values)[src_index].reshape(image.shape[:-1])
    return out


def maintain_colors(image: np.ndarray, reference: np.ndarray, mode: str) -> np.ndarray:
    """uint8 RGB `image` with its colours matched to uint8 RGB `reference` in `mode`'s space."""
    import cv2

    if mode not in MODES:
        raise ValueError(f"color_coherence: unknown mode {mode!r} (one of None, {', '.join(MODES)})")
    if mode == "RGB":
        return np.clip(np.round(match_histograms(image, reference)), 0, 255).astype(np.uint8)
    to_space, from_space = {
        "LAB": (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB),
        "HSV": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB),
    }[mode]
    matched = match_histograms(cv2.cvtColor(image, to_space), cv2.cvtColor(reference, to_space))
    return cv2.cvtColor(np.clip(np.round(matched), 0, 255).astype(np.uint8), from_space)
