"""How busy the pool actors were (raypipe/usage.py) and the run summary file (OUT/runs/<run_id>.json):
the arithmetic on made-up rows, the driver's small-manifest count against Ray Data's, and a real
run of two pool actors in a real local Ray whose summary must agree with its Parquet metadata."""

import contextlib
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from raypipe.cli import main
from raypipe.config import load_config
from raypipe.metadata import Metadata
from raypipe.pipeline import graph
from raypipe.sink import MetadataSink, read_metadata
from raypipe.usage import Usage, read_run_summaries, usage_from_rows
from tests.conftest import write_jsonl

T0 = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# Two actors of one pool: "a" loaded at 0, one call of two rows (4 s, 2 s a row) at 1 s, then one
# row of 3 s at 10 s (ends at 13); "b" loaded at 2, one row of 5 s at 3 s. The pool ends at 13.
ROWS = [
    {"id": "a1", "kind": "cogvideox", "status": "ok", "worker": "h:1", "started_at": at(1), "gen_seconds": 2.0},
    {"id": "a2", "kind": "cogvideox", "status": "ok", "worker": "h:1", "started_at": at(1), "gen_seconds": 2.0},
    {"id": "a3", "kind": "cogvideox", "status": "failed", "worker": "h:1", "started_at": at(10), "gen_seconds": 3.0},
    {"id": "b1", "kind": "cogvideox", "status": "ok", "worker": "h:2", "started_at": at(3), "gen_seconds": 5.0},
    {"id": "r1", "kind": "cogvideox", "status": "rejected", "worker": "", "started_at": None, "gen_seconds": None},
]
LOADED = {"h:1": at(0).timestamp(), "h:2": at(2).timestamp()}


def test_busy_ratio_arithmetic():
    pools, actors = usage_from_rows(ROWS, LOADED)
    by_worker = {a["worker"]: a for a in actors}
    a, b = by_worker["h:1"], by_worker["h:2"]
    assert (a["calls"], a["rows"], a["busy_seconds"], a["span_seconds"]) == (2, 3, 7.0, 13.0)
    assert a["busy_ratio"] == pytest.approx(7 / 13, abs=1e-4)
    assert (b["calls"], b["rows"], b["busy_seconds"], b["span_seconds"]) == (1, 1, 5.0, 11.0)
    assert b["busy_ratio"] == pytest.approx(5 / 11, abs=1e-4)
    assert pools["cogvideox"]["actors"] == 2
    assert pools["cogvideox"]["busy_ratio"] == pytest.approx(12 / 24, abs=1e-4)
    # the driver's running figures (each row's record as the actor sends it) are the same
    usage = Usage()
    calls = {"h:1": 0}
    for row in ROWS:
        meta = Metadata(**{k: v for k, v in row.items()})
        if row["worker"]:
            same_call = [r for r in ROWS if r["worker"] == row["worker"] and r["started_at"] == row["started_at"]]
            calls[row["worker"]] = calls.get(row["worker"], 0) + (row is same_call[0])
            meta.timings = {
                "actor_loaded_at": LOADED[row["worker"]],
                "call_end": row["started_at"].timestamp() + sum(r["gen_seconds"] for r in same_call),
                "actor_calls": calls[row["worker"]],
            }
        usage.observe(meta)
    assert usage.summary() == (pools, actors)


def test_a_worker_without_a_load_time_starts_at_its_first_call():
    _, actors = usage_from_rows(ROWS[3:4])
    assert actors[0]["span_seconds"] == 5.0 and actors[0]["busy_ratio"] == 1.0


def test_driver_count_agrees_with_ray_datas(ray_local, tmp_path, monkeypatch):
    out = tmp_path / "out"
    sink = MetadataSink(str(out))
    sink.add(Metadata(id="done", kind="cogvideox", status="ok"))  # ok already: skipped
    sink.flush()
    manifest = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "done", "kind": "cogvideox", "prompt": "a kite"},
            {"id": "one", "kind": "cogvideox", "prompt": "a kite"},
            {"id": "two", "kind": "animatediff", "prompt": "a kite"},
            {"id": "bad", "kind": "cogvideox", "num_frames": 12},
            {"id": "one", "kind": "cogvideox", "prompt": "the same id again"},
            "not json",
        ],
    )
    config = load_config()
    assert graph.input_bytes([str(manifest)], str(out)) < graph.DRIVER_COUNT_BYTES
    here = graph.count_routes([str(manifest)], config, str(out), "run-x")
    monkeypatch.setattr(graph, "DRIVER_COUNT_BYTES", 0)  # the Ray Data pass
    in_ray = graph.count_routes([str(manifest)], config, str(out), "run-x")
    assert here == in_ray == {"skip": 1, "cogvideox": 1, "animatediff": 1, "rejected": 3}


