"""SDXL video by chunks (issue 7): a real local Ray run of `kind: sdxl_video` rows on the tiny
models (frame counts, init image, a plain SDXL checkpoint inflated on load, a saved-and-reloaded
checkpoint, rejected chunk settings), and the pipeline itself on the same tiny weights: the
zero-init equivalence with StableDiffusionXLPipeline, save/load, conditioning, decode slices."""

import json

import decord
import numpy as np
import pytest
import torch
from PIL import Image

from raypipe.cli import main
from raypipe.config import load_config
from raypipe.families.sdxl_video.stage import SDXLVideoStage
from raypipe.models.tiny import tiny_path
from raypipe.schema import validate_row
from raypipe.sink import read_metadata
from tests.conftest import write_jsonl

# The plain SDXL pipeline and the inflated one compute the same per-frame ops in the same
# order; the only differences are batch sizes in the VAE decode (slices vs one batch), which
# change float rounding. Measured max |difference| on [0, 1] frames: 0.0 to 8.4e-7.
EQUIVALENCE_ATOL = 1e-5

DEFAULTS = load_config().kinds["sdxl_video"].defaults  # 4 frames a chunk, 64x64, 2 steps

# As Stage.setup does for a 1-CPU actor: the tiny models are too small for intra-op threads to
# pay, and on a shared 2-core machine they only contend.
torch.set_num_threads(1)


