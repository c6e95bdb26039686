"""Reading one weights file (.safetensors): LoRAs and extension checkpoints.

A weights URI is a local path, any fsspec URI (s3://, gs://, ...), a file inside a tiny model
(`tiny:svd/model.fp16.safetensors`) or a file of a Hugging Face hub repository written as
`<org>/<repo>/<file>` (needs network; e.g. `ECNU-CILab/ExVideo-SVD-128f-v1/model.fp16.safetensors`).
"""

from __future__ import annotations

import os

import fsspec


def read_safetensors(uri: str) -> dict:
    """The tensors of a .safetensors file at `uri`, on CPU."""
    from safetensors.torch import load, load_file

    from raypipe.models.tiny import TINY_PREFIX, resolve_model

    if uri.startswith(TINY_PREFIX):
        uri = resolve_model(uri)
    if os.path.isfile(uri):
        return load_file(uri)
    protocol = fsspec.core.split_protocol(uri)[0]
    if protocol is None and not uri.startswith(("/", ".")) and uri.count("/") >= 2:
        from huggingface_hub import hf_hub_download

        org, repo, filename = uri.split("/", 2)
        return load_file(hf_hub_download(f"{org}/{repo}", filename))
    with fsspec.open(uri, "rb") as f:
        return load(f.read())


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
