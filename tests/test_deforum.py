"""Deforum: settings (files, objects, layering, rejections), seeds, the warps and colour
coherence by hand; then every animation mode on the tiny SD 1.5 and depth models in a real
local Ray run, with videos read back by decord and metadata by pyarrow."""

import json
import math

import cv2
import decord
import numpy as np
import pytest

from raypipe.cli import main
from raypipe.families.deforum.colour import maintain_colors
from raypipe.families.deforum.settings import SAMPLERS, frame_seeds
from raypipe.families.deforum.warps import warp_2d, warp_3d
from raypipe.pipeline.records import pack, unpack
from raypipe.schema import validate_row
from raypipe.sink import read_metadata
from tests.conftest import SHARED, needs_shared, write_jsonl

DEFAULT_SETTINGS = str(SHARED / "deforum" / "default_settings.txt")
TINY = {"W": 64, "H": 64, "steps": 2}
# No repainting, no noise, no colour matching: every frame is exactly the camera move of the last.
STILL = {
    **TINY,
    "strength_schedule": "0:(1.0)",
    "noise_schedule": "0:(0)",
    "color_coherence": "None",
    "diffusion_cadence": 1,
}


def row(deforum=None, **fields):
    return validate_row({"id": "r", "kind": "deforum", **fields, **({"deforum": deforum} if deforum else {})})


def rejection(**raw):
    with pytest.raises(ValueError) as info:
        validate_row({"id": "r", "kind": "deforum", **raw})
    return str(info.value)


# ---- settings -----------------------------------------------------------------------------------


@needs_shared
def test_the_default_settings_file_resolves():
    r = row({"max_frames": 120}, deforum_settings=DEFAULT_SETTINGS)
    s = r.settings
    assert (r.mode, r.num_frames, r.width, r.height, r.fps, r.num_inference_steps) == ("3D", 120, 512, 512, 15, 25)
    assert r.guidance_scale == 7.0 and s["sampler"] == "Euler a" and s["diffusion_cadence"] == 2
    assert s["color_coherence"] == "LAB" and s["noise_type"] == "perlin" and s["padding_mode"] == "border"
    # Meaning, not keys: the file's hybrid video, ControlNet units, masks, parseq, looper, ... are
    # all off, so nothing is reported; it turns on the noise multiplier, which raypipe runs.
    assert s.unimplemented == [] and s.unknown_keys == [] and s.features == {"noise_multiplier"}
    assert not {"zoom", "prompts", "seed_schedule", "translation_z", "fov_schedule"} & set(s.unimplemented)
    # prompts: positive_prompts before, negative_prompts after --neg (Deforum's composition)
    positive, negative = s.prompt_for_frame(45, 120)
    assert positive.startswith("anthropomorphic clean cat") and negative.split() == ["nsfw,", "nude"] * 2
    assert s.prompt_for_frame(0, 120)[0].startswith("tiny cute swamp bunny")
    assert s.prompt_for_frame(119, 120)[0] == "a beautiful durian, amazing award winning photography"
    assert json.loads(r.prompt)["60"].strip().startswith("a beautiful coconut")  # the metadata's prompt
    # seed -1 in the file: the row's seed (from its id) stands in, and `s` in schedules is it.
    assert r.seed == s.seed != -1
    series = s.series(120)
    assert series["seed_schedule"][0] == s.seed and series["seed_schedule"][60] == -1
    assert series["translation_z"][50] == 1.75
    assert series["zoom"][10] == pytest.approx(1.0025 + 0.002 * math.sin(1.25 * 3.14 * 10 / 30))


