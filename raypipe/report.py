"""The run report: one self-contained HTML page of a run's output (`raypipe report OUT`).

What it shows, from the run's metadata (raypipe.sink.read_metadata) and its videos:
  - a summary: rows by kind and status, video seconds, generation seconds, throughput and
    the slowest rows (static HTML, computed here);
  - a gallery of every `ok` video: a poster thumbnail made now (a decoded frame, a small JPEG
    embedded as a data URI), playing on hover, larger on click, with id, kind, prompt and settings;
  - a table of every failed or rejected row with its error;
  - a filter by kind and status and a text search, kept in the page's #hash so a filtered view
    can be linked (e.g. report.html#status=failed&q=beach).

Thousands of rows stay usable: the rows are embedded once as a JSON array and the page's
inline script renders one page of cards (and of failures) at a time. The page needs nothing
but itself and, to play them, the videos: `videos/<id>.mp4` relative to the page when it sits
in OUT (the default), or a path relative to wherever --html puts it. When OUT is an object
store and the page is elsewhere, a browser cannot play `s3://` URIs: the cards keep their
embedded posters and show the video's URI.
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

from raypipe.schema import STATUSES
from raypipe.sink import read_metadata, video_uri
from raypipe.video import commit_file, is_local, join_uri, read_video

THUMB_MAX_SIDE = 160  # px: the longest side of an embedded poster (a few KB each as JPEG)
THUMB_QUALITY = 75
THUMB_WORKERS = 8  # posters are made in threads: fsspec reads and decord decoding release the GIL
CARDS_PER_PAGE = 48
FAILURES_PER_PAGE = 100
SLOWEST_ROWS = 10


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
    }


# ---- the summary ------------------------------------------------------------------------


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by kind and status, seconds, throughput and the slowest rows."""
    by_kind: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = by_kind.setdefault(row["kind"] or "(none)", dict.fromkeys(STATUSES, 0))
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    ok = [r for r in rows if r["status"] == "ok"]
    timed = [r for r in rows if r["gen_seconds"] is not None]
    starts = [r["started_at"] for r in rows if r["started_at"]]
    finishes = [r["finished_at"] for r in rows if r["finished_at"]]
    wall = (max(finishes) - min(starts)).total_seconds() if starts and finishes else 0.0
    video_seconds = sum(r["duration_s"] or 0.0 for r in ok)
    return {
        "by_kind": dict(sorted(by_kind.items())),
        "by_status": {s: sum(c.get(s, 0) for c in by_kind.values()) for s in STATUSES},
        "rows": len(rows),
        "videos": len(ok),
        "video_seconds": video_seconds,
        "video_frames": sum(r["num_frames"] or 0 for r in ok),
        "video_bytes": sum(r["bytes"] or 0 for r in ok),
        "gen_seconds": sum(r["gen_seconds"] for r in timed),
        "wall_seconds": wall,
        "first_start": min(starts) if starts else None,
        "last_finish": max(finishes) if finishes else None,
        "slowest": sorted(timed, key=lambda r: r["gen_seconds"], reverse=True)[:SLOWEST_ROWS],
    }


