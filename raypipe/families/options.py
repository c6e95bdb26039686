"""Memory and speed options of a diffusers pipeline, from a kind's config `options`.

    options:
      vae_tiling: true            # VAE encode/decode in spatial tiles (long or large videos)
      vae_slicing: true           # the videos of a batch through the VAE one at a time
      cpu_offload: model          # model | sequential | none: weights wait in CPU memory (CUDA only)
      step_cache:                 # opt-in step caching, through diffusers' own denoiser hooks
        type: first_block_cache   # or pyramid_attention_broadcast
        threshold: 0.05           # the other keys: fields of that diffusers config class
      decode_chunk_size: 8        # SVD only: frames its VAE decodes at once

The options a video was made with are in its `params_json` (Stage.common_params). An option
that a pipeline cannot use (tiling on a VAE without it, offload on a CPU device, step caching
on a denoiser without diffusers' cache hooks) is skipped, and `skipped_options` says why, so
that the video's `params_json` can say so too. Unknown options and bad values are errors.

Step caches under sequence parallelism (sp_degree > 1): every rank of a gang takes the same
skip decision, as one process would (raypipe/parallel/hooks.py), or the gang would hang.
"""

from __future__ import annotations

from typing import Any

COMMON_OPTIONS = ("vae_tiling", "vae_slicing", "cpu_offload", "step_cache")
CPU_OFFLOAD = ("none", "model", "sequential")
STEP_CACHES = ("first_block_cache", "pyramid_attention_broadcast")


def check_options(options: dict[str, Any], known: tuple[str, ...] = COMMON_OPTIONS) -> None:
    """Raise ValueError('options.<name>: problem') for an option this family does not know."""
    for name, value in options.items():
        if name not in known:
            raise ValueError(f"options.{name}: unknown option (known: {', '.join(known)})")
        if name in ("vae_tiling", "vae_slicing") and not isinstance(value, bool):
            raise ValueError(f"options.{name}: must be true or false, got {value!r}")
    offload = options.get("cpu_offload", "none")
    if offload not in (*CPU_OFFLOAD, False, None):
        raise ValueError(f"options.cpu_offload: one of {', '.join(CPU_OFFLOAD)}, got {offload!r}")
    chunk = options.get("decode_chunk_size")
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"options.decode_chunk_size: a positive integer, got {chunk!r}")
    cache = options.get("step_cache")
    if cache is not None:
        if not isinstance(cache, dict) or cache.get("type") not in STEP_CACHES:
            raise ValueError(f"options.step_cache: a mapping with type: {' | '.join(STEP_CACHES)}, got {cache!r}")


def _offload(options: dict[str, Any]) -> str:
    value = options.get("cpu_offload") or "none"
    return "none" if value is False else value


def _denoiser(pipe):
    return getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)


def skipped_options(pipe, options: dict[str, Any], device: str) -> dict[str, str]:
    """The options this pipeline cannot use on `device`, with the reason."""
    from diffusers.models.cache_utils import CacheMixin

    skipped = {}
    vae = getattr(pipe, "vae", None)
    for name, attribute in (("vae_tiling", "use_tiling"), ("vae_slicing", "use_slicing")):
        if options.get(name) and not hasattr(vae, attribute):
            skipped[name] = f"{type(vae).__name__} has no {name[4:]}"
    if _offload(options) != "none" and not device.startswith("cuda"):
        skipped["cpu_offload"] = f"needs a CUDA device (device: {device})"
    denoiser = _denoiser(pipe)
    if options.get("step_cache") and not isinstance(denoiser, CacheMixin):
        skipped["step_cache"] = f"{type(denoiser).__name__} has no diffusers cache hooks"
    if options.get("decode_chunk_size") and "decode_chunk_size" not in _call_parameters(pipe):
        skipped["decode_chunk_size"] = f"{type(pipe).__name__} decodes all frames at once"
    return skipped


def _call_parameters(pipe) -> set[str]:
    import inspect

    return set(inspect.signature(pipe.__call__).parameters)


CURRENT_TIMESTEP = "raypipe_current_timestep"


def _current_timestep_hook(denoiser):
    """A named diffusers hook ("raypipe_current_timestep") on the denoiser that keeps the timestep
    of its current call, for pyramid attention broadcast. On a rank of a gang the gang's shard
    hook (registered later, so it runs first: raypipe/parallel/hooks.py) has put the timestep the
    gang agreed on there, so every rank skips the same attention calls."""
    from diffusers.hooks import HookRegistry, ModelHook

    class CurrentTimestep(ModelHook):
        def __init__(self):
            super().__init__()
            self.value: int | None = None

        def pre_forward(self, module, *args, **kwargs):
            timestep = kwargs.get("timestep", args[2] if len(args) > 2 else None)
            if timestep is not None:
                self.value = int(timestep.flatten()[0]) if hasattr(timestep, "flatten") else int(timestep)
            return args, kwargs

    hook = CurrentTimestep()
    HookRegistry.check_if_exists_or_initialize(denoiser).register_hook(hook, CURRENT_TIMESTEP)
    return hook


def _step_cache_config(spec: dict[str, Any], denoiser):
    """The diffusers cache config for `spec`. Pyramid attention broadcast needs the current
    timestep: it is read from the denoiser's own input, so it works for every pipeline that
    shares this denoiser."""
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig

    fields = {k: v for k, v in spec.items() if k != "type"}
    try:
        if spec["type"] == "first_block_cache":
            return FirstBlockCacheConfig(**fields)
        fields.setdefault("spatial_attention_block_skip_range", 2)
        config = PyramidAttentionBroadcastConfig(**fields)
    except TypeError as err:
        raise ValueError(f"options.step_cache: {err}") from None
    current = _current_timestep_hook(denoiser)
    config.current_timestep_callback = lambda: current.value
    return config


def apply_options(pipe, options: dict[str, Any], device: str):
    """Put `pipe` on `device` with the options it can use (see skipped_options). Returns it."""
    skipped = skipped_options(pipe, options, device)
    if options.get("vae_tiling") and "vae_tiling" not in skipped:
        pipe.vae.enable_tiling()
    if options.get("vae_slicing") and "vae_slicing" not in skipped:
        pipe.vae.enable_slicing()
    if options.get("step_cache") and "step_cache" not in skipped:
        denoiser = _denoiser(pipe)
        denoiser.enable_cache(_step_cache_config(options["step_cache"], denoiser))
    offload = _offload(options)
    if offload == "model" and "cpu_offload" not in skipped:
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential" and "cpu_offload" not in skipped:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe
