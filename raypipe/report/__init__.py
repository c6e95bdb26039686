"""The run report: one self-contained HTML page of a run's output (`raypipe report OUT`).

What it shows, from the run's metadata (raypipe.sink.read_metadata) and its videos:
  - a summary: rows by kind and status, video seconds, generation seconds, throughput and
    the slowest rows (static HTML, computed here: summary.py);
  - a gallery of every `ok` video: a poster thumbnail made now (a decoded frame, a small JPEG
    embedded as a data URI), playing on hover, larger on click, with id, kind, prompt and settings;
  - a table of every failed or rejected row with its error;
  - the quality scores (quality.js): a histogram and a range filter per score, the scores on each card;
  - a filter by kind and status and a text search, kept in the page's #hash so a filtered view
    can be linked (e.g. report.html#status=failed&q=beach).

Thousands of rows stay usable: the rows are embedded once as a JSON array and the page's
script renders one page of cards (and of failures) at a time. The page needs nothing
but itself and, to play them, the videos: `videos/<id>.mp4` relative to the page when it sits
in OUT (the default), or a path relative to wherever --html puts it. When OUT is an object
store and the page is elsewhere, a browser cannot play `s3://` URIs: the cards keep their
embedded posters and show the video's URI.

The page is made of template files in raypipe/report/templates/ (package data), inlined into
the one page by page.fill(): report.html (the page, its sections and its `%%NAME%%`
placeholders), report.css and report.js (the frame, the filter and the hash, the helpers and
the render loop every section hangs on), and one .css and .js per section (gallery, failures).

To add a section (say a per-worker timeline):
  1. report.html: its block (a heading and an empty element to draw into) where it goes on the
     page, and `%%timeline.css%%` / `%%timeline.js%%` lines beside the others;
  2. templates/timeline.js: `(() => { ... addSection({ render(rows) { ... } }); })();` drawing
     from the filtered rows (report.js lists the other hooks: its own filter, the #hash, reset);
     templates/timeline.css: its styles;
  3. if it needs a field the rows do not carry, add it in _card_record (it is embedded once per
     row: keep it short); a figure computed over the whole run can instead be static HTML, a
     `%%TIMELINE%%` placeholder filled in render_html like %%SUMMARY%%.
tests/test_report.py renders the page in headless Chromium: give the new section a check there.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import json
import os
import tempfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import fsspec

from raypipe.metadata import QUALITY_COLUMNS
from raypipe.report import page
from raypipe.report.summary import summarize, summary_html
from raypipe.report.timeline import timeline_data
from raypipe.schema import STATUSES
from raypipe.sink import read_metadata, video_uri
from raypipe.usage import read_run_summaries
from raypipe.video import commit_file, is_local, join_uri, read_video

THUMB_MAX_SIDE = 160  # px: the longest side of an embedded poster (a few KB each as JPEG)
THUMB_QUALITY = 75
THUMB_WORKERS = 8  # posters are made in threads: fsspec reads and decord decoding release the GIL
CARDS_PER_PAGE = 48
FAILURES_PER_PAGE = 100


class ReportError(ValueError):
    """No report can be made (e.g. OUT holds no metadata)."""


@dataclass
class ReportResult:
    uri: str  # where the page was written
    rows: int
    by_status: dict[str, int]
    posters_missing: int  # ok rows whose video could not be decoded into a poster


def default_html(out: str) -> str:
    return join_uri(out, "report.html")


# ---- per-row data ---------------------------------------------------------------------


def make_poster(uri: str) -> str:
    """A JPEG data URI of the middle frame of the video at `uri`, at most THUMB_MAX_SIDE px."""
    from PIL import Image

    frames = read_video(uri, num_frames=3)  # first, middle, last: the middle one is the poster
    image = Image.fromarray(frames[len(frames) // 2])
    image.thumbnail((THUMB_MAX_SIDE, THUMB_MAX_SIDE), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=THUMB_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _poster_or_error(uri: str) -> tuple[str, str]:
    try:
        return make_poster(uri), ""
    except Exception as err:  # noqa: BLE001 - a missing or broken video gets a card without a poster
        return "", f"no poster: {type(err).__name__}: {err}"[:500]


def _local_path(uri: str) -> str:
    return os.path.abspath(fsspec.core.url_to_fs(uri)[1])


def video_href(out: str, html: str, row_id: str) -> tuple[str, bool]:
    """The link a card's video uses, and whether a browser can play it from the page."""
    uri = video_uri(out, row_id)
    if is_local(out) and is_local(html):
        rel = os.path.relpath(_local_path(uri), os.path.dirname(_local_path(html)))
        return urllib.parse.quote(rel.replace(os.sep, "/")), True
    if html.rsplit("/", 1)[0] == out.rstrip("/"):
        # The page sits in OUT: the relative link plays wherever OUT is served over HTTP.
        return f"videos/{urllib.parse.quote(row_id)}.mp4", True
    return uri, False


