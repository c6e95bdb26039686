"""The Deforum features as compositions, by their observable effect, on the tiny SD 1.5, ControlNet
and depth models: a DeforumStage driven directly (setup once), then a real local Ray run of a
real Deforum settings file with ControlNet, hybrid video and masks turned on."""

import json
import logging

import cv2
import numpy as np
import pytest
from PIL import Image

from raypipe.config import load_config
from raypipe.schema import validate_row
from tests.conftest import SHARED, needs_shared, write_jsonl
from tests.test_deforum_features import scene

TINY = {"W": 64, "H": 64, "steps": 2}
# Every frame exactly the camera move of the last: no repainting, noise, sharpening or colour matching.
STILL = {
    **TINY,
    "animation_mode": "2D",
    "strength_schedule": "0:(1.0)",
    "noise_schedule": "0:(0)",
    "amount_schedule": "0:(0)",
    "color_coherence": "None",
    "diffusion_cadence": 1,
    "zoom": "0:(1)",
}
# Repainting, but no camera move, noise or sharpening: what stays the same is what masks keep.
REPAINT = {**STILL, "strength_schedule": "0:(0.3)"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from raypipe.video import write_video

    tmp = tmp_path_factory.mktemp("deforum-features")
    video = np.stack([scene(64, 64, (3 * i, 2 * i)) for i in range(6)])
    write_video(video, 8, str(tmp / "moving.mp4"))
    big = np.stack([scene(128, 128, (4 * i, 3 * i)) for i in range(4)])
    write_video(big, 8, str(tmp / "moving-128.mp4"))
    Image.fromarray(scene(64, 64)).save(tmp / "init.png")
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    Image.fromarray(left).save(tmp / "left.png")
    return tmp


@pytest.fixture(scope="module")
def stage():
    from raypipe.families.deforum.stage import DeforumStage

    config = load_config().kinds["deforum"]
    config.models.update({"checkpoint:a.ckpt": "tiny:sd15", "checkpoint:b.safetensors": "tiny:sd15-b"})
    stage = DeforumStage(config)
    stage.setup()
    return stage


def render(stage, deforum, **fields):
    """(frames, params) of one row rendered by the stage; fails the test with the row's error."""
    row = validate_row({"id": "r", "kind": "deforum", "prompt": "a red kite", **fields, "deforum": deforum})
    (result,) = stage.process([row])
    assert result.meta.status == "ok", result.meta.error
    return result.frames, json.loads(result.meta.params_json)


def shift(a, b):
    grey = [cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).astype(np.float32) for x in (a, b)]
    return cv2.phaseCorrelate(*grey)[0]


# ---- masks ----------------------------------------------------------------------------------------------


def test_a_mask_keeps_the_region_it_masks_out(stage, files):
    init = np.asarray(Image.open(files / "init.png"))
    masked = {**REPAINT, "max_frames": 3, "use_init": True, "init_image": str(files / "init.png"), "strength": 0.3}
    masked.update(use_mask=True, mask_file=str(files / "left.png"))
    video, params = render(stage, masked)
    assert params["deforum_features"] == ["mask", "noise_multiplier"]
    for frame in video:  # the right half (black in the mask) is the init image, the left repainted
        assert np.array_equal(frame[:, 32:], init[:, 32:])
        assert np.abs(frame[:, :32].astype(int) - init[:, :32]).mean() > 3
    # invert_mask: the other half is kept
    video, _ = render(stage, {**masked, "invert_mask": True})
    assert np.array_equal(video[2][:, :32], init[:, :32]) and not np.array_equal(video[2][:, 32:], init[:, 32:])
    # without overlay_mask A1111's own overlay still keeps what lies beyond the mask's blur
    video, _ = render(stage, {**masked, "overlay_mask": False, "mask_overlay_blur": 2, "full_res_mask": False})
    assert np.array_equal(video[1][:, 44:], init[:, 44:]) and not np.array_equal(video[1][:, :32], init[:, :32])
    # a composed schedule: {everywhere} from frame 1 repaints the whole frame
    video, _ = render(
        stage, {**masked, "mask_schedule": '0: ("{video_mask}"), 1: ("{everywhere}")', "overlay_mask": False}
    )
    assert not np.array_equal(video[1][:, 48:], init[:, 48:])


# ---- ControlNet -----------------------------------------------------------------------------------------


