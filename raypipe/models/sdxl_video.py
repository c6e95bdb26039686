"""SDXL made temporal: arbitrarily long video, chunk by chunk.

Three modules diffusers lacks, and the pipeline that drives them:

- `TemporalTransformer`: self-attention along the frames of a chunk, at every spatial position,
  with sinusoidal frame positions.
- `TemporalConditioner`: cross-attention, at every spatial position, from the chunk's frames to
  the latents of the previous chunk's last frames (pooled to the block's resolution, with their
  own learned positional embeddings, counted back from the chunk's first frame).
- `SDXLVideoUNet`: diffusers' `UNet2DConditionModel` (SDXL config) whose spatial transformers
  (`Transformer2DModel`, in every cross-attention down/mid/up block) are followed by the two
  modules above. The 2D weights keep their names, so SDXL checkpoints and LoRAs load as they are.

Both modules add a residual through a zero-initialised output projection, so a UNet inflated
from SDXL (`SDXLVideoUNet.from_unet2d`, `SDXLVideoPipeline.from_sdxl`) makes, before any
training, exactly the frames that SDXL alone makes from the same latents.

`SDXLVideoPipeline.__call__` makes one chunk of `num_frames` frames, optionally conditioned on
earlier latents; the long-video loop (num_repeats + 1 calls) is in raypipe/families/sdxl_video/stage.py.
Latent videos are laid out [batch, frames, channels, height, width], so a one-video chunk has
the memory layout of an SDXL batch of `num_frames` images: the same seed draws the same noise.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    DPMSolverMultistepScheduler,
    StableDiffusionXLPipeline,
    Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.image_processor import VaeImageProcessor
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_1d_sincos_pos_embed_from_grid
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

# Names of the temporal submodules inside each SpatioTemporalTransformer (and so in state dicts).
TEMPORAL_KEYS = (".temporal.", ".conditioner.")


def sinusoidal_positions(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """[N] positions -> [N, dim] sin/cos embeddings (float32)."""
    return get_1d_sincos_pos_embed_from_grid(dim, positions.float(), output_type="pt").float()


def frames_to_sequences(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[B*F, C, H, W] -> [B*H*W, F, C]: one sequence along time per spatial position."""
    bf, c, h, w = x.shape
    return x.reshape(bf // num_frames, num_frames, c, h, w).permute(0, 3, 4, 1, 2).reshape(-1, num_frames, c)


def sequences_to_frames(x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
    """[B*H*W, F, C] -> [B*F, C, H, W] (the inverse of frames_to_sequences)."""
    c = x.shape[-1]
    return x.reshape(-1, height, width, num_frames, c).permute(0, 3, 4, 1, 2).reshape(-1, c, height, width)


class TemporalBlock(torch.nn.Module):
    """Pre-norm attention (self-attention, or cross-attention when `context` is given) + feed-forward."""

    def __init__(self, dim: int, num_attention_heads: int, cross_attention_dim: int | None = None):
        super().__init__()
        self.norm1 = torch.nn.LayerNorm(dim)
        self.attn = Attention(
            query_dim=dim,
            cross_attention_dim=cross_attention_dim,
            heads=num_attention_heads,
            dim_head=dim // num_attention_heads,
            bias=False,
            out_bias=True,
        )
        self.norm2 = torch.nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), encoder_hidden_states=context)
        return x + self.ff(self.norm2(x))


class TemporalTransformer(ModelMixin, ConfigMixin):
    """Self-attention along the frames of a chunk, per spatial position.

    Input and output [B*F, C, H, W]; the output is the input plus a residual whose last
    projection starts at zero (an identity until trained).
    """

    @register_to_config
    def __init__(self, in_channels: int, num_attention_heads: int = 8, num_layers: int = 1, norm_num_groups: int = 32):
        super().__init__()
        self.norm = torch.nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = torch.nn.Linear(in_channels, in_channels)
        self.blocks = torch.nn.ModuleList([TemporalBlock(in_channels, num_attention_heads) for _ in range(num_layers)])
        self.proj_out = torch.nn.Linear(in_channels, in_channels)
        torch.nn.init.zeros_(self.proj_out.weight)
        torch.nn.init.zeros_(self.proj_out.bias)

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        _, _, height, width = hidden_states.shape
        x = self.proj_in(frames_to_sequences(self.norm(hidden_states), num_frames))
        positions = torch.arange(num_frames, device=x.device)
        x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return hidden_states + sequences_to_frames(self.proj_out(x), num_frames, height, width)