def _fmt_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _summary_html(s: dict[str, Any]) -> str:
    e = html_lib.escape
    head = "".join(f"<th>{e(st)}</th>" for st in STATUSES)
    body = "".join(
        f"<tr><td>{e(kind)}</td>"
        + "".join(f'<td class="num">{c.get(st, 0)}</td>' for st in STATUSES)
        + f'<td class="num">{sum(c.values())}</td></tr>'
        for kind, c in s["by_kind"].items()
    )
    total = (
        '<tr class="total"><td>all</td>'
        + "".join(f'<td class="num">{s["by_status"][st]}</td>' for st in STATUSES)
        + f'<td class="num">{s["rows"]}</td></tr>'
    )
    wall = s["wall_seconds"]
    figures = [
        ("videos", f"{s['videos']} ({_fmt_bytes(s['video_bytes'])})"),
        ("video seconds", f"{s['video_seconds']:.1f} s ({s['video_frames']} frames)"),
        ("generation seconds", f"{_fmt_seconds(s['gen_seconds'])} summed over rows and workers"),
        (
            "wall time",
            f"{_fmt_seconds(wall)} from the first start to the last finish (includes pauses between resumed runs)"
            if wall
            else "n/a",
        ),
        (
            "throughput",
            f"{s['videos'] / wall * 60:.2f} videos/min, {s['video_seconds'] / wall:.3f} video s per wall s"
            if wall > 0
            else "n/a",
        ),
        (
            "generation cost",
            f"{s['gen_seconds'] / s['videos']:.2f} s per video, "
            f"{s['gen_seconds'] / s['video_seconds']:.1f} s per video second"
            if s["videos"] and s["video_seconds"]
            else "n/a",
        ),
    ]
    dl = "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in figures)
    slow = "".join(
        f'<tr><td><a href="#q={urllib.parse.quote(r["id"])}">{e(r["id"])}</a></td><td>{e(r["kind"] or "")}</td>'
        f'<td>{e(r["status"])}</td><td class="num">{r["gen_seconds"]:.2f}</td>'
        f"<td>{e(_shape(r))}</td><td>{e(str(r['num_inference_steps'] or ''))}</td></tr>"
        for r in s["slowest"]
    )
    return (
        f'<div class="summary"><table id="by-kind"><thead><tr><th>kind</th>{head}<th>rows</th></tr></thead>'
        f"<tbody>{body}{total}</tbody></table><dl>{dl}</dl></div>"
        f'<h3>Slowest rows</h3><table id="slowest"><thead><tr><th>id</th><th>kind</th><th>status</th>'
        f"<th>gen s</th><th>frames × h × w</th><th>steps</th></tr></thead><tbody>{slow}</tbody></table>"
    )


def _shape(row: dict[str, Any]) -> str:
    if row["num_frames"] is None:
        return ""
    return f"{row['num_frames']} × {row['height']} × {row['width']}"


# ---- the page -----------------------------------------------------------------------------


