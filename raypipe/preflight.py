"""Preflight: every model a run needs resolves, before any pool (and so any GPU) is reserved.

`raypipe run` calls `preflight` right after the count pass, for the kinds that have rows to run:
each model the config names for such a kind (`model` and every role of `models`) must resolve, or
the run stops with exit code 2, naming the kind, the role, the model and why:

- `tiny:<name>` (or `tiny:<name>/<file>`) builds (raypipe/models/tiny.py) and holds the file;
- a local folder holds a model_index.json (a diffusers pipeline; a role other than `model` may also
  be a single model folder with a config.json), a local weights file (`.safetensors`, `.ckpt`, ...:
  file roles such as `lora` and `svd_extension`) exists;
- an fsspec URI (`s3://...`) exists;
- a hub id (`org/repo`, or `org/repo/<file>` for a file role) answers the hub's model_info with the
  token (HF_TOKEN; HF_ENDPOINT honoured) within a few seconds, and holds the file. A 404 or 401/403
  fails the run, naming HF_TOKEN; a hub that cannot be reached (no network, HF_HUB_OFFLINE) leaves
  the model "not checked" (said on stderr): the workers may reach it, or have it in their cache. An
  id already in the local hub cache counts as resolved (diffusers loads it from there).

A row's own `model` is not checked here: when it does not resolve, that row fails, as before.

`hub_failure` turns the hub's errors where a stage loads a model (a gated or private model, a
missing one, a refused token) into one line naming the model id and the variable to set.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from raypipe.config import ConfigError, KindConfig, RunConfig

# Single weights files (LoRAs, ExVideo-SVD, motion LoRAs), not model folders.
WEIGHTS_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
HUB_TIMEOUT_S = 10.0
TOKEN_HINT = (
    "set HF_TOKEN to a token that can read it (for a gated model, accept its terms on the hub first); "
    "raypipe forwards HF_TOKEN to every worker, on Kubernetes it comes from the Secret raypipe-hf-token"
)


class PreflightError(ConfigError):
    """A model the run needs does not resolve: nothing runs (exit code 2)."""


@dataclass
class ModelCheck:
    kind: str
    role: str  # "model" or a role of the config's `models`
    model: str
    status: str  # "ok" | "not checked" | "failed"
    reason: str = ""

    def line(self) -> str:
        where = "model" if self.role == "model" else f"models.{self.role}"
        return f"kind {self.kind}: {where} {self.model}: {self.reason}"


def models_of(kc: KindConfig) -> list[tuple[str, str]]:
    """(role, model) of every model a kind's config names."""
    return [("model", kc.model), *kc.models.items()]


def _is_file(model: str) -> bool:
    return model.lower().endswith(WEIGHTS_SUFFIXES)


def _check_folder(path: str, role: str) -> tuple[str, str]:
    if os.path.isfile(os.path.join(path, "model_index.json")):
        return "ok", "a diffusers pipeline folder"
    if role != "model":  # a single model (config.json) or a LoRA folder (its weights file)
        if os.path.isfile(os.path.join(path, "config.json")):
            return "ok", "a model folder"
        if any(name.lower().endswith(WEIGHTS_SUFFIXES) for name in os.listdir(path)):
            return "ok", "a folder of weights"
    wanted = "model_index.json" if role == "model" else "model_index.json, config.json or a weights file"
    return "failed", f"the folder holds no {wanted} (not a model in diffusers' layout)"


def _check_local(model: str, role: str) -> tuple[str, str]:
    path = os.path.expanduser(model)
    if _is_file(path):
        return ("ok", "a local file") if os.path.isfile(path) else ("failed", "no such file")
    if not os.path.exists(path):
        return "failed", "no such folder"
    if not os.path.isdir(path):
        return "failed", "not a folder (a model is a folder in diffusers' layout)"
    return _check_folder(path, role)


def _check_tiny(model: str, role: str) -> tuple[str, str]:
    from raypipe.models.tiny import tiny_path

    try:
        path = tiny_path(model)
    except Exception as err:  # noqa: BLE001 - an unknown name or a builder that fails
        return "failed", f"does not build: {type(err).__name__}: {err}"
    if _is_file(model):
        return ("ok", "a tiny model's file") if path.is_file() else ("failed", f"the tiny model has no {path.name}")
    return _check_folder(str(path), role)


def _check_uri(model: str) -> tuple[str, str]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(model)
        found = fs.exists(path)
    except Exception as err:  # noqa: BLE001 - no credentials or network here: the workers may have them
        return "not checked", f"cannot be checked here ({type(err).__name__}: {err})"
    return ("ok", "exists") if found else ("failed", "no such object")


