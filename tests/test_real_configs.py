"""The models of configs/gpu.yaml at their real size, without the hub: each built from its published
configuration on the meta device (no memory, seconds a model), and raypipe's own code run on it.

- CogVideoX-2b / -5b / -5b-I2V: the FLOP model's shapes against the module (parameters, a
  flop_counter count), sequence-parallel degrees against the published heads, the ExVideo LoRA's
  full DiffSynth key set landing on the 5B transformer;
- SVD-XT + ExVideo-SVD: the extension on the real UNet, its released layout recognised by
  DiffSynth-Studio's md5, loading that exact layout (and nothing else), the FLOP constants;
- AnimateDiff: SD 1.5 + motion adapter v1-5-2, motion LoRAs in guoyww's released layout landing;
- SDXL base: the temporal inflation (SDXLVideoUNet.from_unet2d), the FLOP constants;
- Wan 2.1 T2V-1.3B / I2V-14B: the FLOP model's table against the module;
- one real-size forward: CogVideoX-2B's full width at reduced depth, random bf16, SP 1 against
  SP 2 over gloo (the full depth: benchmarks/real_size_forward.py, BENCHMARKS.md);
- gated models: HF_TOKEN and the hub variables reach the workers, the preflight refuses a model
  that does not resolve (exit 2), a stage names a gated model and HF_TOKEN.

The published values are written here as data, each with the upstream file it comes from.
"""

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from raypipe.config import KindConfig, load_config
from tests.conftest import REPO, write_jsonl

META = torch.device("meta")

# ---- published configurations ------------------------------------------------------------------

# THUDM/CogVideoX-2b transformer/config.json. The values as diffusers' scripts/convert_cogvideox_to_diffusers.py
# builds them (its flags: 30 layers, 30 heads, no RoPE for 2B) and as its CogVideoX tensor-parallel
# benchmark's get_config("CogVideoX-2B") quotes the hub file.
COGVIDEOX_2B = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 64,
    "dropout": 0.0,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 16,
    "max_text_seq_length": 226,
    "norm_elementwise_affine": True,
    "norm_eps": 1e-05,
    "num_attention_heads": 30,
    "num_layers": 30,
    "out_channels": 16,
    "patch_size": 2,
    "sample_frames": 49,
    "sample_height": 60,
    "sample_width": 90,
    "spatial_interpolation_scale": 1.875,
    "temporal_compression_ratio": 4,
    "temporal_interpolation_scale": 1.0,
    "text_embed_dim": 4096,
    "time_embed_dim": 512,
    "timestep_activation_fn": "silu",
    "use_rotary_positional_embeddings": False,
}
# THUDM/CogVideoX-5b transformer/config.json (same sources: 42 layers, 48 heads, RoPE).
COGVIDEOX_5B = {**COGVIDEOX_2B, "num_attention_heads": 48, "num_layers": 42, "use_rotary_positional_embeddings": True}
# THUDM/CogVideoX-5b-I2V transformer/config.json: the image latents beside the noise (32 channels) and
# learned positional embeddings for 49 x 480 x 720 (same sources, get_config("CogVideoX-5B-I2V")).
COGVIDEOX_5B_I2V = {**COGVIDEOX_5B, "in_channels": 32, "use_learned_positional_embeddings": True}
# THUDM/CogVideoX-{2b,5b} vae/config.json (4 levels: 8x spatial; 4x temporal); scaling factors from
# convert_cogvideox_to_diffusers.py's comment (2B 1.15258426, 5B 0.7).
COGVIDEOX_VAE = {"block_out_channels": [128, 256, 256, 512], "latent_channels": 16, "temporal_compression_ratio": 4}
COGVIDEOX = {
    "THUDM/CogVideoX-2b": (COGVIDEOX_2B, {**COGVIDEOX_VAE, "scaling_factor": 1.15258426}),
    "THUDM/CogVideoX-5b": (COGVIDEOX_5B, {**COGVIDEOX_VAE, "scaling_factor": 0.7}),
    "THUDM/CogVideoX-5b-I2V": (COGVIDEOX_5B_I2V, {**COGVIDEOX_VAE, "scaling_factor": 0.7}),
}
# Parameters of each transformer (the model names' "2B" / "5B": 1.69e9 and 5.57e9).
COGVIDEOX_PARAMETERS = {"THUDM/CogVideoX-2b": (1.6e9, 1.8e9), "THUDM/CogVideoX-5b": (5.4e9, 5.7e9)}

