"""Manifest reading: every line becomes one record; lines without a usable id get file:line ids."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.manifest import ManifestError, check_manifests, read_records
from tests.conftest import write_jsonl


def test_jsonl_lines_without_a_usable_id(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "a", "kind": "cogvideox"},
            "{not json",
            "[1, 2]",
            {"kind": "cogvideox"},
            {"id": "a", "kind": "cogvideox"},
            {"id": "bad id", "kind": "cogvideox"},
            "",
            {"id": "b", "kind": "cogvideox"},
        ],
    )
    records = list(read_records([str(path)], done_ids={"b"}))
    assert [(r["id"], r["route"]) for r in records] == [
        ("a", "pending"),
        ("m.jsonl:2", "rejected"),
        ("m.jsonl:3", "rejected"),
        ("m.jsonl:4", "rejected"),
        ("m.jsonl:5", "rejected"),
        ("m.jsonl:6", "rejected"),
        ("b", "skip"),
    ]
    errors = [r["error"] for r in records]
    assert errors[1].startswith("not valid JSON")
    assert errors[2] == "not an object (a list)"
    assert errors[3] == "id: required"
    assert errors[4] == "id: 'a' already used at m.jsonl:1"
    assert errors[5].startswith("id: must match")


def test_an_id_ending_in_a_newline_is_rejected_naming_the_field(tmp_path):
    """The whole id must match the rule: Python's `$` also matched before a final newline."""
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": "a\n", "kind": "cogvideox"}, {"id": "a", "kind": "cogvideox"}])
    records = list(read_records([str(path)]))
    assert [(r["id"], r["route"]) for r in records] == [("m.jsonl:1", "rejected"), ("a", "pending")]
    assert records[0]["error"] == "id: must match [A-Za-z0-9._-]{1,128}, got 'a\\n'"


def test_duplicate_ids_across_manifests(tmp_path):
    first = write_jsonl(tmp_path / "one.jsonl", [{"id": "a", "kind": "cogvideox"}])
    second = write_jsonl(tmp_path / "two.jsonl", [{"id": "a", "kind": "cogvideox"}])
    records = list(read_records([str(first), str(second)]))
    assert [r["id"] for r in records] == ["a", "two.jsonl:1"]
    assert records[1]["error"] == "id: 'a' already used at one.jsonl:1"


def test_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(
        'id,kind,prompt,num_frames,lora\na,cogvideox,"a cat, walking",9,\n'
        'b,cogvideox,dog,17,"[{""path"": ""x.safetensors""}]"\n'
    )
    records = list(read_records([str(csv_path)]))
    assert [(r["id"], r["line"]) for r in records] == [("a", 2), ("b", 3)]
    assert json.loads(records[0]["raw_json"]) == {
        "id": "a",
        "kind": "cogvideox",
        "prompt": "a cat, walking",
        "num_frames": "9",
    }
    assert json.loads(records[1]["raw_json"])["lora"] == [{"path": "x.safetensors"}]

    pq_path = tmp_path / "m.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"id": "c", "kind": "cogvideox", "seed": None}, {"id": "d", "kind": "cogvideox", "seed": 3}]
        ),
        pq_path,
    )
    records = list(read_records([str(pq_path)]))
    assert [(r["id"], r["line"]) for r in records] == [("c", 1), ("d", 2)]
    assert "seed" not in json.loads(records[0]["raw_json"])


