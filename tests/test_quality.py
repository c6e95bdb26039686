"""The quality gate: the scores (raypipe/quality.py) on real videos read back with decord, the gate's
reasons and config, the NaN/Inf count from the pipeline output, the metadata columns (old parts
without them still read and reconcile), and a real run in a real local Ray: degenerate videos
from tiny CogVideoX checkpoints whose VAE decodes to black (or NaN) are quarantined with the
reason, the healthy rows pass with their scores, and re-rolls run with the next seeds."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import ConfigError, QualityGate, QualitySettings, load_config
from raypipe.metadata import METADATA_SCHEMA, QUALITY_COLUMNS, Metadata, metadata_table
from raypipe.pipeline.records import pack, unpack
from raypipe.quality import clip_score, gate_error, gate_failures, prompts_at, score_video
from raypipe.sink import read_metadata, reconcile, write_videos
from raypipe.stage import Generated, to_uint8
from raypipe.video import read_video, write_video
from tests.conftest import REPO, write_jsonl

MOVING = REPO / "manifests" / "inputs" / "moving_shapes.mp4"


def mp4_round_trip(frames: np.ndarray, path, fps: int = 8) -> np.ndarray:
    """frames encoded to H.264 and decoded back with decord, as a published video is."""
    write_video(frames, fps, str(path))
    return read_video(str(path))


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random grey texture, uint8 [H, W] (features optical flow can follow)."""
    import cv2

    noise = np.random.default_rng(seed).integers(0, 256, (height, width), dtype=np.uint8)
    blurred = cv2.GaussianBlur(noise, (0, 0), 3)
    return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)


def panning(shift: int, num_frames: int = 6, height: int = 480, width: int = 720) -> np.ndarray:
    """A camera panning `shift` px a frame over a texture: uint8 RGB [F, H, W, 3]."""
    big = texture(height, width + shift * num_frames)
    frames = [big[:, i * shift : i * shift + width] for i in range(num_frames)]
    return np.repeat(np.stack(frames)[..., None], 3, axis=-1)


# ---- the scores --------------------------------------------------------------------------------


def test_a_still_video_scores_no_motion_and_a_moving_one_more(tmp_path):
    moving = read_video(str(MOVING))  # a disc crossing the frame, 16 frames of 64x64
    still = mp4_round_trip(np.repeat(moving[:1], len(moving), axis=0), tmp_path / "still.mp4")
    m, s = score_video(moving), score_video(still)
    assert set(m) == set(s) == set(QUALITY_COLUMNS)
    assert s["motion_score"] < 0.01 and s["frozen_fraction"] == 1.0 and s["flicker"] < 0.1
    # The disc moves 3.2 px a frame over a fifth of the frame's width... its area is 5% of it.
    assert m["motion_score"] > 0.2 and m["motion_score"] > 50 * max(s["motion_score"], 1e-3)
    assert m["frozen_fraction"] == 0.0 and m["flicker"] > 1.0
    for scores in (m, s):
        assert scores["black_fraction"] == 0.0 and scores["sharpness"] > 100 and scores["clip_score"] is None


@pytest.mark.parametrize("shift", [2, 8])
def test_motion_score_is_pixels_per_frame_at_the_videos_resolution(shift):
    """A 480x720 pan of `shift` px a frame scores about `shift`, though the flow runs on 160 px wide
    frames (the magnitude is scaled back); without the scaling it would read 4.5 times less."""
    scores = score_video(panning(shift))
    assert scores["motion_score"] == pytest.approx(shift, rel=0.15)
    assert scores["frozen_fraction"] == 0.0


