"""Dataset scale in bounded memory (raypipe/ids.py, the manifest read, the resume index, reconcile),
at small sizes: the resume index skips exactly the ok ids, duplicates across manifests keep their
first occurrence (also when read in parallel by Ray tasks), and reconcile keeps one row per id
after several resumed runs, rewriting only the parts that hold superseded rows."""

import json
import os
import pickle
import random
import shutil
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raypipe import sink
from raypipe.config import load_config
from raypipe.ids import IdSet, duplicate_groups, hash64
from raypipe.manifest import (
    _line_ids,
    _plain_jsonl_ids,
    find_duplicates,
    manifest_ids,
    manifest_sources,
    read_manifest,
    read_records,
)
from raypipe.metadata import empty_metadata
from raypipe.pipeline.ray_init import RAYLET_ENV
from raypipe.sink import MetadataSink, build_done_index, metadata_dir, read_metadata, reconcile
from tests.conftest import write_jsonl

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_id_set_is_exact():
    rng = random.Random(0)
    alphabet = "abcXYZ019._-"
    members = {"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(3000)}
    members |= {f"row-{i:07d}" for i in range(0, 5000, 7)} | {"x" * 128, "a"}
    queries = list(members) + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 13))) for _ in range(3000)]
    queries += [f"row-{i:07d}" for i in range(5000)] + ["x" * 127, "y" * 128, "row-", "row-00000000"]
    chunks = [sorted(members)[:1000], pa.array(sorted(members)[1000:])]
    index = IdSet.build(chunks)
    expected = np.array([q in members for q in queries])
    assert len(index) == len(members)
    assert (index.contains(queries) == expected).all()
    assert (index.contains(pa.array(queries).slice(100, 2000)) == expected[100:2100]).all()  # an offset array
    # each id once, at no more than its own bytes: no offsets, no objects
    assert index.nbytes <= sum(len(m) for m in members)
    sequential = IdSet.build([[f"row-{i:07d}" for i in range(10000)]])
    assert sequential.nbytes < 10000 * 11 * 0.7  # their shared prefix is held once
    again = pickle.loads(pickle.dumps(index, protocol=5))  # as Ray's object store moves it
    assert (again.contains(queries) == expected).all()
    assert not IdSet().contains(["a"]).any() and len(IdSet()) == 0


def test_duplicate_groups_and_hashes():
    ids = ["a", "b", "a", "cc", "b", "a", "dd", "cc", "e"]
    positions, groups = duplicate_groups(ids)
    found = {}
    for position, group in zip(positions.tolist(), groups.tolist()):
        found.setdefault(group, []).append(position)
    assert sorted(found.values()) == [[0, 2, 5], [1, 4], [3, 7]]  # each group in ascending order
    h = hash64(ids)
    assert h[0] == h[2] == h[5] and h[3] == h[7] and len(set(h.tolist())) == 5


def write_part(out, name, metas):
    sink._write_table(sink.metadata_table(metas), f"{metadata_dir(str(out))}/{name}")


def meta(row_id, status, minutes=0):
    m = empty_metadata(row_id, "cogvideox", status, "" if status == "ok" else "boom")
    m.finished_at = T0 + timedelta(minutes=minutes)
    return m


# JSONL bytes -> whether Arrow's reader may take the id pass (raypipe/manifest.py _plain_jsonl_ids).
ID_PASS_CASES = {
    "plain rows, a repeated id": (b'{"id": "a", "kind": "cogvideox"}\n{"id": "b"}\n{"id": "a"}\n', True),
    "ids that claim nothing": (
        b'{"id": "a b"}\n{"id": null}\n{"kind": "x"}\n{"id": "' + b"x" * 129 + b'"}\n{"id": "ok.1_-"}\n'
        b'{"id": "n\\n"}\n{"id": "caf\\u00e9"}\n',
        True,
    ),
    "no final newline": (b'{"id": "a"}\n{"id": "b"}', True),
    "CRLF": (b'{"id": "a"}\r\n{"id": "b"}\r\n', True),
    "an id inside a nested object": (b'{"id": "a", "lora": [{"id": "z", "path": "p"}]}\n', True),
    "empty": (b"", True),
    "a blank line": (b'{"id": "a"}\n\n{"id": "b"}\n', False),
    "a line of spaces": (b'{"id": "a"}\n  \t\n{"id": "b"}\n', False),
    "a lone CR": (b'{"id": "a"}\r{"id": "b"}\n', False),
    "a number id": (b'{"id": 5}\n{"id": "b"}\n', False),
    "not JSON": (b'{"id": "a"}\nnope\n{"id": "b"}\n', False),
    "not an object": (b'[1]\n{"id": "b"}\n', False),
    "a sweep": (b'{"id": "a", "sweep": {"seed": [1, 2]}}\n{"id": "b"}\n', False),
    "the key twice": (b'{"id": "a", "id": "b"}\n', False),
}