def test_layers_common_fields_then_file_then_object(tmp_path):
    settings = tmp_path / "s.txt"
    settings.write_text(json.dumps({"W": 128, "H": 96, "max_frames": 7, "zoom": "0:(1.5)"}))
    r = row({"H": 64, "zoom": 1.25}, deforum_settings=str(settings), width=32, height=32, num_frames=3, fps=12)
    assert (r.width, r.height, r.num_frames, r.fps) == (128, 64, 7, 12)
    assert r.settings.series(7)["zoom"].tolist() == [1.25] * 7
    r = row(prompt="a cat", negative_prompt="blurry", num_frames=3, height=40, width=43, guidance_scale=3.5)
    assert (r.num_frames, r.height, r.width, r.guidance_scale) == (3, 40, 40, 3.5)  # 43 -> 40 (x8)
    assert r.settings.prompt_for_frame(2, 3) == ("a cat", "blurry") and r.prompt == "a cat"
    # a row survives the trip to the model actor unchanged (packed once validated, not validated again)
    again = unpack(pack(r))
    assert again.model_dump() == r.model_dump() and again.settings.values == r.settings.values


def test_rejections_name_the_key(tmp_path):
    bad_file = tmp_path / "bad.txt"
    bad_file.write_text(json.dumps({"angle": "0:(__import__('os').system('touch x'))"}))
    assert rejection(deforum_settings=str(bad_file)).startswith("deforum_settings.angle: ")
    assert rejection(deforum={"zoom": "0:(open('x'))"}).startswith("deforum.zoom: ")
    assert rejection(deforum={"strength_schedule": "0:(0.5), 10:(1/0)"}).startswith("deforum.strength_schedule: ")
    assert rejection(deforum={"prompts": {"0": "a `t*` b"}}).startswith("deforum.prompts: ")
    assert rejection(deforum={"animation_mode": "None"}).startswith("deforum.animation_mode: must be one of 2D")
    assert "no diffusers counterpart" in rejection(deforum={"sampler": "DPM fast"})
    assert rejection(deforum={"sampler": "Euler b"}).startswith("deforum.sampler: unknown sampler 'Euler b'")
    assert rejection(deforum={"max_frames": 0}).startswith("deforum.max_frames: must be between 1")
    assert rejection(num_frames=0).startswith("num_frames: ")
    assert rejection(deforum={"diffusion_cadence": "two"}).startswith("deforum.diffusion_cadence: must be an integer")
    assert rejection(deforum={"animation_mode": "Video Input", "video_init_path": ""}).startswith("video: ")
    assert rejection(video="in.mp4", deforum={"animation_mode": "2D"}).startswith("video: only used by")
    assert rejection(deforum={"use_init": True}).startswith("deforum.use_init: ")
    assert rejection(deforum_settings=str(tmp_path / "missing.txt")).startswith("deforum_settings: cannot read")
    (tmp_path / "not.txt").write_text("W: 512")
    assert "is not a Deforum settings file" in rejection(deforum_settings=str(tmp_path / "not.txt"))
    assert rejection(lora=[{"path": "x.safetensors"}]).startswith("lora: not supported")
    assert rejection(deforum="zoom").startswith("deforum: ")  # not an object


def test_unknown_keys_are_listed_not_dropped():
    # hybrid_flow_method RAFT is not implemented, but hybrid motion is off: not reported.
    r = row({"zooom": "0:(1.1)", "hybrid_flow_method": "RAFT", "hybrid_motion": "None"})
    assert r.settings.unknown_keys == ["zooom"] and r.settings.unimplemented == []


SEED_CASES = {
    ("iter", 1): [10, 11, 12, 13, 14, 15],
    ("iter", 2): [10, 11, 11, 12, 12, 13],
    ("fixed", 1): [10] * 6,
    ("ladder", 1): [10, 12, 11, 13, 12, 14],
    ("alternate", 1): [10, 11, 10, 11, 10, 11],
}


@pytest.mark.parametrize("behavior,every", SEED_CASES)
def test_seed_behaviors(behavior, every):
    s = row({"seed": 10, "seed_behavior": behavior, "seed_iter_N": every, "max_frames": 6}).settings
    assert list(frame_seeds(s, list(range(6)), 6).values()) == SEED_CASES[(behavior, every)]