def _json_for_script(value: Any) -> str:
    # Inside <script type="application/json"> only "</script" could end the block: escape every "<".
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_html(out: str, records: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    from raypipe import __version__

    e = html_lib.escape
    generated = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    kinds = sorted({r["kind"] for r in records})
    config = {"cardsPerPage": CARDS_PER_PAGE, "failuresPerPage": FAILURES_PER_PAGE}
    return (
        _PAGE.replace("%%TITLE%%", e(f"raypipe report: {out}"))
        .replace("%%OUT%%", e(out))
        .replace("%%GENERATED%%", e(f"made {generated} by raypipe {__version__}"))
        .replace("%%SUMMARY%%", _summary_html(summary))
        .replace("%%KIND_OPTIONS%%", "".join(f'<option value="{e(k)}">{e(k)}</option>' for k in kinds))
        .replace("%%STATUS_OPTIONS%%", "".join(f'<option value="{s}">{s}</option>' for s in STATUSES))
        .replace("%%CONFIG%%", _json_for_script(config))
        .replace("%%ROWS%%", _json_for_script(records))
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
    _write_text(render_html(out, records, summary), html)
    return ReportResult(
        uri=html,
        rows=len(rows),
        by_status=summary["by_status"],
        posters_missing=sum(1 for p, _ in posters.values() if not p),
    )


_PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>%%TITLE%%</title>
<style>
  :root { --fg: #1d2330; --muted: #6b7385; --line: #dde1e8; --bg: #f5f6f8; --card: #fff;
          --ok: #2e7d32; --failed: #c62828; --rejected: #b26a00; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
         background: var(--bg); }
  header { background: #1d2330; color: #fff; padding: 14px 24px; }
  header h1 { margin: 0; font-size: 20px; }
  header .sub { color: #aab2c5; font-size: 12px; margin-top: 2px; word-break: break-all; }
  main { padding: 16px 24px 48px; }
  h2 { font-size: 17px; margin: 28px 0 10px; }
  h3 { font-size: 14px; margin: 18px 0 8px; }
  table { border-collapse: collapse; background: var(--card); }
  th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
  th { background: #eceef2; font-weight: 600; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  tr.total td { font-weight: 600; }
  .summary { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
  dl { display: grid; grid-template-columns: max-content auto; gap: 4px 14px; margin: 0; }
  dt { color: var(--muted); } dd { margin: 0; }
  .controls { position: sticky; top: 0; z-index: 5; background: var(--bg); padding: 10px 0;
              display: flex; flex-wrap: wrap; gap: 10px; align-items: center; border-bottom: 1px solid var(--line); }
  .controls input[type=search] { width: 320px; padding: 5px 8px; }
  .controls select, .controls button, .pager button { padding: 4px 8px; }
  #match-count { color: var(--muted); }
  .pager { display: flex; gap: 6px; align-items: center; margin: 10px 0; color: var(--muted); }
  .grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap: 12px; }
  .card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; overflow: hidden;
          cursor: pointer; display: flex; flex-direction: column; }
  .card:hover { box-shadow: 0 2px 10px rgba(0,0,0,.15); }
  .media { background: #111; height: 170px; display: flex; align-items: center; justify-content: center; }
  .media img, .media video { width: 100%; height: 100%; object-fit: contain; image-rendering: auto; }
  .media .noposter { color: #ccc; font-size: 12px; padding: 8px; text-align: center; }
  .card .body { padding: 8px 10px; display: flex; flex-direction: column; gap: 3px; }
  .card .id { font-weight: 600; word-break: break-all; }
  .card .kind { color: var(--muted); font-size: 12px; }
  .card .prompt { font-size: 13px; display: -webkit-box; -webkit-line-clamp: 3; -webkit-box-orient: vertical;
                  overflow: hidden; }
  .card .settings { color: var(--muted); font-size: 12px; }
  .card .uri { font-size: 11px; color: var(--muted); word-break: break-all; }
  .status-ok { color: var(--ok); } .status-failed { color: var(--failed); } .status-rejected { color: var(--rejected); }
  #failures td.error { font-family: ui-monospace, Menlo, monospace; font-size: 12px; white-space: pre-wrap;
                       max-width: 640px; word-break: break-word; }
  #failures td.prompt { max-width: 320px; }
  details pre { white-space: pre-wrap; font-size: 11px; margin: 4px 0 0; }
  .empty { color: var(--muted); padding: 8px 0; }
  #modal { position: fixed; inset: 0; background: rgba(0,0,0,.6); display: none; z-index: 10;
           align-items: center; justify-content: center; padding: 24px; }
  #modal.open { display: flex; }
  #modal .panel { background: var(--card); border-radius: 8px; max-width: 960px; width: 100%; max-height: 100%;
                  overflow: auto; padding: 16px; display: flex; gap: 16px; flex-wrap: wrap; }
  #modal video, #modal img { max-width: 520px; width: 100%; background: #111; }
  #modal table { font-size: 12px; flex: 1; min-width: 280px; align-self: flex-start; }
  #modal .close { position: absolute; top: 12px; right: 16px; font-size: 22px; color: #fff; background: none;
                  border: 0; cursor: pointer; }
  #modal td { word-break: break-word; }
</style>
</head>
<body>
<header>
  <h1>raypipe run report</h1>
  <div class="sub">%%OUT%% &middot; %%GENERATED%%</div>
</header>
<main>
<h2>Summary</h2>
%%SUMMARY%%

<div class="controls">
  <label>kind <select id="kind"><option value="">all</option>%%KIND_OPTIONS%%</select></label>
  <label>status <select id="status"><option value="">all</option>%%STATUS_OPTIONS%%</select></label>
  <input id="q" type="search" placeholder="search prompts, ids, errors">
  <button id="clear" type="button">clear</button>
  <span id="match-count"></span>
</div>
<noscript><p>The gallery and the failures table are drawn by the page's script: enable JavaScript.</p></noscript>

<h2>Videos <span id="videos-count"></span></h2>
<div class="pager" id="cards-pager"></div>
<div class="grid" id="gallery"></div>

<h2>Failed and rejected rows <span id="failures-count"></span></h2>
<div class="pager" id="failures-pager"></div>
<table id="failures">
  <thead><tr><th>id</th><th>kind</th><th>status</th><th>error</th><th>where</th><th>prompt</th></tr></thead>
  <tbody></tbody>
</table>
</main>

<div id="modal"><button class="close" type="button" title="close (Esc)">&times;</button><div class="panel"></div></div>

<script type="application/json" id="report-config">%%CONFIG%%</script>
<script type="application/json" id="report-rows">%%ROWS%%</script>
<script>
"use strict";
(function () {
  const CONFIG = JSON.parse(document.getElementById("report-config").textContent);
  const ROWS = JSON.parse(document.getElementById("report-rows").textContent);
  for (const r of ROWS) r.haystack = (r.id + "\n" + r.prompt + "\n" + r.negative_prompt + "\n" + r.error).toLowerCase();
  const state = { kind: "", status: "", q: "", page: 0, fpage: 0 };
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  }

  function settings(r) {
    const parts = [];
    if (r.mode) parts.push(r.mode);
    if (r.num_frames != null) parts.push(r.num_frames + " × " + r.height + "×" + r.width + " @ " + r.fps + " fps");
    if (r.duration_s != null) parts.push(r.duration_s.toFixed(2) + " s");
    if (r.steps != null) parts.push(r.steps + " steps");
    if (r.guidance != null) parts.push("cfg " + r.guidance);
    if (r.seed != null) parts.push("seed " + r.seed);
    if (r.sp_degree != null && r.sp_degree > 1) parts.push("sp " + r.sp_degree);
    if (r.gen_seconds != null) parts.push("gen " + r.gen_seconds.toFixed(1) + " s");
    return parts.join(" · ");
  }

  function posterNode(r) {
    if (r.poster) return el("img", { src: r.poster, alt: r.id, loading: "lazy" });
    return el("div", { class: "noposter", text: r.poster_error || "no poster" });
  }

  function card(r) {
    const media = el("div", { class: "media" }, posterNode(r));
    const node = el("div", { class: "card", id: "card-" + r.id, "data-id": r.id, "data-video": r.video },
      media,
      el("div", { class: "body" },
        el("div", { class: "id", text: r.id }),
        el("div", { class: "kind", text: r.kind + (r.model ? " · " + r.model : "") }),
        el("div", { class: "prompt", text: r.prompt, title: r.prompt }),
        el("div", { class: "settings", text: settings(r) }),
        r.playable ? null : el("div", { class: "uri", text: r.video })));
    if (r.playable) {
      // Hover plays a muted loop in place of the poster; leaving puts the poster back.
      node.addEventListener("mouseenter", () => {
        const v = el("video", { src: r.video, muted: "", loop: "", autoplay: "", playsinline: "" });
        if (r.poster) v.setAttribute("poster", r.poster);
        v.muted = true;
        media.replaceChildren(v);
        v.play().catch(() => {});
      });
      node.addEventListener("mouseleave", () => media.replaceChildren(posterNode(r)));
    }
    node.addEventListener("click", () => openModal(r));
    return node;
  }

  function openModal(r) {
    const panel = document.querySelector("#modal .panel");
    const media = r.playable
      ? el("video", { src: r.video, controls: "", autoplay: "", loop: "", playsinline: "" })
      : posterNode(r);
    if (r.playable && r.poster) media.setAttribute("poster", r.poster);
    const fields = [["id", r.id], ["kind", r.kind], ["mode", r.mode], ["status", r.status], ["prompt", r.prompt],
      ["negative prompt", r.negative_prompt], ["settings", settings(r)], ["model", r.model],
      ["video", r.video], ["bytes", r.bytes], ["device", r.device], ["worker", r.worker],
      ["finished", r.finished_at], ["params", r.params], ["error", r.error]];
    const table = el("table", {}, ...fields.filter(([, v]) => v !== "" && v != null)
      .map(([k, v]) => el("tr", {}, el("th", { text: k }), el("td", { text: String(v) }))));
    panel.replaceChildren(media, table);
    $("modal").classList.add("open");
  }
  function closeModal() {
    $("modal").classList.remove("open");
    document.querySelector("#modal .panel").replaceChildren();
  }
  $("modal").addEventListener("click", (ev) => { if (ev.target === $("modal")) closeModal(); });
  document.querySelector("#modal .close").addEventListener("click", closeModal);
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") closeModal(); });

  function failureRow(r) {
    const error = el("td", { class: "error" }, r.error);
    if (r.traceback) error.append(el("details", {}, el("summary", { text: "traceback" }), el("pre", { text: r.traceback })));
    return el("tr", { id: "failure-" + r.id, "data-id": r.id },
      el("td", { class: "id", text: r.id }), el("td", { text: r.kind }),
      el("td", { class: "status-" + r.status, text: r.status }), error,
      el("td", { text: r.where }), el("td", { class: "prompt", text: r.prompt }));
  }

  function pager(node, page, pages, total, onPage) {
    const button = (label, target, disabled) => {
      const b = el("button", { type: "button", text: label });
      b.disabled = disabled;
      b.addEventListener("click", () => onPage(target));
      return b;
    };
    node.replaceChildren();
    if (pages <= 1) return;
    node.append(button("« first", 0, page === 0), button("‹ prev", page - 1, page === 0),
      el("span", { class: "page-label", text: "page " + (page + 1) + " of " + pages + " (" + total + " rows)" }),
      button("next ›", page + 1, page >= pages - 1), button("last »", pages - 1, page >= pages - 1));
  }

  function matches(r) {
    return (!state.kind || r.kind === state.kind) && (!state.status || r.status === state.status) &&
      (!state.q || r.haystack.includes(state.q));
  }

  function render() {
    const rows = ROWS.filter(matches);
    const videos = rows.filter((r) => r.status === "ok");
    const failures = rows.filter((r) => r.status !== "ok");
    const per = CONFIG.cardsPerPage, fper = CONFIG.failuresPerPage;
    const pages = Math.max(1, Math.ceil(videos.length / per)), fpages = Math.max(1, Math.ceil(failures.length / fper));
    state.page = Math.min(state.page, pages - 1);
    state.fpage = Math.min(state.fpage, fpages - 1);

    const gallery = $("gallery");
    gallery.replaceChildren(...videos.slice(state.page * per, (state.page + 1) * per).map(card));
    if (!videos.length) gallery.replaceChildren(el("div", { class: "empty", text: "no videos match" }));
    pager($("cards-pager"), state.page, pages, videos.length, (p) => { state.page = p; render(); });

    const tbody = document.querySelector("#failures tbody");
    tbody.replaceChildren(...failures.slice(state.fpage * fper, (state.fpage + 1) * fper).map(failureRow));
    if (!failures.length) tbody.replaceChildren(el("tr", {}, el("td", { colspan: "6", class: "empty", text: "none" })));
    pager($("failures-pager"), state.fpage, fpages, failures.length, (p) => { state.fpage = p; render(); });

    $("videos-count").textContent = "(" + videos.length + ")";
    $("failures-count").textContent = "(" + failures.length + ")";
    $("match-count").textContent = rows.length + " of " + ROWS.length + " rows match";
    writeHash();
  }

  // The filter lives in the #hash: a filtered view can be bookmarked or linked.
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    state.kind = p.get("kind") || "";
    state.status = p.get("status") || "";
    state.q = (p.get("q") || "").trim().toLowerCase();
    state.page = Math.max(0, (parseInt(p.get("page"), 10) || 1) - 1);
    $("kind").value = state.kind;
    $("status").value = state.status;
    $("q").value = p.get("q") || "";
  }
  function writeHash() {
    const p = new URLSearchParams();
    if (state.kind) p.set("kind", state.kind);
    if (state.status) p.set("status", state.status);
    if (state.q) p.set("q", state.q);
    if (state.page) p.set("page", String(state.page + 1));
    const hash = p.toString();
    if (hash === location.hash.slice(1)) return;
    try { history.replaceState(null, "", hash ? "#" + hash : location.pathname + location.search); } catch (e) { /* some file:// pages */ }
  }

  let timer = 0;
  $("q").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { state.q = $("q").value.trim().toLowerCase(); state.page = state.fpage = 0; render(); }, 150);
  });
  $("kind").addEventListener("change", () => { state.kind = $("kind").value; state.page = state.fpage = 0; render(); });
  $("status").addEventListener("change", () => { state.status = $("status").value; state.page = state.fpage = 0; render(); });
  $("clear").addEventListener("click", () => { location.hash = ""; readHash(); render(); });
  window.addEventListener("hashchange", () => { readHash(); render(); });
  readHash();
  render();
})();
</script>
</body>
</html>
"""