def _where(params_json: str) -> str:
    """'manifest:line' for rows the validator rejected (it records where they came from)."""
    try:
        params = json.loads(params_json or "{}")
    except ValueError:
        return ""
    if isinstance(params, dict) and "source" in params and "line" in params:
        return f"{params['source']}:{params['line']}"
    return ""


def _traceback(params_json: str) -> str:
    try:
        params = json.loads(params_json or "{}")
    except ValueError:
        return ""
    return str(params.get("traceback", "")) if isinstance(params, dict) else ""


def _iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _card_record(row: dict[str, Any], href: str, playable: bool, poster: str, poster_error: str) -> dict[str, Any]:
    """What the page's script needs of one row (short keys: thousands of them are embedded)."""
    return {
        "id": row["id"],
        "kind": row["kind"] or "",
        "mode": row["mode"] or "",
        "status": row["status"],
        "error": row["error"] or "",
        "prompt": row["prompt"] or "",
        "negative_prompt": row["negative_prompt"] or "",
        "seed": row["seed"],
        "num_frames": row["num_frames"],
        "height": row["height"],
        "width": row["width"],
        "fps": row["fps"],
        "steps": row["num_inference_steps"],
        "guidance": row["guidance_scale"],
        "model": row["model"] or "",
        "sp_degree": row["sp_degree"],
        "duration_s": row["duration_s"],
        "gen_seconds": row["gen_seconds"],
        "bytes": row["bytes"],
        "device": row["device"] or "",
        "worker": row["worker"] or "",
        "finished_at": _iso(row["finished_at"]),
        "params": row["params_json"] or "",
        "where": _where(row["params_json"]),
        "traceback": _traceback(row["params_json"]) if row["status"] != "ok" else "",
        "video": href if row["status"] == "ok" else "",
        "playable": playable and row["status"] == "ok",
        "video_uri": row["video_uri"] or "",
        "poster": poster,
        "poster_error": poster_error,
        # the quality scores (raypipe/quality.py), under their column names: quality.js
        **{name: None if row.get(name) is None else round(float(row[name]), 4) for name in QUALITY_COLUMNS},
    }


# ---- the page -----------------------------------------------------------------------------


def render_html(
    out: str, records: list[dict[str, Any]], summary: dict[str, Any], timeline: dict[str, Any] | None = None
) -> str:
    """The page (templates/report.html, its CSS and script inlined) for these rows.
    timeline: the pool actors over time (raypipe/report/timeline.py); none drawn without it."""
    from raypipe import __version__

    e = html_lib.escape
    generated = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    kinds = sorted({r["kind"] for r in records})
    config = {"cardsPerPage": CARDS_PER_PAGE, "failuresPerPage": FAILURES_PER_PAGE}
    return page.fill(
        {
            "TITLE": e(f"raypipe report: {out}"),
            "OUT": e(out),
            "GENERATED": e(f"made {generated} by raypipe {__version__}"),
            "SUMMARY": summary_html(summary),
            "KIND_OPTIONS": "".join(f'<option value="{e(k)}">{e(k)}</option>' for k in kinds),
            "STATUS_OPTIONS": "".join(f'<option value="{s}">{s}</option>' for s in STATUSES),
            "CONFIG": page.json_for_script(config),
            "ROWS": page.json_for_script(records),
            "TIMELINE": page.json_for_script(timeline or {"runs": []}),
        }
    )


def _write_text(text: str, uri: str) -> None:
    with tempfile.TemporaryDirectory(prefix="raypipe-") as tmpdir:
        local = os.path.join(tmpdir, "report.html")
        with open(local, "w", encoding="utf-8") as f:
            f.write(text)
        commit_file(local, uri)  # the page appears complete or not at all


def make_report(out: str, html: str | None = None, workers: int = THUMB_WORKERS) -> ReportResult:
    """Write the report of the run under `out` to `html` (default OUT/report.html)."""
    html = html or default_html(out)
    table = read_metadata(out)
    if table.num_rows == 0:
        raise ReportError(f"{out}: no metadata rows (metadata/*.parquet); is this a raypipe run's --out?")
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    ok_ids = [r["id"] for r in rows if r["status"] == "ok"]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        posters = dict(zip(ok_ids, pool.map(_poster_or_error, [video_uri(out, i) for i in ok_ids])))
    records = []
    for row in rows:
        href, playable = video_href(out, html, row["id"]) if row["status"] == "ok" else ("", False)
        poster, poster_error = posters.get(row["id"], ("", ""))
        records.append(_card_record(row, href, playable, poster, poster_error))
    summary = summarize(rows)
    timeline = timeline_data(rows, read_run_summaries(out))
    _write_text(render_html(out, records, summary, timeline), html)
    return ReportResult(
        uri=html,
        rows=len(rows),
        by_status=summary["by_status"],
        posters_missing=sum(1 for p, _ in posters.values() if not p),
    )