def test_a_controlnet_of_weight_0_is_no_controlnet(stage, files):
    base = {**REPAINT, "max_frames": 2, "use_init": True, "init_image": str(files / "init.png"), "strength": 0.3}
    unit = {"cn_1_enabled": True, "cn_1_module": "canny", "cn_1_vid_path": str(files / "moving.mp4")}
    unit.update(cn_1_threshold_a=100, cn_1_threshold_b=200, cn_1_processor_res=64)
    plain, _ = render(stage, base)
    zero, params = render(stage, {**base, **unit, "cn_1_weight": "0:(0)"})
    assert params["controlnet"][0]["module"] == "canny" and params["controlnet"][0]["frames"] == 2
    assert np.abs(zero.astype(int) - plain).max() <= 1
    full, _ = render(stage, {**base, **unit, "cn_1_weight": "0:(1)"})
    assert np.abs(full.astype(int) - plain).mean() > 1
    # the guidance window: a unit active for no step is no ControlNet either
    closed, _ = render(stage, {**base, **unit, "cn_1_guidance_start": "0:(0)", "cn_1_guidance_end": "0:(0)"})
    assert np.abs(closed.astype(int) - plain).max() <= 1
    # two units (canny + depth) on one frame
    both = {**unit, "cn_2_enabled": True, "cn_2_module": "depth_midas", "cn_2_weight": "0:(0.7)"}
    two, params = render(stage, {**base, **both})
    assert [u["module"] for u in params["controlnet"]] == ["canny", "depth_midas"]
    assert np.abs(two.astype(int) - full).mean() > 1


# ---- noise multiplier, checkpoints, reroll ----------------------------------------------------------------


def test_the_noise_multiplier_scales_img2imgs_noise(stage, files):
    import torch
    from diffusers import EulerAncestralDiscreteScheduler

    from raypipe.families.deforum.render import noise_multiplier

    scheduler = EulerAncestralDiscreteScheduler()
    scheduler.set_timesteps(4)
    x, noise, t = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2), scheduler.timesteps[:1]
    with noise_multiplier(scheduler, 1.5):
        scaled = scheduler.add_noise(x, noise, t)
    assert torch.allclose(scaled, scheduler.add_noise(x, 1.5 * noise, t)) and "add_noise" not in vars(scheduler)
    base = {**REPAINT, "max_frames": 2, "use_init": True, "init_image": str(files / "init.png"), "strength": 0.3}
    one, _ = render(stage, {**base, "noise_multiplier_schedule": "0:(1.0)"})
    more, params = render(stage, {**base, "noise_multiplier_schedule": "0:(1.5)"})
    assert "noise_multiplier" in params["deforum_features"] and np.abs(one.astype(int) - more).mean() > 1
    off, _ = render(
        stage, {**base, "enable_noise_multiplier_scheduling": False, "noise_multiplier_schedule": "0:(1.5)"}
    )
    assert np.array_equal(off, one)


def test_checkpoint_schedule_switches_checkpoints_by_name(stage):
    base = {**TINY, "animation_mode": "2D", "max_frames": 3, "diffusion_cadence": 1, "seed": 5}
    plain, _ = render(stage, base)
    switched, params = render(
        stage,
        {**base, "enable_checkpoint_scheduling": True, "checkpoint_schedule": '0: ("a.ckpt"), 2: ("b.safetensors")'},
    )
    assert params["checkpoints"] == ["a.ckpt", "b.safetensors"]
    assert np.array_equal(switched[:2], plain[:2])  # a.ckpt is tiny:sd15, the config's model
    assert np.abs(switched[2].astype(int) - plain[2]).mean() > 1


def test_reroll_blank_frames(stage):
    # contrast 0 turns frame 1's init black and strength 1 keeps it: a blank frame
    blank = {**STILL, "max_frames": 3, "contrast_schedule": "0:(1), 1:(0)"}
    video, params = render(stage, {**blank, "reroll_blank_frames": "interrupt"})
    assert len(video) == 1 and params["interrupted_at_frame"] == 1 and params["rerolls"] == 0
    video, params = render(stage, {**blank, "reroll_blank_frames": "reroll", "reroll_patience": 2})
    assert len(video) == 1 and params["rerolls"] == 2 and params["interrupted_at_frame"] == 1
    video, params = render(stage, blank)  # ignore: Deforum's default
    assert len(video) == 3 and not video[1].any() and "rerolls" not in params


# ---- perspective flip, hybrid video, optical flow ----------------------------------------------------------


def test_the_perspective_flip_warps_each_frame_by_its_matrix(stage):
    from raypipe.families.deforum.warps import warp_2d

    flip = {"perspective_flip_theta": "0:(3)", "perspective_flip_phi": "0:(8)", "perspective_flip_gamma": "0:(-5)"}
    video, params = render(stage, {**STILL, "max_frames": 3, "enable_perspective_flip": True, **flip})
    assert "flip" in params["deforum_features"]
    for i in range(2):
        assert np.array_equal(video[i + 1], warp_2d(video[i], flip=(3.0, 8.0, -5.0, 53.0)))