def test_seed_schedule_and_random():
    s = row(
        {"seed": 10, "seed_behavior": "schedule", "seed_schedule": "0:(5), 1:(t*100), 3:(-1)", "max_frames": 5}
    ).settings
    seeds = frame_seeds(s, [0, 1, 2, 3, 4], 5)
    assert [seeds[f] for f in (0, 1, 2)] == [5, 100, 200]
    assert seeds[3] != seeds[4] and seeds[3] not in (-1, 2**32 - 1)  # -1: a random seed each
    assert frame_seeds(s, [0, 1, 2, 3, 4], 5) == seeds  # ... drawn reproducibly from the row's seed
    s = row({"seed": 10, "seed_behavior": "random", "max_frames": 4}).settings
    seeds = list(frame_seeds(s, [0, 1, 2, 3], 4).values())
    assert seeds[0] == 10 and len(set(seeds)) == 4 and seeds == list(frame_seeds(s, [0, 1, 2, 3], 4).values())
    # with cadence the seed advances once per diffused frame
    s = row({"seed": 10, "max_frames": 6}).settings
    assert frame_seeds(s, [0, 2, 4], 6) == {0: 10, 2: 11, 4: 12}


def test_every_sampler_name_makes_a_diffusers_scheduler():
    from diffusers import PNDMScheduler

    from raypipe.families.deforum.stage import img2img_steps, make_scheduler

    config = PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
    ).config  # SD 1.5's
    for name, target in SAMPLERS.items():
        if target:
            scheduler = make_scheduler(name.upper(), config)
            assert type(scheduler).__name__ == target[0]
            assert all(scheduler.config[k] == v for k, v in target[1].items())
    assert type(make_scheduler("klms", config)).__name__ == "LMSDiscreteScheduler"  # notebook names
    # img2img runs at least one step: 2 steps at denoise 0.35 -> 3 steps (int(3 * 0.35) = 1)
    assert img2img_steps(2, 0.35) == 3 and img2img_steps(25, 0.35) == 25 and img2img_steps(2, 0.2) == 5


# ---- warps and colour, by hand ------------------------------------------------------------------


def square(size=64, at=(20, 30)):
    image = np.zeros((size, size, 3), np.uint8)
    image[at[0] : at[1], at[0] : at[1]] = 255
    return image


def box(image):
    ys, xs = np.nonzero(image[..., 0] > 127)
    return xs.min(), xs.max(), ys.min(), ys.max()


def test_warp_2d():
    assert box(warp_2d(square(), translation_x=5, translation_y=-3)) == (25, 34, 17, 26)
    # zoom 2 about the centre: x -> (x - 32) * 2 + 32, so [20, 30) -> [8, 28) (edges interpolated)
    assert np.allclose(box(warp_2d(square(), zoom=2.0)), (8, 27, 8, 27), atol=1)
    assert np.allclose(box(warp_2d(square(), zoom=2.0, center_x=0.0, center_y=0.0)), (40, 59, 40, 59), atol=1)
    rotated = warp_2d(square(at=(10, 20)), angle=90)  # counter-clockwise: top-left -> bottom-left
    assert box(rotated)[2] > 32 and box(rotated)[0] < 32
    ramp = np.tile((np.arange(64, dtype=np.uint8) * 4)[None, :, None], (64, 1, 3))
    assert warp_2d(ramp, translation_x=10, border="wrap")[0, :10, 0].tolist() == list(range(216, 256, 4))
    assert warp_2d(ramp, translation_x=10, border="replicate")[0, :10, 0].tolist() == [0] * 10


