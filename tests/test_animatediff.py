"""AnimateDiff (issue 5) on the tiny models: every mode in a real local Ray run (the example
manifests plus rows made for checks), MP4s read back with decord; LoRAs switched per row on one
loaded pipeline (weight 0 == no LoRA, weight 1 changes the video); FreeNoise prompt travel on a
48-frame clip; the rejections. Direct stage calls (no Ray) check the LoRA switching in order,
the schedulers and the stage's own window check."""

import json

import decord
import numpy as np
import pytest

from raypipe.cli import main
from raypipe.config import KindConfig, load_config
from raypipe.families.animatediff.stage import AnimateDiffStage
from raypipe.families.animatediff.tiny import MOTION_LORA_FILE
from raypipe.models.tiny import tiny_path
from raypipe.schema import metadata_from_row, validate_row
from raypipe.sink import read_metadata
from tests.conftest import REPO, write_jsonl

CONFIG = load_config().kinds["animatediff"]
DEFAULTS = CONFIG.defaults
INPUT_VIDEO = REPO / "manifests" / "inputs" / "moving_shapes.mp4"
EXAMPLES = sorted((REPO / "manifests").glob("animatediff_*.jsonl"))
PIPELINES = {
    "t2v": "AnimateDiffPipeline",
    "v2v": "AnimateDiffVideoToVideoPipeline",
    "controlnet": "AnimateDiffControlNetPipeline",
}


def reject(raw, defaults=DEFAULTS):
    with pytest.raises(ValueError) as info:
        validate_row({"id": "r", "kind": "animatediff", **raw}, defaults)
    return str(info.value)


# ---- validation -------------------------------------------------------------------------


def test_a_clip_longer_than_the_window_without_free_noise_is_rejected():
    error = reject({"num_frames": 48})
    assert error.startswith("num_frames: 48 frames is longer than the motion adapter's window of 16 frames")
    assert "set free_noise" in error
    assert validate_row({"id": "r", "kind": "animatediff", "prompt": "x", "num_frames": 48, "free_noise": {}}, DEFAULTS)


@pytest.mark.parametrize(
    "raw, start",
    [
        ({"prompt": {"0": "a", "8": "b"}}, "prompt: a dict of frame prompts (prompt travel) needs free_noise"),
        (
            {"num_frames": 48, "free_noise": {}, "prompt": {"8": "b"}},
            'prompt: prompt travel needs a prompt for frame "0"',
        ),
        ({"num_frames": 48, "free_noise": {}, "prompt": {"0": "a", "48": "b"}}, "prompt: frame 48 is outside the clip"),
        ({"num_frames": 48, "free_noise": {}, "prompt": {"0": "a", "x": "b"}}, "prompt: keys are frame indices"),
        ({"prompt": ["a"]}, "prompt: must be a string or a dict"),
        ({"num_frames": 48, "free_noise": {"context_length": 24}}, "free_noise.context_length: 24 is longer than the"),
        ({"num_frames": 8, "free_noise": {}}, "free_noise.context_length: 16 is longer than the clip"),
        ({"num_frames": 48, "free_noise": {"context_stride": 0}}, "free_noise.context_stride: "),
        ({"num_frames": 48, "free_noise": {"context_stride": 20}}, "free_noise.context_stride: must not exceed"),
        ({"free_noise": {"window": 4}}, "free_noise.window: unknown field"),
        ({"mode": "v2v"}, "video: required for mode v2v"),
        ({"mode": "controlnet", "video": "v.mp4"}, "control: required for mode controlnet"),
        ({"mode": "controlnet", "video": "v.mp4", "control": "pose"}, "control: "),
        ({"video": "v.mp4"}, "video: only for mode v2v or controlnet"),
        ({"strength": 0.5}, "strength: only for mode v2v or controlnet"),
        ({"mode": "v2v", "video": "v.mp4", "control": "canny"}, "control: only for mode controlnet"),
        ({"mode": "v2v", "video": "v.mp4", "strength": 1.5}, "strength: "),
        ({"height": 60}, "height: must be a multiple of 8, got 60"),
        ({"lora": [{"path": "x"}], "motion_lora": "x"}, "motion_lora: x given more than once"),
        ({"motion_lora": [{"weight": 1}]}, "motion_lora.0.path: "),
    ],
)
def test_rejections_name_the_field(raw, start):
    error = reject(raw)
    assert error.startswith(start), error


