"""Per-video quality scores and the quality gate, on CPU, in the MP4 writer (raypipe/sink.py
write_videos): never on a pool actor's GPU time.

Each score is a metadata column (float64; null for a row without a video), computed from the
uint8 RGB frames [F, H, W, 3] as generated, before the H.264 encoding. "Grey" is OpenCV's
BT.601 luma of RGB (0..255); "levels" are levels of 255.

black_fraction   Fraction of the F frames that are black or blank (0..1). Black: the frame's mean
                 grey level is below BLACK_LEVEL (10 levels). Blank: the standard deviation of its
                 grey levels is below BLANK_STD (2 levels): one flat colour, whatever the colour
                 (white, the mid-grey of a VAE decoding zeros, ...).
frozen_fraction  Fraction of the F - 1 frames after the first that did not change: the mean absolute
                 difference from the previous frame, over pixels and RGB channels, is below
                 FROZEN_DIFF (0.5 levels) (0..1; 0 for a one-frame video).
motion_score     Mean optical-flow magnitude, in pixels per frame at the video's resolution: OpenCV's
                 DIS optical flow (PRESET_FAST) between consecutive grey frames, downscaled (area
                 interpolation) so that the longer side is at most `flow_max_side` (160 px), the
                 flow's magnitude scaled back up by the same factor, averaged over the pixels and
                 the F - 1 frame pairs. 0 for a still video. DIS rather than Farneback: on the same
                 downscaled frames it measures known shifts as well (within a few percent of 2 and
                 8 px/frame) at 2.4-4 times less CPU (benchmarks/quality_cost.py). The mean is
                 over the whole frame: a small subject moving fast scores less than a pan.
flicker          Mean absolute change between consecutive frames, in levels: the mean of
                 |frame_i - frame_(i-1)| over pixels, RGB channels and the F - 1 pairs. Motion
                 raises it too: a high flicker at a low motion_score is flicker.
sharpness        Variance of the Laplacian (OpenCV's 3x3 kernel) of each grey frame at the video's
                 resolution, the mean over frames, in squared levels. Blur lowers it, noise raises
                 it; it depends on the resolution and the content, so compare like with like.
clip_score       With a CLIP model configured (`quality: {clip_model: ...}` in the run config):
                 100 x the cosine similarity of CLIP's embedding of a frame and of the prompt,
                 floored at 0 (torchmetrics' CLIPScore), the mean over `clip_frames` frames sampled
                 evenly (a prompt-travel prompt: each frame against the prompt in effect at it).
                 Null without a CLIP model, or for an empty prompt.

Besides the scores, the gate sees the frames of the pipeline's float output that held NaN or
Inf (raypipe/stage.py to_uint8 counts them: uint8 has no NaN, they become black there); the
count is in params_json (`nonfinite_frames`) when it is not 0.

The gate (KindConfig.quality, raypipe/config.py QualityGate): `<score>_max` / `<score>_min`
thresholds, and `nonfinite_frames_max`. A video that fails is not published at videos/<id>.mp4:
it is kept at quarantine/<id>.mp4 and its row is `failed`, its error naming each score and its
threshold, e.g. "quality: black_fraction 1.00 > 0.99 (all black or blank)".
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from raypipe.config import QualityGate, QualitySettings

BLACK_LEVEL = 10.0  # mean grey level below which a frame is black
BLANK_STD = 2.0  # standard deviation of the grey levels below which a frame is blank (flat)
FROZEN_DIFF = 0.5  # mean absolute difference from the previous frame below which a frame is frozen
SCORES = ("black_fraction", "frozen_fraction", "motion_score", "flicker", "sharpness", "clip_score")
ERROR_PREFIX = "quality: "  # the start of the error of a row that failed the gate
MIN_FLOW_SIDE = 16  # DIS needs frames of 12 px or more: smaller ones are scaled up for the flow


def _grey(frames: np.ndarray) -> list[np.ndarray]:
    import cv2

    return [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in frames]


def _mean_std(image: np.ndarray) -> tuple[float, float]:
    import cv2

    mean, std = cv2.meanStdDev(image)
    return float(mean[0, 0]), float(std[0, 0])


def motion_score(grey: list[np.ndarray], max_side: int = 160) -> float:
    """Mean DIS optical-flow magnitude in pixels per frame at the frames' own resolution."""
    import cv2

    if len(grey) < 2:
        return 0.0
    height, width = grey[0].shape
    scale = max(min(1.0, max_side / max(height, width)), MIN_FLOW_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = [g if scale == 1.0 else cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in grey]
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    magnitudes = []
    for before, after in zip(small[:-1], small[1:]):
        flow = dis.calc(before, after, None)
        magnitudes.append(float(cv2.magnitude(flow[..., 0], flow[..., 1]).mean()))
    # Back to the video's resolution: a shift of d px on the small frames is d / scale px on the video.
    return float(np.mean(magnitudes)) / scale


def prompts_at(prompt: str, indices: list[int]) -> list[str]:
    """The prompt in effect at each frame index: the text itself, or for a prompt-travel prompt
    (the metadata's JSON text of {"0": ..., "32": ...}) the one of the last key at or before it."""
    try:
        travel = json.loads(prompt) if prompt.lstrip().startswith("{") else None
    except ValueError:
        travel = None
    if not isinstance(travel, dict) or not travel:
        return [prompt] * len(indices)
    try:
        keyed = sorted((int(k), str(v)) for k, v in travel.items())
    except (TypeError, ValueError):  # keys that are not frame numbers: all of it, as one text
        return [", ".join(str(v) for v in travel.values())] * len(indices)
    return [next((text for start, text in reversed(keyed) if start <= i), keyed[0][1]) for i in indices]


@functools.lru_cache(maxsize=2)
def load_clip(model: str):
    """(CLIPModel, CLIPProcessor) of `model` (a folder, a hub id or tiny:clip), once a process:
    Ray reuses its worker processes across the writer tasks."""
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as transformers_logging

    from raypipe.models.tiny import resolve_model

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    path = resolve_model(model)
    return CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)


