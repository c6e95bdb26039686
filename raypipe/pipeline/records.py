"""What travels between the graph's stages.

- The manifest records (raypipe/manifest.py): id, source, line, kind, route, raw_json, error,
  as typed Arrow columns. Validation sets route to the row's pool (pool_route) or "rejected".
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
SP_ROUTE = "/sp"


def pool_route(kind: str, sp_degree: int = 1) -> str:
    """The route of a valid row: its kind's pool, or for sp_degree N > 1 the kind's pool of gangs
    of N ranks, "<kind>/sp<N>" (raypipe/pipeline/graph.py)."""
    return f"{kind}{SP_ROUTE}{sp_degree}" if sp_degree > 1 else kind


def split_route(route: str) -> tuple[str, int]:
    """(kind, sp_degree) of a pool route; ("rejected", 1) for the others."""
    kind, _, degree = route.partition(SP_ROUTE)
    return (kind, int(degree)) if degree.isdigit() else (route, 1)


def pack(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=5)


def unpack(data: bytes) -> Any:
    return pickle.loads(data)