def test_prompt_travel_row_is_normalised():
    row = validate_row(
        {
            "id": "r",
            "kind": "animatediff",
            "num_frames": 48,
            "free_noise": {"context_stride": 8},
            "prompt": {"32": "b", "0": "a"},
            "motion_lora": "tiny:motion-lora",
        },
        DEFAULTS,
    )
    assert row.prompt == {"0": "a", "32": "b"} and list(row.prompt) == ["0", "32"]
    assert row.free_noise.context_length == 16  # the window, from the config's defaults
    assert [(s.path, s.weight) for s in row.motion_lora] == [("tiny:motion-lora", 1.0)]
    meta = metadata_from_row(row, "ok")
    assert json.loads(meta["prompt"]) == {"0": "a", "32": "b"} and meta["mode"] == "t2v"
    assert validate_row({"id": "v", "kind": "animatediff", "mode": "v2v", "video": "v.mp4"}, DEFAULTS).strength == 0.8


# ---- the stage, driven directly ---------------------------------------------------------


@pytest.fixture(scope="module")
def stage():
    stage = AnimateDiffStage(CONFIG)
    stage.setup()
    return stage


def small_row(row_id, **fields):
    raw = {
        "id": row_id,
        "kind": "animatediff",
        "prompt": "a red kite",
        "num_frames": 8,
        "height": 32,
        "width": 32,
        "seed": 7,
        **fields,
    }
    return validate_row(raw, DEFAULTS)


def test_loras_switch_per_row_on_one_loaded_pipeline(stage):
    lora_uri = "file://" + str(tiny_path("tiny:motion-lora") / MOTION_LORA_FILE)  # a URI: read with fsspec
    rows = [
        small_row("plain"),
        small_row("w1", motion_lora="tiny:motion-lora"),
        small_row("w0", motion_lora=[{"path": "tiny:motion-lora", "weight": 0.0}]),
        small_row("plain-again"),
        small_row("uri-w1", lora=[{"path": lora_uri, "weight": 1.0}]),
        small_row("half", motion_lora=[{"path": "tiny:motion-lora", "weight": 0.5}]),
    ]
    results = {r.meta["id"]: r for r in stage.process(rows)}
    assert all(r.meta["status"] == "ok" for r in results.values()), [r.meta["error"] for r in results.values()]
    frames = {row_id: r.frames.astype(np.int16) for row_id, r in results.items()}
    assert np.array_equal(frames["w0"], frames["plain"])
    assert np.array_equal(frames["plain-again"], frames["plain"])  # a LoRA row leaves nothing behind
    assert np.abs(frames["w1"] - frames["plain"]).mean() > 1.0
    assert np.array_equal(frames["uri-w1"], frames["w1"])  # the same file, loaded from a URI
    assert 0 < np.abs(frames["half"] - frames["plain"]).mean() < np.abs(frames["w1"] - frames["plain"]).mean()
    # one pipeline, each LoRA loaded once as a named adapter
    assert list(stage._pipelines) == [CONFIG.model]
    assert stage._pipelines[CONFIG.model].adapters == {"tiny:motion-lora": "lora0", lora_uri: "lora1"}
    assert json.loads(results["w0"].meta["params_json"])["loras"] == [
        {"path": "tiny:motion-lora", "weight": 0.0, "adapter": "lora0"}
    ]


