"""The `raypipe` command: argument parsing and calls, nothing else.

Exit codes (DESIGN.md): 0 every row ok (or skipped as done); 1 the run finished but some
rows failed or were rejected; 2 nothing ran (usage, config or manifest unreadable).
"""

from __future__ import annotations

import argparse
import sys

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
    p.add_argument("--config", help="run config YAML (default: tiny models on CPU)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")

    p = sub.add_parser("validate", help="check every row; print each rejected row and why")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--config", help="run config YAML (its row defaults apply)")
    p.add_argument("--address", help="Ray cluster address")

    p = sub.add_parser("models", help="model utilities")
    models = p.add_subparsers(dest="models_command", required=True, parser_class=_Parser)
    t = models.add_parser("tiny", help="write tiny random-weight pipelines of every family")
    t.add_argument("dir")
    return parser


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

    config, uris = _load(args)
    run.init_ray(args.address)
    summary = run.run(uris, args.out, config)
    print(f"raypipe: outputs in {args.out} (videos/, metadata/); "
          f"a gallery of the run: raypipe report {args.out}")
    return summary.exit_code


def cmd_validate(args) -> int:
    from raypipe import run

    config, uris = _load(args)
    run.init_ray(args.address)
    total, rejected = run.rejected_rows(uris, config)
    for r in rejected:
        print(f"{r['source']}:{r['line']}\tid={r['id']}\t{r['error']}")
    print(f"raypipe: {total} rows, {total - len(rejected)} valid, {len(rejected)} rejected", file=sys.stderr)
    return EXIT_SOME_FAILED if rejected else EXIT_OK


def cmd_models(args) -> int:
    from raypipe.models.tiny import build_all

    for name, path in build_all(args.dir).items():
        print(f"{name}\t{path}")
    return EXIT_OK


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
