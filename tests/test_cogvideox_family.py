"""The CogVideoX family on tiny models: every mode (CogVideoX t2v / i2v / v2v, ExVideo on CogVideoX
and on SVD) in a real local Ray with the videos read back by decord; the rejections and input
failures; the ExVideo-SVD checkpoint mapping and the ExVideo LoRA's; batched == unbatched; the
memory and speed options."""

import json
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from raypipe.cli import main
from raypipe.config import load_config
from raypipe.families.cogvideox.lora import diffsynth_to_diffusers
from raypipe.families.cogvideox.stage import CogVideoXStage
from raypipe.families.exvideo import svd_extension as exvideo_svd
from raypipe.families.exvideo.stage import ExVideoStage
from raypipe.families.exvideo.tiny import EXVIDEO_LORA_FILE, EXVIDEO_SVD_FILE
from raypipe.models.tiny import tiny_path
from raypipe.schema import validate_row
from raypipe.sink import read_metadata
from tests.conftest import REPO, write_jsonl

IMAGE = str(REPO / "manifests" / "inputs" / "sunset.png")
VIDEO = str(REPO / "manifests" / "inputs" / "sunset.mp4")
DEFAULTS = {kind: kc.defaults for kind, kc in load_config().kinds.items()}

# ---- validation: frame limits and required inputs -------------------------------------------

REJECTED = [
    ({"kind": "cogvideox", "num_frames": 57}, "num_frames: at most 49 for CogVideoX"),
    ({"kind": "cogvideox", "num_frames": 12}, "num_frames: must be 8k+1"),
    ({"kind": "cogvideox", "mode": "i2v"}, "image: required for mode i2v"),
    ({"kind": "cogvideox", "mode": "v2v"}, "video: required for mode v2v"),
    ({"kind": "cogvideox", "image": IMAGE}, "image: only for mode i2v"),
    ({"kind": "cogvideox", "mode": "i2v", "image": IMAGE, "strength": 0.5}, "strength: only for mode v2v"),
    ({"kind": "cogvideox", "mode": "v2v", "video": VIDEO, "strength": 1.5}, "strength: Input should be less"),
    (
        {"kind": "cogvideox", "mode": "v2v", "video": VIDEO, "strength": 0.1, "num_inference_steps": 4},
        "strength: 0.1 of 4 steps runs no step",
    ),
    ({"kind": "cogvideox", "mode": "x2v"}, "mode: Input should be 't2v', 'i2v' or 'v2v'"),
    ({"kind": "exvideo", "num_frames": 137}, "num_frames: at most 129 for ExVideo-CogVideoX"),
    ({"kind": "exvideo", "num_frames": 64}, "num_frames: must be 8k+1"),
    ({"kind": "exvideo", "image": IMAGE}, "image: only for base svd"),
    ({"kind": "exvideo", "motion_bucket_id": 3}, "motion_bucket_id: only for base svd"),
    ({"kind": "exvideo", "base": "svd"}, "image: required for base svd"),
    ({"kind": "exvideo", "base": "svd", "image": IMAGE, "num_frames": 129}, "num_frames: from 2 to 128"),
    ({"kind": "exvideo", "base": "svd", "image": IMAGE, "height": 96}, "height: must be a positive multiple of 64"),
    ({"kind": "exvideo", "base": "svd", "image": IMAGE, "sp_degree": 2}, "sp_degree: sequence parallelism runs"),
    (
        {"kind": "exvideo", "base": "svd", "image": IMAGE, "lora": [{"path": "x.safetensors"}]},
        "lora: LoRAs apply to base cogvideox only",
    ),
]


@pytest.mark.parametrize("fields,error", REJECTED, ids=[e.split(":")[0] + str(i) for i, (_, e) in enumerate(REJECTED)])
def test_rows_outside_the_models_limits_are_rejected(fields, error):
    with pytest.raises(ValueError) as info:
        validate_row({"id": "r", **fields}, DEFAULTS[fields["kind"]])
    assert str(info.value).startswith(error), str(info.value)