def test_run_summary_agrees_with_the_metadata(ray_local, tmp_path):
    """Two pool actors of half a CPU: the summary's actors are the metadata's workers, their busy
    seconds the metadata's gen_seconds, the phases in order; the final lines say the ratios."""
    from raypipe.run import prepare_models

    prepare_models(load_config(), ["cogvideox"])  # built one after the other (the preflight builds in threads)
    small = {"num_inference_steps": 2, "height": 32, "width": 32}
    rows = [{"id": f"row-{i}", "kind": "cogvideox", "prompt": f"a red kite, take {i}", **small} for i in range(6)]
    rows.append({"id": "bad", "kind": "cogvideox", "num_frames": 12})  # rejected: no worker
    manifest = write_jsonl(tmp_path / "m.jsonl", rows)
    config = tmp_path / "config.yaml"
    config.write_text("kinds:\n  cogvideox:\n    pool_size: 2\n    num_cpus: 0.5\n")
    out = tmp_path / "out"
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        code = main(["run", str(manifest), "--out", str(out), "--config", str(config)])
    assert code == 1, printed.getvalue()[-3000:]  # 1: the rejected row

    [summary] = read_run_summaries(str(out))
    meta = read_metadata(str(out)).to_pylist()
    assert summary["rows"] == {"total": 7, "skipped": 0, "ok": 6, "failed": 0, "rejected": 1}
    assert summary["by_kind"] == {"cogvideox": {"ok": 6, "failed": 0, "rejected": 1}}
    assert summary["exit_code"] == 1
    assert (out / "runs" / f"{summary['run_id']}.json").is_file()
    assert any(p.name.startswith(f"part-{summary['run_id']}-") for p in (out / "metadata").iterdir())

    workers = {m["worker"] for m in meta if m["status"] == "ok"}
    assert {a["worker"] for a in summary["actors"]} == workers and 1 <= len(workers) <= 2
    for actor in summary["actors"]:
        mine = [m for m in meta if m["worker"] == actor["worker"]]
        assert actor["rows"] == len(mine)
        assert actor["busy_seconds"] == pytest.approx(sum(m["gen_seconds"] for m in mine), abs=1e-5)
        assert actor["calls"] == len({m["started_at"] for m in mine})
        assert actor["created_at"] < actor["loaded_at"] <= actor["first_started_at"]
        assert actor["first_started_at"] == pytest.approx(min(m["started_at"] for m in mine).timestamp(), abs=1e-5)
        assert 0 < actor["busy_ratio"] <= 1
    # the same figures from the Parquet metadata (what the report draws)
    loaded = {a["worker"]: a["loaded_at"] for a in summary["actors"]}
    pools, actors = usage_from_rows(meta, loaded)
    assert pools["cogvideox"]["busy_ratio"] == pytest.approx(summary["pools"]["cogvideox"]["busy_ratio"], abs=1e-3)
    for mine, theirs in zip(actors, summary["actors"]):
        assert mine["worker"] == theirs["worker"]
        assert mine["busy_ratio"] == pytest.approx(theirs["busy_ratio"], abs=1e-3)

    phases = summary["phases"]
    order = ["run_started", "counted", "pools_started", "first_actor_created", "first_actor_loaded"]
    order += ["first_generation", "finished"]
    assert [phases[name] for name in order] == sorted(phases[name] for name in order)
    assert phases["ray_ready"] <= phases["run_started"]

    text = printed.getvalue()
    assert "raypipe: 7/7 rows done (ok 6, failed 0, rejected 1)" in text
    ratio = summary["pools"]["cogvideox"]["busy_ratio"]
    assert f"raypipe: pool actors busy generating since their model loaded: cogvideox {ratio:.0%} (" in text
    json.dumps(summary)  # plain JSON
