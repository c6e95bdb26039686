"""The report's summary: counts by kind and status, seconds, throughput and the slowest rows,
computed here and drawn as static HTML (the page's %%SUMMARY%%)."""

from __future__ import annotations

import html as html_lib
import urllib.parse
from typing import Any

from raypipe.schema import STATUSES

SLOWEST_ROWS = 10


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


def _shape(row: dict[str, Any]) -> str:
    if row["num_frames"] is None:
        return ""
    return f"{row['num_frames']} × {row['height']} × {row['width']}"


def summary_html(s: dict[str, Any]) -> str:
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
