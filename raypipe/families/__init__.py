"""The model families: one package per `kind`, each registered once.

A family lives in `raypipe/families/<kind>/`:

    __init__.py   register(Family(...)): what the rest of raypipe knows about the kind
    schema.py     its manifest row (a pydantic model; validation runs on light CPU workers)
    stage.py      its Stage (raypipe/stage.py): loads the pipeline, turns rows into frames
    tiny.py       builders of its `tiny:` random-weight models
    flops.py      its FLOP model for `raypipe plan`

Everything that lists kinds (the row union, the built-in config, the tiny models, the FLOP
models, the k8s worker groups) reads this registry. Adding a family is adding a folder: every
sub-package here is imported once, the first time the registry is asked, and calls `register`.
Only light modules are imported then (no torch, no diffusers): stages load by name, in the
pool actors.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Family:
    kind: str
    # The row's pydantic model (a RowBase with `kind: Literal["<kind>"]`).
    row: type
    # "module:Class" of the Stage; imported only where a pool of the kind runs.
    stage: str
    # The built-in config of the kind (KindConfig fields): its tiny models on CPU.
    config: dict[str, Any]
    # tiny model name -> builder(path): `tiny:<name>` models this family uses.
    tiny: dict[str, Callable[[Path], None]] = field(default_factory=dict)
    # FLOPs of one validated row with its KindConfig (None: unknown), for `raypipe plan`.
    flops: Callable[[Any, Any], float | None] | None = None
    # The checkpoint a row runs on: its own `model`, else the config's for its mode / base.
    row_model: Callable[[Any, Any], str] | None = None
    # Rows may ask for `sp_degree` > 1 (sequence parallelism on a gang, raypipe/parallel).
    sequence_parallel: bool = False
    # check(row, kind_config): a validated row against its kind's config (the models it names,
    # the family's switches), where rows are validated; ValueError("field: problem") rejects it.
    check: Callable[[Any, Any], None] | None = None
    # The KubeRay worker group of the kind (k8s/raycluster.yaml); default: kind with '-' for '_'.
    worker_group: str = ""

    def model_of(self, row: Any, kind_config: Any) -> str:
        if self.row_model is not None:
            return self.row_model(row, kind_config)
        return getattr(row, "model", None) or kind_config.model

    @property
    def group(self) -> str:
        return self.worker_group or self.kind.replace("_", "-")


_REGISTRY: dict[str, Family] = {}
_LOCK = threading.RLock()
_LOADED = False


def register(family: Family) -> Family:
    """Called once by each family package's __init__."""
    with _LOCK:
        if family.kind in _REGISTRY and _REGISTRY[family.kind] is not family:
            raise ValueError(f"family {family.kind!r} registered twice")
        _REGISTRY[family.kind] = family
    return family


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    with _LOCK:
        if _LOADED:
            return
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if info.ispkg:
                importlib.import_module(f"{__name__}.{info.name}")
        _LOADED = True


def families() -> list[Family]:
    """Every registered family, by kind."""
    _load()
    return [_REGISTRY[kind] for kind in sorted(_REGISTRY)]


def kinds() -> list[str]:
    return [f.kind for f in families()]


def family(kind: str) -> Family:
    _load()
    if kind not in _REGISTRY:
        raise KeyError(f"unknown kind {kind!r} (one of {', '.join(kinds())})")
    return _REGISTRY[kind]


def stage_class(kind_or_path: str):
    """The Stage class of a kind, or of a "module:Class" path (tests and plugins replace stages)."""
    path = kind_or_path if ":" in kind_or_path else family(kind_or_path).stage
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