def clip_score(frames: np.ndarray, prompt: str, model: str, num_frames: int = 8) -> float | None:
    """100 x max(cos(image, text), 0), the mean over num_frames frames sampled evenly."""
    import torch
    from PIL import Image

    if not prompt or not prompt.strip():
        return None
    clip, processor = load_clip(model)
    indices = np.linspace(0, len(frames) - 1, min(num_frames, len(frames))).round().astype(int).tolist()
    texts = prompts_at(prompt, indices)
    unique = sorted(set(texts))
    inputs = processor(
        text=unique,
        images=[Image.fromarray(frames[i]) for i in indices],
        return_tensors="pt",
        padding=True,
        truncation=True,
    )
    with torch.no_grad():
        out = clip(**inputs)
    image = torch.nn.functional.normalize(out.image_embeds, dim=-1)
    text = torch.nn.functional.normalize(out.text_embeds, dim=-1)
    cosine = (image * text[[unique.index(t) for t in texts]]).sum(-1)
    return float(100.0 * cosine.clamp(min=0).mean())


def score_video(
    frames: np.ndarray, prompt: str = "", settings: QualitySettings | None = None
) -> dict[str, float | None]:
    """The six scores of one video (uint8 [F, H, W, 3] RGB), by column name."""
    import cv2

    settings = settings or QualitySettings()
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 [F, H, W, 3] with F >= 1, got {frames.dtype} {tuple(frames.shape)}")
    grey = _grey(frames)
    stats = [_mean_std(g) for g in grey]
    black = [mean < BLACK_LEVEL or std < BLANK_STD for mean, std in stats]
    # Mean absolute difference from the previous frame, over pixels and channels.
    changes = [float(np.mean(cv2.mean(cv2.absdiff(b, a))[:3])) for a, b in zip(frames[:-1], frames[1:])]
    sharpness = [_mean_std(cv2.Laplacian(g, cv2.CV_64F))[1] ** 2 for g in grey]
    return {
        "black_fraction": float(np.mean(black)),
        "frozen_fraction": float(np.mean([c < FROZEN_DIFF for c in changes])) if changes else 0.0,
        "motion_score": motion_score(grey, settings.flow_max_side),
        "flicker": float(np.mean(changes)) if changes else 0.0,
        "sharpness": float(np.mean(sharpness)),
        "clip_score": clip_score(frames, prompt, settings.clip_model, settings.clip_frames)
        if settings.clip_model
        else None,
    }


def _number(value: float) -> str:
    return f"{value:.2f}" if value == 0 or abs(value) >= 0.01 else f"{value:.2g}"


def gate_failures(scores: dict[str, Any], gate: QualityGate, nonfinite_frames: int = 0) -> list[str]:
    """Why the video fails the gate: "<score> <value> > <max>" (or < <min>) for each threshold it
    breaks, in SCORES order after the NaN/Inf check; empty when it passes. A null score (no CLIP
    model) breaks no threshold."""
    reasons = []
    if gate.nonfinite_frames_max is not None and nonfinite_frames > gate.nonfinite_frames_max:
        reasons.append(f"nonfinite_frames {nonfinite_frames} > {gate.nonfinite_frames_max} (NaN/Inf in the frames)")
    for name in SCORES:
        value = scores.get(name)
        if value is None:
            continue
        high, low = getattr(gate, f"{name}_max"), getattr(gate, f"{name}_min")
        if high is not None and value > high:
            note = " (all black or blank)" if name == "black_fraction" and value >= 1.0 else ""
            reasons.append(f"{name} {_number(value)} > {high:g}{note}")
        if low is not None and value < low:
            reasons.append(f"{name} {_number(value)} < {low:g}")
    return reasons


def gate_error(reasons: list[str]) -> str:
    return ERROR_PREFIX + "; ".join(reasons)


def failed_gate(error: str) -> bool:
    """Whether a row's error is the quality gate's (the re-roll pass looks for these)."""
    return error.startswith(ERROR_PREFIX)