def write_image(path, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def frames_of(out, row_id):
    reader = decord.VideoReader(str(out / "videos" / f"{row_id}.mp4"))
    return len(reader), reader[0].shape


@pytest.fixture(scope="module")
def video_pipe():
    from raypipe.models.sdxl_video import SDXLVideoPipeline

    pipe = SDXLVideoPipeline.from_pretrained(str(tiny_path("tiny:sdxl_video")))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved_dir(video_pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "sdxl_video"
    video_pipe.save_pretrained(path)
    return path


GOOD = [
    {"id": "rep1", "kind": "sdxl_video", "prompt": "a red kite over a beach", "num_repeats": 1},
    {"id": "rep2", "kind": "sdxl_video", "prompt": "rain on a window"},  # num_repeats 2 from the config
    {
        "id": "rep3",
        "kind": "sdxl_video",
        "prompt": "waves",
        "num_repeats": 3,
        "num_frames": 3,
        "num_conditioning_frames": 3,
        "height": 48,
        "width": 80,
        "fps": 12,
    },
    {"id": "inflated", "kind": "sdxl_video", "prompt": "a cat", "num_repeats": 1, "model": "tiny:sdxl"},
]
BAD = [
    (
        {"id": "cond-gt-frames", "kind": "sdxl_video", "num_frames": 4, "num_conditioning_frames": 5},
        "num_conditioning_frames: must not exceed num_frames (4), got 5",
    ),
    ({"id": "zero-repeats", "kind": "sdxl_video", "num_repeats": 0}, "num_repeats: Input should be greater than"),
    (
        {"id": "zero-cond", "kind": "sdxl_video", "num_conditioning_frames": 0},
        "num_conditioning_frames: Input should be greater than",
    ),
    ({"id": "zero-frames", "kind": "sdxl_video", "num_frames": 0}, "num_frames: must be positive"),
    (
        {"id": "strength", "kind": "sdxl_video", "conditioning_strength": -0.5},
        "conditioning_strength: Input should be greater than",
    ),
    ({"id": "size", "kind": "sdxl_video", "width": 60}, "width: must be a multiple of 8"),
    ({"id": "typo", "kind": "sdxl_video", "num_repeat": 3}, "num_repeat: unknown field"),
    ({"id": "empty-image", "kind": "sdxl_video", "image": ""}, "image: must be a URI"),
]


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory, saved_dir):
    tmp = tmp_path_factory.mktemp("sdxl_video_run")
    rows = (
        GOOD
        + [
            {"id": "img", "kind": "sdxl_video", "prompt": "a lighthouse", "image": write_image(tmp / "init.png", 0)},
            {"id": "missing-image", "kind": "sdxl_video", "image": str(tmp / "nope.png")},
            # the round trip: the same row on the reloaded checkpoint, through the stage's from_pretrained
            {"id": "saved", "kind": "sdxl_video", "prompt": "rain on a window", "seed": 5, "model": str(saved_dir)},
            {"id": "original", "kind": "sdxl_video", "prompt": "rain on a window", "seed": 5},
        ]
        + [row for row, _ in BAD]
    )
    out = tmp / "out"
    code = main(["run", str(write_jsonl(tmp / "sdxl_video.jsonl", rows)), "--out", str(out)])
    return out, code, {m["id"]: m for m in read_metadata(str(out)).to_pylist()}


def test_frame_counts_for_several_repeat_counts(run):
    out, code, meta = run
    assert code == 1  # the bad rows below are rejected or failed, the rest ran
    expect = {"rep1": (4, 64, 64), "rep2": (8, 64, 64), "rep3": (9, 48, 80), "inflated": (4, 64, 64)}
    for row_id, (frames, height, width) in expect.items():
        m = meta[row_id]
        assert m["status"] == "ok", (row_id, m["error"])
        assert frames_of(out, row_id) == (frames, (height, width, 3))
        assert (m["num_frames"], m["height"], m["width"]) == (frames, height, width)
        params = json.loads(m["params_json"])
        assert params["pipeline_calls"] == params["num_repeats"] + 1 and params["first_chunk_dropped"] is True
        assert params["scheduler"] == "DPMSolverMultistepScheduler(sde-dpmsolver++)"
        assert m["mode"] == "t2v"
    assert meta["rep3"]["fps"] == 12 and meta["inflated"]["model"] == "tiny:sdxl"


def test_init_image_row(run):
    out, _, meta = run
    m = meta["img"]
    assert m["status"] == "ok", m["error"]
    assert m["mode"] == "i2v" and frames_of(out, "img") == (8, (64, 64, 3))
    params = json.loads(m["params_json"])
    # the image's latents are the first conditioning: no unconditioned chunk to drop
    assert params["pipeline_calls"] == 2 and params["first_chunk_dropped"] is False
    missing = meta["missing-image"]
    assert missing["status"] == "failed" and missing["error"].startswith("image: cannot read")


def test_saved_checkpoint_makes_the_same_video(run, saved_dir):
    out, _, meta = run
    saved, original = meta["saved"], meta["original"]
    assert saved["status"] == original["status"] == "ok"
    assert saved["model"] == str(saved_dir) and original["model"] == "tiny:sdxl_video"
    # The same frames up to float rounding. Usually the H.264 bytes are identical too, but not
    # always (one CI run: CPU kernels may round differently between two loads of the same weights,
    # and one flipped level changes the hash); different weights would differ by tens of levels.
    videos = [
        decord.VideoReader(str(out / "videos" / f"{name}.mp4")).get_batch(list(range(8))).asnumpy()
        for name in ("saved", "original")
    ]
    assert videos[0].shape == videos[1].shape == (8, 64, 64, 3)
    assert np.abs(videos[0].astype(np.int16) - videos[1].astype(np.int16)).mean() < 1.0


def test_bad_chunk_settings_are_rejected_naming_the_field(run):
    out, _, meta = run
    for row, message in BAD:
        m = meta[row["id"]]
        assert m["status"] == "rejected", row["id"]
        assert m["error"].startswith(message), (row["id"], m["error"])
        assert not (out / "videos" / f"{row['id']}.mp4").exists()


def test_zero_init_video_pipeline_equals_sdxl_per_frame():
    """The inflation proof: SDXL weights + zero-initialised temporal modules make, frame for
    frame, what StableDiffusionXLPipeline makes from the same 2D weights, latents and seed
    (the SDE sampler's noise included), with or without conditioning latents."""
    from diffusers import StableDiffusionXLPipeline

    from raypipe.models.sdxl_video import SDXLVideoPipeline

    sdxl_dir = str(tiny_path("tiny:sdxl"))
    video = SDXLVideoPipeline.from_sdxl(sdxl_dir)
    temporal = video.unet.temporal_modules()
    # a transformer and a conditioner after each spatial transformer: 1 down, 1 mid, 2 up
    assert len(temporal) == 8
    assert all(torch.count_nonzero(m.proj_out.weight) == 0 for m in temporal)
    sdxl = StableDiffusionXLPipeline.from_pretrained(sdxl_dir)
    sdxl.scheduler = SDXLVideoPipeline.sde_scheduler(sdxl.scheduler.config)
    for pipe in (video, sdxl):
        pipe.set_progress_bar_config(disable=True)

    frames = 4
    noise = torch.randn(frames, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    common = dict(
        prompt="a red kite", negative_prompt="blurry", height=64, width=64, num_inference_steps=2, guidance_scale=5.0
    )
    images = sdxl(
        **common,
        num_images_per_prompt=frames,
        latents=noise,
        output_type="np",
        generator=torch.Generator().manual_seed(1),
    ).images
    assert images.shape == (frames, 64, 64, 3) and images.std() > 0.01
    conditioning = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    for cond in (None, conditioning):
        out = video(
            **common,
            num_frames=frames,
            latents=noise[None],
            conditioning_latents=cond,
            generator=torch.Generator().manual_seed(1),
            decode_chunk_size=3,
        )
        assert out.frames.shape == (1, frames, 64, 64, 3)
        assert np.abs(out.frames[0] - images).max() <= EQUIVALENCE_ATOL


def test_save_load_round_trip(video_pipe, saved_dir):
    from raypipe.models.sdxl_video import SDXLVideoPipeline, SDXLVideoUNet

    model_index = json.loads((saved_dir / "model_index.json").read_text())
    assert model_index["unet"] == ["raypipe.models.sdxl_video", "SDXLVideoUNet"]
    loaded = SDXLVideoPipeline.from_pretrained(str(saved_dir))
    loaded.set_progress_bar_config(disable=True)

    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    assert isinstance(loaded.unet, SDXLVideoUNet) and public(loaded.unet.config) == public(video_pipe.unet.config)
    assert loaded.unet.config.max_conditioning_frames == 8 and loaded.unet.config.addition_embed_type == "text_time"
    assert loaded.scheduler.config.algorithm_type == "sde-dpmsolver++"
    before, after = video_pipe.unet.state_dict(), loaded.unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # the tiny checkpoint's temporal modules act (random output projections, as if trained)
    assert all(torch.count_nonzero(m.proj_out.weight) > 0 for m in loaded.unet.temporal_modules())
    conditioning = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    a, b = [
        pipe(
            "a cat",
            num_frames=3,
            height=64,
            width=64,
            num_inference_steps=2,
            conditioning_latents=conditioning,
            generator=torch.Generator().manual_seed(4),
        ).frames
        for pipe in (video_pipe, loaded)
    ]
    assert np.array_equal(a, b)


def test_conditioning_latents_and_strength(video_pipe):
    def chunk(cond, strength=1.0):
        return video_pipe(
            "a cat",
            num_frames=4,
            height=64,
            width=64,
            num_inference_steps=2,
            output_type="latent",
            conditioning_latents=cond,
            conditioning_strength=strength,
            generator=torch.Generator().manual_seed(0),
        ).latents

    cond_a, cond_b = torch.randn(2, 1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    unconditioned = chunk(None)
    assert not torch.allclose(chunk(cond_a), chunk(cond_b))  # what came before shapes the chunk
    assert torch.equal(chunk(cond_a, strength=0.0), unconditioned)
    with pytest.raises(ValueError, match="num_conditioning_frames: 9 is more than this model supports"):
        chunk(torch.randn(1, 9, 4, 8, 8))


@pytest.fixture(scope="module")
def stage():
    stage = SDXLVideoStage(load_config().kinds["sdxl_video"])
    stage.setup()
    return stage


def sdxl_row(**fields):
    return validate_row({"kind": "sdxl_video", "prompt": "a cat", "seed": 7, **fields}, DEFAULTS)


def test_a_longer_video_continues_the_shorter_one(stage):
    short, long = stage.process([sdxl_row(id="short", num_repeats=1), sdxl_row(id="long", num_repeats=3)])
    assert short.frames.shape[0] == 4 and long.frames.shape[0] == 12
    assert np.array_equal(long.frames[:4], short.frames)
    assert not np.array_equal(long.frames[4:8], long.frames[:4])


def test_init_image_is_the_first_conditioning(stage, tmp_path):
    image_a, image_b = write_image(tmp_path / "a.png", 1), write_image(tmp_path / "b.png", 2)
    rows = [
        sdxl_row(id=f"{name}-{s}", image=image, conditioning_strength=s)
        for s in (1.0, 0.0)
        for name, image in (("a", image_a), ("b", image_b))
    ]
    a1, b1, a0, b0 = [r.frames for r in stage.process(rows)]
    assert a1.shape == (8, 64, 64, 3)
    assert not np.array_equal(a1[:4], b1[:4])  # the first chunk already depends on the image
    assert np.array_equal(a0, b0)  # at strength 0 the image is ignored


def test_chunks_are_decoded_in_slices(stage):
    """Only kept chunks are decoded, decode_chunk_size frames at a time: VAE memory is per slice."""
    pipe = stage.pipeline()
    sizes = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda _module, args: sizes.append(args[0].shape[0]))
    stage.config.options["decode_chunk_size"] = 3
    try:
        [result] = stage.process([sdxl_row(id="sliced", num_repeats=3)])
    finally:
        hook.remove()
        stage.config.options["decode_chunk_size"] = 8
    assert result.frames.shape[0] == 12
    assert sizes == [3, 1] * 3  # 3 kept chunks of 4 frames; the dropped first chunk never decoded


@pytest.fixture(scope="module")
def sdxl_lora_dir(tmp_path_factory):
    """An SDXL LoRA (diffusers' format) trained on nothing: peft adapters with random B on the
    2D UNet of tiny:sdxl, whose layer names the video UNet shares."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = StableDiffusionXLPipeline.from_pretrained(str(tiny_path("tiny:sdxl"))).unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    torch.manual_seed(0)
    for name, param in unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    path = tmp_path_factory.mktemp("sdxl_lora")
    StableDiffusionXLPipeline.save_lora_weights(path, unet_lora_layers=get_peft_model_state_dict(unet))
    return path


def test_row_loras_act_at_their_weights(stage, sdxl_lora_dir):
    weights_file = str(sdxl_lora_dir / "pytorch_lora_weights.safetensors")
    rows = [
        sdxl_row(id="plain", num_repeats=1),
        sdxl_row(id="lora-1", num_repeats=1, lora=[{"path": str(sdxl_lora_dir), "weight": 1.0}]),
        sdxl_row(id="lora-0", num_repeats=1, lora=[{"path": weights_file, "weight": 0.0}]),
        sdxl_row(id="plain-again", num_repeats=1),
        sdxl_row(id="missing", num_repeats=1, lora=[{"path": "/nonexistent/lora.safetensors"}]),
    ]
    plain, lora1, lora0, again, missing = stage.process(rows)
    assert json.loads(lora1.meta["params_json"])["lora"] == [{"path": str(sdxl_lora_dir), "weight": 1.0}]
    assert not np.array_equal(lora1.frames, plain.frames)
    assert np.array_equal(lora0.frames, plain.frames) and np.array_equal(again.frames, plain.frames)
    assert missing.meta["status"] == "failed"
    assert "lora: cannot load /nonexistent/lora.safetensors" in missing.meta["error"]