def test_the_longest_rows_each_model_takes_are_valid():
    assert validate_row({"id": "a", "kind": "cogvideox", "prompt": "x", "num_frames": 49}).num_frames == 49
    assert validate_row({"id": "b", "kind": "exvideo", "prompt": "x", "num_frames": 129}).num_frames == 129
    svd = validate_row({"id": "c", "kind": "exvideo", "base": "svd", "image": IMAGE, "num_frames": 128})
    assert svd.num_frames == 128
    # without config defaults a base gets its model card's size and length
    assert (svd.height, svd.width, svd.fps) == (512, 512, 30)
    cog = validate_row({"id": "d", "kind": "exvideo", "prompt": "x"})
    assert (cog.num_frames, cog.height, cog.width) == (129, 480, 720)
    assert validate_row({"id": "e", "kind": "cogvideox", "mode": "v2v", "video": VIDEO}).strength == 0.8


def test_example_manifests_validate_and_their_inputs_exist():
    for name in ("cogvideox_i2v", "cogvideox_v2v", "exvideo_cogvideox", "exvideo_svd"):
        lines = (REPO / "manifests" / f"{name}.jsonl").read_text().splitlines()
        assert lines, name
        for line in lines:
            raw = json.loads(line)
            validate_row(raw, DEFAULTS[raw["kind"]])
            for field in ("image", "video"):
                if field in raw:  # relative to the repo root, where `raypipe run manifests/...` runs
                    assert not Path(raw[field]).is_absolute() and (REPO / raw[field]).is_file(), raw[field]


# ---- every mode in a real local Ray --------------------------------------------------------

OK_ROWS = [
    # the first two share a batch_key and run as one pipeline call (batch_size 2)
    {"id": "t2v-a", "kind": "cogvideox", "prompt": "a red kite over a beach"},
    {"id": "t2v-b", "kind": "cogvideox", "prompt": "rain on a window", "seed": 3},
    {"id": "i2v", "kind": "cogvideox", "mode": "i2v", "image": IMAGE, "prompt": "the sun sets", "height": 48},
    {
        "id": "v2v",
        "kind": "cogvideox",
        "mode": "v2v",
        "video": VIDEO,
        "num_frames": 17,
        "strength": 0.75,
        "prompt": "a watercolor sunset",
    },
    # the same video but for the ExVideo LoRA
    {
        "id": "same-t2v",
        "kind": "cogvideox",
        "prompt": "a lighthouse",
        "seed": 5,
        "height": 32,
        "width": 32,
        "num_inference_steps": 2,
        "guidance_scale": 6.0,
    },
    {
        "id": "same-ex",
        "kind": "exvideo",
        "prompt": "a lighthouse",
        "seed": 5,
        "num_frames": 9,
        "height": 32,
        "width": 32,
        "num_inference_steps": 2,
        "guidance_scale": 6.0,
    },
    {
        "id": "ex-129",
        "kind": "exvideo",
        "prompt": "an astronaut riding a horse",
        "num_frames": 129,
        "height": 32,
        "width": 32,
    },
    {"id": "ex-svd", "kind": "exvideo", "base": "svd", "image": IMAGE, "num_frames": 33},
]
FAILED_ROWS = [
    {"id": "i2v-missing", "kind": "cogvideox", "mode": "i2v", "image": "/nonexistent/sunset.png"},
    {"id": "v2v-garbage", "kind": "cogvideox", "mode": "v2v", "video": "GARBAGE"},
    {"id": "svd-missing", "kind": "exvideo", "base": "svd", "image": "/nonexistent/sunset.png"},
]
REJECTED_ROWS = [
    {"id": "i2v-no-image", "kind": "cogvideox", "mode": "i2v"},
    {"id": "cog-57", "kind": "cogvideox", "num_frames": 57},
    {"id": "ex-137", "kind": "exvideo", "num_frames": 137},
    {"id": "svd-129", "kind": "exvideo", "base": "svd", "image": IMAGE, "num_frames": 129},
]
RUN_CONFIG = """
kinds:
  cogvideox:
    batch_size: 2
    options: {vae_tiling: true, vae_slicing: true, cpu_offload: model}
  exvideo:
    options: {vae_tiling: true, decode_chunk_size: 8}
"""


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cogvideox-family")
    garbage = tmp / "not-a-video.mp4"
    garbage.write_text("these bytes are no MP4")
    rows = [
        dict(row, video=str(garbage)) if row.get("video") == "GARBAGE" else row
        for row in OK_ROWS + FAILED_ROWS + REJECTED_ROWS
    ]
    manifest = write_jsonl(tmp / "family.jsonl", rows)
    config = tmp / "config.yaml"
    config.write_text(RUN_CONFIG)
    out = tmp / "out"
    code = main(["run", str(manifest), "--out", str(out), "--config", str(config)])
    meta = {m["id"]: m for m in read_metadata(str(out)).to_pylist()}
    return out, code, meta