class TemporalConditioner(ModelMixin, ConfigMixin):
    """Cross-attention, per spatial position, from a chunk's frames to conditioning latents.

    The conditioning latents (the last frames made so far, [B, Fc, C_latent, h, w] in the UNet's
    latent space) are average-pooled to the block's resolution and projected to its width. They
    carry their own learned positional embeddings (initialised sinusoidally at positions
    -Fc..-1, i.e. counted back from the chunk's first frame, so that the frame just before the
    chunk has the same embedding whatever Fc is). Output = input + scale * residual, the
    residual's last projection starting at zero.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int,
        conditioning_channels: int = 4,
        num_attention_heads: int = 8,
        num_layers: int = 1,
        norm_num_groups: int = 32,
        max_conditioning_frames: int = 16,
    ):
        super().__init__()
        self.norm = torch.nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        self.proj_in = torch.nn.Linear(in_channels, in_channels)
        self.conditioning_in = torch.nn.Linear(conditioning_channels, in_channels)
        before_chunk = torch.arange(-max_conditioning_frames, 0)
        self.conditioning_positions = torch.nn.Parameter(sinusoidal_positions(before_chunk, in_channels))
        self.blocks = torch.nn.ModuleList(
            [
                TemporalBlock(in_channels, num_attention_heads, cross_attention_dim=in_channels)
                for _ in range(num_layers)
            ]
        )
        self.proj_out = torch.nn.Linear(in_channels, in_channels)
        torch.nn.init.zeros_(self.proj_out.weight)
        torch.nn.init.zeros_(self.proj_out.bias)

    def forward(
        self, hidden_states: torch.Tensor, num_frames: int, conditioning: torch.Tensor, scale: float = 1.0
    ) -> torch.Tensor:
        batch_frames, _, height, width = hidden_states.shape
        batch, cond_frames = conditioning.shape[:2]
        if batch * num_frames != batch_frames:
            raise ValueError(f"conditioning latents are for {batch} videos, the chunk has {batch_frames // num_frames}")
        if cond_frames > self.config.max_conditioning_frames:
            raise ValueError(
                f"num_conditioning_frames: {cond_frames} is more than this model supports "
                f"({self.config.max_conditioning_frames})"
            )
        x = self.proj_in(frames_to_sequences(self.norm(hidden_states), num_frames))
        positions = torch.arange(num_frames, device=x.device)
        x = x + sinusoidal_positions(positions, x.shape[-1]).to(x.dtype)
        pooled = F.adaptive_avg_pool2d(conditioning.flatten(0, 1).to(x.dtype), (height, width))
        context = self.conditioning_in(frames_to_sequences(pooled, cond_frames))
        context = context + self.conditioning_positions[-cond_frames:].to(x.dtype)
        for block in self.blocks:
            x = block(x, context)
        return hidden_states + scale * sequences_to_frames(self.proj_out(x), num_frames, height, width)


@dataclass
class TemporalContext:
    """What the temporal modules need besides the hidden states; rides in cross_attention_kwargs
    under the key "temporal", from SDXLVideoUNet.forward down to each SpatioTemporalTransformer."""

    num_frames: int
    conditioning: torch.Tensor | None = None  # [B, Fc, C, h, w], normalised latents
    conditioning_scale: float = 1.0


class SpatioTemporalTransformer(Transformer2DModel):
    """SDXL's spatial transformer, then a TemporalTransformer and a TemporalConditioner.

    A subclass, so the spatial weights keep their names (`...attentions.0.transformer_blocks...`);
    the new ones are `...attentions.0.temporal.*` and `...attentions.0.conditioner.*`. Called
    without a TemporalContext it is the plain 2D transformer.
    """

    def __init__(self, temporal: TemporalTransformer, conditioner: TemporalConditioner, **spatial_config):
        super().__init__(**spatial_config)
        self.temporal = temporal
        self.conditioner = conditioner

    def forward(
        self,
        hidden_states: torch.Tensor,
        *args,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        **kwargs,
    ):
        cross_attention_kwargs = dict(cross_attention_kwargs or {})
        context: TemporalContext | None = cross_attention_kwargs.pop("temporal", None)
        out = super().forward(
            hidden_states, *args, cross_attention_kwargs=cross_attention_kwargs or None, return_dict=False, **kwargs
        )[0]
        if context is not None:
            out = self.temporal(out, context.num_frames)
            if context.conditioning is not None:
                out = self.conditioner(out, context.num_frames, context.conditioning, context.conditioning_scale)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


class SDXLVideoUNet(UNet2DConditionModel):
    """An SDXL UNet whose cross-attention blocks are followed by temporal modules.

    Config: every UNet2DConditionModel argument (they pass through **unet_kwargs) plus the
    temporal ones below. forward takes a latent video [B, F, C, H, W].
    """

    @staticmethod
    def _get_init_keys(input_class):
        # diffusers reads a model's config keys off its __init__ signature; the 2D UNet's
        # arguments reach ours through **unet_kwargs, so count them as ours too.
        keys = set(inspect.signature(input_class.__init__).parameters)
        if isinstance(input_class, type) and issubclass(input_class, SDXLVideoUNet):
            keys |= set(inspect.signature(UNet2DConditionModel.__init__).parameters)
            keys.discard("unet_kwargs")
        return keys

    def __init__(
        self,
        temporal_num_attention_heads: int = 8,
        temporal_num_layers: int = 1,
        conditioner_num_layers: int = 1,
        max_conditioning_frames: int = 16,
        **unet_kwargs,
    ):
        super().__init__(**unet_kwargs)  # registers the 2D config (UNet2DConditionModel's decorator)
        self.register_to_config(
            temporal_num_attention_heads=temporal_num_attention_heads,
            temporal_num_layers=temporal_num_layers,
            conditioner_num_layers=conditioner_num_layers,
            max_conditioning_frames=max_conditioning_frames,
        )
        groups = self.config.norm_num_groups
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            for i, spatial in enumerate(getattr(block, "attentions", None) or []):
                channels = spatial.config.in_channels
                temporal = TemporalTransformer(channels, temporal_num_attention_heads, temporal_num_layers, groups)
                conditioner = TemporalConditioner(
                    channels,
                    self.config.in_channels,
                    temporal_num_attention_heads,
                    conditioner_num_layers,
                    groups,
                    max_conditioning_frames,
                )
                spatial_config = {k: v for k, v in spatial.config.items() if not k.startswith("_")}
                block.attentions[i] = SpatioTemporalTransformer(temporal, conditioner, **spatial_config)

    @classmethod
    def from_unet2d(cls, unet2d: UNet2DConditionModel, **temporal_config) -> SDXLVideoUNet:
        """Inflate a 2D SDXL UNet: its weights, plus temporal modules that start as identities."""
        config = {k: v for k, v in unet2d.config.items() if k != "_use_default_values"}
        unet = cls.from_config({**config, **temporal_config})
        missing, unexpected = unet.load_state_dict(unet2d.state_dict(), strict=False)
        not_temporal = [k for k in missing if not any(t in k for t in TEMPORAL_KEYS)]
        if unexpected or not_temporal:
            raise ValueError(f"2D UNet weights do not fit: unexpected {unexpected[:5]}, missing {not_temporal[:5]}")
        return unet.to(unet2d.dtype) if unet.dtype != unet2d.dtype else unet

    def temporal_modules(self) -> list[torch.nn.Module]:
        return [m for m in self.modules() if isinstance(m, (TemporalTransformer, TemporalConditioner))]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        conditioning_latents: torch.Tensor | None = None,
        conditioning_scale: float = 1.0,
        timestep_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ):
        """sample: [B, F, C, H, W]; encoder_hidden_states [B, L, D] and added_cond_kwargs
        (text_embeds [B, P], time_ids [B, 6]) are per video; conditioning_latents [B, Fc, C, H, W]
        (normalised latents of earlier frames) or None. Returns noise predictions [B, F, C, H, W]."""
        batch, num_frames = sample.shape[:2]

        def per_frame(t: torch.Tensor) -> torch.Tensor:
            return t.repeat_interleave(num_frames, dim=0)

        if torch.is_tensor(timestep) and timestep.ndim > 0 and timestep.numel() > 1:
            timestep = per_frame(timestep)
        added = {k: per_frame(v) for k, v in (added_cond_kwargs or {}).items()}
        context = TemporalContext(num_frames, conditioning_latents, conditioning_scale)
        out = super().forward(
            sample.flatten(0, 1),
            timestep,
            encoder_hidden_states=per_frame(encoder_hidden_states),
            timestep_cond=None if timestep_cond is None else per_frame(timestep_cond),
            added_cond_kwargs=added,
            cross_attention_kwargs={**(cross_attention_kwargs or {}), "temporal": context},
            return_dict=False,
        )[0]
        out = out.unflatten(0, (batch, num_frames))
        return UNet2DConditionOutput(sample=out) if return_dict else (out,)


@dataclass
class SDXLVideoPipelineOutput(BaseOutput):
    """frames: [B, F, H, W, 3] floats in [0, 1] (None for output_type="latent");
    latents: the chunk's denoised latents [B, F, C, h, w], normalised (the UNet's latent space)."""

    frames: np.ndarray | None
    latents: torch.Tensor


class SDXLVideoPipeline(StableDiffusionXLPipeline):
    """SDXL video by chunks: two CLIP text encoders and tokenizers, a VAE, an SDXLVideoUNet and
    a DPM-Solver++ SDE scheduler. Prompt encoding, added time ids and LoRA loading are SDXL's."""

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components: list[str] = []

    def __init__(
        self,
        vae,
        text_encoder,
        text_encoder_2,
        tokenizer,
        tokenizer_2,
        unet: SDXLVideoUNet,
        scheduler: DPMSolverMultistepScheduler,
        force_zeros_for_empty_prompt: bool = True,
    ):
        DiffusionPipeline.__init__(self)  # SDXL's __init__ would also register an image encoder
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.default_sample_size = self.unet.config.sample_size
        self.watermark = None

    @staticmethod
    def sde_scheduler(config) -> DPMSolverMultistepScheduler:
        """DPM-Solver++ (2M) SDE with Karras sigmas from any SDXL scheduler config. The SDE noise is
        drawn with the pipeline's generator (randn_tensor): no torchsde needed, CPU or GPU."""
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="sde-dpmsolver++", solver_order=2, use_karras_sigmas=True
        )

    @classmethod
    def from_sdxl(
        cls, sdxl: str | StableDiffusionXLPipeline, dtype: torch.dtype | None = None, **temporal_config
    ) -> SDXLVideoPipeline:
        """Inflate an SDXL checkpoint (folder, hub id or pipeline): its 2D weights, temporal modules
        with zero-initialised output projections, the scheduler switched to DPM-Solver++ SDE."""
        if not isinstance(sdxl, StableDiffusionXLPipeline):
            sdxl = StableDiffusionXLPipeline.from_pretrained(sdxl, dtype=dtype)
        return cls(
            vae=sdxl.vae,
            text_encoder=sdxl.text_encoder,
            text_encoder_2=sdxl.text_encoder_2,
            tokenizer=sdxl.tokenizer,
            tokenizer_2=sdxl.tokenizer_2,
            unet=SDXLVideoUNet.from_unet2d(sdxl.unet, **temporal_config),
            scheduler=cls.sde_scheduler(sdxl.scheduler.config),
            force_zeros_for_empty_prompt=sdxl.config.force_zeros_for_empty_prompt,
        )

    # ---- latents <-> pixels -------------------------------------------------------------

    def _latent_stats(self, like: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        config = self.vae.config
        if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
            mean = torch.tensor(config.latents_mean).view(1, -1, 1, 1).to(like.device, like.dtype)
            std = torch.tensor(config.latents_std).view(1, -1, 1, 1).to(like.device, like.dtype)
            return mean, std
        return None, None

    def _vae_in_float32(self) -> bool:
        """SDXL's VAE overflows in float16: run it in float32 (as StableDiffusionXLPipeline does)."""
        if self.vae.dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(torch.float32)
            return True
        return False

    @torch.no_grad()
    def encode_image_latents(self, image, height: int, width: int) -> torch.Tensor:
        """A PIL image -> normalised latents [1, 1, C, h, w] (the mode of the VAE posterior)."""
        pixels = self.image_processor.preprocess(image, height=height, width=width)
        upcast = self._vae_in_float32()
        pixels = pixels.to(self._execution_device, self.vae.dtype)
        latents = self.vae.encode(pixels).latent_dist.mode()
        if upcast:
            self.vae.to(torch.float16)
        mean, std = self._latent_stats(latents)
        sf = self.vae.config.scaling_factor
        latents = (latents - mean) * sf / std if mean is not None else latents * sf
        return latents.unsqueeze(1).to(self.unet.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int = 8) -> np.ndarray:
        """Normalised latents [B, F, C, h, w] -> frames [B, F, H, W, 3] in [0, 1], decoded
        `decode_chunk_size` frames at a time so that VAE memory does not grow with F."""
        batch, num_frames = latents.shape[:2]
        flat = latents.flatten(0, 1)
        upcast = self._vae_in_float32()
        pieces = []
        for start in range(0, flat.shape[0], decode_chunk_size):
            z = flat[start : start + decode_chunk_size].to(self.vae.device, self.vae.dtype)
            mean, std = self._latent_stats(z)
            sf = self.vae.config.scaling_factor
            z = z * std / sf + mean if mean is not None else z / sf
            pieces.append(self.image_processor.postprocess(self.vae.decode(z, return_dict=False)[0], output_type="np"))
        if upcast:
            self.vae.to(torch.float16)
        frames = np.concatenate(pieces)
        return frames.reshape(batch, num_frames, *frames.shape[1:])

    # ---- one chunk ----------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 8,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 5.0,
        conditioning_latents: torch.Tensor | None = None,
        conditioning_strength: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        output_type: str = "np",
        decode_chunk_size: int = 8,
        return_dict: bool = True,
    ):
        """One chunk of `num_frames` frames.

        conditioning_latents: [B, Fc, C, h, w] normalised latents of the frames before the chunk
        (the tail of an earlier call's `latents`, or `encode_image_latents` repeated), or None for
        an unconditioned chunk. conditioning_strength scales the conditioner's residual.
        latents: initial noise [B, F, C, h, w] (drawn from `generator` when None).
        output_type: "np" (frames and latents) or "latent" (latents only).
        """
        height = height or self.default_sample_size * self.vae_scale_factor
        width = width or self.default_sample_size * self.vae_scale_factor
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be multiples of {self.vae_scale_factor}, got {height}x{width}")
        self._guidance_scale = guidance_scale
        self._guidance_rescale = 0.0
        self._clip_skip = None
        self._cross_attention_kwargs = cross_attention_kwargs
        self._denoising_end = None
        self._interrupt = False
        device = self._execution_device
        lora_scale = (cross_attention_kwargs or {}).get("scale")

        prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds = self.encode_prompt(
            prompt=prompt,
            device=device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=self.do_classifier_free_guidance,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
            lora_scale=lora_scale,
        )
        batch = prompt_embeds.shape[0]

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (
            batch,
            num_frames,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=prompt_embeds.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents: expected shape {shape}, got {tuple(latents.shape)}")
        latents = latents.to(device) * self.scheduler.init_noise_sigma

        if conditioning_latents is not None:
            if (
                conditioning_latents.ndim != 5
                or conditioning_latents.shape[0] != batch
                or conditioning_latents.shape[2:] != shape[2:]
            ):
                raise ValueError(
                    f"conditioning_latents: expected [{batch}, Fc, {', '.join(map(str, shape[2:]))}], "
                    f"got {list(conditioning_latents.shape)}"
                )
            conditioning_latents = conditioning_latents.to(device, prompt_embeds.dtype)

        add_time_ids = self._get_add_time_ids(
            (height, width),
            (0, 0),
            (height, width),
            dtype=prompt_embeds.dtype,
            text_encoder_projection_dim=self.text_encoder_2.config.projection_dim,
        )
        add_text_embeds = pooled_prompt_embeds
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
            add_text_embeds = torch.cat([negative_pooled_prompt_embeds, add_text_embeds])
            add_time_ids = torch.cat([add_time_ids, add_time_ids])
            if conditioning_latents is not None:  # continuity holds for the unconditional branch too
                conditioning_latents = torch.cat([conditioning_latents] * 2)
        prompt_embeds, add_text_embeds = prompt_embeds.to(device), add_text_embeds.to(device)
        add_time_ids = add_time_ids.to(device).repeat(batch, 1)
        added_cond_kwargs = {"text_embeds": add_text_embeds, "time_ids": add_time_ids}

        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, 0.0)
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(0)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for t in timesteps:
                model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = self.unet(
                    model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    added_cond_kwargs=added_cond_kwargs,
                    conditioning_latents=conditioning_latents,
                    conditioning_scale=conditioning_strength,
                    cross_attention_kwargs=cross_attention_kwargs,
                    return_dict=False,
                )[0]
                if self.do_classifier_free_guidance:
                    uncond, text = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (text - uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
                progress_bar.update()

        frames = None if output_type == "latent" else self.decode_latents(latents, decode_chunk_size)
        self.maybe_free_model_hooks()
        if not return_dict:
            return frames, latents
        return SDXLVideoPipelineOutput(frames=frames, latents=latents)