def test_the_arrow_id_pass_claims_what_the_line_by_line_pass_claims(tmp_path):
    for number, (name, (data, arrow)) in enumerate(ID_PASS_CASES.items()):
        path = tmp_path / f"case{number}.jsonl"
        path.write_bytes(data)
        expected = _line_ids(str(path))
        for chunk_bytes in (7, 64 << 20):  # lines carried across chunks, and one chunk
            fast = _plain_jsonl_ids(str(path), chunk_bytes)
            assert (fast is not None) == arrow, name
            if fast is not None:
                assert fast.equals(expected), name
        assert manifest_ids(str(path)).equals(expected), name
    # the Python pass and Arrow's agree at a size where Arrow reads in blocks, rejected rows included
    lines = [json.dumps({"id": f"r{i}" if i % 97 else f"bad id {i}", "prompt": "p" * (i % 50)}) for i in range(20000)]
    path = tmp_path / "big.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert _plain_jsonl_ids(str(path), 100_000).equals(_line_ids(str(path)))


def test_the_arrow_read_gives_the_records_of_the_line_by_line_read(tmp_path):
    """Chunks of plain lines parsed by Arrow, the others a line at a time: the same records as
    reading every line a line at a time, whatever the chunk size (so chunks of both kinds mix),
    with duplicates across manifests, ids that claim nothing and a resume index."""
    rng = random.Random(1)
    manifests = []
    for m in range(3):
        lines = []
        for i in range(400):
            row_id = rng.choice([f"r{i}-{m}", f"r{i}-{m}", f"shared{rng.randint(0, 30)}", "bad id", None])
            row = {"kind": rng.choice(["cogvideox", "wan"]), "prompt": f"p {i}"}
            if row_id is not None:
                row["id"] = row_id
            lines.append(json.dumps(row))
        lines[50] = ""  # a blank line, JSON that is not an object, not JSON, a sweep, a lone CR
        lines[120] = "[1, 2]"
        lines[200] = "{not json"
        lines[260] = json.dumps({"id": f"sw{m}", "kind": "wan", "prompt": "p", "sweep": {"seed": [1, 2]}})
        lines[300] = lines[300] + "\r" + json.dumps({"id": f"cr{m}", "kind": "wan"})
        path = tmp_path / f"m{m}.jsonl"
        path.write_text("\n".join(lines) + ("\n" if m != 2 else ""))
        manifests.append(str(path))
    sources = manifest_sources(manifests)
    duplicates = find_duplicates([_line_ids(uri) for uri in manifests])
    assert all(manifest_ids(uri).equals(_line_ids(uri)) for uri in manifests)
    done = IdSet.build([[f"r{i}-{m}" for i in range(0, 400, 7) for m in range(3)] + ["shared4", "sw1.1"]])
    for index, uri in enumerate(manifests):
        expected = [
            r
            for t in read_manifest(uri, index, sources, duplicates[index], done, 64, chunk_bytes=None)
            for r in t.to_pylist()
        ]
        assert {r["route"] for r in expected} == {"pending", "rejected", "skip"}
        for chunk_bytes in (3000, 20000, 64 << 20):
            got = [
                r
                for t in read_manifest(uri, index, sources, duplicates[index], done, 64, chunk_bytes=chunk_bytes)
                for r in t.to_pylist()
            ]
            assert got == expected, (uri, chunk_bytes)


