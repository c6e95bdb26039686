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
