"""Reading a row's input image or video (CPU side, in Stage.load_inputs), failing it by field.

An input that cannot be read fails its row with the field, the URI and the reason:
`image: cannot read s3://b/x.png: FileNotFoundError: ...`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _read(field: str, uri: str, reader, *args, **kwargs) -> Any:
    try:
        return reader(uri, *args, **kwargs)
    except Exception as err:  # noqa: BLE001 - the row fails with the reason
        raise ValueError(f"{field}: cannot read {uri}: {type(err).__name__}: {err}") from None


def input_image(field: str, uri: str, size: tuple[int, int] | None = None):
    """The image at `uri` as an RGB PIL image, resized to size (height, width) if given."""
    from raypipe.video import read_image

    return _read(field, uri, read_image, size)


def input_video(field: str, uri: str, num_frames: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The video at `uri` as uint8 RGB [F, H, W, 3]: num_frames sampled evenly (all if None)."""
    from raypipe.video import read_video

    return _read(field, uri, read_video, num_frames, size)