def test_resume_index_holds_exactly_the_ok_ids(tmp_path):
    out = tmp_path / "out"
    os.makedirs(metadata_dir(str(out)))
    write_part(out, "part-20260101T000000000000-aaaa-00000.parquet", [meta("a", "ok"), meta("b", "failed")])
    write_part(out, "part-20260101T000000000000-aaaa-00001.parquet", [meta("c", "rejected"), meta("d", "ok")])
    write_part(out, "part-20260102T000000000000-bbbb-00000.parquet", [meta("b", "ok"), meta("e", "failed")])
    this_run = "20260103T000000000000-cccc"
    write_part(out, f"part-{this_run}-00000.parquet", [meta("f", "ok"), meta("g", "failed")])
    index = build_done_index(str(out), exclude_run=this_run)
    ids = list("abcdefgh")
    assert dict(zip(ids, index.contains(ids).tolist())) == {
        "a": True,
        "b": True,  # failed once, ok since
        "c": False,
        "d": True,
        "e": False,
        "f": False,  # this run's own rows: the index is as it was when the run started
        "g": False,
        "h": False,
    }
    sweep = build_done_index(str(out), exclude_run=this_run, any_status_of_run=True)
    assert sweep.contains(["f", "g", "e"]).tolist() == [True, True, False]
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"id": i, "kind": "cogvideox"} for i in ids])
    routes = {r["id"]: r["route"] for r in read_records([str(manifest)], index)}
    assert routes == {i: "skip" if i in "abd" else "pending" for i in ids}


MANIFEST_ROWS = {
    "one.jsonl": ["a", "b", "a", "c"],
    "two.csv": ["d", "b", "e", "d"],
    "three.parquet": ["c", "f", "a"],
}


def write_manifests(tmp_path, rows=MANIFEST_ROWS) -> list[str]:
    uris = []
    for name, ids in rows.items():
        path = tmp_path / name
        records = [{"id": i, "kind": "cogvideox", "prompt": f"{name} {n}"} for n, i in enumerate(ids)]
        if name.endswith(".jsonl"):
            write_jsonl(path, records)
        elif name.endswith(".csv"):
            path.write_text("id,kind,prompt\n" + "".join(f"{r['id']},{r['kind']},{r['prompt']}\n" for r in records))
        else:
            pq.write_table(pa.Table.from_pylist(records), path)
        uris.append(str(path))
    return uris


def test_duplicates_across_manifests_keep_the_first_occurrence(tmp_path):
    records = list(read_records(write_manifests(tmp_path)))
    got = [(r["source"], r["line"], r["id"], r["route"], r["error"]) for r in records]
    assert got == [
        ("one.jsonl", 1, "a", "pending", ""),
        ("one.jsonl", 2, "b", "pending", ""),
        ("one.jsonl", 3, "one.jsonl:3", "rejected", "id: 'a' already used at one.jsonl:1"),
        ("one.jsonl", 4, "c", "pending", ""),
        ("two.csv", 2, "d", "pending", ""),  # a CSV's header is line 1
        ("two.csv", 3, "two.csv:3", "rejected", "id: 'b' already used at one.jsonl:2"),
        ("two.csv", 4, "e", "pending", ""),
        ("two.csv", 5, "two.csv:5", "rejected", "id: 'd' already used at two.csv:2"),
        ("three.parquet", 1, "three.parquet:1", "rejected", "id: 'c' already used at one.jsonl:4"),
        ("three.parquet", 2, "f", "pending", ""),
        ("three.parquet", 3, "three.parquet:3", "rejected", "id: 'a' already used at one.jsonl:1"),
    ]
    # the same manifest file name in two folders: the records name them by their URIs
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    twins = [str(write_jsonl(tmp_path / d / "m.jsonl", [{"id": "same"}, "not json"])) for d in "xy"]
    ids = [r["id"] for r in read_records(twins)]
    assert ids == ["same", f"{twins[0]}:2", f"{twins[1]}:1", f"{twins[1]}:2"] and len(set(ids)) == 4
    once_more = [r["id"] for r in read_records([twins[0], twins[0]])]  # one manifest given twice
    assert once_more == ["same", f"{twins[0]}:2", f"{twins[0]}#2:1", f"{twins[0]}#2:2"]


