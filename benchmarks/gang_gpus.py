"""The GPUs a run holds while sequence-parallel rows run (issue 16: exactly N for an SP-N row).

A real multi-raylet local Ray (ray.cluster_utils.Cluster) whose GPU node declares 4 GPUs and the
kind's custom resource (Ray accepts declared GPUs on a machine without any; the ranks compute on
CPU). One `raypipe run` per case with one tiny CogVideoX row; a thread samples the cluster's free
GPUs every 0.1 s while it runs. Prints, per case, the GPUs the gang's placement group reserved,
the most GPUs held at once in the cluster, and the nodes the gang's bundles were on.

    .venv/bin/python benchmarks/gang_gpus.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raypipe.cli import main  # noqa: E402
from raypipe.sink import read_metadata  # noqa: E402

CASES = [("SP 2", 2, False), ("SP 2 + CFG parallel", 2, True)]


def held_while(args: list[str]) -> tuple[float, float, set[str]]:
    """`raypipe <args>`; the most GPUs held at once, the GPUs of the placement groups, their nodes."""
    import ray

    total = ray.cluster_resources().get("GPU", 0.0)
    most, pg_gpus, nodes, stop = [0.0], [0.0], set(), threading.Event()

    def sample():
        while not stop.is_set():
            most[0] = max(most[0], total - ray.available_resources().get("GPU", 0.0))
            for pg in ray.util.placement_group_table().values():
                if pg["state"] == "CREATED":
                    pg_gpus[0] = max(pg_gpus[0], sum(b.get("GPU", 0.0) for b in pg["bundles"].values()))
                    nodes.update(pg["bundles_to_node_id"].values())
            time.sleep(0.1)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        assert main(args) == 0
    finally:
        stop.set()
        thread.join()
    return most[0], pg_gpus[0], nodes


def main_() -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    gpu_node = cluster.add_node(num_cpus=2, num_gpus=4, resources={"raypipe_cogvideox": 4})
    cluster.add_node(num_cpus=1, num_gpus=4, resources={"raypipe_animatediff": 4})  # another family's GPUs
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    work = Path(tempfile.mkdtemp(prefix="gang-gpus-"))
    print(
        "| case | gang ranks | GPUs of the gang's placement group | most GPUs held at once | gang on the kind's node |"
    )
    print("|---|---|---|---|---|")
    try:
        for name, degree, cfg in CASES:
            manifest = work / f"sp{degree}-{cfg}.jsonl"
            row = {"id": "r", "kind": "cogvideox", "prompt": "a kite", "seed": 1, "sp_degree": degree}
            manifest.write_text(json.dumps(row) + "\n")
            config = work / f"c{degree}-{cfg}.yaml"
            kind = {
                "num_gpus": 1,
                "resources": {"raypipe_cogvideox": 1},
                "sp": {"rank_num_cpus": 0.25, "rank_num_gpus": 1, "cfg_parallel": cfg, "start_timeout_s": 600},
            }
            config.write_text(yaml.safe_dump({"kinds": {"cogvideox": kind}}))
            out = work / f"out{degree}-{cfg}"
            args = ["run", str(manifest), "--out", str(out), "--config", str(config)]
            most, pg_gpus, nodes = held_while(args)
            (meta,) = read_metadata(str(out)).to_pylist()
            assert meta["status"] == "ok", meta["error"]
            ranks = json.loads(meta["params_json"])["sp_ranks"]
            print(f"| {name} | {ranks} | {pg_gpus:g} | {most:g} | {nodes == {gpu_node.node_id}} |", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main_()
