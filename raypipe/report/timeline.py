"""The report's pool section: a timeline per pool actor (one bar per video, idle gaps as gaps),
the throughput over time, and each pool's utilisation (the page's %%TIMELINE%%, drawn by
templates/timeline.js as SVG).

Figures come from the metadata (worker, started_at, gen_seconds, finished_at, status) and the
run summaries (OUT/runs/<run_id>.json: when each actor was made and loaded its model, and which
run it belonged to), computed by raypipe.usage as the run computed them, so the page shows the
busy ratios `raypipe run` printed. A resumed output has several runs: each gets its own timeline
(rows whose worker no run summary knows, e.g. an output made before run summaries existed, form
one more, starting at their first call).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from raypipe.usage import usage_from_rows


def _seconds(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def timeline_data(rows: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """{"runs": [...]}: per run, its actors (worker, pool, created/loaded offsets, busy ratio),
    its calls (worker index, start offset, seconds of each video, ids, statuses), its ok videos'
    finish offsets (throughput) and its pools' utilisation. Offsets are seconds from the run's t0."""
    actor_of: dict[str, tuple[str, dict]] = {}
    for summary in summaries:
        for actor in summary.get("actors", []):
            actor_of[actor["worker"]] = (summary["run_id"], actor)
    generated = [
        r
        for r in rows
        if r["status"] != "rejected" and r.get("worker") and r.get("started_at") and r.get("gen_seconds") is not None
    ]
    by_run: dict[str, list[dict]] = {}
    for row in generated:
        by_run.setdefault(actor_of.get(row["worker"], ("", {}))[0], []).append(row)
    runs = []
    order = {s["run_id"]: i for i, s in enumerate(summaries)}
    for run_id in sorted(by_run, key=lambda r: order.get(r, len(order))):
        run_rows = by_run[run_id]
        loaded = {w: a["loaded_at"] for w, (rid, a) in actor_of.items() if rid == run_id and a.get("loaded_at")}
        pools, actors = usage_from_rows(run_rows, loaded)
        summary = next((s for s in summaries if s["run_id"] == run_id), {})
        starts = [_seconds(r["started_at"]) for r in run_rows]
        created = [actor_of[a["worker"]][1].get("created_at") for a in actors if a["worker"] in actor_of]
        t0 = min(x for x in [summary.get("started_at"), *created, *starts] if x is not None)
        index = {a["worker"]: i for i, a in enumerate(actors)}
        calls: dict[tuple[str, float], list[dict]] = {}
        for row in sorted(run_rows, key=lambda r: (r["started_at"], r["id"])):
            calls.setdefault((row["worker"], _seconds(row["started_at"])), []).append(row)
        finished = sorted(
            _seconds(r["finished_at"]) - t0 for r in run_rows if r["status"] == "ok" and r.get("finished_at")
        )

        def offset(value: float | None, t0: float = t0) -> float | None:
            return round(value - t0, 4) if value is not None else None

        runs.append(
            {
                "run_id": run_id,
                "t0": t0,
                "end": round(max(s + sum(r["gen_seconds"] for r in c) for (_, s), c in calls.items()) - t0, 4),
                "actors": [
                    {
                        "worker": a["worker"],
                        "pool": a["pool"],
                        "created": offset(actor_of.get(a["worker"], ("", {}))[1].get("created_at")),
                        "loaded": offset(a["loaded_at"]),
                        "busy": a["busy_seconds"],
                        "span": a["span_seconds"],
                        "ratio": a["busy_ratio"],
                        "rows": a["rows"],
                    }
                    for a in actors
                ],
                "calls": [
                    {
                        "w": index[worker],
                        "s": offset(start),
                        "d": [round(r["gen_seconds"], 4) for r in call],
                        "ids": [r["id"] for r in call],
                        "st": [r["status"] for r in call],
                    }
                    for (worker, start), call in calls.items()
                ],
                "finished": [round(f, 4) for f in finished],
                "pools": pools,
            }
        )
    return {"runs": runs}
