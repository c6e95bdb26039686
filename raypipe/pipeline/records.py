"""What travels between the graph's stages.

- The manifest records (raypipe/manifest.py): id, source, line, kind, route, raw_json, error,
  as typed Arrow columns.
- Python objects, each in a binary column through one codec (`pack`, `unpack`: pickle,
  protocol 5, which writes numpy arrays as raw buffers): `row` (the validated row model, so no
  stage validates it again), `inputs` (its decoded input images / video), `meta` (its
  raypipe.metadata.Metadata record once it has one) and `frames` (uint8 [F, H, W, 3]).
  b"" stands for none.
"""

from __future__ import annotations

import pickle
from typing import Any

READ_BATCH_ROWS = 16384
NONE = b""


def pack(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def unpack(data: bytes) -> Any:
    return pickle.loads(data)