def test_hybrid_composite_and_motion_follow_the_video(stage, files):
    source = files / "moving.mp4"
    import decord

    frames = decord.VideoReader(str(source)).get_batch(list(range(6))).asnumpy()
    # composite Normal with alpha 1, no mask: every frame after the first is the video's
    composite = {**STILL, "hybrid_composite": "Normal", "hybrid_comp_alpha_schedule": "0:(1)"}
    video, params = render(stage, {**composite, "hybrid_use_first_frame_as_init_image": False}, video=str(source))
    assert len(video) == 6 and "hybrid" in params["deforum_features"]  # the video's frame count
    for i in range(1, 6):
        assert np.array_equal(video[i], frames[i])
    # the first frame from the video's (hybrid_use_first_frame_as_init_image, strength 1 keeps it)
    video, _ = render(stage, {**composite, "strength": 1.0}, video=str(source))
    assert np.array_equal(video[0], frames[0])
    # hybrid_use_init_image: composited with the init image, no video (max_frames frames)
    with_init = {**composite, "hybrid_use_init_image": True, "init_image": str(files / "init.png"), "max_frames": 3}
    video, _ = render(stage, with_init)
    init = np.asarray(Image.open(files / "init.png"))
    assert len(video) == 3 and np.array_equal(video[1], init) and np.array_equal(video[2], init)
    # motion: the frames move as the video does (3 px right, 2 down a frame), by RANSAC or optical flow
    big = files / "moving-128.mp4"
    for motion, method in (("Affine", "DIS Medium"), ("Perspective", "DIS Medium"), ("Optical Flow", "DIS Fine")):
        moving = {**STILL, "W": 128, "H": 128, "hybrid_motion": motion, "hybrid_flow_method": method}
        video, _ = render(stage, {**moving, "strength": 1.0}, video=str(big))
        for i in range(1, 4):
            dx, dy = shift(video[i - 1], video[i])
            assert dx == pytest.approx(4, abs=1.0) and dy == pytest.approx(3, abs=1.0), (motion, i, dx, dy)


def test_optical_flow_cadence_and_redo_run_and_change_the_frames(stage):
    base = {
        **TINY,
        "animation_mode": "2D",
        "max_frames": 5,
        "diffusion_cadence": 2,
        "translation_x": "0:(3)",
        "seed": 9,
    }
    plain, _ = render(stage, base)
    flowed, params = render(
        stage, {**base, "optical_flow_cadence": "Farneback", "cadence_flow_factor_schedule": "0:(1)"}
    )
    assert "flow_cadence" in params["deforum_features"] and len(flowed) == 5
    # frames 0, 1 (tweened from frame 0 alone) have no flow between two diffused frames: the same;
    # from frame 2 (Deforum shows it blended with the tween from frame 0) the flow moves them
    assert np.array_equal(flowed[:2], plain[:2]) and np.abs(flowed[2].astype(int) - plain[2]).mean() > 0.5
    redone, params = render(stage, {**base, "optical_flow_redo_generation": "DIS Medium"})
    assert "redo" in params["deforum_features"] and np.abs(redone[2].astype(int) - plain[2]).mean() > 0.5


def test_parseq_moves_the_frames_by_its_deltas(stage):
    frames = [
        {"frame": f, "translation_x": 4.0 * f, "translation_x_delta": 4.0, "angle": 0, "angle_delta": 0}
        for f in range(4)
    ]
    deforum = {**STILL, "parseq_manifest": {"rendered_frames": frames, "options": {}}, "translation_x": "0:(0)"}
    video, params = render(stage, deforum)
    assert len(video) == 4 and "parseq" in params["deforum_features"]
    for i in range(3):
        dx, dy = shift(video[i], video[i + 1])
        assert dx == pytest.approx(4, abs=0.5) and abs(dy) < 0.5


# ---- unimplemented features -------------------------------------------------------------------------------


def test_unimplemented_features_fail_or_render_without_them_and_say_so(files, caplog):
    from raypipe.families.deforum.stage import DeforumStage

    deforum = {**STILL, "max_frames": 2, "cn_1_enabled": True, "cn_1_module": "openpose", "tiling": True}
    row = validate_row({"id": "openpose", "kind": "deforum", "prompt": "x", "deforum": deforum})
    config = load_config().kinds["deforum"]
    (result,) = DeforumStage(config).process([row])  # a stage driven without the runner checks too
    assert result.meta.status == "failed" and "cn_1_module 'openpose'" in result.meta.error
    allowed = DeforumStage(config.model_copy(update={"options": {"allow_unimplemented": True}}))
    with caplog.at_level(logging.WARNING, logger="raypipe"):
        (result,) = allowed.process([row])
    assert result.meta.status == "ok" and len(result.frames) == 2
    listed = json.loads(result.meta.params_json)["deforum_unimplemented"]
    assert [line.split(":")[0] for line in listed] == ["deforum.tiling True", "deforum.cn_1_module 'openpose'"]
    assert "openpose" in caplog.text and "renders without Deforum features" in caplog.text