def _hub_http_status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _check_hub(model: str, role: str, timeout: float) -> tuple[str, str]:
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    parts = model.split("/")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    for name in [filename] if filename else ["model_index.json", "config.json"]:
        if isinstance(try_to_load_from_cache(repo, name), str):
            return "ok", "in the local hub cache"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "not checked", "HF_HUB_OFFLINE is set and the hub cache here does not hold it"
    try:
        info = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None).model_info(repo, timeout=timeout)
    except GatedRepoError as err:
        return "failed", f"gated on the hub and this token may not read it (HTTP {_hub_http_status(err)}); {TOKEN_HINT}"
    except RepositoryNotFoundError as err:
        return "failed", (
            f"the hub has no model {repo} for this token (HTTP {_hub_http_status(err)}): check the id; "
            f"if it is private or gated, {TOKEN_HINT}"
        )
    except HfHubHTTPError as err:
        status = _hub_http_status(err)
        if status in (401, 403):
            return "failed", f"the hub refused the token (HTTP {status}); {TOKEN_HINT}"
        return "not checked", f"the hub answered HTTP {status}"
    except Exception as err:  # noqa: BLE001 - no network here (or a timeout): the workers may reach it
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        return "not checked", f"cannot reach the hub at {endpoint} from here ({type(err).__name__})"
    if filename:
        files = {sibling.rfilename for sibling in info.siblings or []}
        if files and filename not in files:
            return "failed", f"the hub repo {repo} has no file {filename}"
    return "ok", "on the hub"


def check_model(model: str, role: str = "model", timeout: float = HUB_TIMEOUT_S) -> tuple[str, str]:
    """(status, reason) of one model name: "ok", "not checked" or "failed" (module docstring)."""
    from raypipe.models.tiny import TINY_PREFIX

    if model.startswith(TINY_PREFIX):
        return _check_tiny(model, role)
    if "://" in model:
        return _check_uri(model)
    local = model.startswith(("/", "./", "../", "~")) or os.path.exists(os.path.expanduser(model))
    hub_like = not local and model.count("/") >= 1 and (model.count("/") == 1 or _is_file(model))
    if hub_like:
        return _check_hub(model, role, timeout)
    return _check_local(model, role)


def check_models(config: RunConfig, kinds: list[str], timeout: float = HUB_TIMEOUT_S) -> list[ModelCheck]:
    """Every model of these kinds' configs, checked: `tiny:` ones one after the other (their builders
    seed torch's global generator), the others side by side (hub calls: a few seconds in all)."""
    from raypipe.models.tiny import TINY_PREFIX

    wanted = [(kind, role, model) for kind in kinds for role, model in models_of(config.kinds[kind])]
    results: dict[int, tuple[str, str]] = {}
    for i, (_, role, model) in enumerate(wanted):
        if model.startswith(TINY_PREFIX):
            results[i] = check_model(model, role, timeout)
    others = [i for i in range(len(wanted)) if i not in results]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i, result in zip(others, pool.map(lambda i: check_model(wanted[i][2], wanted[i][1], timeout), others)):
            results[i] = result
    return [ModelCheck(kind, role, model, *results[i]) for i, (kind, role, model) in enumerate(wanted)]


def preflight(config: RunConfig, kinds: list[str], progress=sys.stderr, timeout: float = HUB_TIMEOUT_S) -> None:
    """Check the models of the kinds that have rows; raise PreflightError naming every one that does
    not resolve. Models that cannot be checked from here are said on `progress` and let through."""
    checks = check_models(config, kinds, timeout)
    for check in checks:
        if check.status == "not checked":
            print(f"raypipe: preflight: not checked: {check.line()}", file=progress, flush=True)
    failed = [check for check in checks if check.status == "failed"]
    if failed:
        lines = "\n".join(f"  {check.line()}" for check in failed)
        raise PreflightError(f"preflight: {len(failed)} model(s) the run needs do not resolve:\n{lines}")


# ---- a stage loading a model: the hub's errors, said plainly --------------------------------------


def hub_failure(err: BaseException, model: str) -> str | None:
    """One line for a hub error anywhere in `err`'s chain (diffusers wraps them in OSError): a gated
    or private model, a missing one, a refused token, an unreachable hub; None for other errors."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    seen, current = set(), err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        status = _hub_http_status(current)
        if isinstance(current, GatedRepoError):
            return f"model: {model} is gated on the hub and this token may not read it (HTTP {status}); {TOKEN_HINT}"
        if isinstance(current, RepositoryNotFoundError):
            return (
                f"model: the hub has no model {model} for this token (HTTP {status}): check the id; "
                f"if it is private or gated, {TOKEN_HINT}"
            )
        if isinstance(current, HfHubHTTPError) and status in (401, 403):
            return f"model: the hub refused the token for {model} (HTTP {status}); {TOKEN_HINT}"
        current = current.__cause__ or current.__context__
    return None
