"""LoRAs on a diffusers pipeline, one way for every family: load once per path, activate per row.

A LoRA path is what a row's `lora` (or AnimateDiff's `motion_lora`) or the config names:
- a folder (diffusers' LoRA layout) or a hub repo id (`org/repo`): handed to load_lora_weights,
  which finds the weights file itself;
- a file: a local path, any fsspec URI, a file of a tiny model (`tiny:exvideo-lora/x.safetensors`)
  or of a hub repo (`org/repo/file.safetensors`), .safetensors or a torch checkpoint (.ckpt, .pt:
  AnimateDiff's released motion LoRAs; raypipe/models/weights.py read_weights): read into a state
  dict, which the family may rename and check first (`convert`: DiffSynth-Studio's CogVideoX names,
  raypipe/families/cogvideox/lora.py; AnimateDiff's original motion-LoRA names,
  raypipe/families/animatediff/motion_lora.py). A `convert` error names the path and the keys.

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
from raypipe.models.weights import read_weights


def lora_source(path: str) -> str | dict:
    """What load_lora_weights gets for a LoRA path: a folder or hub repo id as is, else the
    file's state dict."""
    local = resolve_model(path) if path.startswith(TINY_PREFIX) else path
    if os.path.isdir(local):
        return local
    is_repo_id = local.count("/") == 1 and "://" not in local and not local.startswith((".", "/"))
    if is_repo_id and not os.path.exists(local):
        return local
    return read_weights(local)


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
            if str(err).startswith("lora: "):  # a convert's own error: name the file
                raise ValueError(f"lora: {path}: {str(err)[len('lora: ') :]}") from None
            raise ValueError(f"lora: cannot load {path}: {type(err).__name__}: {err}") from None
        except Exception as err:  # noqa: BLE001 - the row fails naming the field
            from raypipe.preflight import hub_failure

            hub = hub_failure(err, path)  # gated, private or missing on the hub: the id and HF_TOKEN
            if hub is not None:
                raise ValueError(f"lora: {hub.removeprefix('model: ')}") from None
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


def named_keys(keys: list[str], what: str) -> str:
    """ "<what>: 'k1', 'k2' and 3 more" (every key counted, the first five shown)."""
    more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
    return f"{what}: {', '.join(repr(k) for k in keys[:5])}{more}"


def raise_key_problems(unknown: list[str], missing: list[str], misshapen: list[str], what: str, layers: str) -> None:
    """One `lora:` error naming every key a converted LoRA could not place: `unknown` (not a `what`),
    `missing` (no such layer in `layers`), `misshapen` (not its layer's shape); nothing when all fit."""
    problems = []
    if unknown:
        problems.append(named_keys(unknown, f"not {what}"))
    if missing:
        problems.append(named_keys(missing, f"no such layer in {layers} ({len(missing)} keys)"))
    if misshapen:
        problems.append(named_keys(misshapen, f"not the shape of its layer ({len(misshapen)} keys)"))
    if problems:
        raise ValueError("lora: " + "; ".join(problems))
