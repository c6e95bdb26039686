"""Sweeps end to end in a real local Ray with the real tiny CogVideoX pipeline: a sweep row expands
into rows `<id>.<n>` that run, each validated on its own and recorded in params_json; an id it
shares with another row rejects both; plan and validate count the expanded rows; a resumed run
skips the expanded ids already ok and runs the ones a grown grid adds."""

import json

import decord
import numpy as np
import pytest

from raypipe import run
from raypipe.cli import main
from raypipe.config import load_config
from raypipe.schema import seed_from_id
from raypipe.sink import read_metadata
from tests.conftest import write_jsonl

FAST = {"kind": "cogvideox", "num_inference_steps": 2}
KITE = {"id": "kite", "prompt": "a red kite", **FAST, "sweep": {"guidance_scale": [1.0, 3.0]}, "num_videos": 2}
ROWS = [
    KITE,  # kite.0 .. kite.3: guidance 1.0, 1.0, 3.0, 3.0 with seeds s, s+1, s, s+1
    {"id": "kite.3", "prompt": "a blue kite", **FAST},  # the id of the sweep's last row: both rejected
    {"id": "frames", "prompt": "rain", **FAST, "sweep": {"num_frames": [9, 12]}},  # frames.1: not 8k+1
]
SWEEP_RULE = "an id a sweep makes must be unique: every row with it is rejected"


def by_id(out) -> dict:
    rows = read_metadata(str(out)).to_pylist()
    found = {row["id"]: row for row in rows}
    assert len(found) == len(rows), "one metadata row per id"
    return found


@pytest.fixture(scope="module")
def first_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    manifest = write_jsonl(tmp / "m.jsonl", ROWS)
    out = tmp / "out"
    code = main(["run", str(manifest), "--out", str(out)])
    return tmp, out, code


def test_a_sweep_row_expands_and_runs(first_run):
    _, out, code = first_run
    meta = by_id(out)
    assert code == 1  # rows were rejected
    assert set(meta) == {"kite.0", "kite.1", "kite.2", "kite.3", "m.jsonl:2", "frames.0", "frames.1"}
    seed = seed_from_id("kite")
    for row_id, scale, row_seed in (("kite.0", 1.0, seed), ("kite.1", 1.0, seed + 1), ("kite.2", 3.0, seed)):
        m = meta[row_id]
        assert m["status"] == "ok", (row_id, m["error"])
        assert (m["guidance_scale"], m["seed"], m["prompt"]) == (scale, row_seed, "a red kite")
        values = {"guidance_scale": scale, "seed": row_seed}
        assert json.loads(m["params_json"])["sweep"] == {"of": "kite", "values": values}
        assert len(decord.VideoReader(m["video_uri"])) == 9
    frames = [decord.VideoReader(meta[i]["video_uri"]).get_batch([4]).asnumpy() for i in ("kite.0", "kite.1")]
    assert not np.array_equal(*frames)  # the K videos of a row: K seeds, K different videos
    assert meta["frames.0"]["status"] == "ok" and meta["frames.0"]["num_frames"] == 9
    assert meta["frames.1"]["status"] == "rejected"  # each expanded row validated on its own
    assert meta["frames.1"]["error"].startswith("num_frames: must be 8k+1")
    assert json.loads(meta["frames.1"]["params_json"])["sweep"] == {"of": "frames", "values": {"num_frames": 12}}


def test_its_collisions_are_rejected(first_run):
    _, out, _ = first_run
    meta = by_id(out)
    assert meta["kite.3"]["status"] == meta["m.jsonl:2"]["status"] == "rejected"
    assert meta["kite.3"]["error"] == f"id: 'kite.3' (of the sweep of 'kite') also used at m.jsonl:2; {SWEEP_RULE}"
    assert meta["m.jsonl:2"]["error"] == f"id: 'kite.3' already used at m.jsonl:1 by a sweep; {SWEEP_RULE}"
    assert meta["m.jsonl:2"]["prompt"] == "a blue kite" and meta["kite.3"]["video_uri"] == ""


def test_plan_and_validate_count_the_expanded_rows(first_run, capsys):
    tmp, _, _ = first_run
    manifest = str(tmp / "m.jsonl")
    assert main(["plan", manifest, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["rows"], plan["rejected"]) == (7, 3)
    assert {k["kind"]: k["rows"] for k in plan["kinds"]} == {"cogvideox": 4}
    assert main(["validate", manifest]) == 1
    captured = capsys.readouterr()
    assert "raypipe: 7 rows, 4 valid, 3 rejected" in captured.err
    assert "m.jsonl:1\tid=kite.3\tid: 'kite.3' (of the sweep of 'kite') also used at m.jsonl:2" in captured.out


def test_a_resumed_run_works_per_expanded_id(first_run):
    tmp, out, _ = first_run
    before = by_id(out)
    # the grid grows by a value (kite.4, kite.5) and the colliding row is gone (kite.3 runs now)
    grown = {**KITE, "sweep": {"guidance_scale": [1.0, 3.0, 5.0]}}
    manifest = write_jsonl(tmp / "m2.jsonl", [grown, ROWS[2]])
    summary = run.run([str(manifest)], str(out), load_config())
    assert (summary.skipped, summary.by_status["ok"], summary.by_status["rejected"]) == (4, 3, 1)
    meta = by_id(out)
    for row_id in ("kite.0", "kite.1", "kite.2", "frames.0"):
        assert meta[row_id]["finished_at"] == before[row_id]["finished_at"]  # not redone
    for row_id, scale in (("kite.3", 3.0), ("kite.4", 5.0), ("kite.5", 5.0)):
        assert meta[row_id]["status"] == "ok" and meta[row_id]["guidance_scale"] == scale
    assert meta["kite.5"]["seed"] == seed_from_id("kite") + 1
    assert meta["frames.1"]["status"] == "rejected"
