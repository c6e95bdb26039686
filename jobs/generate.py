"""The Ray job entrypoint: one `raypipe run` inside the Ray cluster the job runs in.

    RAY_AUTH_MODE=token ray job submit --address http://HEAD:8265 --working-dir . \\
        -- python jobs/generate.py MANIFEST... --out URI [--config FILE] \\
           [--metrics-port PORT] [--pushgateway URL]

The arguments and the exit codes are those of `raypipe run` (../shared/DESIGN.md): 0 every row
ok (or skipped as done), 1 the run finished but some rows failed or were rejected (the job then
shows FAILED; the rows and their reasons are in the metadata, and a resubmission retries only
them), 2 nothing ran.

Which cluster: inside a Ray job RAY_ADDRESS names it and the run joins it; started by hand on a
node of a cluster (`ray start`), it joins that one (address "auto"). It never starts a private
Ray of its own: a job that silently ran on one machine would be worse than one that fails.

Which code: `--working-dir .` uploads the checkout (less what .gitignore / .rayignore exclude:
.venv/, out/) and puts it first on PYTHONPATH of the driver and of every worker, so the raypipe
that runs is the submitted one; its dependencies must be installed where the job runs (the
image, or the virtualenv the head was started from). The first line of the job's log says
which raypipe runs.
"""

import os
import sys
from pathlib import Path

# `python jobs/generate.py` puts jobs/ on sys.path, not the checkout: put the checkout first,
# so that run by hand too it imports this checkout's raypipe rather than an installed one.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import raypipe  # noqa: E402
from raypipe.cli import EXIT_NOTHING_RAN, main  # noqa: E402


def entrypoint(argv: list[str]) -> int:
    if not any(a == "--address" or a.startswith("--address=") for a in argv):
        argv = [*argv, "--address", os.environ.get("RAY_ADDRESS") or "auto"]
    print(f"raypipe {raypipe.__version__} from {Path(raypipe.__file__).parent}", file=sys.stderr, flush=True)
    try:
        return main(["run", *argv])
    except ConnectionError as err:  # no cluster to join
        print(f"raypipe: {err}", file=sys.stderr)
        return EXIT_NOTHING_RAN


if __name__ == "__main__":
    sys.exit(entrypoint(sys.argv[1:]))
