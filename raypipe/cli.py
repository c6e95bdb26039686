"""The `raypipe` command: argument parsing and calls, nothing else.

Exit codes (DESIGN.md): 0 every row ok (or skipped as done); 1 the run finished but some
rows failed or were rejected; 2 nothing ran (usage, config or manifest unreadable).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

EXIT_OK, EXIT_SOME_FAILED, EXIT_NOTHING_RAN = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse exits 2 on usage errors, as DESIGN.md wants
        self.print_usage(sys.stderr)
        self.exit(EXIT_NOTHING_RAN, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="raypipe", description="Batch video generation on Ray.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("run", help="generate every row of the manifests")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST", help="JSONL, CSV or Parquet; any fsspec URI")
    p.add_argument("--out", required=True, help="output URI (local folder, s3://bucket/prefix, ...)")
    p.add_argument(
        "--config", action="append", help="run config YAML (default: tiny models on CPU); repeated, merged in order"
    )
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the run's live raypipe_* metrics for Prometheus on this port",
    )
    p.add_argument(
        "--pushgateway",
        metavar="URL",
        help="push the run's final metrics to this Prometheus Pushgateway (also in OUT/metrics.prom)",
    )
    _verbose(p)

    p = sub.add_parser("validate", help="check every row; print each rejected row and why")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--config", action="append", help="run config YAML (its row defaults apply); repeatable")
    p.add_argument("--address", help="Ray cluster address")
    _verbose(p)

    p = sub.add_parser("plan", help="rows per kind and pool, estimated GPU-seconds; nothing generated")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--config", action="append", help="run config YAML (pools, models, `plan` assumptions); repeatable")
    p.add_argument("--address", help="Ray cluster address")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    _verbose(p)

    p = sub.add_parser("report", help="an HTML gallery of a run: previews, metadata, failures, throughput")
    p.add_argument("out", metavar="OUT", help="a run's --out URI")
    p.add_argument("--html", help="where to write the page (default: OUT/report.html)")

    p = sub.add_parser("schedule", help="print the per-frame values of a Deforum schedule as a JSON list")
    p.add_argument("schedule", help='a Deforum keyframe schedule, e.g. "0:(1.0), 30:(1.04)"')
    p.add_argument("--frames", type=int, required=True, metavar="N", help="number of frames (max_f is N-1)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="the seed `s` in expressions (default 0)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the values as a PNG chart")

    p = sub.add_parser("models", help="model utilities")
    models = p.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    t = models.add_parser("tiny", help="write tiny random-weight pipelines of every family")
    t.add_argument("dir")
    return parser


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--verbose", action="store_true", help="also show Ray's routine notices (token auth, progress bars, ...)"
    )


def process_started() -> float | None:
    """Unix seconds at which this process started (Linux), for the run summary's phases."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the name
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - since_boot
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _load(args):
    from raypipe.config import ConfigError, load_config
    from raypipe.manifest import ManifestError, check_manifests

    try:
        return load_config(args.config), check_manifests(args.manifests)
    except (ConfigError, ManifestError) as err:
        print(f"raypipe: {err}", file=sys.stderr)
        sys.exit(EXIT_NOTHING_RAN)


def cmd_run(args) -> int:
    from raypipe import run
    from raypipe.config import ConfigError
    from raypipe.metrics import MetricsError, RunMetrics
    from raypipe.progress import terminal

    config, uris = _load(args)
    try:
        metrics = RunMetrics(port=args.metrics_port, pushgateway=args.pushgateway)
    except MetricsError as err:
        print(f"raypipe: {err}", file=sys.stderr)
        return EXIT_NOTHING_RAN
    with terminal(args.verbose) as console, metrics:
        stamps = {"process_started": process_started() or time.time(), "ray_init_started": time.time()}
        # No dashboard: nothing of a run needs it (the workers' metrics are served without it),
        # and it is a second of start-up on 2 cores. Ignored when joining a running cluster.
        run.init_ray(args.address, dashboard=False)
        stamps["ray_ready"] = time.time()
        try:
            summary = run.run(uris, args.out, config, progress=console, metrics=metrics, stamps=stamps)
        except ConfigError as err:  # the preflight: a model the run needs does not resolve
            print(f"raypipe: {err}", file=sys.stderr)
            return EXIT_NOTHING_RAN
    print(f"raypipe: outputs in {args.out} (videos/, metadata/); a gallery of the run: raypipe report {args.out}")
    return summary.exit_code


def cmd_validate(args) -> int:
    from raypipe import run
    from raypipe.progress import terminal

    config, uris = _load(args)
    with terminal(args.verbose) as console:
        run.init_ray(args.address, dashboard=False)
        total, rejected = run.rejected_rows(uris, config, address=args.address, progress=console)
    for r in rejected:
        print(f"{r['source']}:{r['line']}\tid={r['id']}\t{r['error']}")
    print(f"raypipe: {total} rows, {total - len(rejected)} valid, {len(rejected)} rejected", file=sys.stderr)
    return EXIT_SOME_FAILED if rejected else EXIT_OK


def cmd_plan(args) -> int:
    from raypipe import run
    from raypipe.plan import make_plan
    from raypipe.progress import terminal

    config, uris = _load(args)
    with terminal(args.verbose):
        run.init_ray(args.address, dashboard=False)
        plan = make_plan(uris, config, address=args.address)
    print(plan.to_json() if args.json else plan.table())
    return EXIT_OK


def cmd_report(args) -> int:
    from raypipe.report import ReportError, make_report

    try:
        result = make_report(args.out, args.html)
    except ReportError as err:
        print(f"raypipe: {err}", file=sys.stderr)
        return EXIT_NOTHING_RAN
    counts = ", ".join(f"{status} {n}" for status, n in result.by_status.items())
    print(f"raypipe: report of {result.rows} rows ({counts}) written to {result.uri}")
    if result.posters_missing:
        print(f"raypipe: {result.posters_missing} ok videos could not be read for a poster", file=sys.stderr)
    return EXIT_OK


def cmd_schedule(args) -> int:
    import json

    from raypipe.families.deforum.schedule import ScheduleError, evaluate, plot

    try:
        values = evaluate(args.schedule, args.frames, args.seed)
    except ScheduleError as err:
        print(f"raypipe: {err}", file=sys.stderr)
        return EXIT_NOTHING_RAN
    print(json.dumps(values.tolist()))
    if args.plot:
        plot(values, args.plot, title=args.schedule)
    return EXIT_OK


def cmd_models(args) -> int:
    from raypipe.models.tiny import build_all

    for name, path in build_all(args.dir).items():
        print(f"{name}\t{path}")
    return EXIT_OK


COMMANDS = {
    "run": cmd_run,
    "validate": cmd_validate,
    "plan": cmd_plan,
    "report": cmd_report,
    "models": cmd_models,
    "schedule": cmd_schedule,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
