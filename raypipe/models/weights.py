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
