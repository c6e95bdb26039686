"""What a run prints while it goes: a live bar on a terminal, a line every few seconds in logs.

- On a terminal (stderr is a TTY), one line at the bottom is redrawn in place: rows done of the
  total, per kind ok / failed / rejected, the rate and an ETA. Every other line (Ray's, the run's
  own) is printed above it: the Console clears the bar, prints the line, draws the bar again.
- Elsewhere (a file, a pipe, `ray job submit`'s log) there is no bar: the run's progress line
  (raypipe.run.RunSummary.line) every `progress_seconds`, as rows finish.

`raypipe run` makes one Console over the process's stderr (`terminal()`), through which
everything written to stderr passes (raypipe/pipeline/ray_init.py filtered_stderr: Ray's noise
is dropped there unless --verbose).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

BAR_WIDTH = 24
REDRAW_SECONDS = 0.5


class Console:
    """A text stream (write, flush, isatty) with one live status line drawn below what it prints.
    `status` only draws on a terminal; elsewhere it does nothing."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        try:
            self.live = bool(stream.isatty())
        except (AttributeError, ValueError):
            self.live = False
        self._status = ""
        self._partial = ""
        self._lock = threading.RLock()

    def isatty(self) -> bool:
        return self.live

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
            if lines:
                self._clear()
                for line in lines:
                    self.stream.write(line + "\n")
                self._draw()
                self.stream.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.stream.flush()

    def status(self, text: str) -> None:
        """The live line; "" removes it."""
        with self._lock:
            if not self.live or (text == self._status == ""):
                return
            self._status = text
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def _clear(self) -> None:
        if self.live and self._status:
            self.stream.write("\r\x1b[K")

    def _draw(self) -> None:
        if self.live and self._status:
            self.stream.write(self._status)


class Progress:
    """The progress of one run: fed every final row (`add`) and told when a batch is in (`tick`).

    On a live Console a thread redraws the bar every REDRAW_SECONDS (the ETA and the clock move
    while a long video is generating); otherwise `tick` prints `line()` every `interval` seconds
    while rows are left."""

    def __init__(self, console: Console, total: int, skipped: int, line, interval: float = 5.0):
        self.console = console
        self.total = total
        self.skipped = skipped
        self.line = line  # () -> the log line (RunSummary.line)
        self.interval = interval
        self.by_kind: dict[str, dict[str, int]] = {}
        self.done = 0
        self.started = time.monotonic()
        self._first_done: float | None = None
        self._last_line = time.monotonic()
        self._stop = threading.Event()
        self._thread = None
        if console.live:
            self._thread = threading.Thread(target=self._redraw, name="raypipe-progress", daemon=True)
            self._thread.start()

    def add(self, kind: str, status: str) -> None:
        counts = self.by_kind.setdefault(kind or "unknown", {"ok": 0, "failed": 0, "rejected": 0})
        counts[status] = counts.get(status, 0) + 1
        self.done += 1
        if self._first_done is None:
            self._first_done = time.monotonic()

    def tick(self) -> None:
        if self.console.live:
            self.console.status(self.bar())
        elif time.monotonic() - self._last_line >= self.interval and self.done < self.total:
            print(self.line(), file=self.console, flush=True)
            self._last_line = time.monotonic()

    def close(self) -> None:
        """Stop the bar and remove it (the caller prints the final counts)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.console.status("")

    def _redraw(self) -> None:
        while not self._stop.wait(REDRAW_SECONDS):
            self.console.status(self.bar())

    def eta_seconds(self) -> float | None:
        """Seconds left at the rate since the first row finished (start-up is not a row's cost)."""
        if self._first_done is None or self.done < 2 or self.done >= self.total:
            return None
        rate = (self.done - 1) / max(1e-9, time.monotonic() - self._first_done)
        return (self.total - self.done) / rate if rate > 0 else None

    def bar(self) -> str:
        elapsed = time.monotonic() - self.started
        fraction = self.done / self.total if self.total else 1.0
        filled = int(round(fraction * BAR_WIDTH))
        kinds = "; ".join(
            f"{kind} ok {c['ok']} failed {c['failed']} rejected {c['rejected']}"
            for kind, c in sorted(self.by_kind.items())
        )
        eta = self.eta_seconds()
        parts = [
            f"raypipe [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {self.done}/{self.total} {fraction:.0%}",
            (f"ETA {clock(eta)}, " if eta is not None else "") + f"{clock(elapsed)} elapsed",
            kinds or "starting the pools",
        ]
        if self.skipped:
            parts.append(f"{self.skipped} skipped as done")
        text = " | ".join(parts)
        width = shutil.get_terminal_size((120, 24)).columns - 1
        return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@contextmanager
def terminal(verbose: bool = False) -> Iterator[Console]:
    """The Console of a command: over the process's stderr, with every line written to stderr
    (by Python, by Ray's C++ core, by the worker output Ray forwards) passing through it, and
    Ray's routine notices dropped unless `verbose` (raypipe/pipeline/ray_init.py)."""
    from raypipe.pipeline.ray_init import QUIET_LINES, filtered_stderr

    try:
        own_fd = sys.stderr.fileno() == 2
    except (AttributeError, ValueError, OSError):
        own_fd = False  # sys.stderr was replaced (a test's capture): write there, filter the rest
    stream = os.fdopen(os.dup(2), "w", buffering=1, errors="replace") if own_fd else sys.stderr
    console = Console(stream)
    try:
        with filtered_stderr(console.write, quiet=() if verbose else QUIET_LINES):
            yield console
    finally:
        console.status("")
        if own_fd:
            stream.close()