# stabilityai/stable-video-diffusion-img2vid-xt unet/config.json (diffusers'
# UNetSpatioTemporalConditionModel defaults were written from it; XT: 25 frames). DiffSynth-Studio's
# SVDUNet (diffsynth/models/svd_unet.py) hard-codes the same widths, heads and cross-attention width.
SVD_XT_UNET = {
    "addition_time_embed_dim": 256,
    "block_out_channels": [320, 640, 1280, 1280],
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlockSpatioTemporal"] * 3 + ["DownBlockSpatioTemporal"],
    "in_channels": 8,
    "layers_per_block": 2,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": 25,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 768,
    "sample_size": 96,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlockSpatioTemporal"] + ["CrossAttnUpBlockSpatioTemporal"] * 3,
}
# stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json (emilianJR/epiCRealism, configs/gpu.yaml's
# animatediff base, is a fine-tune of it: the same architecture).
SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
}
# guoyww/animatediff-motion-adapter-v1-5-2 config.json: converted from mm_sd_v15_v2.ckpt by diffusers'
# scripts/convert_animatediff_motion_module_to_diffusers.py (--use_motion_mid_block, motion_max_seq_length
# 32; the rest MotionAdapter's defaults, from AnimateDiff's inference-v2 motion_module_kwargs: 8 heads,
# one transformer block a module).
MOTION_ADAPTER_V152 = {
    "block_out_channels": [320, 640, 1280, 1280],
    "conv_in_channels": None,
    "motion_layers_per_block": 2,
    "motion_max_seq_length": 32,
    "motion_mid_block_layers_per_block": 1,
    "motion_norm_num_groups": 32,
    "motion_num_attention_heads": 8,
    "use_motion_mid_block": True,
}
# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (SDXL paper: a 2.6B-parameter UNet).
SDXL_BASE_UNET = {
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "in_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers and Wan-AI/Wan2.1-I2V-14B-480P-Diffusers transformer/config.json, as
# diffusers' scripts/convert_wan_to_diffusers.py writes them (get_transformer_config "Wan-T2V-1.3B",
# "Wan-I2V-14B-480p").
WAN_COMMON = {
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-06,
    "freq_dim": 256,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "text_dim": 4096,
}
WAN = {
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": {
        **WAN_COMMON,
        "added_kv_proj_dim": None,
        "ffn_dim": 8960,
        "in_channels": 16,
        "num_attention_heads": 12,
        "num_layers": 30,
    },
    "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers": {
        **WAN_COMMON,
        "image_dim": 1280,
        "added_kv_proj_dim": 5120,
        "ffn_dim": 13824,
        "in_channels": 36,
        "num_attention_heads": 40,
        "num_layers": 40,
    },
}


def parameters(module) -> int:
    return sum(p.numel() for p in module.parameters())


def flop_count(model, *args, **kwargs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*args, **kwargs)
    return float(counter.get_total_flops())


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, device=META, dtype=dtype)


def model_folder(tmp_path, files: dict) -> str:
    """A local model folder holding only config files ({"transformer/config.json": {...}, ...})."""
    for name, content in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(content))
    return str(tmp_path)


