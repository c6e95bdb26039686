"""jobs/generate.py as a real Ray job: a local head started with `ray start --head` (token auth
on, as Ray 2.60 starts it), the demo submitted with `ray job submit --working-dir .`, the job
followed to SUCCEEDED, its videos, metadata and metrics.prom read back, and Ray's exporter on
the head serving the ray_raypipe_* metrics the pool actor and the MP4 writers recorded.

The head gets its own --temp-dir, so that other Ray instances on this machine never find it
(ray.init() without an address joins the latest `ray start` recorded in its temp dir), and it
is stopped by its process ids, never with `ray stop` (which stops every Ray on the machine)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import decord
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

import raypipe
from raypipe.pipeline.ray_init import RAYLET_ENV
from raypipe.sink import read_metadata
from tests.conftest import REPO

VENV_BIN = Path(sys.executable).parent
RAY = str(VENV_BIN / "ray")
# manifests/demo.jsonl: id -> (frames, height, width, fps), from the rows and the default config
DEMO = {
    "demo-cat": (9, 64, 64, 8),
    "demo-city": (9, 64, 64, 8),
    "demo-forest": (17, 64, 64, 8),
    "demo-wide": (9, 48, 80, 12),
}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def http_up(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:  # it answered (401 without the token): it is up
        return True
    except OSError:
        return False
    return True


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to `ray start --block` (it stops the processes it started), then SIGKILL to any
    of its descendants still there."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
    _gone, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def head():
    # Short: Ray's socket paths under it must stay within 107 characters.
    temp_dir = tempfile.mkdtemp(prefix="rp-", dir="/tmp")
    gcs, dashboard, metrics, agent_http, agent_grpc, runtime_env, node_manager, object_manager = free_ports(8)
    env = {
        **os.environ,
        # the head's workers, and the job's `python`, are the venv's
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # metrics reach the exporter every second (default 10 s)
        "RAY_metrics_report_interval_ms": "1000",
        # on SIGTERM, stop at once rather than drain (for Serve) for 30 s
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
        # token auth for the head and the Jobs CLI; `ray start` alone turns it on only when
        # ~/.ray/auth_token exists, which `ray get-auth-token --generate` makes if missing
        "RAY_AUTH_MODE": "token",
        # as the README's `ray start` and k8s/: idle task workers kept between bursts, small
        # blocks in the object store
        **RAYLET_ENV,
    }
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [RAY, "get-auth-token", "--generate"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=True,
        timeout=120,
    )
    log = open(Path(temp_dir) / "ray-start.log", "w")
    process = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard),
            "--include-dashboard",
            "true",
            "--metrics-export-port",
            str(metrics),
            "--dashboard-agent-listen-port",
            str(agent_http),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--runtime-env-agent-port",
            str(runtime_env),
            "--node-manager-port",
            str(node_manager),
            "--object-manager-port",
            str(object_manager),
            "--num-cpus",
            "2",
            "--temp-dir",
            temp_dir,
            "--disable-usage-stats",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while not http_up(f"{address}/api/version"):
            assert process.poll() is None, (Path(temp_dir) / "ray-start.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
            time.sleep(1)
        yield {
            "address": address,
            "metrics": f"http://127.0.0.1:{metrics}/metrics",
            "temp_dir": Path(temp_dir),
            "env": env,
        }
    finally:
        stop(process)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def ray_job(head, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, "job", *args], cwd=REPO, env=head["env"], capture_output=True, text=True, timeout=timeout
    )


def ray_exporter_ok_videos(text: str) -> float:
    """Sum over workers of ray_raypipe_videos_total{kind=cogvideox,status=ok} in a scrape."""
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "ray_raypipe_videos_total"
        and s.labels.get("kind") == "cogvideox"
        and s.labels.get("status") == "ok"
    )


@pytest.fixture(scope="module")
def demo_job(head, tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "out"
    job_id = f"raypipe-demo-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"RAYPIPE_CACHE": os.environ["RAYPIPE_CACHE"]}}

    scraped = []  # Prometheus' side of the head's metrics port, while the job runs
    running = threading.Event()
    running.set()

    def scrape():
        while running.is_set():
            try:
                with urllib.request.urlopen(head["metrics"], timeout=5) as r:
                    scraped.append(ray_exporter_ok_videos(r.read().decode()))
            except (OSError, ValueError):
                pass
            time.sleep(1)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        submit = ray_job(
            head,
            "submit",
            "--address",
            head["address"],
            "--submission-id",
            job_id,
            "--working-dir",
            ".",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--",
            "python",
            "jobs/generate.py",
            "manifests/demo.jsonl",
            "--out",
            str(out),
            timeout=420,
        )
        status = ray_job(head, "status", "--address", head["address"], job_id)
        deadline = time.monotonic() + 30  # let the exporter report the last rows
        while (not scraped or scraped[-1] < len(DEMO)) and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        running.clear()
        scraper.join()
    return {"out": out, "submit": submit, "status": status, "scraped": scraped, "job_id": job_id}


def test_demo_job_succeeds(demo_job):
    submit, status = demo_job["submit"], demo_job["status"]
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-4000:]
    # `ray job status` says "succeeded" for the status SUCCEEDED only (ray/dashboard/modules/job/cli.py)
    assert f"Job '{demo_job['job_id']}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
    assert "raypipe: 4/4 rows done (ok 4, failed 0, rejected 0)" in submit.stdout + submit.stderr


def test_demo_job_outputs(demo_job):
    out = demo_job["out"]
    meta = {m["id"]: m for m in read_metadata(str(out)).to_pylist()}
    assert sorted(meta) == sorted(DEMO)
    for row_id, (frames, height, width, fps) in DEMO.items():
        m = meta[row_id]
        assert m["status"] == "ok" and m["error"] == "", (row_id, m["error"])
        reader = decord.VideoReader(str(out / "videos" / f"{row_id}.mp4"))
        assert len(reader) == frames == m["num_frames"]
        assert reader[0].shape == (height, width, 3)
        assert abs(reader.get_avg_fps() - fps) < 0.01
        assert m["bytes"] == os.path.getsize(out / "videos" / f"{row_id}.mp4")
    prom = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families((out / "metrics.prom").read_text())
        for s in f.samples
    }
    assert prom[("raypipe_videos_total", (("kind", "cogvideox"), ("status", "ok")))] == len(DEMO)
    assert prom[("raypipe_output_bytes_total", (("kind", "cogvideox"),))] == sum(m["bytes"] for m in meta.values())


def test_job_ran_the_uploaded_checkout(demo_job, head):
    logs = demo_job["submit"].stdout + demo_job["submit"].stderr
    packages = list(
        (head["temp_dir"] / "session_latest" / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*")
    )
    packages = [p for p in packages if p.is_dir()]
    assert len(packages) == 1, packages
    uploaded = packages[0].resolve()  # session_latest is a link to the session's folder
    # the driver imported raypipe from the uploaded copy, not from the repository or site-packages
    assert f"raypipe {raypipe.__version__} from {uploaded / 'raypipe'}" in logs, logs[-3000:]
    assert (uploaded / "jobs" / "generate.py").is_file() and (uploaded / "raypipe" / "run.py").is_file()
    for left_out in (".venv", "out", ".git", "raypipe.egg-info"):  # .gitignore / .rayignore
        assert not (uploaded / left_out).exists(), left_out


def test_ray_exporter_serves_the_actor_metrics(demo_job):
    # the pool actor counted its videos with ray.util.metrics; the head's exporter served them
    assert max(demo_job["scraped"], default=0) == len(DEMO), demo_job["scraped"][-10:]


def test_token_auth_is_on(head):
    refused = subprocess.run(
        [RAY, "job", "list", "--address", head["address"]],
        cwd=REPO,
        env={**head["env"], "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert ray_job(head, "list", "--address", head["address"]).returncode == 0