def test_every_mode_makes_videos_of_the_asked_frames_and_size(run):
    out, code, meta = run
    assert code == 1  # the failed and rejected rows below
    assert len(meta) == len(OK_ROWS) + len(FAILED_ROWS) + len(REJECTED_ROWS)
    for row in OK_ROWS:
        m = meta[row["id"]]
        assert m["status"] == "ok", (row["id"], m["error"])
        defaults = DEFAULTS[row["kind"]]
        frames = row.get("num_frames", defaults["num_frames"])
        size = (row.get("height", defaults["height"]), row.get("width", defaults["width"]))
        reader = decord.VideoReader(str(out / "videos" / f"{row['id']}.mp4"))
        assert len(reader) == frames == m["num_frames"], row["id"]
        assert reader[0].shape == (*size, 3) and (m["height"], m["width"]) == size, row["id"]
        assert abs(reader.get_avg_fps() - defaults["fps"]) < 0.01
    modes = {
        row_id: (meta[row_id]["mode"], json.loads(meta[row_id]["params_json"])["pipeline"])
        for row_id in ("t2v-a", "i2v", "v2v", "ex-129", "ex-svd")
    }
    assert modes == {
        "t2v-a": ("t2v", "CogVideoXPipeline"),
        "i2v": ("i2v", "CogVideoXImageToVideoPipeline"),
        "v2v": ("v2v", "CogVideoXVideoToVideoPipeline"),
        "ex-129": ("cogvideox", "CogVideoXPipeline"),
        "ex-svd": ("svd", "StableVideoDiffusionPipeline"),
    }
    # the checkpoint that made each video: the mode's / base's own model
    assert (meta["t2v-a"]["model"], meta["i2v"]["model"], meta["ex-129"]["model"], meta["ex-svd"]["model"]) == (
        "tiny:cogvideox",
        "tiny:cogvideox-i2v",
        "tiny:cogvideox",
        "tiny:svd",
    )


def test_params_json_records_the_options_and_what_each_video_was_made_with(run):
    _, _, meta = run
    t2v = json.loads(meta["t2v-a"]["params_json"])
    assert t2v["batch_rows"] == 2 and json.loads(meta["t2v-b"]["params_json"])["batch_rows"] == 2
    assert (t2v["vae_tiling"], t2v["vae_slicing"], t2v["cpu_offload"], t2v["dtype"]) == (True, True, "model", "float32")
    assert t2v["skipped_options"] == {"cpu_offload": "needs a CUDA device (device: cpu)"}
    assert json.loads(meta["v2v"]["params_json"])["strength"] == 0.75
    svd = json.loads(meta["ex-svd"]["params_json"])
    assert svd["exvideo_svd"] == "tiny:svd/model.fp16.safetensors" and svd["decode_chunk_size"] == 8
    assert (svd["motion_bucket_id"], svd["noise_aug_strength"], svd["min_guidance_scale"]) == (127, 0.02, 1.0)
    assert svd["skipped_options"] == {"vae_tiling": "AutoencoderKLTemporalDecoder has no tiling"}
    ex = json.loads(meta["ex-129"]["params_json"])
    assert ex["exvideo_lora"].endswith(EXVIDEO_LORA_FILE)
    assert ex["skipped_options"] == {"decode_chunk_size": "CogVideoXPipeline decodes all frames at once"}