def test_the_models_tested_here_are_the_ones_configs_gpu_names():
    gpu = load_config(str(REPO / "configs" / "gpu.yaml")).kinds
    named = {gpu["cogvideox"].model, *gpu["cogvideox"].models.values(), gpu["exvideo"].model}
    assert named <= set(COGVIDEOX)
    assert gpu["exvideo"].models["svd"] == "stabilityai/stable-video-diffusion-img2vid-xt"
    assert gpu["exvideo"].models["svd_extension"] == "ECNU-CILab/ExVideo-SVD-128f-v1/model.fp16.safetensors"
    assert gpu["animatediff"].models["motion_adapter"] == "guoyww/animatediff-motion-adapter-v1-5-2"
    assert gpu["sdxl_video"].model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert {gpu["wan"].model, *gpu["wan"].models.values()} <= set(WAN)


# ---- CogVideoX 2b, 5b, 5b-I2V ------------------------------------------------------------------


def cogvideox(name: str):
    from diffusers import CogVideoXTransformer3DModel

    with META:
        return CogVideoXTransformer3DModel(**COGVIDEOX[name][0])


@pytest.mark.parametrize("name", sorted(COGVIDEOX))
def test_cogvideox_flop_model_matches_the_published_transformer(name, tmp_path):
    from raypipe.families.cogvideox.flops import dit_shape
    from raypipe.flops import dit_forward_flops

    published, vae = COGVIDEOX[name]
    model = cogvideox(name)
    assert {key: model.config[key] for key in published} == published
    low, high = COGVIDEOX_PARAMETERS.get(name.removesuffix("-I2V"))
    assert low < parameters(model) < high
    # The shapes raypipe prices a hub id by (its table) are the module's, and a local copy of the
    # checkpoint (its config files) is priced the same.
    shape = dit_shape(name)
    assert shape == dit_shape(model_folder(tmp_path, {"transformer/config.json": published, "vae/config.json": vae}))
    assert (shape.layers, shape.hidden) == (len(model.transformer_blocks), model.config.num_attention_heads * 64)
    # The formula's 12 d^2 a layer: Q, K, V, out (4 d^2) and the 4x MLP (8 d^2), every weight of it.
    projections = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")
    counted = sum(block.get_submodule(p).weight.numel() for block in model.transformer_blocks for p in projections)
    assert counted == shape.layers * 12 * shape.hidden**2
    # ... and one forward at 49 x 480 x 720, counted by torch.
    latents = meta(1, 13, published["in_channels"], 60, 90)
    counted_flops = flop_count(model, latents, meta(1, 226, 4096), meta(1))
    assert dit_forward_flops(shape, 49, 480, 720) == pytest.approx(counted_flops, rel=1e-3)


@pytest.mark.parametrize("name", ["THUDM/CogVideoX-2b", "THUDM/CogVideoX-5b"])
def test_sequence_parallel_degrees_follow_the_published_heads(name, tmp_path):
    from raypipe.parallel.validate import check_sequence_parallel
    from raypipe.schema import validate_row

    published, vae = COGVIDEOX[name]
    folder = model_folder(tmp_path, {"transformer/config.json": published, "vae/config.json": vae})
    kc = KindConfig(model=folder, device="cuda", num_gpus=1, num_cpus=4)
    heads = published["num_attention_heads"]
    for degree in (2, 3, 4, 5, 6, 8):
        # 1920 px: 120 rows of tokens, which every degree here divides: only the heads decide
        row = validate_row({"id": "r", "kind": "cogvideox", "prompt": "x", "height": 1920, "sp_degree": degree})
        if heads % degree == 0:
            check_sequence_parallel(row, kc, nodes=[{"CPU": 64.0, "GPU": 8.0}])
        else:
            with pytest.raises(ValueError, match=f"sp_degree: must divide the {heads} attention heads"):
                check_sequence_parallel(row, kc, nodes=[{"CPU": 64.0, "GPU": 8.0}])