def test_warp_3d():
    ramp = np.tile((np.arange(64, dtype=np.uint8) * 4)[None, :, None], (64, 1, 3))
    assert np.array_equal(warp_3d(ramp), ramp)  # no move: the same frame
    # translation_z 50 moves the camera 0.25 forward. At z = 1 a point at x projects to
    # x / tan(35 deg) before and x / 0.75 / tan(35 deg) after; Deforum moves the sampling grid by
    # that NDC offset, so x is sampled from x * (1 - (1 / 0.75 - 1) / tan(35 deg)) = 0.524 x:
    # things grow 1.91 times about the centre, the centred square [27, 37) to about [22, 41].
    x0, x1, y0, y1 = box(warp_3d(square(at=(27, 37)), translation_z=50))
    assert np.allclose((x0, x1, y0, y1), (22, 41, 22, 41), atol=1)
    # Parallax: flat depth except a near left half (disparity 1) and a far right half (0);
    # equalised, z = 1 near and 1.5 far. translation_x 20 -> 0.1 units; the shift in pixels is
    # 32 px * 0.1 / tan(35 deg) / z = 4.57 px near, 3.05 px far (to the left).
    lines = np.zeros((64, 64, 3), np.uint8)
    lines[:, 14:18] = lines[:, 46:50] = 255
    depth = np.zeros((64, 64))
    depth[:, :32] = 1.0
    moved = warp_3d(lines, depth, translation_x=20, sampling_mode="bilinear")[..., 0].mean(0)
    near = np.average(np.arange(32), weights=moved[:32]) - 15.5
    far = np.average(np.arange(32, 64), weights=moved[32:]) - 47.5
    assert near == pytest.approx(-32 * 0.1 / math.tan(math.radians(35)), abs=0.2)
    assert far == pytest.approx(near / 1.5, abs=0.2)
    # near / far are clip planes: like in Deforum they do not move pixels; fov does.
    assert np.array_equal(warp_3d(ramp, depth, translation_z=20, near=1, far=3), warp_3d(ramp, depth, translation_z=20))
    assert not np.array_equal(warp_3d(ramp, depth, translation_x=20, fov=40), warp_3d(ramp, depth, translation_x=20))
    # padding: zeros lets black in where the frame runs out; border repeats the edge.
    assert warp_3d(ramp + 8, translation_x=-100, padding_mode="zeros", sampling_mode="nearest")[:, :5].max() == 0
    assert warp_3d(ramp + 8, translation_x=-100, padding_mode="border")[:, :5].min() > 0