def test_the_exvideo_lora_changes_the_video(run):
    out, _, _ = run
    plain, extended = (
        decord.VideoReader(str(out / "videos" / f"{i}.mp4")).get_batch(list(range(9))).asnumpy()
        for i in ("same-t2v", "same-ex")
    )
    # same model, prompt, seed, size and frames: only the LoRA differs
    assert np.abs(plain.astype(int) - extended.astype(int)).mean() > 2


def test_unreadable_inputs_fail_their_row_with_the_reason(run):
    out, _, meta = run
    expect = {
        "i2v-missing": "image: cannot read /nonexistent/sunset.png: FileNotFoundError",
        "v2v-garbage": "video: cannot read ",
        "svd-missing": "image: cannot read /nonexistent/sunset.png: FileNotFoundError",
    }
    for row_id, start in expect.items():
        assert meta[row_id]["status"] == "failed" and meta[row_id]["error"].startswith(start), meta[row_id]["error"]
        assert not (out / "videos" / f"{row_id}.mp4").exists()
    assert "not-a-video.mp4" in meta["v2v-garbage"]["error"]


def test_rejected_rows_name_the_field(run):
    _, _, meta = run
    expect = {
        "i2v-no-image": "image: required",
        "cog-57": "num_frames: at most 49",
        "ex-137": "num_frames: at most 129",
        "svd-129": "num_frames: from 2 to 128",
    }
    for row_id, start in expect.items():
        assert meta[row_id]["status"] == "rejected" and meta[row_id]["error"].startswith(start), meta[row_id]["error"]


# ---- batched == unbatched, directly on the stages (no Ray needed) -----------------------------


@pytest.fixture(scope="module")
def stages():
    config = load_config()
    cog, ex = CogVideoXStage(config.kinds["cogvideox"]), ExVideoStage(config.kinds["exvideo"])
    cog.setup()
    ex.setup()
    return cog, ex


BATCHES = {
    "t2v": ("cogvideox", [{"prompt": "a cat"}, {"prompt": "a dog on a red sofa", "seed": 3}]),
    "i2v": ("cogvideox", [{"mode": "i2v", "image": IMAGE, "prompt": "dusk"}, {"mode": "i2v", "image": IMAGE}]),
    "v2v": ("cogvideox", [{"mode": "v2v", "video": VIDEO, "prompt": "ink"}, {"mode": "v2v", "video": VIDEO}]),
    "exvideo-cogvideox": (
        "exvideo",
        [
            {"prompt": "a cat", "num_frames": 9, "height": 32, "width": 32},
            {"prompt": "a dog", "num_frames": 9, "height": 32, "width": 32},
        ],
    ),
    "exvideo-svd": (
        "exvideo",
        [
            {"base": "svd", "image": IMAGE, "num_frames": 9},
            {"base": "svd", "image": IMAGE, "num_frames": 9, "seed": 11},
        ],
    ),
}