def diffsynth_cogdit_lora(
    dim=3072, blocks=42, rank=4, time_dim=512, text_dim=4096, channels=16, patch=2, device=META, value=torch.zeros
) -> dict:
    """Every key a peft LoRA can have on DiffSynth-Studio's CogVideoX DiT (diffsynth/models/cog_dit.py
    before the 2.0 rewrite, CogDiT, 5B by default: its Linear layers and the patchify Conv3d), with
    peft's shapes (lora_A [rank, in, *kernel], lora_B [out, rank, 1...]) and adapter name `default`."""
    linears = {  # module -> (out, in)
        "context_embedder": (dim, text_dim),
        "time_embedder.timestep_embedder.0": (time_dim, dim),  # TimestepEmbeddings(3072, 512)
        "time_embedder.timestep_embedder.2": (time_dim, time_dim),
        "norm_out.linear": (2 * dim, time_dim),  # CogAdaLayerNorm(single=True)
        "proj_out": (patch * patch * channels, dim),
    }
    for i in range(blocks):
        linears.update(
            {
                f"blocks.{i}.norm1.linear": (6 * dim, time_dim),
                f"blocks.{i}.attn1.to_q": (dim, dim),
                f"blocks.{i}.attn1.to_k": (dim, dim),
                f"blocks.{i}.attn1.to_v": (dim, dim),
                f"blocks.{i}.attn1.to_out": (dim, dim),
                f"blocks.{i}.norm2.linear": (6 * dim, time_dim),
                f"blocks.{i}.ff.0": (4 * dim, dim),
                f"blocks.{i}.ff.2": (dim, 4 * dim),
            }
        )
    lora = {}
    for module, (out, inp) in linears.items():
        lora[f"{module}.lora_A.default.weight"] = value(rank, inp, device=device)
        lora[f"{module}.lora_B.default.weight"] = value(out, rank, device=device)
    lora["patchify.proj.lora_A.default.weight"] = value(rank, channels, 1, patch, patch, device=device)
    lora["patchify.proj.lora_B.default.weight"] = value(dim, rank, 1, 1, 1, device=device)
    return lora


def test_diffsynth_cogvideox_lora_keys_all_land_on_the_5b_transformer():
    from raypipe.families.cogvideox.lora import check_targets, diffsynth_to_diffusers

    five_b = cogvideox("THUDM/CogVideoX-5b")
    lora = diffsynth_cogdit_lora()
    mapped = check_targets(diffsynth_to_diffusers(lora), five_b)
    assert len(mapped) == len(lora) == 2 * (42 * 8 + 6)
    assert mapped["transformer.patch_embed.proj.lora_A.weight"].shape == (4, 16, 2, 2)  # DiffSynth's 3D conv
    assert "transformer.time_embedding.linear_1.lora_B.weight" in mapped
    # The 5B LoRA on the 2B model: every key that cannot land is named, none loads in part.
    with pytest.raises(ValueError) as info:
        check_targets(diffsynth_to_diffusers(lora), cogvideox("THUDM/CogVideoX-2b"))
    text = str(info.value)
    assert "no such layer in this transformer (192 keys)" in text and "transformer_blocks.30." in text
    assert "not the shape of its layer" in text
    with pytest.raises(ValueError, match=r"not a CogVideoX LoRA key .*'blocks\.0\.attn1\.norm_q\.lora_A\.weight'"):
        diffsynth_to_diffusers({**lora, "blocks.0.attn1.norm_q.lora_A.weight": torch.zeros(1)})


# ---- SVD-XT + ExVideo-SVD ------------------------------------------------------------------------


def svd_xt():
    from diffusers import UNetSpatioTemporalConditionModel

    with META:
        return UNetSpatioTemporalConditionModel(**SVD_XT_UNET)


def released_layout_tensors(**replace) -> dict:
    """An ExVideo-SVD checkpoint of meta tensors in the released layout (DiffSynth's key list), fp16."""
    from raypipe.families.exvideo.tiny import released_svd_layout

    layout = {**released_svd_layout(), **replace}
    return {key: meta(*shape, dtype=torch.float16) for key, shape in layout.items() if shape is not None}