def test_colour_coherence_matches_frame_0():
    rng = np.random.default_rng(0)
    reference = rng.integers(100, 256, (32, 32, 3)).astype(np.uint8)
    drifted = (reference // 2).astype(np.uint8)
    for mode in ("LAB", "HSV", "RGB"):
        matched = maintain_colors(drifted, reference, mode)
        assert abs(matched.mean() - reference.mean()) < 6 < abs(drifted.mean() - reference.mean())
    assert np.array_equal(maintain_colors(reference, reference, "RGB"), reference)


# ---- every mode in a real local Ray ------------------------------------------------------------------


def moving_square_video(path, frames=8):
    from raypipe.video import write_video

    video = np.zeros((frames, 64, 64, 3), np.uint8)
    video[:] = np.linspace(40, 200, 64, dtype=np.uint8)[None, None, :, None]
    for i in range(frames):
        video[i, 24:40, 4 + 6 * i : 20 + 6 * i] = (255, 40, 40)
    write_video(video, 8, str(path))
    return video


@pytest.fixture(scope="module")
def deforum_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deforum")
    moving_square_video(tmp / "input.mp4")
    bad_settings = tmp / "bad_settings.txt"
    bad_settings.write_text(json.dumps({"angle": "0:(__import__('os').system('touch pwned'))"}))
    rows = [
        {
            "id": "cam-2d",
            "kind": "deforum",
            "prompt": "a red kite",
            "deforum": {**STILL, "animation_mode": "2D", "max_frames": 4, "translation_x": "0:(4)", "zoom": "0:(1)"},
        },
        {
            "id": "cam-3d",
            "kind": "deforum",
            "prompt": "a red kite",
            "deforum": {
                **STILL,
                "animation_mode": "3D",
                "max_frames": 3,
                "translation_x": "0:(40)",
                "use_depth_warping": False,
            },
        },
        {
            "id": "depth-3d",
            "kind": "deforum",
            "prompt": "a canyon",
            "deforum": {
                **TINY,
                "animation_mode": "3D",
                "max_frames": 5,
                "diffusion_cadence": 2,
                "translation_z": "0:(10)",
                "rotation_3d_y": "0:(2)",
                "sampler": "DPM++ 2M Karras",
            },
        },
        {
            "id": "video-in",
            "kind": "deforum",
            "video": str(tmp / "input.mp4"),
            "deforum": {**STILL, "animation_mode": "Video Input", "extract_nth_frame": 2},
        },
        {
            "id": "video-cap",
            "kind": "deforum",
            "prompt": "oil painting",
            "deforum": {
                **TINY,
                "animation_mode": "Video Input",
                "video_init_path": str(tmp / "input.mp4"),
                "max_frames": 2,
                "strength_schedule": "0:(0.5)",
            },
        },
        {
            "id": "interp",
            "kind": "deforum",
            "deforum": {
                **TINY,
                "animation_mode": "Interpolation",
                "max_frames": 5,
                "seed_behavior": "fixed",
                "prompts": {"0": "sunrise over the sea", "4": "sunset over the sea"},
            },
        },
        {
            "id": "settings-file",
            "kind": "deforum",
            "deforum_settings": DEFAULT_SETTINGS,
            "deforum": {"max_frames": 3, **TINY},
        },
        {"id": "bad-schedule", "kind": "deforum", "deforum": {"zoom": "0:(exec('import os'))"}},
        {"id": "bad-file", "kind": "deforum", "deforum_settings": str(bad_settings)},
        {
            "id": "missing-video",
            "kind": "deforum",
            "video": str(tmp / "nope.mp4"),
            "deforum": {**TINY, "animation_mode": "Video Input"},
        },
    ]
    manifest = write_jsonl(tmp / "deforum.jsonl", rows)
    out = tmp / "out"
    code = main(["run", str(manifest), "--out", str(out)])
    meta = {m["id"]: m for m in read_metadata(str(out)).to_pylist()}
    return tmp, out, code, meta


def frames_of(out, row_id):
    reader = decord.VideoReader(str(out / "videos" / f"{row_id}.mp4"))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def shift(a, b):
    gray = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32) for x in (a, b)]
    return cv2.phaseCorrelate(*gray)[0]


@needs_shared
def test_run_finishes_with_one_row_per_manifest_line(deforum_run):
    _, _, code, meta = deforum_run
    assert len(meta) == 10 and code == 1  # rejected and failed rows are in the metadata
    ok = {"cam-2d", "cam-3d", "depth-3d", "video-in", "video-cap", "interp", "settings-file"}
    assert {k for k, m in meta.items() if m["status"] == "ok"} == ok, {k: m["error"] for k, m in meta.items()}


def test_2d_camera_move_moves_pixels(deforum_run):
    _, out, _, meta = deforum_run
    video = frames_of(out, "cam-2d")
    assert len(video) == meta["cam-2d"]["num_frames"] == 4 and video.shape[1:] == (64, 64, 3)
    for i in range(3):  # translation_x 4: each frame is the last one moved 4 px right
        dx, dy = shift(video[i], video[i + 1])
        assert dx == pytest.approx(4, abs=0.5) and abs(dy) < 0.5
    assert meta["cam-2d"]["mode"] == "2D" and meta["cam-2d"]["prompt"] == "a red kite"