def test_black_and_blank_frames(tmp_path):
    height, width = 64, 96
    black = np.zeros((9, height, width, 3), np.uint8)
    grey = np.full((9, height, width, 3), 128, np.uint8)  # blank: one flat colour, not black
    noise = np.random.default_rng(1).integers(0, 256, (9, height, width, 3), dtype=np.uint8)
    assert score_video(black)["black_fraction"] == 1.0
    assert score_video(grey)["black_fraction"] == 1.0
    assert score_video(mp4_round_trip(black, tmp_path / "black.mp4"))["black_fraction"] == 1.0
    assert score_video(noise)["black_fraction"] == 0.0
    dark_scene = (noise // 8 + 12).astype(np.uint8)  # dark (mean ~28 of 255) but not black
    assert score_video(dark_scene)["black_fraction"] == 0.0
    half = np.concatenate([black[:4], noise[:4]])
    assert score_video(half)["black_fraction"] == 0.5
    frozen_half = np.concatenate([noise[:1].repeat(5, axis=0), noise[1:5]])  # 4 of 8 frames unchanged
    assert score_video(frozen_half)["frozen_fraction"] == 0.5


def test_sharpness_drops_with_blur():
    import cv2

    frames = panning(2, num_frames=3, height=120, width=160)
    blurred = np.stack([cv2.GaussianBlur(f, (0, 0), 2) for f in frames])
    sharp, soft = score_video(frames)["sharpness"], score_video(blurred)["sharpness"]
    assert sharp > 3 * soft > 0


def test_nan_and_inf_frames_are_counted_before_they_become_black():
    video = np.random.default_rng(2).random((5, 16, 16, 3), dtype=np.float32)
    video[1, 3, 4, 0] = np.nan
    video[3] = np.inf
    frames = to_uint8(video)
    made = Generated(frames, fps=8)
    assert made.nonfinite_frames == 2
    assert frames[3].max() == 0 and frames[1, 3, 4, 0] == 0  # black, not garbage
    assert Generated(to_uint8(video[:1]), fps=8).nonfinite_frames == 0  # counted once, per video
    assert Generated(to_uint8(video[1]), fps=8).nonfinite_frames == 1  # one frame [H, W, C]


def test_clip_score_with_the_tiny_clip():
    frames = read_video(str(MOVING))
    score = clip_score(frames, "a bright disc", "tiny:clip", num_frames=4)
    assert 0.0 <= score <= 100.0 and score == clip_score(frames, "a bright disc", "tiny:clip", num_frames=4)
    assert clip_score(frames, "   ", "tiny:clip") is None
    assert score_video(frames, "a bright disc", QualitySettings(clip_model="tiny:clip", clip_frames=4))[
        "clip_score"
    ] == pytest.approx(score)
    travel = json.dumps({"0": "a disc", "8": "the sun"})
    assert prompts_at(travel, [0, 7, 8, 15]) == ["a disc", "a disc", "the sun", "the sun"]
    assert math.isfinite(clip_score(frames, travel, "tiny:clip", num_frames=4))


# ---- the gate and its config ---------------------------------------------------------------------


def test_the_default_gate_fails_only_black_blank_or_nan_videos():
    gate = QualityGate()
    healthy = {"black_fraction": 0.1, "frozen_fraction": 1.0, "motion_score": 0.0, "flicker": 0.0, "sharpness": 1.0}
    assert gate_failures({**healthy, "clip_score": None}, gate) == []
    black = gate_failures({**healthy, "black_fraction": 1.0}, gate)
    assert gate_error(black) == "quality: black_fraction 1.00 > 0.99 (all black or blank)"
    assert gate_failures(healthy, gate, nonfinite_frames=3) == ["nonfinite_frames 3 > 0 (NaN/Inf in the frames)"]
    strict = QualityGate(motion_score_min=0.1, black_fraction_max=0.5, clip_score_min=20)
    reasons = gate_failures({**healthy, "black_fraction": 0.6, "motion_score": 0.004, "clip_score": None}, strict)
    assert reasons == ["black_fraction 0.60 > 0.5", "motion_score 0.004 < 0.1"]  # no CLIP score: not checked


def test_thresholds_come_from_the_config(tmp_path):
    path = tmp_path / "quality.yaml"
    path.write_text(
        "kinds:\n  cogvideox:\n    quality: {motion_score_min: 0.1, rerolls: 2}\n"
        "quality: {clip_model: tiny:clip, clip_frames: 4}\n"
    )
    config = load_config(str(path))
    gate = config.kinds["cogvideox"].quality
    assert gate.motion_score_min == 0.1 and gate.rerolls == 2
    assert gate.black_fraction_max == 0.99 and gate.nonfinite_frames_max == 0  # the defaults stay
    assert config.kinds["wan"].quality == QualityGate()
    assert config.quality == QualitySettings(clip_model="tiny:clip", clip_frames=4)
    path.write_text("kinds:\n  cogvideox:\n    quality: {motion_min: 0.1}\n")
    with pytest.raises(ConfigError, match="kinds.cogvideox.quality.motion_min"):
        load_config(str(path))


# ---- the writer and the metadata --------------------------------------------------------------


def write_one(out, row_id: str, frames: np.ndarray, gate: QualityGate | None = None) -> Metadata:
    meta = Metadata(id=row_id, kind="cogvideox", status="ok", prompt="a disc", fps=8, nonfinite_frames=0)
    batch = {"meta": [pack(meta)], "frames": [pack(frames)]}
    [packed] = write_videos(batch, str(out), quality=(gate or QualityGate()).model_dump())["meta"]
    return unpack(packed)


def test_a_video_failing_the_gate_is_quarantined_not_published(tmp_path):
    out = tmp_path / "out"
    black = np.zeros((9, 32, 32, 3), np.uint8)
    failed = write_one(out, "x", black)
    assert failed.status == "failed" and failed.error == "quality: black_fraction 1.00 > 0.99 (all black or blank)"
    assert failed.video_uri == str(out / "quarantine" / "x.mp4") and failed.black_fraction == 1.0
    assert read_video(failed.video_uri).shape == (9, 32, 32, 3)  # kept whole, for inspection
    assert not (out / "videos" / "x.mp4").exists()
    # The same id passing later (a re-roll, looser thresholds) is published; the quarantined copy goes.
    passed = write_one(out, "x", read_video(str(MOVING)))
    assert passed.status == "ok" and passed.error == "" and passed.video_uri == str(out / "videos" / "x.mp4")
    assert (out / "videos" / "x.mp4").is_file() and not (out / "quarantine" / "x.mp4").exists()
    assert passed.motion_score > 0.2
    # An opt-in threshold fails a video nothing is wrong with; the published copy is removed.
    still = write_one(out, "x", black + 90, QualityGate(frozen_fraction_max=0.5, black_fraction_max=None))
    assert still.error == "quality: frozen_fraction 1.00 > 0.5"
    assert not (out / "videos" / "x.mp4").exists() and (out / "quarantine" / "x.mp4").is_file()


def old_part(metas: list[dict]) -> pa.Table:
    """A metadata part as raypipe wrote it before the quality columns existed."""
    old_schema = pa.schema([f for f in METADATA_SCHEMA if f.name not in QUALITY_COLUMNS])
    return metadata_table(metas).select(old_schema.names).cast(old_schema)


def test_old_parts_without_the_score_columns_read_and_reconcile(tmp_path):
    out = tmp_path / "out"
    (out / "metadata").mkdir(parents=True)
    pq.write_table(
        old_part(
            [{"id": "a", "kind": "cogvideox", "status": "failed"}, {"id": "b", "kind": "cogvideox", "status": "ok"}]
        ),
        out / "metadata" / "part-20200101T000000000000-old-00000.parquet",
    )
    assert "motion_score" not in pq.read_schema(out / "metadata" / "part-20200101T000000000000-old-00000.parquet").names
    new = write_one(out, "a", read_video(str(MOVING)))
    pq.write_table(metadata_table([new]), out / "metadata" / "part-20990101T000000000000-new-00000.parquet")

    table = read_metadata(str(out))
    assert table.schema == METADATA_SCHEMA and table.num_rows == 3
    assert read_metadata(str(out), ["id", "motion_score"]).column("motion_score").null_count == 2
    assert reconcile(str(out)) == 2  # the old part held a superseded row: it is rewritten
    rows = {r["id"]: r for r in read_metadata(str(out)).to_pylist()}
    assert rows["a"]["status"] == "ok" and rows["a"]["motion_score"] == pytest.approx(new.motion_score)
    assert all(rows["b"][c] is None for c in QUALITY_COLUMNS)  # no scores for a row made before them
    # pandas filters on the columns directly
    frame = read_metadata(str(out)).to_pandas()
    assert frame[frame.motion_score > 0.1].id.tolist() == ["a"]
    assert frame[frame.black_fraction.isna()].id.tolist() == ["b"]


# ---- a real run ------------------------------------------------------------------------------------


def degenerate_checkpoint(path, bias: float) -> str:
    """tiny:cogvideox with its VAE decoder's last conv made constant: bias -1 decodes to -1 for every
    pixel, which the pipeline maps to 0 (black); NaN decodes to NaN. Saved with save_pretrained and
    loaded by the run through from_pretrained, from a row's `model`."""
    import torch
    from diffusers import CogVideoXPipeline

    from raypipe.models.tiny import tiny_path

    pipe = CogVideoXPipeline.from_pretrained(str(tiny_path("tiny:cogvideox")))
    conv = pipe.vae.decoder.conv_out.conv
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(bias)
    pipe.save_pretrained(str(path))
    return str(path)


ROWS = [
    {"id": "good-a", "kind": "cogvideox", "prompt": "a red kite over a beach", "seed": 5},
    {"id": "good-b", "kind": "cogvideox", "prompt": "rain on a window", "seed": 6},
    # SeedDependentCogVideoX (tests/quality_stage.py): all black at seed 1000, not at 1001
    {"id": "reroll-ok", "kind": "cogvideox", "prompt": "a lighthouse at night", "seed": 1000},
    # ... and frozen at 2000 and 2001: the opt-in frozen_fraction_max fails both attempts
    {"id": "still", "kind": "cogvideox", "prompt": "a still life", "seed": 2000},
]


@pytest.fixture(scope="module")
def gated_run(ray_local, tmp_path_factory):
    from raypipe.run import run

    tmp = tmp_path_factory.mktemp("quality")
    rows = [
        *ROWS,
        {"id": "black-vae", "kind": "cogvideox", "prompt": "a cat", "seed": 7, "model": ""},
        {"id": "nan-vae", "kind": "cogvideox", "prompt": "a dog", "seed": 9, "model": ""},
    ]
    rows[-2]["model"] = degenerate_checkpoint(tmp / "black-vae", -1.0)
    rows[-1]["model"] = degenerate_checkpoint(tmp / "nan-vae", float("nan"))
    manifest = write_jsonl(tmp / "rows.jsonl", rows)
    config_file = tmp / "quality.yaml"
    config_file.write_text(
        "kinds:\n  cogvideox:\n    quality: {frozen_fraction_max: 0.5, rerolls: 1}\n"
        "quality: {clip_model: tiny:clip, clip_frames: 4}\n"
    )
    out = tmp / "out"
    summary = run(
        [str(manifest)],
        str(out),
        load_config(str(config_file)),
        stages={"cogvideox": "tests.quality_stage:SeedDependentCogVideoX"},
    )
    meta = {r["id"]: r for r in read_metadata(str(out)).to_pylist()}
    return out, summary, meta


def test_healthy_rows_pass_with_their_scores(gated_run):
    out, summary, meta = gated_run
    assert summary.by_status == {"ok": 3, "failed": 3, "rejected": 0} and summary.exit_code == 1
    assert len(read_metadata(str(out))) == len(meta) == 6  # one final row per id, re-rolls included
    for row_id in ("good-a", "good-b"):
        m = meta[row_id]
        assert m["status"] == "ok" and m["error"] == "" and m["video_uri"] == str(out / "videos" / f"{row_id}.mp4")
        assert m["black_fraction"] == 0.0 and m["frozen_fraction"] <= 0.5
        assert m["motion_score"] > 0 and m["flicker"] > 0 and m["sharpness"] > 0
        assert 0.0 <= m["clip_score"] <= 100.0  # the configured tiny CLIP
        assert "rerolls" not in json.loads(m["params_json"])
        # the scores are those of the published video's frames (scored before encoding)
        decoded = score_video(read_video(m["video_uri"]))
        assert decoded["motion_score"] == pytest.approx(m["motion_score"], rel=0.5, abs=0.05)


def test_degenerate_videos_are_quarantined_with_the_reason(gated_run):
    out, _, meta = gated_run
    black = meta["black-vae"]
    assert black["status"] == "failed"
    assert black["error"] == "quality: black_fraction 1.00 > 0.99 (all black or blank); frozen_fraction 1.00 > 0.5"
    nan = meta["nan-vae"]
    assert nan["status"] == "failed" and nan["error"].startswith(
        "quality: nonfinite_frames 9 > 0 (NaN/Inf in the frames); black_fraction 1.00 > 0.99"
    )
    assert json.loads(nan["params_json"])["nonfinite_frames"] == 9
    for row_id in ("black-vae", "nan-vae", "still"):
        assert not (out / "videos" / f"{row_id}.mp4").exists(), row_id
        quarantined = out / "quarantine" / f"{row_id}.mp4"
        assert meta[row_id]["video_uri"] == str(quarantined) and meta[row_id]["bytes"] == quarantined.stat().st_size
        assert read_video(str(quarantined)).shape == (9, 64, 64, 3)
        assert meta[row_id]["black_fraction"] is not None  # scored, like every video
    assert sorted(p.name for p in (out / "quarantine").iterdir()) == ["black-vae.mp4", "nan-vae.mp4", "still.mp4"]
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["good-a.mp4", "good-b.mp4", "reroll-ok.mp4"]


def test_rerolls_run_with_the_next_seeds_and_are_recorded(gated_run):
    out, _, meta = gated_run
    mended = meta["reroll-ok"]  # black at seed 1000, fine at 1001
    assert mended["status"] == "ok" and mended["seed"] == 1001 and mended["black_fraction"] == 0.0
    assert json.loads(mended["params_json"])["rerolls"] == [
        {"seed": 1000, "error": "quality: black_fraction 1.00 > 0.99 (all black or blank); frozen_fraction 1.00 > 0.5"}
    ]
    still = meta["still"]  # frozen at 2000 and at 2001: rerolls: 1 spent, it ends failed
    assert still["status"] == "failed" and still["seed"] == 2001
    assert still["error"] == "quality: frozen_fraction 1.00 > 0.5"
    assert json.loads(still["params_json"])["rerolls"] == [
        {"seed": 2000, "error": "quality: frozen_fraction 1.00 > 0.5"}
    ]
    assert meta["black-vae"]["seed"] == 8 and json.loads(meta["black-vae"]["params_json"])["rerolls"][0]["seed"] == 7
    assert meta["good-a"]["seed"] == 5