def test_exvideo_svd_on_svd_xt_is_the_layout_diffsynth_recognises():
    from raypipe.families.exvideo import svd_extension as ex

    unet = svd_xt()
    assert parameters(unet) == 1_524_623_082  # SVD's 1.5B-parameter UNet
    with META:
        ex.extend_unet(unet)
    released = ex.diffusers_to_released(unet.state_dict())
    assert len(released) == 16 * 33
    # raypipe's mapping of the real UNet gives the very file DiffSynth recognises...
    assert ex.diffsynth_keys_md5(released) == ex.EXVIDEO_SVD_MD5 == "9a4ab6869ac9b7d6e31f9854e397c867"
    # ... and so does the key list written from DiffSynth's SVDUNet (what the tiny builder writes from).
    assert ex.diffsynth_keys_md5(released_layout_tensors()) == ex.EXVIDEO_SVD_MD5


def test_loading_accepts_exactly_the_released_layout_on_svd_xt():
    from raypipe.families.exvideo import svd_extension as ex

    with META:  # the extension is built on the meta device too
        loaded = ex.load_exvideo_svd(svd_xt(), released_layout_tensors())
    assert type(loaded.mid_block.attentions[0]).__name__ == "ExVideoSpatioTemporalTransformer"
    assert loaded.down_blocks[0].attentions[0].time_proj.max_frames == 128
    missing = released_layout_tensors(**{"blocks.195.ff_out.bias": None})
    with META, pytest.raises(ValueError, match="incomplete ExVideo-SVD checkpoint: 1 weights missing"):
        ex.load_exvideo_svd(svd_xt(), missing)
    extra = {**released_layout_tensors(), "blocks.195.norm3.weight": meta(1280)}
    with META, pytest.raises(ValueError, match="not an ExVideo-SVD key: 'blocks.195.norm3.weight'"):
        ex.load_exvideo_svd(svd_xt(), extra)
    wrong = released_layout_tensors(**{"blocks.7.ff_in.weight": (320, 1281)})
    with (
        META,
        pytest.raises(ValueError, match=r"blocks.0.attentions.0.temporal_transformer_blocks.0.ff_in.net.2.weight"),
    ):
        ex.load_exvideo_svd(svd_xt(), wrong)


def test_svd_flop_constants_match_a_count_of_svd_xt_with_and_without_the_extension():
    from raypipe.families.exvideo.svd_extension import extend_unet
    from raypipe.flops import UNET_FLOPS

    def count(unet):
        unet.to(META)  # its blending factors are made with torch.Tensor([...]), outside the meta context
        with META:  # 8 frames of 512 x 512
            return flop_count(unet, meta(1, 8, 8, 64, 64), meta(1), meta(1, 1, 1024), meta(1, 3))

    base = count(svd_xt())
    assert UNET_FLOPS["svd"].forward(8, 512, 512) == pytest.approx(base, rel=0.01)
    with META:
        extended = count(extend_unet(svd_xt()))
    # ExVideo's 3D convolutions before every temporal transformer cost a quarter more: exvideo base svd
    # rows are priced with their own constants.
    assert extended / base - 1 == pytest.approx(0.27, abs=0.01)
    assert UNET_FLOPS["exvideo_svd"].forward(8, 512, 512) == pytest.approx(extended, rel=0.01)


# ---- AnimateDiff: SD 1.5 + motion adapter v1-5-2 -----------------------------------------------


def animatediff_unet():
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with META:  # buffers too (the adapter's positional tables)
        unet2d = UNet2DConditionModel(**SD15_UNET)
        adapter = MotionAdapter(**MOTION_ADAPTER_V152)
        return unet2d, adapter, UNetMotionModel.from_unet2d(unet2d, adapter)


