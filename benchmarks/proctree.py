"""CPU seconds of a process and every process it starts (Ray's GCS, raylet, workers, actors), for
the benchmarks: the work a run does, which other jobs on a shared machine change far less than
its wall time. Polled from /proc (psutil) while the command runs, as processes come and go: each
process counts with the last CPU time seen (a process's last ~0.2 s before it exits may be lost)."""

from __future__ import annotations

import subprocess
import threading
import time

import psutil

POLL_SECONDS = 0.2


LAST: dict[str, float] = {}  # the last run's CPU seconds by process title (see titles)


def title(member: psutil.Process) -> str:
    """A process's name for the breakdown: Ray's title (ray::IDLE, ray::MapWorker(...)), else the
    program (gcs_server, raylet) or the Python script it runs."""
    try:
        args = member.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "?"
    if args and args[0].startswith("ray::"):
        return args[0].split(".")[0]
    scripts = [a.rsplit("/", 1)[-1] for a in args[1:3] if a.endswith(".py") or a == "-m"]
    return " ".join(scripts) if scripts else (args[0].rsplit("/", 1)[-1] if args else "?")


def run_measured(command: list[str], **popen) -> tuple[subprocess.CompletedProcess, float]:
    """Run `command` to its end (like subprocess.run with capture_output): its result, and the
    CPU seconds (user + system) of its whole process tree (by process title in LAST)."""
    seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> CPU seconds
    names: dict[tuple[int, float], str] = {}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    done = threading.Event()

    def poll() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for member in members:
                try:
                    times = member.cpu_times()
                    key = (member.pid, member.create_time())
                    seen[key] = times.user + times.system
                    name = title(member)  # again each time: a Ray worker takes its title later
                    if name != "?" or key not in names:  # an exiting process's title is gone: keep the last
                        names[key] = name
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    pass
            time.sleep(POLL_SECONDS)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    stdout, stderr = proc.communicate()
    done.set()
    poller.join()
    LAST.clear()
    for key, seconds in seen.items():
        LAST[names[key]] = LAST.get(names[key], 0.0) + seconds
    return subprocess.CompletedProcess(command, proc.returncode, stdout, stderr), sum(seen.values())