def test_reconcile_keeps_one_row_per_id_after_several_resumed_runs(tmp_path, monkeypatch):
    """Five runs over the same 60 ids, each retrying what is not ok yet (and a crash's copy), with
    parts small enough that the sink merges and reconcile compacts as at scale."""
    monkeypatch.setattr(sink, "COMPACT_ROWS", 16)
    monkeypatch.setattr(sink, "COMPACT_MAX_PARTS", 3)
    out = str(tmp_path / "out")
    rng = random.Random(1)
    ids = [f"row-{i:03d}" for i in range(60)]
    first_ok: dict[str, datetime] = {}
    last: dict[str, tuple[str, datetime]] = {}
    ok_parts: dict[str, int] = {}
    for run in range(5):
        todo = [i for i in ids if i not in first_ok]
        writer = MetadataSink(out, flush_rows=3, run_id=f"2026010{run}T000000000000-run{run}", merge_rows=8)
        for n, row_id in enumerate(todo):
            status = "ok" if rng.random() < 0.5 or run == 4 else rng.choice(["failed", "rejected"])
            m = meta(row_id, status, minutes=run * 100 + n)
            writer.add(m)
            last[row_id] = (status, m.finished_at)
            if status == "ok":
                first_ok[row_id] = m.finished_at
        writer.flush()
        if run == 2:  # a crash between a merged part and the removal of what it merged: copies
            part = sorted(p for p in os.listdir(metadata_dir(out)) if "run2-m" in p)[0]
            shutil.copy(
                f"{metadata_dir(out)}/{part}", f"{metadata_dir(out)}/part-2026010{run}T000000000000-copy.parquet"
            )
        if run == 3:
            # the parts of ok rows only, as merged by the sink or reconcile: superseded rows are
            # never in them, so no later reconcile rewrites them
            for name in os.listdir(metadata_dir(out)):
                table = pq.read_table(f"{metadata_dir(out)}/{name}")
                if set(table.column("status").to_pylist()) == {"ok"} and table.num_rows >= 8:
                    ok_parts[name] = os.stat(f"{metadata_dir(out)}/{name}").st_mtime_ns
        rows = reconcile(out)
        table = read_metadata(out)
        by_id = {r["id"]: r for r in table.to_pylist()}
        assert rows == table.num_rows == len(by_id) == len(last), run  # one row per id
        for row_id, (status, finished) in last.items():
            expected = ("ok", first_ok[row_id]) if row_id in first_ok else (status, finished)
            assert (by_id[row_id]["status"], by_id[row_id]["finished_at"]) == expected, (run, row_id)
    assert ok_parts, "the runs made parts of ok rows"
    for name, stamp in ok_parts.items():
        assert os.stat(f"{metadata_dir(out)}/{name}").st_mtime_ns == stamp, name  # not rewritten
    assert all(r["status"] == "ok" for r in read_metadata(out).to_pylist())
    assert reconcile(out) == 60


def test_the_sink_merges_its_small_parts_into_an_ok_part_and_an_others_part(tmp_path):
    """Once its small parts hold merge_rows rows, the sink writes them again as one part of the ok
    rows and one of the others (read back from the small parts, which go) and starts afresh."""
    out = str(tmp_path / "out")
    writer = MetadataSink(out, flush_rows=3, run_id="20260101T000000000000-run", merge_rows=9)
    statuses = ["ok", "failed", "ok", "rejected", "ok", "ok", "failed", "ok", "ok", "ok", "failed"]
    for n, status in enumerate(statuses):
        writer.add(meta(f"row-{n:02d}", status, minutes=n))
    writer.flush()
    names = sorted(os.listdir(metadata_dir(out)))
    # rows 0-8 merged (three flushes of three), rows 9-10 one small part after them
    assert names == [f"part-20260101T000000000000-run-{n}.parquet" for n in ("00003", "m00000", "m00001")]
    parts = [pq.read_table(f"{metadata_dir(out)}/{name}") for name in names]
    assert parts[1].column("id").to_pylist() == [f"row-{n:02d}" for n in (0, 2, 4, 5, 7, 8)]
    assert set(parts[1].column("status").to_pylist()) == {"ok"}
    assert parts[2].column("id").to_pylist() == ["row-01", "row-03", "row-06"]
    assert parts[2].column("status").to_pylist() == ["failed", "rejected", "failed"]
    assert parts[0].column("id").to_pylist() == ["row-09", "row-10"]
    assert parts[1].schema == parts[0].schema  # the merged parts keep the metadata schema
    assert sorted(read_metadata(out).column("id").to_pylist()) == [f"row-{n:02d}" for n in range(11)]