# ---- in a real local Ray: a real settings file with the features on ---------------------------------------


@pytest.fixture(scope="module")
def features_run(ray_local, files, tmp_path_factory):
    from raypipe.cli import main
    from raypipe.sink import read_metadata

    tmp = tmp_path_factory.mktemp("deforum-features-run")
    settings = json.loads((SHARED / "deforum" / "default_settings.txt").read_text())
    settings.update(
        {
            **TINY,
            "animation_mode": "2D",
            "max_frames": 3,
            "video_init_path": str(files / "moving.mp4"),
            "extract_to_frame": 2,  # hybrid video: the video's frames 0..2 are the animation's
            "hybrid_composite": "Normal",
            "hybrid_motion": "Optical Flow",
            "hybrid_flow_method": "DIS Medium",
            "use_mask": True,
            "mask_file": str(files / "left.png"),
            "cn_1_enabled": True,
            "cn_1_module": "canny",
            "cn_1_model": "control_v11p_sd15_canny [d14c016b]",
            "cn_1_vid_path": str(files / "moving.mp4"),
            "cn_1_weight": "0:(0.8), 2:(0.4)",
        }
    )
    featured = tmp / "features.txt"
    featured.write_text(json.dumps(settings, indent=4))
    openpose = tmp / "openpose.txt"
    openpose.write_text(json.dumps({**settings, "cn_1_module": "openpose"}))
    raft = tmp / "raft.txt"
    raft.write_text(json.dumps({**settings, "hybrid_flow_method": "RAFT"}))
    rows = [
        {"id": "features", "kind": "deforum", "deforum_settings": str(featured)},
        {"id": "openpose", "kind": "deforum", "deforum_settings": str(openpose)},
        {"id": "raft", "kind": "deforum", "deforum_settings": str(raft)},
        {"id": "no-checkpoint", "kind": "deforum", "deforum": {**TINY, "enable_checkpoint_scheduling": True}},
    ]
    manifest = write_jsonl(tmp / "features.jsonl", rows)
    out = tmp / "out"
    code = main(["run", str(manifest), "--out", str(out)])
    meta = {m["id"]: m for m in read_metadata(str(out)).to_pylist()}
    # the same rows again with the run config allowing unimplemented features
    allow = tmp / "allow.yaml"
    allow.write_text("kinds:\n  deforum:\n    options: {allow_unimplemented: true}\n")
    allowed_out = tmp / "allowed"
    allowed_code = main(["run", str(manifest), "--out", str(allowed_out), "--config", str(allow)])
    allowed = {m["id"]: m for m in read_metadata(str(allowed_out)).to_pylist()}
    return out, code, meta, allowed_code, allowed


@needs_shared
def test_a_settings_file_with_controlnet_hybrid_video_and_masks_runs(features_run):
    import decord

    out, code, meta, _, _ = features_run
    m = meta["features"]
    assert m["status"] == "ok", m["error"]
    params = json.loads(m["params_json"])
    assert {"cn_1", "hybrid", "mask", "noise_multiplier"} <= set(params["deforum_features"])
    assert params["deforum_unimplemented"] == [] and params["controlnet"][0]["model"] == "tiny:sd15-controlnet"
    reader = decord.VideoReader(str(out / "videos" / "features.mp4"))
    assert len(reader) == m["num_frames"] == 3 and reader[0].shape == (64, 64, 3)


@needs_shared
def test_a_file_turning_on_what_raypipe_lacks_is_rejected_naming_it(features_run):
    _, code, meta, _, _ = features_run
    assert code == 1 and len(meta) == 4
    assert meta["openpose"]["status"] == "rejected"
    assert "deforum_settings.cn_1_module 'openpose': ControlNet preprocessor 'openpose'" in meta["openpose"]["error"]
    assert meta["raft"]["status"] == "rejected" and "hybrid_flow_method 'RAFT'" in meta["raft"]["error"]
    assert "allow_unimplemented: true" in meta["raft"]["error"]
    assert meta["no-checkpoint"]["status"] == "rejected"
    assert "checkpoint 'model1.ckpt' is not in the run config" in meta["no-checkpoint"]["error"]


@needs_shared
def test_the_run_config_can_allow_them(features_run):
    _, _, _, code, allowed = features_run
    assert code == 1 and allowed["no-checkpoint"]["status"] == "rejected"  # a missing model is never allowed
    for row_id, part in (("openpose", "cn_1_module 'openpose'"), ("raft", "hybrid_flow_method 'RAFT'")):
        assert allowed[row_id]["status"] == "ok", allowed[row_id]["error"]
        params = json.loads(allowed[row_id]["params_json"])
        assert params["allow_unimplemented"] is True
        assert any(part in line for line in params["deforum_unimplemented"])
