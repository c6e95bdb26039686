"""The Ray job entrypoint: `ray job submit ... -- python jobs/generate.py MANIFEST... --out URI`.

Inside a Ray job RAY_ADDRESS is set, so the run joins the cluster the job runs in.
Exit codes as `raypipe run` (DESIGN.md).
"""

import sys

from raypipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