def test_a_video_is_encoded_beside_its_name_and_a_failed_encode_leaves_nothing(tmp_path, monkeypatch):
    """write_video on a local folder: the MP4 is encoded into a `.tmp-` name in the target's folder
    (the name the next run's remove_stale_temp_files clears) and renamed; an encode that fails
    leaves no file."""
    import hashlib

    from raypipe import video

    encoded_at = []
    encode = video.encode_mp4
    monkeypatch.setattr(video, "encode_mp4", lambda f, fps, path: (encoded_at.append(path), encode(f, fps, path)))
    target = tmp_path / "out" / "videos" / "a.mp4"
    frames = np.zeros((3, 16, 32, 3), dtype=np.uint8)
    frames[:, :, 16:] = 200
    written = video.write_video(frames, 8, str(target))
    assert os.listdir(target.parent) == ["a.mp4"]
    assert os.path.dirname(encoded_at[0]) == str(target.parent)
    assert os.path.basename(encoded_at[0]).startswith(sink.TEMP_PREFIX)
    assert written.bytes == target.stat().st_size
    assert written.sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    back = video.read_video(str(target))
    assert back.shape == (3, 16, 32, 3) and abs(int(back[0, 8, 24, 0]) - 200) < 8
    try:
        video.write_video(np.zeros((2, 15, 32, 3), dtype=np.uint8), 8, str(target.parent / "odd.mp4"))
    except ValueError as err:
        assert "even sizes" in str(err)
    else:
        raise AssertionError("an odd height must not encode")
    assert os.listdir(target.parent) == ["a.mp4"]
    (target.parent / f"{sink.TEMP_PREFIX}crashed-b.mp4").write_bytes(b"partial")
    assert sink.remove_stale_temp_files(str(tmp_path / "out")) == 1
    assert os.listdir(target.parent) == ["a.mp4"]


def test_reconcile_is_exact_when_hashes_collide(tmp_path, monkeypatch):
    """Every id with the same hash: reconcile decides on the ids themselves."""
    monkeypatch.setattr(sink, "hash64", lambda ids: np.zeros(len(ids), dtype=np.uint64))
    out = tmp_path / "out"
    os.makedirs(metadata_dir(str(out)))
    write_part(out, "part-20260101T000000000000-a-00000.parquet", [meta("a", "failed", 1), meta("b", "ok", 1)])
    write_part(out, "part-20260102T000000000000-b-00000.parquet", [meta("a", "ok", 2), meta("c", "failed", 2)])
    assert reconcile(str(out)) == 3
    by_id = {r["id"]: r["status"] for r in read_metadata(str(out)).to_pylist()}
    assert by_id == {"a": "ok", "b": "ok", "c": "failed"}


