"""The run's metrics (raypipe/metrics.py), from a real small run in a real local Ray with the
tiny CogVideoX pipeline: <out>/metrics.prom, parsed by prometheus_client's own exposition
parser, must agree with the Parquet metadata; the Pushgateway push (to a small local HTTP
server that records what it receives, in place of a Pushgateway) carries the same values;
`--metrics-port` serves them live while the run goes on."""

import base64
import http.server
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raypipe.cli import main
from raypipe.metadata import Metadata
from raypipe.metrics import METRICS, RunMetrics
from raypipe.sink import read_metadata
from raypipe.usage import read_run_summaries
from tests.conftest import write_jsonl

SMALL = {"num_inference_steps": 2, "height": 32, "width": 32}
ROWS = [
    {"id": "kite", "kind": "cogvideox", "prompt": "a red kite", **SMALL},
    {"id": "rain", "kind": "cogvideox", "prompt": "rain on a window", **SMALL, "width": 48, "fps": 12},
    {"id": "frames", "kind": "cogvideox", "num_frames": 12},  # rejected: not 8k+1
    {"id": "typo", "kind": "cogvidex"},  # rejected, and its kind is no label value
    {"id": "broken", "kind": "cogvideox", "prompt": "a red kite", "model": "/nonexistent/model", **SMALL},  # failed
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every request 200 and keeps (method, path, body): the Pushgateway's side of a push."""

    received: list = []

    def _record(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.command, self.path, body.decode()))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST = _record

    def log_message(self, *args):
        pass


def samples(text: str) -> dict:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(parsed: dict, name: str, **labels) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def metered_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    manifest = write_jsonl(tmp / "m.jsonl", ROWS)
    out = tmp / "out"

    Recorder.received = []
    gateway = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()

    port = free_port()
    scrapes: list[str] = []
    running = threading.Event()
    running.set()

    def scrape():  # Prometheus' side of --metrics-port
        while running.is_set():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    scrapes.append(r.read().decode())
            except OSError:
                pass
            time.sleep(0.2)

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        code = main(
            [
                "run",
                str(manifest),
                "--out",
                str(out),
                "--metrics-port",
                str(port),
                "--pushgateway",
                f"http://127.0.0.1:{gateway.server_address[1]}",
            ]
        )
    finally:
        running.clear()
        scraper.join()
        gateway.shutdown()
        gateway.server_close()
    return {
        "manifest": manifest,
        "out": out,
        "code": code,
        "port": port,
        "scrapes": scrapes,
        "pushed": list(Recorder.received),
        "prom": (out / "metrics.prom").read_text(),
    }


def test_metrics_prom_agrees_with_the_metadata(metered_run):
    assert metered_run["code"] == 1
    prom = samples(metered_run["prom"])
    meta = read_metadata(str(metered_run["out"])).to_pylist()
    ok = [m for m in meta if m["status"] == "ok"]
    assert len(meta) == len(ROWS) and len(ok) == 2

    expected = {
        ("cogvideox", "ok"): 2,
        ("cogvideox", "failed"): 1,
        ("cogvideox", "rejected"): 1,
        ("unknown", "rejected"): 1,
    }
    counted = {
        (dict(labels)["kind"], dict(labels)["status"]): v
        for (name, labels), v in prom.items()
        if name == "raypipe_videos_total"
    }
    assert counted == expected
    for status in ("ok", "failed", "rejected"):  # the counter agrees with the metadata's statuses
        assert sum(v for (_, s), v in counted.items() if s == status) == sum(m["status"] == status for m in meta)

    assert value(prom, "raypipe_output_bytes_total", kind="cogvideox") == sum(m["bytes"] for m in ok) > 0
    assert value(prom, "raypipe_generation_seconds_count", kind="cogvideox") == len(ok)
    assert value(prom, "raypipe_generation_seconds_sum", kind="cogvideox") == pytest.approx(
        sum(m["gen_seconds"] for m in ok), rel=1e-9
    )
    for name in ("raypipe_encode_seconds", "raypipe_upload_seconds"):
        assert value(prom, f"{name}_count", kind="cogvideox") == len(ok)
        assert value(prom, f"{name}_sum", kind="cogvideox") > 0
        assert value(prom, f"{name}_bucket", kind="cogvideox", le="+Inf") == len(ok)
    # one pool actor (pool_size 1): one model load, measured
    assert value(prom, "raypipe_model_load_seconds_count", kind="cogvideox") == 1
    assert value(prom, "raypipe_model_load_seconds_sum", kind="cogvideox") > 0
    assert value(prom, "raypipe_rows_in_flight", kind="cogvideox") == 0
    assert value(prom, "raypipe_rows_skipped_total") == 0
    assert value(prom, "raypipe_run_duration_seconds") > 0
    # every metric of the list is in the file, under its documented type
    families = {f.name: f.type for f in text_string_to_metric_families(metered_run["prom"])}
    for name, (kind, *_rest) in METRICS.items():
        assert families[name.removesuffix("_total")] == kind, name


