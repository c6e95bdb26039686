"""Dataset-scale orchestration, in a real multi-raylet local Ray cluster (ray.cluster_utils.Cluster)
with the real tiny pipelines: mixed pools in one run, outputs and manifests on S3 (moto's server
on 127.0.0.1, real HTTP, real s3fs) with resume, a driver killed by SIGKILL mid-run and rerun,
a node lost mid-run, a row that kills its worker every time, and `raypipe plan`."""

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC
from pathlib import Path

import decord
import fsspec
import psutil
import pytest
import yaml

from raypipe import run
from raypipe.cli import main
from raypipe.config import load_config
from raypipe.sink import metadata_table, read_metadata, reconcile
from tests.conftest import REPO, write_jsonl
from tests.faulty_stage import MARKS

BUCKET = "raypipe-test"


def cogvideox_rows(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "kind": "cogvideox", "prompt": f"a lighthouse {i}"} for i in range(n)]


def write_config(path: Path, config: dict) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def metadata_by_id(out) -> dict:
    rows = read_metadata(str(out)).to_pylist()
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows), "one metadata row per id"
    return by_id


def frames_of(data: bytes) -> tuple[int, tuple]:
    reader = decord.VideoReader(io.BytesIO(data))
    return len(reader), reader[0].shape


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def cluster(s3_endpoint):
    """A head raylet with 2 CPUs; tests add (and kill) worker raylets. The S3 settings are set
    only after the raylets started, so workers see them only through raypipe's init_ray."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # A lost node is declared dead after ~2 s of failed health checks (Ray's default: ~15 s).
    fast_health_checks = {"health_check_period_ms": 1000, "health_check_failure_threshold": 2}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": fast_health_checks},
    )
    env = {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    run.init_ray(cluster.address)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ---- pure parts: waves, reconcile, the FLOP formula ----------------------------------------------


def test_pools_that_do_not_fit_together_run_in_waves():
    from raypipe.families import families

    STAGES = {f.kind: f.stage for f in families()}

    config = load_config()
    routes = {"animatediff": 3, "cogvideox": 5}
    # two 1-CPU pools on 2 CPUs would leave nothing for the CPU stages: one after the other
    assert run.pool_waves(["animatediff", "cogvideox"], routes, config, STAGES, {"CPU": 2.0}) == [
        ["animatediff"],
        ["cogvideox"],
    ]
    assert run.pool_waves(["animatediff", "cogvideox"], routes, config, STAGES, {"CPU": 8.0}) == [
        ["animatediff", "cogvideox"]
    ]
    gpu = load_config(str(REPO / "configs" / "gpu.yaml"))
    kinds = ["animatediff", "cogvideox", "deforum"]
    assert run.pool_waves(kinds, {k: 10 for k in kinds}, gpu, STAGES, {"CPU": 64.0, "GPU": 2.0}) == [
        ["animatediff", "cogvideox"],
        ["deforum"],
    ]


def test_rows_without_a_final_state_fail_the_exit_code():
    summary = run.RunSummary(total=3, by_status={"ok": 2, "failed": 0, "rejected": 0})
    assert summary.exit_code == 1  # one row lost even in the sweep: not "every row ok"
    summary.by_status["ok"] = 3
    assert summary.exit_code == 0


def test_reconcile_keeps_one_row_per_id(tmp_path):
    from datetime import datetime, timedelta

    from raypipe.schema import empty_metadata
    from raypipe.sink import _write_table, metadata_dir

    out = str(tmp_path)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def meta(row_id, status, minutes):
        m = empty_metadata(row_id, "cogvideox", status, "" if status == "ok" else "boom")
        m["finished_at"] = t0 + timedelta(minutes=minutes)
        return m

    parts = [
        [meta("a", "failed", 1), meta("b", "ok", 1), meta("c", "failed", 1)],
        [meta("a", "ok", 2), meta("c", "failed", 3), meta("b", "failed", 4)],
        [meta("b", "ok", 1)],
    ]  # an identical copy a crashed reconcile can leave
    for i, metas in enumerate(parts):
        _write_table(metadata_table(metas), f"{metadata_dir(out)}/part-2026010{i}T000000000000-x-00000.parquet")
    assert reconcile(out) == 3
    rows = {r["id"]: r for r in read_metadata(out).to_pylist()}
    assert len(read_metadata(out)) == 3
    assert rows["a"]["status"] == "ok" and rows["b"]["status"] == "ok"  # ok wins over newer failures
    assert rows["c"]["finished_at"] == t0 + timedelta(minutes=3)  # else the newest
    files = sorted(os.listdir(metadata_dir(out)))
    assert len(files) == 2  # the parts that held superseded rows, merged; the clean one kept
    assert reconcile(out) == 3 and sorted(os.listdir(metadata_dir(out))) == files  # nothing more to do


def test_dit_formula_matches_a_flop_count_of_cogvideox_5b():
    import torch
    from diffusers import CogVideoXTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    from raypipe.families.cogvideox.flops import COGVIDEOX_5B
    from raypipe.flops import dit_forward_flops

    formula = dit_forward_flops(COGVIDEOX_5B, 49, 480, 720)
    assert abs(formula / 1e12 - 332) < 1  # the issue's figure: ~332 TFLOP per 49x480x720 forward
    meta = torch.device("meta")
    with meta:  # the released architecture, without weights
        model = CogVideoXTransformer3DModel(
            num_attention_heads=48,
            attention_head_dim=64,
            num_layers=42,
            sample_width=90,
            sample_height=60,
            use_rotary_positional_embeddings=True,
        )
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(
            torch.empty(1, 13, 16, 60, 90, device=meta),
            torch.empty(1, 226, 4096, device=meta),
            torch.empty(1, device=meta),
        )
    assert abs(formula / counter.get_total_flops() - 1) < 0.001


# ---- in the cluster -------------------------------------------------------------------------------


def test_plan_prices_rows_per_kind_and_pool(cluster, tmp_path, capsys):
    manifest = write_jsonl(
        tmp_path / "plan.jsonl",
        [
            {"id": "five-b", "kind": "cogvideox", "prompt": "a"},  # gpu.yaml defaults: 49x480x720, 50 steps, cfg 6
            {"id": "two-b", "kind": "cogvideox", "prompt": "b", "model": "THUDM/CogVideoX-2b", "guidance_scale": 1.0},
            {"id": "anim", "kind": "animatediff", "prompt": "c"},
            {"id": "bad", "kind": "cogvideox", "num_frames": 12},
        ],
    )
    assert main(["plan", str(manifest), "--config", str(REPO / "configs" / "gpu.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    kinds = {k["kind"]: k for k in plan["kinds"]}
    assert (plan["rows"], plan["rejected"], sorted(kinds)) == (4, 1, ["animatediff", "cogvideox"])
    cog = kinds["cogvideox"]
    # 5B: 50 steps x 2 (CFG) x 332 TFLOP; 2B without CFG: 50 x 1 x 30 layers over 226 + 13*30*45 tokens
    two_b = 30 * (24 * 17776 * 1920**2 + 4 * 17776**2 * 1920) / 1e12
    assert cog["tflop"] == pytest.approx(100 * 332.18 + 50 * two_b, rel=1e-3)
    assert cog["gpu_seconds"] == pytest.approx(cog["tflop"] * 1e12 / (989e12 * 0.35), rel=1e-6)
    assert (cog["rows"], cog["pool_actors"], cog["gpus_per_actor"], cog["gpus"]) == (2, "1-2", 1.0, "1-2")
    assert kinds["animatediff"]["gpu_seconds"] > 0 and kinds["animatediff"]["unpriced_rows"] == 0
    # the table form says what it assumes
    assert main(["plan", str(manifest), "--config", str(REPO / "configs" / "gpu.yaml")]) == 0
    assert "989 TFLOP/s peak x MFU 0.35" in capsys.readouterr().out


def test_mixed_manifest_routes_each_kind_to_its_pool(cluster, tmp_path, capsys):
    rows = [
        *cogvideox_rows("cog", 3),
        {"id": "anim-0", "kind": "animatediff", "prompt": "waves"},
        {"id": "anim-1", "kind": "animatediff", "prompt": "clouds", "num_frames": 8},
        {"id": "cog-bad", "kind": "cogvideox", "num_frames": 12},
        {"id": "anim-bad", "kind": "animatediff", "num_frame": 8},
        {"id": "nope", "kind": "nosuchkind"},
    ]
    manifest = write_jsonl(tmp_path / "mixed.jsonl", rows)
    # half a CPU per actor: both pools fit beside the CPU stages, so they run at the same time
    config = write_config(
        tmp_path / "c.yaml", {"kinds": {"cogvideox": {"num_cpus": 0.5}, "animatediff": {"num_cpus": 0.5}}}
    )
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--out", str(out), "--config", config]) == 1
    assert "waves" not in capsys.readouterr().err
    meta = metadata_by_id(out)
    assert set(meta) == {r["id"] for r in rows}
    for row_id in ("cog-0", "cog-1", "cog-2", "anim-0", "anim-1"):
        m = meta[row_id]
        assert m["status"] == "ok", (row_id, m["error"])
        count, shape = frames_of((out / "videos" / f"{row_id}.mp4").read_bytes())
        assert (count, shape) == (m["num_frames"], (64, 64, 3))
    assert meta["anim-0"]["num_frames"] == 16 and meta["anim-1"]["num_frames"] == 8 and meta["cog-0"]["num_frames"] == 9
    assert meta["cog-bad"]["error"].startswith("num_frames: must be 8k+1")
    assert meta["anim-bad"]["error"].startswith("num_frame: unknown field")
    assert meta["nope"]["error"].startswith("kind: unknown kind")
    # each kind ran in its own pool: no worker process generated rows of both kinds
    cog_workers = {meta[f"cog-{i}"]["worker"] for i in range(3)}
    anim_workers = {meta[f"anim-{i}"]["worker"] for i in range(2)}
    assert cog_workers and anim_workers and not cog_workers & anim_workers


def test_s3_manifest_and_outputs_with_resume(cluster, tmp_path):
    fs = fsspec.filesystem("s3")  # AWS_ENDPOINT_URL etc. from the environment, as for a user
    fs.mkdir(BUCKET)
    first = cogvideox_rows("s3", 2)
    fs.pipe(f"{BUCKET}/manifests/m1.jsonl", "".join(json.dumps(r) + "\n" for r in first).encode())
    out = f"s3://{BUCKET}/runs/one"
    assert main(["run", f"s3://{BUCKET}/manifests/m1.jsonl", "--out", out]) == 0
    meta = metadata_by_id(out)
    assert set(meta) == {"s3-0", "s3-1"}
    for row_id, m in meta.items():
        assert m["status"] == "ok" and m["video_uri"] == f"{out}/videos/{row_id}.mp4"
        data = fs.cat(m["video_uri"])
        assert len(data) == m["bytes"] and frames_of(data) == (9, (64, 64, 3))
    stamps = {p: fs.info(p)["LastModified"] for p in fs.ls(f"{BUCKET}/runs/one/videos")}
    # resume with a longer manifest: the two done rows are skipped, only the new one runs
    more = first + cogvideox_rows("s3-new", 1)
    fs.pipe(f"{BUCKET}/manifests/m2.jsonl", "".join(json.dumps(r) + "\n" for r in more).encode())
    summary = run.run([f"s3://{BUCKET}/manifests/m2.jsonl"], out, load_config())
    assert (summary.skipped, summary.by_status["ok"], summary.exit_code) == (2, 1, 0)
    after = metadata_by_id(out)
    assert set(after) == {"s3-0", "s3-1", "s3-new-0"}
    for row_id in ("s3-0", "s3-1"):
        assert after[row_id]["finished_at"] == meta[row_id]["finished_at"]  # not redone
    fs.invalidate_cache()
    assert {p: fs.info(p)["LastModified"] for p in stamps} == stamps  # the old videos untouched
    assert len(fs.ls(f"{BUCKET}/runs/one/videos")) == 3


@pytest.mark.parametrize("ray_of_the_run", ["cluster", "its own"])
def test_driver_killed_mid_run_then_rerun_ends_every_row_ok_once(cluster, tmp_path, ray_of_the_run):
    """The driver SIGKILLed mid-run: joined to a running cluster (which lives on), or with the local
    Ray it started (killed whole with it: every process of it at once, as when the machine dies)."""
    n = 8
    # rows of a second or so each, so that the driver dies while most are still to do
    rows = [
        {**row, "num_frames": 25, "height": 96, "width": 96, "num_inference_steps": 16}
        for row in cogvideox_rows("crash", n)
    ]
    manifest = write_jsonl(tmp_path / "crash.jsonl", rows)
    config = write_config(tmp_path / "c.yaml", {"metadata_flush_rows": 1})
    out = tmp_path / "out"
    videos = out / "videos"
    command = [
        sys.executable,
        "-m",
        "raypipe.cli",
        "run",
        str(manifest),
        "--out",
        str(out),
        "--config",
        config,
        "--address",
        cluster.address if ray_of_the_run == "cluster" else "local",
    ]
    with open(tmp_path / "first.log", "wb") as log:
        driver = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None:
            # some videos exist and the driver has written metadata for at least one
            if (out / "metadata").is_dir() and any(p.name.startswith("part-") for p in (out / "metadata").iterdir()):
                break
            time.sleep(0.05)
        its_ray = psutil.Process(driver.pid).children(recursive=True) if ray_of_the_run == "its own" else []
        if ray_of_the_run == "its own":  # the driver started the Ray it runs on
            assert any("raylet" in process.name() for process in its_ray), [p.name() for p in its_ray]
        driver.send_signal(signal.SIGKILL)
        for process in its_ray:  # GCS, raylet, workers: the whole local cluster
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        assert driver.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    at_kill = [p for p in videos.iterdir() if p.suffix == ".mp4"]
    assert 0 < len(at_kill) < n, "the driver must die mid-run"
    for path in at_kill:  # a file at a final name is always complete
        assert frames_of(path.read_bytes()) == (25, (96, 96, 3))
    before = {m["id"]: m for m in read_metadata(str(out)).to_pylist() if m["status"] == "ok"}
    assert before

    # The rerun starts elsewhere, from a directory holding a folder named `raypipe`: Ray puts the
    # driver's directory on its workers' sys.path, and they must still import the package.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "raypipe").mkdir(parents=True)
    rerun = subprocess.run(command, cwd=elsewhere, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    meta = metadata_by_id(out)
    assert set(meta) == {f"crash-{i}" for i in range(n)}
    assert all(m["status"] == "ok" for m in meta.values())
    for row_id, m in before.items():  # rows whose metadata was written before the kill: not redone
        assert meta[row_id]["finished_at"] == m["finished_at"]
    assert f"{len(before)} skipped as done" in rerun.stderr
    names = sorted(os.listdir(videos))
    assert names == sorted(f"crash-{i}.mp4" for i in range(n))  # no temporary file left either
    assert not [p for p in os.listdir(out / "metadata") if not p.startswith("part-")]
    for name in names:
        assert frames_of((videos / name).read_bytes())[0] == 25


def test_a_row_that_kills_its_worker_every_time_fails_alone(cluster, tmp_path):
    from tests.faulty_stage import POISON

    rows = cogvideox_rows("p", 2)
    rows.insert(1, {"id": "poison", "kind": "cogvideox", "prompt": POISON})
    manifest = write_jsonl(tmp_path / "poison.jsonl", rows)
    config = load_config(
        write_config(tmp_path / "c.yaml", {"max_row_attempts": 2, "kinds": {"cogvideox": {"batch_size": 2}}})
    )
    out = tmp_path / "out"
    summary = run.run([str(manifest)], str(out), config, stages={"cogvideox": "tests.faulty_stage:PoisonCogVideoX"})
    assert (summary.by_status, summary.exit_code) == ({"ok": 2, "failed": 1, "rejected": 0}, 1)
    meta = metadata_by_id(out)
    assert meta["poison"]["status"] == "failed"
    assert meta["poison"]["error"].startswith("the worker generating this row died 2 times")
    assert meta["p-0"]["status"] == meta["p-1"]["status"] == "ok"  # its batch mate was not failed with it
    assert sorted(os.listdir(out / "videos")) == ["p-0.mp4", "p-1.mp4"]


def raylet_of(cluster, pid: int):
    """The cluster node whose raylet started process `pid` (workers descend from their raylet)."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return None


