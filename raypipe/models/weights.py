"""Reading one weights file (.safetensors, or a torch checkpoint): LoRAs and extension checkpoints.

A weights URI is a local path, any fsspec URI (s3://, gs://, ...), a file inside a tiny model
(`tiny:svd/model.fp16.safetensors`) or a file of a Hugging Face hub repository written as
`<org>/<repo>/<file>` (needs network; e.g. `ECNU-CILab/ExVideo-SVD-128f-v1/model.fp16.safetensors`).
Torch checkpoints (.ckpt, .pt, .pth, .bin: e.g. AnimateDiff's released motion LoRAs) are read with
`torch.load(weights_only=True)`: tensors and plain containers only, no pickled code runs.
"""

from __future__ import annotations

import os

import fsspec

TORCH_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _local_file(uri: str) -> str | None:
    """A local path for `uri` (a tiny model's file, a local file, a hub file downloaded to the cache),
    or None for an fsspec URI that is read as bytes."""
    from raypipe.models.tiny import TINY_PREFIX, resolve_model

    if uri.startswith(TINY_PREFIX):
        uri = resolve_model(uri)
    if os.path.isfile(uri):
        return uri
    protocol = fsspec.core.split_protocol(uri)[0]
    if protocol is None and not uri.startswith(("/", ".")) and uri.count("/") >= 2:
        from huggingface_hub import hf_hub_download

        org, repo, filename = uri.split("/", 2)
        return hf_hub_download(f"{org}/{repo}", filename)
    return None


def read_safetensors(uri: str) -> dict:
    """The tensors of a .safetensors file at `uri`, on CPU."""
    from safetensors.torch import load, load_file

    local = _local_file(uri)
    if local is not None:
        return load_file(local)
    with fsspec.open(uri, "rb") as f:
        return load(f.read())


def read_weights(uri: str) -> dict:
    """The tensors of a weights file at `uri`, on CPU: a torch checkpoint by its suffix (its
    "state_dict" entry when it has one, as AnimateDiff's loader reads it), else a .safetensors file."""
    if not uri.lower().endswith(TORCH_CHECKPOINT_SUFFIXES):
        return read_safetensors(uri)
    import io

    import torch

    local = _local_file(uri)
    if local is not None:
        checkpoint = torch.load(local, map_location="cpu", weights_only=True)
    else:
        with fsspec.open(uri, "rb") as f:
            checkpoint = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def read_model_config(model: str, name: str) -> dict | None:
    """A config file of a model in diffusers' layout (e.g. "transformer/config.json"), without
    downloading: a `tiny:` model (built on first use), a local folder, or a hub id already in
    the local cache; None when it cannot be read here."""
    import json

    from raypipe.models.tiny import TINY_PREFIX, resolve_model

    try:
        path = resolve_model(model) if model.startswith(TINY_PREFIX) else model
        local = os.path.join(path, name)
        if not os.path.isfile(local):
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(path, name)
            local = cached if isinstance(cached, str) else ""
        if not local:
            return None
        with open(local) as f:
            return json.load(f)
    except Exception:  # noqa: BLE001 - not readable here (unknown tiny name, not a hub id, bad JSON)
        return None
