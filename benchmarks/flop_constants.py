"""Derive the UNet constants of raypipe/flops.py by counting FLOPs on the meta device.

    .venv/bin/python benchmarks/flop_constants.py

Each released UNet architecture (the configs below are those of the checkpoints in
configs/gpu.yaml) is built on torch's meta device (no weights, no memory) and one forward is
counted with torch.utils.flop_counter at three shapes. Every op of a UNet costs either
  - in proportion to its latent pixels P = h*w per frame (convolutions, projections, MLPs,
    cross-attention to the text), or
  - to P^2 (spatial self-attention scores and sums), or
  - to F^2 * P (temporal attention across the F frames, at every pixel),
so one forward over a clip of F frames is  F*(a*P + b*P^2) + t*F^2*P,  and three counts give
a, b, t. The script also checks the DiT formula of flops.py against a count of CogVideoX-5B.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

META = torch.device("meta")


def count(model, *args, **kwargs) -> float:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return float(counter.get_total_flops())


def t(*shape):
    return torch.empty(*shape, device=META)


def sd15():
    from diffusers import UNet2DConditionModel

    with META:
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    return lambda frames, h, w: count(unet, t(frames, 4, h, w), t(frames), t(frames, 77, 768))


def sdxl_config():
    return dict(
        sample_size=128,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def sdxl():
    from diffusers import UNet2DConditionModel

    with META:
        unet = UNet2DConditionModel(**sdxl_config())
    return lambda frames, h, w: count(
        unet,
        t(frames, 4, h, w),
        t(frames),
        t(frames, 77, 2048),
        added_cond_kwargs={"text_embeds": t(frames, 1280), "time_ids": t(frames, 6)},
    )


def sdxl_video():
    from raypipe.models.sdxl_video import SDXLVideoUNet

    with META:
        unet = SDXLVideoUNet(**sdxl_config())
    # with conditioning latents: every chunk after the first (and the first with an init image)
    return lambda frames, h, w: count(
        unet,
        t(1, frames, 4, h, w),
        t(1),
        t(1, 77, 2048),
        added_cond_kwargs={"text_embeds": t(1, 1280), "time_ids": t(1, 6)},
        conditioning_latents=t(1, 4, 4, h, w),
    )


def animatediff():
    """SD 1.5's UNet on every frame plus the motion modules of the AnimateDiff MotionAdapter, each
    counted on its own (UNetMotionModel does not run on the meta device)."""
    from diffusers import MotionAdapter

    spatial = sd15()
    with META:
        adapter = MotionAdapter(motion_max_seq_length=32)
    # (module, resolution divisor): down blocks at 1, 2, 4, 8; the mid block at 8; up blocks back to 1
    placed = [(m, 2**i) for i, block in enumerate(adapter.down_blocks) for m in block.motion_modules]
    placed += [(m, 8) for m in adapter.mid_block.motion_modules]
    placed += [(m, 2 ** (3 - i)) for i, block in enumerate(adapter.up_blocks) for m in block.motion_modules]

    def forward(frames, h, w):
        total = frames * spatial(1, h, w)
        for module, divisor in placed:
            channels = module.proj_in.in_features
            total += count(module, t(frames, channels, h // divisor, w // divisor), num_frames=frames)
        return total

    return forward


def svd():
    from diffusers import UNetSpatioTemporalConditionModel

    with META:
        unet = UNetSpatioTemporalConditionModel()
    unet.to(META)  # its blending factors are made with torch.Tensor([...]), which ignores the default device

    def forward(frames, h, w):
        with META:
            return count(unet, t(1, frames, 8, h, w), t(1), t(1, 1, 1024), t(1, 3))

    return forward


def exvideo_svd():
    """SVD(-XT)'s UNet with the ExVideo-SVD extension: a 3D convolution (and a frame table) before each
    temporal transformer (raypipe/families/exvideo/svd_extension.py)."""
    from diffusers import UNetSpatioTemporalConditionModel

    from raypipe.families.exvideo.svd_extension import extend_unet

    with META:
        unet = extend_unet(UNetSpatioTemporalConditionModel())
    unet.to(META)

    def forward(frames, h, w):
        with META:
            return count(unet, t(1, frames, 8, h, w), t(1), t(1, 1, 1024), t(1, 3))

    return forward


def fit(forward, video: bool) -> tuple[float, float, float]:
    """a, b, t of F*(a*P + b*P^2) + t*F^2*P from counts at three shapes."""
    shapes = [(8, 64, 64), (8, 96, 96), (16, 64, 64)] if video else [(1, 64, 64), (1, 96, 96)]
    rows, values = [], []
    for frames, h, w in shapes:
        p = h * w
        rows.append([frames * p, frames * p * p] + ([frames * frames * p] if video else []))
        values.append(forward(frames, h, w))
    solution = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(values))
    if video and solution[2] < 0:  # temporal attention too small to separate from the rest: t = 0
        solution = np.linalg.lstsq(np.array(rows, dtype=np.float64)[:, :2], np.array(values), rcond=None)[0]
        return float(solution[0]), float(solution[1]), 0.0
    return float(solution[0]), float(solution[1]), float(solution[2]) if video else 0.0


def main() -> None:
    from raypipe.families.cogvideox.flops import COGVIDEOX_5B
    from raypipe.flops import dit_forward_flops

    print("UNET_FLOPS = {")
    for name, build, video in (
        ("sd15", sd15, False),
        ("sdxl", sdxl, False),
        ("sdxl_video", sdxl_video, True),
        ("animatediff", animatediff, True),
        ("svd", svd, True),
        ("exvideo_svd", exvideo_svd, True),
    ):
        forward = build()
        a, b, tt = fit(forward, video)
        check = (24, 80, 80) if video else (1, 80, 80)
        frames, pixels = check[0], check[1] * check[2]
        model = frames * (a * pixels + b * pixels**2) + tt * frames**2 * pixels
        counted = forward(*check)
        print(
            f'    "{name}": UNetFlops(a={a:.6g}, b={b:.6g}, t={tt:.6g}),  # check at {check}: '
            f"{model / counted - 1:+.2%}"
        )
    print("}")

    from diffusers import CogVideoXTransformer3DModel

    with META:
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=48,
            attention_head_dim=64,
            num_layers=42,
            sample_width=90,
            sample_height=60,
            use_rotary_positional_embeddings=True,
        )
    counted = count(transformer, t(1, 13, 16, 60, 90), t(1, 226, 4096), t(1))
    formula = dit_forward_flops(COGVIDEOX_5B, 49, 480, 720)
    print(
        f"CogVideoX-5B, one 49x480x720 forward: formula {formula / 1e12:.1f} TFLOP, counted {counted / 1e12:.1f} TFLOP"
    )


if __name__ == "__main__":
    main()