@pytest.mark.parametrize("mode", list(BATCHES))
def test_a_batched_video_is_the_video_made_alone(stages, mode):
    kind, fields = BATCHES[mode]
    stage = stages[0] if kind == "cogvideox" else stages[1]
    rows = [validate_row({"id": f"{mode}-{i}", "kind": kind, **f}, DEFAULTS[kind]) for i, f in enumerate(fields)]
    together = stage.process(rows)
    alone = [stage.process([row])[0] for row in rows]
    for batched, single in zip(together, alone):
        assert batched.meta["status"] == single.meta["status"] == "ok", batched.meta["error"] + single.meta["error"]
        assert json.loads(batched.meta["params_json"])["batch_rows"] == 2
        # Tolerance: float summation order differs with the batch size, so a value may round to
        # the next of 255 levels: at most 1 level, and on under 0.1% of the values.
        diff = np.abs(batched.frames.astype(int) - single.frames.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert np.abs(together[0].frames.astype(int) - together[1].frames.astype(int)).mean() > 1  # seeds differ


def test_a_row_lora_on_cogvideox_is_what_exvideo_makes_and_goes_away_after(stages):
    cog, ex = stages
    common = {
        "prompt": "a lighthouse",
        "num_frames": 9,
        "height": 32,
        "width": 32,
        "num_inference_steps": 2,
        "guidance_scale": 6.0,
        "seed": 4,
    }
    lora = [{"path": f"tiny:exvideo-lora/{EXVIDEO_LORA_FILE}", "weight": 1.0}]
    row = validate_row({"id": "plain", "kind": "cogvideox", **common}, DEFAULTS["cogvideox"])
    with_lora = validate_row({"id": "lora", "kind": "cogvideox", "lora": lora, **common}, DEFAULTS["cogvideox"])
    extended = validate_row({"id": "ex", "kind": "exvideo", **common}, DEFAULTS["exvideo"])
    plain, loraed, again = (cog.process([r])[0] for r in (row, with_lora, row))
    (exvideo,) = ex.process([extended])
    assert np.array_equal(loraed.frames, exvideo.frames)  # the same model and LoRA at weight 1
    assert np.array_equal(plain.frames, again.frames)  # the adapter is off again for a row without it
    assert np.abs(plain.frames.astype(int) - loraed.frames.astype(int)).mean() > 2
    assert json.loads(loraed.meta["params_json"])["lora"] == lora


# ---- the memory and speed options -----------------------------------------------------------------


def test_step_caching_runs_through_diffusers_hooks(stages):
    base = stages[0]
    row = validate_row(
        {"id": "cache", "kind": "cogvideox", "prompt": "a cat", "height": 32, "width": 32}, DEFAULTS["cogvideox"]
    )
    plain = base.process([row])[0].frames
    # A huge first-block-cache threshold: every step after the first reuses the cached residual.
    for cache in (
        {"type": "first_block_cache", "threshold": 1e9},
        {
            "type": "pyramid_attention_broadcast",
            "spatial_attention_block_skip_range": 2,
            "spatial_attention_timestep_skip_range": [-1, 1001],
        },
    ):
        stage = CogVideoXStage(base.config.model_copy(update={"options": {"step_cache": cache}}))
        stage.setup()
        assert stage.pipeline().transformer.is_cache_enabled
        result = stage.process([row])[0]
        assert result.meta["status"] == "ok", result.meta["error"]
        assert json.loads(result.meta["params_json"])["step_cache"] == cache
        assert np.abs(result.frames.astype(int) - plain.astype(int)).max() > 0, cache["type"]


def test_unknown_or_bad_options_are_errors(stages):
    config = stages[0].config
    for options, error in (
        ({"vae_tilling": True}, "options.vae_tilling: unknown option"),
        ({"cpu_offload": "always"}, "options.cpu_offload: one of none, model, sequential"),
        ({"step_cache": {"type": "teacache"}}, "options.step_cache: a mapping with type"),
    ):
        with pytest.raises(ValueError, match=error):
            CogVideoXStage(config.model_copy(update={"options": options})).setup()


# ---- ExVideo's released formats ----------------------------------------------------------------


def test_exvideo_svd_released_checkpoint_maps_onto_the_unet():
    from diffusers import UNetSpatioTemporalConditionModel

    released = load_file(str(tiny_path(f"tiny:svd/{EXVIDEO_SVD_FILE}")))
    # the released layout: DiffSynth-Studio's block numbers and layer names, fp16
    assert {int(key.split(".")[1]) for key in released} == set(exvideo_svd.RELEASED_BLOCKS)
    assert {key.split(".", 2)[2].rpartition(".")[0] for key in released} == set(exvideo_svd.RELEASED_SUFFIXES)
    assert released["blocks.83.positional_embedding.embeddings"].shape == (128, 32)
    assert released["blocks.7.positional_conv.weight"].shape == (32, 32, 3, 3, 3)
    assert all(value.dtype == torch.float16 for value in released.values())

    unet_dir = str(tiny_path("tiny:svd") / "unet")
    base = UNetSpatioTemporalConditionModel.from_pretrained(unet_dir).eval()
    fresh = exvideo_svd.extend_unet(UNetSpatioTemporalConditionModel.from_pretrained(unet_dir)).eval()
    loaded = exvideo_svd.load_exvideo_svd(UNetSpatioTemporalConditionModel.from_pretrained(unet_dir), released).eval()
    # every released tensor landed where the mapping says, and maps back to its own name
    own = loaded.state_dict()
    for key, value in exvideo_svd.released_to_diffusers(released).items():
        assert torch.equal(own[key], value.float()), key
    assert exvideo_svd.diffusers_to_released(own).keys() == released.keys()
    assert own["mid_block.attentions.0.temporal_transformer_blocks.0.norm3.weight"].equal(
        released["blocks.83.norm_out.weight"].float()
    )

    sample = torch.randn(1, 9, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    args = (torch.tensor([10.0]), torch.randn(1, 1, 32), torch.tensor([[7.0, 127.0, 0.02]]))
    with torch.no_grad():
        ref, same, moved = (m(sample, *args).sample for m in (base, fresh, loaded))
    assert torch.equal(ref, same)  # an untrained extension is SVD itself (up to 25 frames)
    assert (ref - moved).abs().max() > 1e-3  # the checkpoint's weights act

    with pytest.raises(ValueError, match="incomplete ExVideo-SVD checkpoint"):
        partial = {k: v for k, v in released.items() if not k.startswith("blocks.195.")}
        exvideo_svd.load_exvideo_svd(UNetSpatioTemporalConditionModel.from_pretrained(unet_dir), partial)
    with pytest.raises(ValueError, match="not an ExVideo-SVD key: 'blocks.8.norm_in.weight'"):
        exvideo_svd.released_to_diffusers({"blocks.8.norm_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="position embeddings for 128 frames, asked for 129"):
        loaded.down_blocks[0].attentions[0].time_proj(torch.arange(129))


def test_exvideo_lora_released_names_map_onto_diffusers():
    released = load_file(str(tiny_path(f"tiny:exvideo-lora/{EXVIDEO_LORA_FILE}")))
    mapped = diffsynth_to_diffusers(released)
    assert len(mapped) == len(released) == 16
    assert "transformer.transformer_blocks.1.attn1.to_out.0.lora_B.weight" in mapped
    assert mapped["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"].equal(
        released["blocks.0.attn1.to_q.lora_A.default.weight"]
    )
    with pytest.raises(ValueError, match="not a CogVideoX LoRA key"):
        diffsynth_to_diffusers({"blocks.0.attn1.norm_q.lora_A.weight": torch.zeros(1)})


def test_exvideo_svd_tiny_checkpoint_is_diffsynths_layout_at_tiny_widths():
    """The tiny ExVideo-SVD file is written from DiffSynth's key list (raypipe/families/exvideo/tiny.py,
    whose SVD-XT-width list has DiffSynth's md5: tests/test_real_configs.py), not from raypipe's mapping:
    the mapping must find every one of its keys, and those only."""
    from raypipe.families.exvideo.tiny import released_svd_layout

    released = load_file(str(tiny_path(f"tiny:svd/{EXVIDEO_SVD_FILE}")))
    layout = released_svd_layout(block_out_channels=(32, 32, 32, 32), cross_attention_dim=32, frames=128)
    assert {k: tuple(v.shape) for k, v in released.items()} == layout
    assert exvideo_svd.diffsynth_keys_md5(released) == exvideo_svd.diffsynth_keys_md5(
        {k: torch.empty(s, device="meta") for k, s in layout.items()}
    )


def test_diffsynth_post_processing_of_svd_latents():
    """DiffSynth's SVD pipeline normalises each frame's latents to the video's mean and std, then scales
    them by contrast_enhance_scale (1.2): per video, so a batch is post-processed as its videos alone."""
    latents = torch.randn(2, 5, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.arange(1, 6).view(
        1, 5, 1, 1, 1
    )
    out = exvideo_svd.post_process_latents(latents, post_normalize=True, contrast_enhance_scale=1.2)
    one = exvideo_svd.post_process_latents(latents[1:], post_normalize=True, contrast_enhance_scale=1.2)
    assert torch.allclose(out[1:], one)
    frame_std = (out[0] / 1.2).std(dim=(1, 2, 3))
    assert torch.allclose(frame_std, torch.full_like(frame_std, latents[0].std().item()), rtol=1e-4)
    assert torch.allclose((out[0] / 1.2).mean(), latents[0].mean(), atol=1e-5)
    assert torch.equal(exvideo_svd.post_process_latents(latents, False, 1.0), latents)


def test_every_key_of_diffsynths_cogvideox_lora_lands_on_the_tiny_pipeline(stages, tmp_path):
    """DiffSynth's full CogDiT key set (every Linear, in the blocks and outside, and the patch conv), at
    tiny:cogvideox's widths, through the LoRA loader: a LoRA layer on every targeted module."""
    from safetensors.torch import save_file

    from raypipe.families.cogvideox.lora import cogvideox_loras
    from tests.test_real_configs import diffsynth_cogdit_lora

    def small(*shape, device):
        return torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape))) * 0.1

    lora = diffsynth_cogdit_lora(dim=32, blocks=2, time_dim=8, text_dim=32, channels=4, device="cpu", value=small)
    path = tmp_path / "full.safetensors"
    save_file(lora, str(path))
    cog = stages[0]
    pipe = cog.pipeline()
    name = cog.loras_of(cog.config.model, cogvideox_loras).load(str(path))  # the stage's own adapters
    layers = [n for n, m in pipe.transformer.named_modules() if name in getattr(m, "lora_A", {})]
    assert len(layers) == len(lora) // 2 == 2 * 8 + 6
    assert {"patch_embed.proj", "patch_embed.text_proj", "time_embedding.linear_1", "proj_out"} <= set(layers)


def test_an_exvideo_lora_with_an_unknown_key_fails_its_rows_naming_the_key(tmp_path):
    """Not a silent partial load, not a whole pool failing without a reason: every row that needs the
    LoRA fails with the file and the key."""
    from safetensors.torch import save_file

    released = load_file(str(tiny_path(f"tiny:exvideo-lora/{EXVIDEO_LORA_FILE}")))
    bad = tmp_path / "bad.safetensors"
    save_file({**released, "blocks.0.norm_q.lora_A.default.weight": torch.zeros(4, 8)}, str(bad))
    config = load_config().kinds["exvideo"]
    stage = ExVideoStage(config.model_copy(update={"models": {**config.models, "lora": str(bad)}}))
    stage.setup()
    row = validate_row({"id": "ex", "kind": "exvideo", "prompt": "x", "num_frames": 9}, DEFAULTS["exvideo"])
    (result,) = stage.process([row])
    assert result.meta["status"] == "failed"
    assert f"lora: {bad}: not a CogVideoX LoRA key" in result.meta["error"]
    assert "'blocks.0.norm_q.lora_A.default.weight'" in result.meta["error"]


def test_svd_rows_are_post_processed_as_diffsynth_does_unless_turned_off(stages):
    row = validate_row(
        {"id": "p", "kind": "exvideo", "base": "svd", "image": IMAGE, "num_frames": 9}, DEFAULTS["exvideo"]
    )
    (default,) = stages[1].process([row])
    params = json.loads(default.meta["params_json"])
    assert (params["post_normalize"], params["contrast_enhance_scale"]) == (True, 1.2)
    config = load_config().kinds["exvideo"]
    plain = ExVideoStage(
        config.model_copy(update={"options": {**config.options, "post_normalize": False, "contrast_enhance_scale": 1}})
    )
    plain.setup()
    (off,) = plain.process([row])
    assert json.loads(off.meta["params_json"])["contrast_enhance_scale"] == 1.0
    assert np.abs(default.frames.astype(int) - off.frames.astype(int)).mean() > 1
    with pytest.raises(ValueError, match="options.contrast_enhance_scale: a positive number"):
        ExVideoStage(config.model_copy(update={"options": {"contrast_enhance_scale": 0}})).setup()