def animatediff_motion_lora(widths=(320, 640, 1280, 1280), layers_per_block=2, rank=4, value=meta) -> dict:
    """A motion LoRA in guoyww's released layout (v2_lora_*.ckpt): AnimateDiff's UNet3D holds a motion
    module after each layer of every down block (layers_per_block), up block (+1) and the mid block
    (animatediff/models/unet.py, unet_blocks.py); each is temporal_transformer.transformer_blocks.0 with
    two attention_blocks (motion_module.py), whose processor LoRA is to_{q,k,v,out}_lora.{down,up}
    ([rank, width], [width, rank])."""
    places = [(f"down_blocks.{i}", j, w) for i, w in enumerate(widths) for j in range(layers_per_block)]
    places += [("mid_block", 0, widths[-1])]
    places += [(f"up_blocks.{i}", j, w) for i, w in enumerate(reversed(widths)) for j in range(layers_per_block + 1)]
    lora = {}
    for block, j, width in places:
        for attn in (0, 1):
            base = f"{block}.motion_modules.{j}.temporal_transformer.transformer_blocks.0.attention_blocks.{attn}"
            for proj in ("q", "k", "v", "out"):
                lora[f"{base}.processor.to_{proj}_lora.down.weight"] = value(rank, width)
                lora[f"{base}.processor.to_{proj}_lora.up.weight"] = value(width, rank)
    return lora


def test_animatediff_on_sd15_with_the_v152_adapter():
    from diffusers import MotionAdapter

    from raypipe.families.animatediff.motion_lora import original_to_diffusers

    unet2d, adapter, unet = animatediff_unet()
    assert parameters(unet2d) == 859_520_964  # SD 1.5's 860M-parameter UNet
    # The FLOP constants (benchmarks/flop_constants.py) were counted on MotionAdapter(motion_max_seq_length=32).
    with META:
        assert parameters(adapter) == parameters(MotionAdapter(motion_max_seq_length=32))
    # The config's window for validation is the adapter's.
    gpu = load_config(str(REPO / "configs" / "gpu.yaml")).kinds["animatediff"]
    assert gpu.defaults["motion_window"] == adapter.config.motion_max_seq_length == 32
    # guoyww's released motion LoRAs land on every motion attention, each key on its projection.
    lora = animatediff_motion_lora()
    mapped = original_to_diffusers(lora, unet)
    assert len(mapped) == len(lora) == 21 * 2 * 4 * 2
    motion_projections = {
        name
        for name, _ in unet.named_modules()
        if ".motion_modules." in name and name.endswith(("attn1.to_q", "attn2.to_out.0"))
    }
    assert len(motion_projections) == 21 * 2
    with pytest.raises(ValueError, match="not the shape of its layer"):
        original_to_diffusers(animatediff_motion_lora(widths=(640, 1280, 2560, 2560)), unet)


# ---- SDXL base and its temporal inflation --------------------------------------------------------


def test_sdxl_base_inflates_to_sdxl_video_with_its_names_and_flops():
    from diffusers import UNet2DConditionModel

    from benchmarks.flop_constants import sdxl_config
    from raypipe.flops import UNET_FLOPS
    from raypipe.models.sdxl_video import SDXLVideoUNet, SpatioTemporalTransformer

    with META:
        unet2d = UNet2DConditionModel(**SDXL_BASE_UNET)
        video = SDXLVideoUNet.from_unet2d(unet2d)
        counted_on = SDXLVideoUNet(**sdxl_config())
    assert parameters(unet2d) == 2_567_463_684  # SDXL's 2.6B-parameter UNet
    # every 2D weight keeps its name and shape: SDXL checkpoints and SDXL LoRAs load as they are
    own = dict(video.named_parameters())
    assert all(name in own and own[name].shape == p.shape for name, p in unet2d.named_parameters())
    spatial = [m for m in video.modules() if isinstance(m, SpatioTemporalTransformer)]
    assert len(spatial) == 2 + 2 + 1 + 3 + 3  # every cross-attention transformer of down, mid and up blocks
    heads = video.config.temporal_num_attention_heads
    assert all(m.temporal.config.in_channels % heads == 0 for m in spatial)
    # the FLOP constants were counted on this very architecture, 2D and inflated
    assert parameters(counted_on) == parameters(video)
    count = flop_count(
        unet2d,
        meta(1, 4, 128, 128),
        meta(1),
        meta(1, 77, 2048),
        added_cond_kwargs={"text_embeds": meta(1, 1280), "time_ids": meta(1, 6)},
    )
    assert UNET_FLOPS["sdxl"].forward(1, 1024, 1024) == pytest.approx(count, rel=0.03)


