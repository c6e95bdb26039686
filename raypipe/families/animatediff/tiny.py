"""Tiny AnimateDiff parts for tiny:sd15: a motion adapter, a ControlNet and a motion LoRA."""

from __future__ import annotations

from pathlib import Path

from raypipe.models.tiny import seeded, tiny_sd15_components

MOTION_LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LoRA file name


def tiny_motion_adapter(unet=None):
    """A MotionAdapter that fits tiny:sd15's UNet (same block widths and layers), with a window
    (motion_max_seq_length) of 16 frames, so long clips need FreeNoise."""
    from diffusers import MotionAdapter

    unet = unet or tiny_sd15_components()["unet"]
    seeded(30)
    return MotionAdapter(
        block_out_channels=tuple(unet.config.block_out_channels),
        motion_layers_per_block=unet.config.layers_per_block,
        motion_num_attention_heads=2,
        motion_norm_num_groups=unet.config.norm_num_groups,
        motion_max_seq_length=16,
    )


def build_animatediff_motion_adapter(path: Path) -> None:
    tiny_motion_adapter().save_pretrained(path)


def build_animatediff_controlnet(path: Path) -> None:
    """A ControlNet made from tiny:sd15's UNet (as ControlNet training starts), its zero
    convolutions given random weights so that the control maps act."""
    from diffusers import ControlNetModel

    unet = tiny_sd15_components()["unet"]
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 8, 8))
    seeded(32)
    for module in (
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ):
        module.weight.data.normal_(std=0.1)
    controlnet.save_pretrained(path)


def build_motion_lora(path: Path) -> None:
    """A motion LoRA for tiny:sd15 + tiny:animatediff-motion-adapter in diffusers' LoRA format
    (pytorch_lora_weights.safetensors, keys unet.<module>.lora_A/B.weight), on the motion modules'
    attention projections as the released MotionLoRAs, rank 4, with non-zero B so that it acts."""
    from diffusers import AnimateDiffPipeline, UNetMotionModel
    from peft import LoraConfig, get_peft_model_state_dict

    unet = tiny_sd15_components()["unet"]
    motion_unet = UNetMotionModel.from_unet2d(unet, tiny_motion_adapter(unet))
    seeded(33)
    motion_unet.add_adapter(
        LoraConfig(
            r=4, lora_alpha=4, init_lora_weights=False, target_modules=r".*motion_modules.*\.(to_q|to_k|to_v|to_out\.0)"
        )
    )
    AnimateDiffPipeline.save_lora_weights(
        path, unet_lora_layers=get_peft_model_state_dict(motion_unet), weight_name=MOTION_LORA_FILE
    )