def test_unreadable_manifests_fail_as_a_whole(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        check_manifests([str(tmp_path / "missing.jsonl")])
    with pytest.raises(ManifestError, match="unknown manifest format"):
        check_manifests([str(tmp_path / "m.txt")])


# ---- sweeps -------------------------------------------------------------------------------------------


def expanded(records):
    return [(r["id"], json.loads(r["raw_json"]), json.loads(r["sweep"] or "{}")) for r in records]


def test_a_sweep_row_expands_in_grid_order_in_every_format(tmp_path):
    from raypipe.schema import seed_from_id

    grid = {"seed": [1, 2, 3], "guidance_scale": [5, 7]}
    row = {"id": "s", "kind": "cogvideox", "prompt": "a kite", "sweep": grid}
    jsonl = write_jsonl(tmp_path / "m.jsonl", [row])
    csv_path = tmp_path / "m.csv"
    csv_path.write_text(
        'id,kind,prompt,sweep\ns,cogvideox,a kite,"{""seed"": [1, 2, 3], ""guidance_scale"": [5, 7]}"\n'
    )
    pq_path = tmp_path / "m.parquet"
    pq.write_table(pa.Table.from_pylist([{**row, "sweep": json.dumps(grid)}]), pq_path)
    struct_path = tmp_path / "struct.parquet"  # a struct column: its fields are the union over the rows
    pq.write_table(pa.Table.from_pylist([row, {"id": "t", "kind": "cogvideox", "sweep": {"seed": [9]}}]), struct_path)
    order = [(1, 5), (1, 7), (2, 5), (2, 7), (3, 5), (3, 7)]  # keys as written, the last varying fastest
    for path in (jsonl, csv_path, pq_path, struct_path):
        records = expanded(read_records([str(path)]))[:6]
        assert [r[0] for r in records] == [f"s.{n}" for n in range(6)], path
        for (row_id, raw, sweep), (seed, scale) in zip(records, order):
            assert (raw["id"], raw["seed"], raw["guidance_scale"], raw["prompt"]) == (row_id, seed, scale, "a kite")
            assert "sweep" not in raw and "num_videos" not in raw
            assert sweep == {"of": "s", "values": {"seed": seed, "guidance_scale": scale}}
    assert expanded(read_records([str(struct_path)]))[6][0] == "t.0"

    videos = write_jsonl(
        tmp_path / "v.jsonl",
        [
            {"id": "v", "kind": "cogvideox", "num_videos": 3},
            {"id": "w", "kind": "cogvideox", "seed": 40, "num_videos": 2, "sweep": {"guidance_scale": [1, 2]}},
        ],
    )
    records = expanded(read_records([str(videos)]))
    base = seed_from_id("v")  # K seeds from the row's seed (its default, from its id, here)
    assert [(r[0], r[1]["seed"]) for r in records[:3]] == [("v.0", base), ("v.1", base + 1), ("v.2", base + 2)]
    assert [(r[0], r[1]["guidance_scale"], r[1]["seed"]) for r in records[3:]] == [
        ("w.0", 1, 40),
        ("w.1", 1, 41),
        ("w.2", 2, 40),
        ("w.3", 2, 41),
    ]
    assert records[4][2] == {"of": "w", "values": {"guidance_scale": 1, "seed": 41}}


def test_bad_sweeps_are_rejected_naming_the_field(tmp_path):
    rows = {
        "empty": {"sweep": {"guidance_scale": []}},
        "scalar": {"sweep": {"guidance_scale": 5}},
        "nothing": {"sweep": {}},
        "list": {"sweep": [1, 2]},
        "id": {"sweep": {"id": ["a", "b"]}},
        "twice": {"seed": 3, "sweep": {"seed": [1, 2]}},
        "zero": {"num_videos": 0},
        "text": {"num_videos": "many"},
        "both": {"num_videos": 2, "sweep": {"seed": [1, 2]}},
        "huge": {"sweep": {"seed": list(range(1000)), "guidance_scale": list(range(101))}},
        "x" * 127: {"num_videos": 10},
    }
    path = write_jsonl(tmp_path / "m.jsonl", [{"id": k, "kind": "cogvideox", **v} for k, v in rows.items()])
    records = list(read_records([str(path)]))
    assert all(r["route"] == "rejected" and r["id"] == f"m.jsonl:{r['line']}" for r in records)
    assert [r["error"] for r in records] == [
        "sweep.guidance_scale: must be a non-empty list",
        "sweep.guidance_scale: must be a non-empty list",
        "sweep: must name at least one field",
        "sweep: must be an object of field: [values], got list",
        "sweep.id: cannot be swept",
        "sweep.seed: also set in the row; set it in one place",
        "num_videos: must be a positive integer, got 0",
        "num_videos: must be a positive integer, got 'many'",
        "num_videos: cannot be combined with sweep.seed (each swept seed is one video)",
        "sweep: stands for 101000 rows, more than 100000 a row",
        f"id: too long for a sweep: {'x' * 127}.9 must match [A-Za-z0-9._-]{{1,128}}",
    ]


def test_an_id_a_sweep_makes_that_another_row_has_rejects_both(tmp_path):
    path = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {"id": "s", "kind": "cogvideox", "num_videos": 3},
            {"id": "s.1", "kind": "cogvideox"},
            {"id": "t.0", "kind": "cogvideox"},
            {"id": "t", "kind": "cogvideox", "num_videos": 2},
            {"id": "u", "kind": "cogvideox"},
            {"id": "u", "kind": "cogvideox", "num_videos": 2},  # a sweep row's own id is not one of its rows'
        ],
    )
    got = {(r["line"], r["id"]): (r["route"], r["error"]) for r in read_records([str(path)])}
    sweep_rule = "an id a sweep makes must be unique: every row with it is rejected"
    assert got == {
        (1, "s.0"): ("pending", ""),
        (1, "s.1"): ("rejected", f"id: 's.1' (of the sweep of 's') also used at m.jsonl:2; {sweep_rule}"),
        (1, "s.2"): ("pending", ""),
        (2, "m.jsonl:2"): ("rejected", f"id: 's.1' already used at m.jsonl:1 by a sweep; {sweep_rule}"),
        (3, "t.0"): ("rejected", f"id: 't.0' also used at m.jsonl:4 by a sweep; {sweep_rule}"),
        (4, "m.jsonl:4.0"): ("rejected", f"id: 't.0' (of the sweep of 't') already used at m.jsonl:3; {sweep_rule}"),
        (4, "t.1"): ("pending", ""),
        (5, "u"): ("pending", ""),
        (6, "u.0"): ("pending", ""),
        (6, "u.1"): ("pending", ""),
    }