# ---- Wan 2.1 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(WAN))
def test_wan_flop_model_matches_the_published_transformer(name):
    from diffusers import WanTransformer3DModel

    from raypipe.families.wan.flops import wan_shape

    with META:
        model = WanTransformer3DModel(**WAN[name])
    shape = wan_shape(name)
    ffn = model.blocks[0].ffn.net[0].proj.out_features
    assert (shape.layers, shape.hidden, shape.ffn) == (len(model.blocks), model.config.num_attention_heads * 128, ffn)
    assert (shape.image_dim > 0) == (model.config.image_dim is not None)
    low, high = (1.2e9, 1.6e9) if "1.3B" in name else (13e9, 17.5e9)
    assert low < parameters(model) < high


# ---- one real-size forward: CogVideoX-2B, SP 1 against SP 2 ------------------------------------


def test_cogvideox_2b_full_width_forward_sp2_equals_sp1():
    """Every block at CogVideoX-2B's real width (1920, 30 heads of 64, 226 text tokens), 2 of its 30
    blocks (the 30-block run: benchmarks/real_size_forward.py), random bf16 weights, 2 ranks over gloo."""
    from diffusers import CogVideoXTransformer3DModel

    from benchmarks.real_size_forward import COGVIDEOX_2B_ARGS, TOLERANCE, run

    with META:
        built = CogVideoXTransformer3DModel(**COGVIDEOX_2B_ARGS).config
    assert {key: built[key] for key in COGVIDEOX_2B} == COGVIDEOX_2B  # the benchmark's model is the published one
    result = run(layers=2, grid=(2, 4, 4))
    assert result["finite"] and result["shape"] == [1, 2, 16, 8, 8]
    assert result["sp2_processor"] == "SequenceParallelCogVideoXAttnProcessor"
    assert result["sp2_video_tokens_per_rank"] == [16, 16]  # each rank half of the 32 video tokens
    assert result["relative_diff"] <= TOLERANCE, result


# ---- gated and private models ---------------------------------------------------------------------


class FakeHub(BaseHTTPRequestHandler):
    """The hub's model_info answers: org/gated* 403 GatedRepo, org/ok* 200 with one file, others 404."""

    def do_GET(self):  # noqa: N802 - http.server's name
        name = self.path.split("/")[4] if self.path.startswith("/api/models/") else ""
        if name.startswith("gated"):
            self.answer(403, b'{"error": "gated"}', {"X-Error-Code": "GatedRepo"})
        elif name.startswith("ok"):
            body = json.dumps({"id": "org/ok", "siblings": [{"rfilename": "model_index.json"}]}).encode()
            self.answer(200, body, {"Content-Type": "application/json"})
        else:
            self.answer(404, b'{"error": "not found"}', {"X-Error-Code": "RepoNotFound"})

    def answer(self, status, body, headers):
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_preflight_checks_each_kind_of_model_name(fake_hub, monkeypatch, tmp_path):
    from raypipe.preflight import check_model

    monkeypatch.setenv("HF_ENDPOINT", fake_hub)
    status, reason = check_model("org/gated-model")
    assert status == "failed" and "gated" in reason and "HF_TOKEN" in reason
    status, reason = check_model("org/missing-model")
    assert status == "failed" and "HTTP 404" in reason and "HF_TOKEN" in reason
    assert check_model("org/ok-model") == ("ok", "on the hub")
    assert check_model("org/ok-model/lora.safetensors", "lora")[0] == "failed"  # the repo has no such file
    assert check_model("tiny:cogvideox") == ("ok", "a diffusers pipeline folder")
    assert check_model("tiny:nope")[0] == "failed"
    assert check_model(str(tmp_path / "lora.safetensors"), "lora") == ("failed", "no such file")
    assert check_model(str(tmp_path), "model")[0] == "failed"  # a folder without model_index.json
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: no network, not a failure
    assert check_model("org/unreachable")[0] == "not checked"


