"""The foundation end to end, in a real local Ray with the real tiny CogVideoX pipeline:
videos read back with decord, metadata with pyarrow, the CLI's exit codes, and resume."""

import json
import os

import decord
import pyarrow.parquet as pq
import pytest

from raypipe.cli import main
from raypipe.sink import read_metadata
from tests.conftest import write_jsonl

GOOD = [
    {"id": "t2v-a", "kind": "cogvideox", "prompt": "a red kite over a beach"},
    {
        "id": "t2v-b",
        "kind": "cogvideox",
        "prompt": "rain on a window",
        "num_frames": 17,
        "height": 48,
        "width": 80,
        "fps": 12,
        "seed": 3,
    },
]
BAD = [
    {"id": "typo", "kind": "cogvideox", "num_frame": 9},
    {"id": "frames", "kind": "cogvideox", "num_frames": 12},
    {"id": "size", "kind": "cogvideox", "height": 50},
    {"id": "bad id!", "kind": "cogvideox"},
    "this is not json",
    {"id": "t2v-a", "kind": "cogvideox"},
    # A row that raises during generation: its model cannot be loaded.
    {"id": "broken", "kind": "cogvideox", "prompt": "a red kite", "model": "/nonexistent/model/dir"},
]


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    manifest = write_jsonl(tmp / "mixed.jsonl", GOOD + BAD)
    out = tmp / "out"
    code = main(["run", str(manifest), "--out", str(out)])
    return manifest, out, code


def by_id(out):
    return {row["id"]: row for row in read_metadata(str(out)).to_pylist()}


def test_one_metadata_row_per_manifest_line(first_run):
    manifest, out, code = first_run
    table = pq.read_table(out / "metadata")  # a plain Parquet dataset for any reader
    ids = table.column("id").to_pylist()
    assert len(ids) == len(GOOD) + len(BAD) == len(set(ids))
    assert set(ids) == {
        "t2v-a",
        "t2v-b",
        "typo",
        "frames",
        "size",
        "mixed.jsonl:6",
        "mixed.jsonl:7",
        "mixed.jsonl:8",
        "broken",
    }
    assert code == 1  # finished, some rows failed or were rejected


def test_videos_have_the_asked_frames_and_sizes(first_run):
    _, out, _ = first_run
    meta = by_id(out)
    for row in GOOD:
        m = meta[row["id"]]
        assert m["status"] == "ok" and m["error"] == ""
        reader = decord.VideoReader(str(out / "videos" / f"{row['id']}.mp4"))
        frames, height, width = row.get("num_frames", 9), row.get("height", 64), row.get("width", 64)
        assert len(reader) == frames == m["num_frames"]
        assert reader[0].shape == (height, width, 3)
        assert (m["height"], m["width"]) == (height, width)
        assert abs(reader.get_avg_fps() - row.get("fps", 8)) < 0.01
        assert m["bytes"] == os.path.getsize(m["video_uri"]) > 0
        assert len(m["sha256"]) == 64 and m["gen_seconds"] > 0 and m["finished_at"] >= m["started_at"]
        assert m["device"] == "cpu" and m["raypipe_version"] and m["model"] == "tiny:cogvideox"
    assert meta["t2v-b"]["seed"] == 3
    # no temporary file is left at or beside a final name
    assert sorted(os.listdir(out / "videos")) == ["t2v-a.mp4", "t2v-b.mp4"]


def test_rejections_name_the_field(first_run):
    _, out, _ = first_run
    meta = by_id(out)
    expect = {
        "typo": "num_frame: unknown field",
        "frames": "num_frames: must be 8k+1",
        "size": "height: must be a multiple of 16",
        "mixed.jsonl:6": "id: must match",
        "mixed.jsonl:7": "not valid JSON",
        "mixed.jsonl:8": "id: 't2v-a' already used at mixed.jsonl:1",
    }
    for row_id, start in expect.items():
        assert meta[row_id]["status"] == "rejected", row_id
        assert meta[row_id]["error"].startswith(start), (row_id, meta[row_id]["error"])
        assert meta[row_id]["video_uri"] == ""
    assert json.loads(meta["mixed.jsonl:7"]["params_json"]) == {"source": "mixed.jsonl", "line": 7}


def test_generation_failure_does_not_stop_the_run(first_run):
    _, out, _ = first_run
    broken = by_id(out)["broken"]
    assert broken["status"] == "failed"
    assert "/nonexistent/model/dir" in broken["error"]
    assert not (out / "videos" / "broken.mp4").exists()


def test_resume_skips_ok_rows_and_keeps_one_row_per_id(first_run):
    manifest, out, _ = first_run
    before = {p: os.stat(out / "videos" / p).st_mtime_ns for p in os.listdir(out / "videos")}
    ok_before = {k: v for k, v in by_id(out).items() if v["status"] == "ok"}
    code = main(["run", str(manifest), "--out", str(out)])
    assert code == 1  # the broken and rejected rows are tried again and fail again
    after = by_id(out)
    assert len(read_metadata(str(out))) == len(after) == len(GOOD) + len(BAD)
    for row_id, row in ok_before.items():
        assert after[row_id]["finished_at"] == row["finished_at"]  # not redone
    assert {p: os.stat(out / "videos" / p).st_mtime_ns for p in os.listdir(out / "videos")} == before
    assert after["broken"]["finished_at"] > by_id(out)["t2v-a"]["finished_at"]


def test_exit_codes(ray_local, tmp_path, capsys):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD[0]])
    assert main(["run", str(good), "--out", str(tmp_path / "out")]) == 0
    assert main(["run", str(good), "--out", str(tmp_path / "out")]) == 0  # all skipped as done
    with pytest.raises(SystemExit) as info:
        main(["run", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o2")])
    assert info.value.code == 2
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("kinds:\n  cogvideox:\n    pool_size: 0\n")
    with pytest.raises(SystemExit) as info:
        main(["run", str(good), "--out", str(tmp_path / "o3"), "--config", str(bad_config)])
    assert info.value.code == 2
    assert "kinds.cogvideox.pool_size" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["run", str(good)])  # usage: --out is required
    assert info.value.code == 2


def test_validate_prints_each_rejected_row(ray_local, tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "v.jsonl", GOOD + BAD)
    assert main(["validate", str(manifest)]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 6  # the broken model is only found when generating
    assert out[0] == "v.jsonl:3\tid=typo\tnum_frame: unknown field (not in the schema of this kind; a typo?)"
    assert any(line.startswith("v.jsonl:7\tid=v.jsonl:7\tnot valid JSON") for line in out)
    assert main(["validate", str(write_jsonl(tmp_path / "ok.jsonl", GOOD))]) == 0