def test_3d_camera_move_moves_pixels(deforum_run):
    _, out, _, meta = deforum_run
    video = frames_of(out, "cam-3d")
    assert len(video) == 3
    # translation_x 40 at flat depth: 32 px * (40 / 200) / tan(35 deg) = 9.14 px to the left
    for i in range(2):
        dx, dy = shift(video[i], video[i + 1])
        assert dx == pytest.approx(-32 * 0.2 / math.tan(math.radians(35)), abs=0.7) and abs(dy) < 0.5


def test_3d_with_depth_model_and_cadence(deforum_run):
    _, out, _, meta = deforum_run
    m = meta["depth-3d"]
    params = json.loads(m["params_json"])
    # 5 frames: diffused 0, 2, 4, the others tweened; unlike Deforum the last ones too.
    assert len(frames_of(out, "depth-3d")) == m["num_frames"] == 5
    assert params["diffused_frames"] == 3 and params["depth_predictions"] > 0
    assert params["seeds"] == [m["seed"], m["seed"] + 1, m["seed"] + 2]  # iter, once per diffused frame
    assert params["scheduler"] == "DPMSolverMultistepScheduler"
    assert params["deforum"]["sampler"] == "DPM++ 2M Karras" and m["mode"] == "3D"


def test_video_input(deforum_run):
    tmp, out, _, meta = deforum_run
    source = decord.VideoReader(str(tmp / "input.mp4")).get_batch(list(range(8))).asnumpy()
    video = frames_of(out, "video-in")
    # every 2nd input frame; strength 1.0 keeps each as it is
    assert len(video) == meta["video-in"]["num_frames"] == 4
    for i, frame in enumerate(video):
        assert np.abs(frame.astype(int) - source[2 * i]).mean() < 4
    # max_frames in the row caps the video's frames; img2img repaints half of each
    capped = frames_of(out, "video-cap")
    assert len(capped) == 2 and np.abs(capped[0].astype(int) - source[0]).mean() > 4


def test_interpolation(deforum_run):
    _, out, _, meta = deforum_run
    video = frames_of(out, "interp").astype(int)
    assert len(video) == meta["interp"]["num_frames"] == 5
    # prompt embeddings move from the sunrise prompt to the sunset one (same seed): neighbours
    # differ less than the two ends do
    ends = np.abs(video[0] - video[4]).mean()
    assert ends > 0 and np.abs(video[0] - video[1]).mean() < ends and np.abs(video[3] - video[4]).mean() < ends
    assert json.loads(meta["interp"]["params_json"])["seeds"] == [meta["interp"]["seed"]] * 5  # fixed


@needs_shared
def test_the_default_settings_file_runs(deforum_run):
    _, out, _, meta = deforum_run
    m = meta["settings-file"]
    params = json.loads(m["params_json"])
    assert len(frames_of(out, "settings-file")) == m["num_frames"] == 3
    assert (m["mode"], m["fps"], m["height"], m["num_inference_steps"], m["guidance_scale"]) == ("3D", 15, 64, 2, 7.0)
    assert "swamp bunny" in m["prompt"] and "nsfw" in m["negative_prompt"]
    assert params["deforum_settings"] == DEFAULT_SETTINGS and params["depth_predictions"] > 0
    assert params["deforum_unimplemented"] == [] and params["deforum_features"] == ["noise_multiplier"]
    assert params["scheduler"] == "EulerAncestralDiscreteScheduler" and params["diffused_frames"] == 2


def test_bad_rows_are_rejected_or_fail_naming_the_field(deforum_run):
    tmp, _, _, meta = deforum_run
    assert meta["bad-schedule"]["status"] == "rejected"
    assert meta["bad-schedule"]["error"].startswith("deforum.zoom: unknown function 'exec'")
    assert meta["bad-file"]["status"] == "rejected"
    assert meta["bad-file"]["error"].startswith("deforum_settings.angle: ")
    assert meta["missing-video"]["status"] == "failed"
    assert meta["missing-video"]["error"].startswith("video: cannot read")
    assert not (tmp / "pwned").exists()