def test_a_config_naming_a_missing_model_folder_exits_2_before_any_pool(ray_local, tmp_path, capsys):
    from raypipe.cli import main

    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": "a", "kind": "cogvideox", "prompt": "x"}])
    config = tmp_path / "config.yaml"
    config.write_text("kinds:\n  cogvideox:\n    model: /nonexistent/CogVideoX-5b\n")
    started = time.monotonic()
    code = main(["run", str(manifest), "--out", str(tmp_path / "out"), "--config", str(config)])
    assert code == 2
    assert time.monotonic() - started < 120  # no pool, no model load
    err = capsys.readouterr().err
    assert "kind cogvideox: model /nonexistent/CogVideoX-5b: no such folder" in err
    assert not (tmp_path / "out" / "videos").exists() or not os.listdir(tmp_path / "out" / "videos")


def test_a_stage_loading_a_gated_model_names_the_model_and_hf_token(fake_hub):
    """A real diffusers load of a hub id the hub refuses (in a fresh process, as the hub's endpoint is
    read when huggingface_hub is imported): the error names the id and HF_TOKEN."""
    code = (
        "from raypipe.config import load_config\n"
        "from raypipe.families.cogvideox.stage import CogVideoXStage\n"
        "kc = load_config().kinds['cogvideox'].model_copy(update={'model': 'org/gated-cogvideox'})\n"
        "try:\n"
        "    CogVideoXStage(kc).pipeline()\n"
        "except ValueError as err:\n"
        "    print('ERROR', err)\n"
    )
    env = {**os.environ, "HF_ENDPOINT": fake_hub, "HF_HUB_CACHE": os.environ["RAYPIPE_CACHE"] + "/hub"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    line = next((line for line in out.stdout.splitlines() if line.startswith("ERROR")), out.stdout + out.stderr)
    assert "model: org/gated-cogvideox is gated on the hub" in line and "HF_TOKEN" in line, line


def test_hub_settings_reach_every_worker_of_a_joined_cluster(monkeypatch):
    """HF_TOKEN and the hub's variables, set on the driver only (after the cluster's raylets started),
    reach the tasks of a run that joins the cluster, as the object-storage variables do."""
    import ray
    from ray.cluster_utils import Cluster

    from raypipe.pipeline.ray_init import init_ray

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    hub = {"HF_TOKEN": "hf_test_token", "HF_ENDPOINT": "http://hub.example", "HF_HUB_OFFLINE": "1"}
    for key, value in hub.items():
        monkeypatch.setenv(key, value)
    try:
        init_ray(cluster.address)

        @ray.remote(num_cpus=0.1)
        def worker_env():
            return {key: os.environ.get(key) for key in hub}

        assert ray.get(worker_env.remote()) == hub
    finally:
        ray.shutdown()
        cluster.shutdown()


# ---- the GPU check, on CPU --------------------------------------------------------------------------


def test_the_gpu_benchmark_runs_tiny_on_cpu_and_builds_the_published_5b():
    from diffusers import CogVideoXTransformer3DModel

    from benchmarks.cogvideox_gpu import COGVIDEOX_5B_ARGS

    with META:
        built = CogVideoXTransformer3DModel(**COGVIDEOX_5B_ARGS).config
    assert {key: built[key] for key in COGVIDEOX_5B} == COGVIDEOX_5B
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "cogvideox_gpu.py"), "--tiny", "--device", "cpu", "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["tflop_per_step"] > 0 and result["seconds_per_step"] > 0 and result["device"] == "cpu"
