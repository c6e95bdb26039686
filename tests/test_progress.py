"""What `raypipe run` prints: the live bar on a terminal, the progress lines in logs, and Ray's
routine notices kept off stderr unless --verbose, while lines about real problems still show.

The CLI runs are real processes (`python -m raypipe.cli`-like, in a fresh local Ray each): what a
user sees is the process's stderr, C++ lines of Ray's core worker included."""

import io
import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest

from raypipe.pipeline.ray_init import QUIET_LINES, filtered_stderr
from raypipe.progress import Console, Progress
from tests.conftest import REPO, write_jsonl
from tests.faulty_stage import POISON

SMALL = {"num_inference_steps": 2, "height": 32, "width": 32}
# Ray's lines a run prints that mean nothing to a user (one of each, as Ray 2.60 writes them).
NOISE = [
    "2026-12-01 09:42:53,130\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for this "
    "Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "2026-12-01 09:43:09,650\tWARNING __init__.py:28 -- Progress bars disabled. To enable, set "
    "`ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "[2026-12-01 09:43:24,982 E 6424 6424] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches("
    "StageActor))' and ID: 'ea56' has constructor arguments in the object store and max_restarts > 0. If the "
    "arguments in the object store go out of scope or are lost, the actor restart will fail.",
    "2026-12-01 09:43:47,777\tINFO streaming_executor.py:371 -- ✔️  Dataset dataset_0357_0 execution finished in "
    "22.87 seconds",
]
# Lines about real problems (Ray's memory monitor, a lost node, a failed task): they must pass.
PROBLEMS = [
    "(raylet) Task was killed due to the node running low on memory. Memory on the node (IP: 10.0.0.2) where the "
    "task was running was 7.60GB / 8.00GB (0.95), which exceeds the memory usage threshold of 0.95.",
    "2026-12-01 10:00:01,000\tWARNING worker.py:2100 -- A worker died or was killed while executing a task by an "
    "unexpected system error.",
    "2026-12-01 10:00:02,000\tERROR streaming_executor_state.py:733 -- An exception was raised from a task of "
    'operator "MapBatches(read)".',
    "(autoscaler +1m2s) Node 5a4ab1ad9bfc is dead: its raylet stopped sending heartbeats.",
]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_quiet_patterns_match_ray_noise_only():
    for line in NOISE:
        assert any(p.search(line) for p in QUIET_LINES), line
    for line in PROBLEMS:
        assert not any(p.search(line) for p in QUIET_LINES), line


def test_filtered_stderr_drops_noise_at_the_file_descriptor():
    """What reaches fd 2 (as Ray's C++ core writes it, not through sys.stderr) is filtered too."""
    seen = []
    with filtered_stderr(seen.append):
        for line in NOISE + PROBLEMS:
            os.write(2, (line + "\n").encode())
        print("raypipe: 1/2 rows done", file=sys.__stderr__, flush=True)  # Python's stderr is fd 2
        os.write(2, b"a line without its end")
    assert seen == [line + "\n" for line in PROBLEMS] + ["raypipe: 1/2 rows done\n", "a line without its end"]
    seen_verbose = []
    with filtered_stderr(seen_verbose.append, quiet=()):
        os.write(2, (NOISE[0] + "\n").encode())
    assert seen_verbose == [NOISE[0] + "\n"]


def test_live_bar_on_a_terminal_and_lines_above_it(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    term = Terminal()
    console = Console(term)
    progress = Progress(console, total=3, skipped=1, line=lambda: "LINE", interval=0.0)
    try:
        progress.add("cogvideox", "ok")
        progress.add("cogvideox", "failed")
        progress.tick()
        bar = progress.bar()
        assert bar.startswith("raypipe [") and " 2/3 67%" in bar
        assert "cogvideox ok 1 failed 1 rejected 0" in bar and "1 skipped as done" in bar and "ETA" in bar
        assert term.getvalue().endswith("\r\x1b[K" + bar)  # drawn in place
        print("raypipe: a line of the run", file=console, flush=True)
        # the bar is cleared, the line printed, the bar drawn again below it
        assert term.getvalue().endswith("\r\x1b[Kraypipe: a line of the run\n" + bar)
        assert "LINE" not in term.getvalue()  # no log lines on a terminal
    finally:
        progress.close()
    assert term.getvalue().endswith("\r\x1b[K")  # removed at the end


def test_log_lines_without_a_terminal():
    log = io.StringIO()
    console = Console(log)
    progress = Progress(console, total=2, skipped=0, line=lambda: "raypipe: the line", interval=0.0)
    progress.add("cogvideox", "ok")
    progress.tick()
    progress.add("cogvideox", "ok")
    progress.tick()  # all done: the caller prints the final line
    progress.close()
    assert log.getvalue() == "raypipe: the line\n"
    assert "\r" not in log.getvalue() and "\x1b" not in log.getvalue()


# The CLI with the pool's stage replaced (tests/faulty_stage.py), as a user runs it.
CLI = (
    "import functools, sys\n"
    "from raypipe import cli, run\n"
    "run.run = functools.partial(run.run, stages={'cogvideox': 'tests.faulty_stage:PoisonCogVideoX'})\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


@pytest.fixture(scope="module")
def tiny_models():
    """The kind's tiny models, built here (the CLI processes share this session's cache)."""
    from raypipe.config import load_config
    from raypipe.run import prepare_models

    prepare_models(load_config(), ["cogvideox"])


def run_cli(tmp_path, rows, *flags):
    manifest = write_jsonl(tmp_path / "rows.jsonl", rows)
    config = tmp_path / "config.yaml"
    config.write_text("max_row_attempts: 1\nprogress_seconds: 1\n")
    out = tmp_path / "out"
    command = [sys.executable, "-c", CLI, "run", str(manifest), "--out", str(out), "--config", str(config)]
    return [*command, "--address", "local", *flags], out


def test_a_run_prints_no_ray_noise_but_a_dying_worker(tmp_path, tiny_models):
    rows = [
        {"id": "good", "kind": "cogvideox", "prompt": "a red kite", **SMALL},
        {"id": "poison", "kind": "cogvideox", "prompt": POISON, **SMALL},  # kills its worker
    ]
    command, out = run_cli(tmp_path, rows)
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stderr[-3000:]
    err = proc.stderr
    for pattern in QUIET_LINES:
        assert not pattern.search(err), pattern.pattern
    # the worker's death is said (by the retried batch, forwarded by Ray from the new worker)
    assert "raypipe: a cogvideox worker died generating poison (1x, last " in err, err[-3000:]
    assert "raypipe: 2/2 rows done (ok 1, failed 1, rejected 0)" in err
    assert "raypipe: pool actors busy generating since their model loaded: cogvideox " in err
    assert "\r" not in err  # no bar in a log
    summary = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert summary["rows"] == {"total": 2, "skipped": 0, "ok": 1, "failed": 1, "rejected": 0}


def test_verbose_on_a_terminal_shows_rays_notices_and_the_bar(tmp_path, tiny_models):
    rows = [{"id": f"row-{i}", "kind": "cogvideox", "prompt": f"a red kite {i}", **SMALL} for i in range(3)]
    command, _ = run_cli(tmp_path, rows, "--verbose")
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    seen = b""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the other end closed: the process is gone
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(primary)
    assert proc.wait(timeout=60) == 0
    terminal = seen.decode(errors="replace")
    # Ray's notices, shown with --verbose (Ray Data's and the core worker's are printed every run)
    assert any(p.search(terminal) for p in QUIET_LINES[1:3]), terminal[-3000:]
    # the live bar: drawn in place, with the per-kind counts
    assert "\r\x1b[Kraypipe [" in terminal
    assert "cogvideox ok 3 failed 0 rejected 0" in terminal
    assert "raypipe: 3/3 rows done (ok 3, failed 0, rejected 0)" in terminal