def test_node_lost_mid_run_costs_only_the_rows_in_flight(cluster, tmp_path):
    # Two worker raylets offer the resource the pool's actor needs; once the actor has started its
    # third row, the node it runs on dies (raylet and processes, no graceful drain) and Ray
    # restarts the actor on the other. The actor says which process it is and how far it got
    # through marks (tests/faulty_stage.py): the metadata would come too late, after the CPU stages.
    for _ in range(2):
        cluster.add_node(num_cpus=1, resources={"pool_node": 1})
    cluster.wait_for_nodes()
    shutil.rmtree(MARKS, ignore_errors=True)
    n = 6
    rows = [
        {**row, "num_frames": 17, "height": 96, "width": 96, "num_inference_steps": 20}
        for row in cogvideox_rows("node", n)
    ]
    manifest = write_jsonl(tmp_path / "node.jsonl", rows)
    config = load_config(
        write_config(
            tmp_path / "c.yaml", {"metadata_flush_rows": 1, "kinds": {"cogvideox": {"resources": {"pool_node": 1}}}}
        )
    )
    out = tmp_path / "out"
    lost = {}

    def kill_the_pool_node():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not lost:
            started = list(MARKS.glob("node-2.*")) if MARKS.is_dir() else []
            if started:
                pid = int(started[0].suffix[1:])
                node = raylet_of(cluster, pid)
                doomed = psutil.Process(node.all_processes["raylet"][0].process.pid).children(recursive=True)
                cluster.remove_node(node, allow_graceful=False)
                for process in doomed:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.kill()
                lost.update(worker=f"{socket.gethostname()}:{pid}")
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_pool_node)
    killer.start()
    summary = run.run([str(manifest)], str(out), config, stages={"cogvideox": "tests.faulty_stage:MarkingCogVideoX"})
    killer.join()
    assert lost, "the node must be lost mid-run"
    assert (summary.by_status["ok"], summary.exit_code) == (n, 0)
    meta = metadata_by_id(out)
    assert set(meta) == {f"node-{i}" for i in range(n)} and all(m["status"] == "ok" for m in meta.values())
    # the lost actor got no further than the row in flight: the rest is the restarted actor's work
    assert meta["node-5"]["worker"] != lost["worker"]
    assert sorted(os.listdir(out / "videos")) == sorted(f"node-{i}.mp4" for i in range(n))