def test_without_free_noise_the_video_is_plain_animatediffs(stage):
    """The motion blocks stay FreeNoise blocks (so LoRAs and FreeNoise mix); a row without
    free_noise, even right after a FreeNoise row, must still be what AnimateDiffPipeline makes."""
    import torch
    from diffusers import AnimateDiffPipeline, MotionAdapter

    from raypipe.families.animatediff.stage import make_scheduler
    from raypipe.models.tiny import resolve_model
    from raypipe.stage import to_uint8

    rows = [small_row("before"), small_row("fn", num_frames=24, free_noise={"context_stride": 4}), small_row("after")]
    before, fn, after = stage.process(rows)
    assert fn.meta["status"] == "ok" and fn.frames.shape == (24, 32, 32, 3)
    adapter = MotionAdapter.from_pretrained(resolve_model(CONFIG.models["motion_adapter"]))
    pipe = AnimateDiffPipeline.from_pretrained(resolve_model(CONFIG.model), motion_adapter=adapter)
    pipe.scheduler = make_scheduler("ddim", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    row = rows[0]
    plain = pipe(
        prompt=row.prompt,
        num_frames=8,
        height=32,
        width=32,
        num_inference_steps=row.num_inference_steps,
        guidance_scale=row.guidance_scale,
        generator=torch.Generator("cpu").manual_seed(row.seed),
        output_type="np",
    ).frames[0]
    assert np.array_equal(before.frames, to_uint8(plain))
    assert np.array_equal(after.frames, to_uint8(plain))


def test_the_stage_checks_the_loaded_adapters_window(stage):
    # A config without motion_window in its defaults: validation cannot tell, the stage can.
    defaults = {k: v for k, v in DEFAULTS.items() if k != "motion_window"}
    row = validate_row(
        {"id": "long", "kind": "animatediff", "prompt": "x", "num_frames": 24, "height": 32, "width": 32}, defaults
    )
    result = stage.process([row])[0]
    assert result.meta["status"] == "failed"
    assert "longer than the motion adapter's window of 16 frames; set free_noise" in result.meta["error"]
    missing = stage.process([small_row("gone", mode="v2v", video="/nonexistent/clip.mp4")])[0]
    assert missing.meta["status"] == "failed" and missing.meta["error"].startswith("video: cannot read /nonexistent")


@pytest.mark.parametrize("name, cls", [("euler_ancestral", "EulerAncestralDiscreteScheduler"), ("lcm", "LCMScheduler")])
def test_schedulers_from_config(name, cls):
    stage = AnimateDiffStage(KindConfig.model_validate({**CONFIG.model_dump(), "options": {"scheduler": name}}))
    stage.setup()
    result = stage.process([small_row(name, num_frames=4, num_inference_steps=2)])[0]
    assert result.meta["status"] == "ok", result.meta["error"]
    assert result.frames.shape == (4, 32, 32, 3)
    params = json.loads(result.meta["params_json"])
    assert (params["scheduler"], params["scheduler_class"]) == (name, cls)
    assert stage.pipeline().base.scheduler.config.beta_schedule == "linear"


def test_unknown_options_fail_the_setup():
    for options, start in (
        ({"scheduler": "dpm"}, "options.scheduler: one of ddim"),
        ({"vae_slice": True}, "options.vae_slice: unknown option"),
    ):
        stage = AnimateDiffStage(KindConfig.model_validate({**CONFIG.model_dump(), "options": options}))
        with pytest.raises(ValueError, match=start):
            stage.setup()


# ---- a real local Ray run ------------------------------------------------------------------

TRAVEL = {
    "kind": "animatediff",
    "num_frames": 48,
    "height": 32,
    "width": 32,
    "seed": 5,
    "free_noise": {"context_length": 16, "context_stride": 8},
}
LORA_ROW = {
    "kind": "animatediff",
    "prompt": "a paper boat on a pond",
    "num_frames": 8,
    "height": 32,
    "width": 32,
    "seed": 11,
}
CHECK_ROWS = [
    {**LORA_ROW, "id": "lora-none"},
    {**LORA_ROW, "id": "lora-w0", "motion_lora": [{"path": "tiny:motion-lora", "weight": 0}]},
    {**LORA_ROW, "id": "lora-w1", "motion_lora": [{"path": "tiny:motion-lora", "weight": 1}]},
    {**TRAVEL, "id": "travel", "prompt": {"0": "a red cat", "32": "blue sea waves"}},
    {**TRAVEL, "id": "travel-start", "prompt": "a red cat"},
    {**TRAVEL, "id": "travel-end", "prompt": "blue sea waves"},
    {"id": "too-long", "kind": "animatediff", "num_frames": 48},
    {"id": "travel-no-fn", "kind": "animatediff", "prompt": {"0": "a", "8": "b"}},
    {"id": "no-video", "kind": "animatediff", "mode": "v2v", "video": "/nonexistent/in.mp4", "num_frames": 8},
]


@pytest.fixture(scope="module")
def ray_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("animatediff")
    manifests, examples = [], {}
    for path in EXAMPLES:  # the examples as they are, with the input video's path made absolute
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for row in rows:
            if "video" in row:
                assert (REPO / row["video"]) == INPUT_VIDEO
                row["video"] = str(INPUT_VIDEO)
            examples[row["id"]] = row
        manifests.append(str(write_jsonl(tmp / path.name, rows)))
    manifests.append(str(write_jsonl(tmp / "checks.jsonl", CHECK_ROWS)))
    out = tmp / "out"
    code = main(["run", *manifests, "--out", str(out)])
    meta = {m["id"]: m for m in read_metadata(str(out)).to_pylist()}
    return code, out, meta, examples


def decode(out, row_id) -> np.ndarray:
    reader = decord.VideoReader(str(out / "videos" / f"{row_id}.mp4"))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def test_every_mode_makes_its_frames_and_sizes(ray_run):
    code, out, meta, examples = ray_run
    assert code == 1  # the rejected and failed check rows
    assert {r["mode"] for r in meta.values() if r["status"] == "ok"} == {"t2v", "v2v", "controlnet"}
    assert {examples[i].get("control") for i in examples} >= {"canny", "depth"}
    for row_id, row in [*examples.items(), *((r["id"], r) for r in CHECK_ROWS[:6])]:
        m = meta[row_id]
        assert m["status"] == "ok", (row_id, m["error"])
        frames = decode(out, row_id)
        expect = (
            row.get("num_frames", DEFAULTS["num_frames"]),
            row.get("height", DEFAULTS["height"]),
            row.get("width", DEFAULTS["width"]),
            3,
        )
        assert frames.shape == expect and (m["num_frames"], m["height"], m["width"]) == expect[:3], row_id
        assert frames.std() > 1.0  # not a blank video
        params = json.loads(m["params_json"])
        mode = row.get("mode", "t2v")
        pipeline = (
            PIPELINES[mode].replace("AnimateDiff", "AnimateDiffVideoToVideo")
            if mode == "controlnet" and "strength" in row
            else PIPELINES[mode]
        )
        assert (m["mode"], params["pipeline"]) == (mode, pipeline), row_id
        assert (params["scheduler"], params["scheduler_class"]) == ("ddim", "DDIMScheduler")
        assert params["control"] == row.get("control")
        assert m["model"] == "tiny:sd15" and m["device"] == "cpu"


def test_lora_weight_zero_is_no_lora_and_weight_one_changes_the_video(ray_run):
    _, out, meta, _ = ray_run
    none, w0, w1 = meta["lora-none"], meta["lora-w0"], meta["lora-w1"]
    assert w0["sha256"] == none["sha256"]  # identical frames encode to identical files
    assert w1["sha256"] != none["sha256"]
    assert np.abs(decode(out, "lora-w1").astype(int) - decode(out, "lora-none")).mean() > 1.0
    # the rows shared the actor's one pipeline: the same process, the LoRA under one adapter name
    assert none["worker"] == w0["worker"] == w1["worker"]
    assert json.loads(w0["params_json"])["loras"][0]["adapter"] == json.loads(w1["params_json"])["loras"][0]["adapter"]


def test_prompt_travel_on_a_48_frame_free_noise_clip(ray_run):
    _, out, meta, _ = ray_run
    params = json.loads(meta["travel"]["params_json"])
    assert params["free_noise"]["context_length"] == 16 and params["free_noise"]["context_stride"] == 8
    assert json.loads(meta["travel"]["prompt"]) == {"0": "a red cat", "32": "blue sea waves"}
    travel, start, end = (decode(out, i).astype(float) for i in ("travel", "travel-start", "travel-end"))
    assert travel.shape[0] == 48

    def distance(a, b, frames):
        return np.abs(a[frames] - b[frames]).mean()

    first, last = slice(0, 8), slice(32, 48)
    # The clip begins near the first prompt's video and ends near the second one's.
    assert distance(travel, start, first) < distance(travel, end, first)
    assert distance(travel, end, last) < distance(travel, start, last)
    assert distance(travel, end, last) < distance(travel, end, first)


def test_rejections_and_failures_in_the_run(ray_run):
    _, out, meta, _ = ray_run
    assert meta["too-long"]["status"] == "rejected"
    assert "set free_noise" in meta["too-long"]["error"]
    assert meta["travel-no-fn"]["status"] == "rejected"
    assert meta["travel-no-fn"]["error"].startswith("prompt: a dict of frame prompts (prompt travel) needs free_noise")
    assert meta["no-video"]["status"] == "failed"
    assert meta["no-video"]["error"].startswith("video: cannot read /nonexistent/in.mp4")
    assert not (out / "videos" / "no-video.mp4").exists()


# ---- motion LoRAs in guoyww's released .ckpt layout ----------------------------------------------


def diffusers_motion_lora_names(original: dict) -> dict:
    """The same LoRA under diffusers' names, by the rules of diffusers' own converter
    (scripts/convert_animatediff_motion_lora_to_diffusers.py: attention_blocks.0/1 -> attn1/attn2,
    `.temporal_transformer` dropped, `unet.` in front; the processor-LoRA names kept)."""
    return {
        "unet."
        + k.replace(".attention_blocks.0", ".attn1")
        .replace(".attention_blocks.1", ".attn2")
        .replace(".temporal_transformer", ""): v
        for k, v in original.items()
    }


def test_a_motion_lora_in_the_released_ckpt_layout_is_the_same_lora_as_diffusers_format(stage, tmp_path):
    import torch
    from safetensors.torch import save_file

    from tests.test_real_configs import animatediff_motion_lora

    generator = torch.Generator().manual_seed(5)

    def value(*shape):
        return torch.randn(*shape, generator=generator) * 0.3

    # tiny:sd15's UNet: widths 32, 64, one layer a block (the tiny motion adapter's layout)
    original = animatediff_motion_lora(widths=(32, 64), layers_per_block=1, rank=4, value=value)
    assert len(original) == 7 * 2 * 4 * 2  # 2 down, 1 mid, 4 up motion modules; 2 attentions; q, k, v, out
    ckpt, wrapped, diffusers_file = (
        tmp_path / "v2_lora_Tiny.ckpt",
        tmp_path / "wrapped.ckpt",
        tmp_path / "d.safetensors",
    )
    torch.save(original, ckpt)  # the released files: a plain dict of tensors
    torch.save({"state_dict": original}, wrapped)  # AnimateDiff's loader also takes {"state_dict": ...}
    save_file({k: v.contiguous() for k, v in diffusers_motion_lora_names(original).items()}, str(diffusers_file))
    rows = [
        small_row("plain-ckpt"),
        small_row("ckpt", motion_lora=str(ckpt)),
        small_row("wrapped", motion_lora=str(wrapped)),
        small_row("diffusers", motion_lora=str(diffusers_file)),
    ]
    results = {r.meta["id"]: r for r in stage.process(rows)}
    assert all(r.meta["status"] == "ok" for r in results.values()), [r.meta["error"] for r in results.values()]
    frames = {row_id: r.frames.astype(np.int16) for row_id, r in results.items()}
    assert np.array_equal(frames["ckpt"], frames["diffusers"])  # every key landed where diffusers' names put it
    assert np.array_equal(frames["wrapped"], frames["ckpt"])
    assert np.abs(frames["ckpt"] - frames["plain-ckpt"]).mean() > 1.0

    bad = tmp_path / "bad.ckpt"
    torch.save(
        {**original, "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.lora.down.weight": value(4, 32)}, bad
    )
    (failed,) = stage.process([small_row("bad", motion_lora=str(bad))])
    assert failed.meta["status"] == "failed"
    assert f"lora: {bad}: not an AnimateDiff motion-LoRA key" in failed.meta["error"]
    assert "temporal_transformer.proj_in.lora.down.weight" in failed.meta["error"]