def test_parallel_read_in_ray_matches_the_sequential_one(ray_local, tmp_path):
    """Six manifests of up to 40k rows, each read by its own Ray task: the same records as the
    sequential read, each manifest's in its line order, duplicates across them and the resume
    index as one reader would see them."""
    from raypipe.pipeline.graph import records_dataset
    from raypipe.pipeline.read import prepare_read

    rows = {f"m{k}.jsonl": [f"id-{(k * 7919 + i) % 90000}" for i in range(40000 if k < 2 else 3)] for k in range(6)}
    uris = []
    for name, ids in rows.items():
        with open(tmp_path / name, "w") as f:
            f.write("".join(json.dumps({"id": i, "kind": "cogvideox"}) + "\n" for i in ids))
        uris.append(str(tmp_path / name))
    out = tmp_path / "out"
    os.makedirs(metadata_dir(str(out)))
    write_part(out, "part-20260101T000000000000-a-00000.parquet", [meta(f"id-{i}", "ok") for i in range(0, 90000, 3)])
    expected = list(read_records(uris, build_done_index(str(out))))
    read = prepare_read(uris, str(out))
    got = []
    for batch in records_dataset(read, load_config(), str(out)).iter_batches(batch_size=None, batch_format="pyarrow"):
        got.extend(batch.to_pylist())
    key = ("id", "source", "line", "route", "error")
    assert sorted(tuple(r[k] for k in key) for r in got) == sorted(tuple(r[k] for k in key) for r in expected)
    for name in rows:  # each manifest's records arrive in its line order
        lines = [r["line"] for r in got if r["source"] == name]
        assert lines == sorted(lines) and len(lines) == len(rows[name])
    routes = {r["route"] for r in got}
    assert routes == {"pending", "skip", "rejected"}
    # the sweep for lost rows: the same read against the index of every id this run has a row
    # for, whatever its status (here a pending row and a rejected line's)
    run_id = "20260105T000000000000-this"
    rejected = next(r["id"] for r in got if r["route"] == "rejected")
    pending = next(r["id"] for r in got if r["route"] == "pending")
    write_part(out, f"part-{run_id}-00000.parquet", [meta(pending, "failed"), meta(rejected, "rejected")])
    swept = records_dataset(read, load_config(), str(out), run_id, sweep=True).take_all()
    before = {r["id"]: r["route"] for r in got}
    changed = {r["id"]: r["route"] for r in swept if r["route"] != before[r["id"]]}
    assert changed == {pending: "skip", rejected: "skip"}


WORKER_BURSTS = """
import os, time
import ray
from raypipe.pipeline.ray_init import init_ray

init_ray("local")

@ray.remote(num_cpus=0.25)
def pid():
    time.sleep(3)  # long enough that most of the eight run side by side, each in a worker of its own
    return os.getpid()

first = set(ray.get([pid.remote() for _ in range(8)]))
time.sleep(3)  # idle longer than Ray's default 1 s
second = set(ray.get([pid.remote() for _ in range(8)]))
print(len(first), len(second - first))
"""


def test_a_ray_raypipe_starts_keeps_its_idle_task_workers_between_bursts(tmp_path):
    """A burst of 0.25-CPU tasks (as the run's validators and writers come) starts a worker each;
    the next burst, 3 s later, finds them still there: no worker started (and raypipe, PyAV,
    OpenCV imported) again. Ray's default stops a worker beyond one a CPU after 1 s idle."""
    done = run_without_raylet_env(WORKER_BURSTS, tmp_path)
    started, restarted = map(int, done.stdout.split()[-2:])
    assert started >= 4, done.stdout  # more workers than CPUs: those Ray's default would stop
    assert restarted == 0, done.stdout


def run_without_raylet_env(script: str, folder):
    """`script` in a fresh Python, with none of raypipe's raylet settings (nor RAY_ADDRESS) in its
    environment: what it sees comes from init_ray."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (*RAYLET_ENV, "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180, cwd=folder
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


SMALL_BLOCKS = """
import numpy as np
import ray

from raypipe.pipeline.ray_init import init_ray

init_ray("local")


@ray.remote(num_cpus=0.25)
def block():
    return np.zeros(10_000, dtype=np.uint8)  # a 64-row block of records is ~30 KB


refs = [block.remote() for _ in range(20)]
ray.wait(refs, num_returns=len(refs), fetch_local=False)
print(ray._private.worker.global_worker.core_worker.get_local_memory_store_bytes_used())
"""


def test_a_ray_raypipe_starts_keeps_small_blocks_out_of_the_drivers_memory(tmp_path):
    """Twenty 10 KB results of tasks the driver submitted: in the object store, not the driver's
    own memory store (Ray's default keeps results under 100 KiB there: 204,920 bytes of these)."""
    held = int(run_without_raylet_env(SMALL_BLOCKS, tmp_path).stdout.split()[-1])
    assert held < 20 * 10_000 // 4, held
