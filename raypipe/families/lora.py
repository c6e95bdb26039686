"""LoRAs on a diffusers pipeline, one way for every family: load once per path, activate per row.

A LoRA path is what a row's `lora` (or AnimateDiff's `motion_lora`) or the config names:
- a folder (diffusers' LoRA layout) or a hub repo id (`org/repo`): handed to load_lora_weights,
  which finds the weights file itself;
- a file: a local path, any fsspec URI, a file of a tiny model (`tiny:exvideo-lora/x.safetensors`)
  or of a hub repo (`org/repo/file.safetensors`): read into a state dict, which the family may
  rename first (`convert`: e.g. DiffSynth-Studio's CogVideoX names, raypipe/families/cogvideox/lora.py).

Each path is loaded once per pipeline as a peft adapter (`lora0`, `lora1`, ... in load order);
`activate` then makes exactly a row's LoRAs active at the row's weights (`disable_lora` for a
row with none, so a LoRA row leaves nothing behind). A LoRA at weight 0 leaves the output as
without it.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raypipe.models.tiny import TINY_PREFIX, resolve_model
from raypipe.models.weights import read_safetensors


def lora_source(path: str) -> str | dict:
    """What load_lora_weights gets for a LoRA path: a folder or hub repo id as is, else the
    file's state dict."""
    local = resolve_model(path) if path.startswith(TINY_PREFIX) else path
    if os.path.isdir(local):
        return local
    is_repo_id = local.count("/") == 1 and "://" not in local and not local.startswith((".", "/"))
    if is_repo_id and not os.path.exists(local):
        return local
    return read_safetensors(local)


@dataclass
class LoraAdapters:
    """The LoRAs loaded into one pipeline, by path. `what` names the layers for errors ("the
    CogVideoX transformer"); `convert` renames a state dict's keys before loading."""

    pipe: Any
    what: str = "the pipeline"
    convert: Callable[[dict], dict] | None = None
    names: dict[str, str] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=itertools.count)

    def load(self, path: str) -> str:
        """Load `path` as an adapter (once); returns the adapter's name."""
        if path in self.names:
            return self.names[path]
        name = f"lora{next(self._ids)}"  # peft adapter names: no dots or colons
        try:
            source = lora_source(path)
            if isinstance(source, dict) and self.convert is not None:
                source = self.convert(source)
            self.pipe.load_lora_weights(source, adapter_name=name)
        except ValueError as err:
            if str(err).startswith("lora:"):
                raise
            raise ValueError(f"lora: cannot load {path}: {type(err).__name__}: {err}") from None
        except Exception as err:  # noqa: BLE001 - the row fails naming the field
            raise ValueError(f"lora: cannot load {path}: {type(err).__name__}: {err}") from None
        if name not in self.loaded():  # diffusers only warns when no key matches
            raise ValueError(f"lora: {path} matched no layer of {self.what}")
        self.names[path] = name
        return name

    def loaded(self) -> set[str]:
        return {n for names in self.pipe.get_list_adapters().values() for n in names}

    def activate(self, loras: list[tuple[str, float]]) -> list[str]:
        """Make exactly these (path, weight) LoRAs active, loading new ones; their adapter names."""
        names = [self.load(path) for path, _ in loras]
        if names:
            self.pipe.enable_lora()
            self.pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
        elif self.names:
            self.pipe.disable_lora()
        return names