def test_actor_busy_ratio_is_the_run_summarys(metered_run):
    """raypipe_actor_busy_ratio{kind,worker}: one series per pool actor, the run summary's ratio."""
    prom = samples(metered_run["prom"])
    first = read_run_summaries(str(metered_run["out"]))[0]  # this fixture's run (a later test adds one)
    series = {dict(labels)["worker"]: v for (name, labels), v in prom.items() if name == "raypipe_actor_busy_ratio"}
    assert set(series) == {a["worker"] for a in first["actors"]} and len(series) == 1  # pool_size 1
    for actor in first["actors"]:
        assert 0 < series[actor["worker"]] == actor["busy_ratio"] <= 1


def test_pushgateway_receives_the_final_values(metered_run):
    assert len(metered_run["pushed"]) == 1
    method, path, body = metered_run["pushed"][0]
    out = str(metered_run["out"])
    encoded = base64.urlsafe_b64encode(out.encode()).decode()
    assert method == "PUT"  # push: replaces this group's values
    assert path == f"/metrics/job/raypipe/out@base64/{encoded}"
    assert samples(body) == samples(metered_run["prom"])


def test_metrics_port_serves_the_run_live(metered_run):
    scrapes = [samples(text) for text in metered_run["scrapes"]]
    assert scrapes, "nothing was ever served on --metrics-port"
    in_flight = [
        s[("raypipe_rows_in_flight", (("kind", "cogvideox"),))]
        for s in scrapes
        if ("raypipe_rows_in_flight", (("kind", "cogvideox"),)) in s
    ]
    assert max(in_flight) == 3  # kite, rain and broken routed to the pool, none final yet
    assert in_flight == sorted(in_flight, reverse=True)  # only ever goes down
    with pytest.raises(OSError):  # the server is gone with the run
        urllib.request.urlopen(f"http://127.0.0.1:{metered_run['port']}/metrics", timeout=2)


def test_resumed_run_counts_only_its_own_rows(metered_run, tmp_path):
    out = metered_run["out"]
    done = write_jsonl(tmp_path / "done.jsonl", ROWS[:2])  # both ok in `out` already
    assert main(["run", str(done), "--out", str(out)]) == 0
    prom = samples((out / "metrics.prom").read_text())  # replaced by this run's
    assert value(prom, "raypipe_rows_skipped_total") == 2
    assert sum(v for (name, _), v in prom.items() if name == "raypipe_videos_total") == 0
    assert value(prom, "raypipe_run_duration_seconds") > 0


def test_names_follow_prometheus_conventions():
    for name, (kind, text, _labels, buckets) in METRICS.items():
        assert name.startswith("raypipe_") and text, name
        assert name.endswith("_total") == (kind == "counter"), name
        assert (buckets is not None) == (kind == "histogram"), name
        assert not any(unit in name for unit in ("_ms", "milli", "_kb", "_mb")), name  # base units
        if "seconds" in name or "bytes" in name:
            assert name.split("_")[-1 if kind != "counter" else -2] in ("seconds", "bytes"), name


def test_unreachable_pushgateway_is_a_warning(tmp_path, capsys):
    metrics = RunMetrics(pushgateway=f"http://127.0.0.1:{free_port()}")
    metrics.start({"cogvideox": 1}, ["cogvideox"])
    metrics.observe(
        Metadata(
            id="x",
            kind="cogvideox",
            status="ok",
            gen_seconds=1.5,
            bytes=10,
            timings={"encode_seconds": 0.1, "upload_seconds": 0.01},
        )
    )
    metrics.finish(str(tmp_path))
    assert "pushing metrics to" in capsys.readouterr().err
    prom = samples((tmp_path / "metrics.prom").read_text())
    assert value(prom, "raypipe_output_bytes_total", kind="cogvideox") == 10
    assert value(prom, "raypipe_encode_seconds_sum", kind="cogvideox") == 0.1


def test_metrics_port_in_use_means_nothing_ran(tmp_path, capsys):
    manifest = write_jsonl(tmp_path / "one.jsonl", ROWS[:1])
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        code = main(
            ["run", str(manifest), "--out", str(tmp_path / "out"), "--metrics-port", str(taken.getsockname()[1])]
        )
    assert code == 2
    assert "--metrics-port" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
