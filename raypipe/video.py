"""Video and image I/O: decode with decord, encode H.264 with PyAV, any fsspec URI.

Outputs are committed atomically. On a local filesystem the MP4 is encoded into a temporary
name inside the target directory and renamed (atomic on POSIX); for object stores it is encoded
into a local temporary file and sent in a single PUT (the object appears whole or not at all).
A file at its final name is always complete.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass

import fsspec
import numpy as np


@dataclass
class WrittenVideo:
    uri: str
    bytes: int
    sha256: str
    duration_s: float
    # Seconds spent encoding and committing (for raypipe/metrics.py).
    encode_seconds: float = 0.0
    upload_seconds: float = 0.0


def is_local(uri: str) -> bool:
    return _local_fs(fsspec.core.url_to_fs(uri)[0])


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def encode_mp4(frames: np.ndarray, fps: int, path: str, crf: int = 18) -> None:
    """frames: uint8 [F, H, W, 3] RGB -> H.264 yuv420p MP4 at `path` (a local file)."""
    import av

    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    num, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even sizes, got {width}x{height}")
    with av.open(path, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf), "preset": "medium"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local_fs(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _temporary_beside(target: str) -> str:
    """A temporary name in the target's own directory, from which a rename is atomic."""
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    return os.path.join(parent, f".tmp-{uuid.uuid4().hex}-{os.path.basename(target)}")


def commit_file(local_path: str, uri: str) -> None:
    """Move a complete local file to `uri` so that `uri` never holds a partial file."""
    fs, target = fsspec.core.url_to_fs(uri)
    if _local_fs(fs):
        tmp = _temporary_beside(target)
        shutil.copyfile(local_path, tmp)
        os.replace(tmp, target)  # atomic rename within one directory
    else:
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(local_path, target)  # one PUT: the object appears complete or not at all


def write_video(frames: np.ndarray, fps: int, uri: str) -> WrittenVideo:
    """Encode frames to `uri`, committed whole. On a local filesystem the MP4 is encoded straight
    into a temporary name beside the target, then renamed: no temporary folder and no copy (for a
    small video those file operations cost as much as the encoding). Elsewhere it is encoded into
    a local temporary file and PUT."""
    fs, target = fsspec.core.url_to_fs(uri)
    if not _local_fs(fs):
        with tempfile.TemporaryDirectory(prefix="raypipe-") as tmpdir:
            local = os.path.join(tmpdir, "video.mp4")
            return _encoded(frames, fps, local, uri, lambda: commit_file(local, uri))
    local = _temporary_beside(target)
    try:
        return _encoded(frames, fps, local, uri, lambda: os.replace(local, target))
    finally:
        if os.path.exists(local):
            os.remove(local)  # the encoding failed: no temporary is left behind


def _encoded(frames: np.ndarray, fps: int, local: str, uri: str, commit) -> WrittenVideo:
    t0 = time.perf_counter()
    encode_mp4(frames, fps, local)
    t1 = time.perf_counter()
    size = os.path.getsize(local)
    digest = _sha256_file(local)
    t2 = time.perf_counter()
    commit()
    t3 = time.perf_counter()
    return WrittenVideo(
        uri=uri,
        bytes=size,
        sha256=digest,
        duration_s=len(frames) / float(fps),
        encode_seconds=t1 - t0,
        upload_seconds=t3 - t2,
    )


def read_video(uri: str, num_frames: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a video (any fsspec URI) with decord -> uint8 [F, H, W, 3].

    num_frames: sample this many frames evenly over the clip. size: (height, width) to resize to.
    """
    import decord

    with fsspec.open(uri, "rb") as f:
        data = f.read()
    # Decoded at the native size: decord's own resize fails for widths that are not
    # multiples of 32, so frames are resized afterwards with OpenCV.
    reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0))
    total = len(reader)
    if total == 0:
        raise ValueError(f"{uri}: no frames")
    if num_frames is None:
        indices = list(range(total))
    else:
        indices = np.linspace(0, total - 1, num_frames).round().astype(int).tolist()
    frames = reader.get_batch(indices).asnumpy()
    if size is not None and tuple(frames.shape[1:3]) != (int(size[0]), int(size[1])):
        import cv2

        frames = np.stack([cv2.resize(f, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA) for f in frames])
    return frames


def read_image(uri: str, size: tuple[int, int] | None = None):
    """Load an image (any fsspec URI) as an RGB PIL image, resized to (height, width) if given."""
    from PIL import Image

    with fsspec.open(uri, "rb") as f:
        image = Image.open(io.BytesIO(f.read())).convert("RGB")
    if size is not None:
        image = image.resize((int(size[1]), int(size[0])), Image.Resampling.BICUBIC)
    return image
