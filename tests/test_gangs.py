"""Gangs at cluster scale (issue 16), in a real multi-raylet local Ray (ray.cluster_utils.Cluster)
whose nodes declare GPUs and custom resources. Ray accepts declared GPUs on a machine without
any; the kind's device stays "cpu", so the ranks compute on CPU while Ray accounts for GPUs.

- an SP-2 row holds exactly its gang's 2 GPUs (its pool's actor holds none), on the node that
  offers the kind's resource;
- the ranks carry the kind's resources (custom, memory, accelerator type);
- `raypipe validate` / `plan` without --address never reject rows for this machine's size: they
  check the config's `cluster` or say the check was skipped; with --address, that cluster;
- a rank that stops answering fails the row within sp.rank_timeout_s, not row_timeout_s.
"""

import json
import os
import signal
import threading
import time

import pytest
import yaml

from raypipe.cli import main
from raypipe.config import load_config
from raypipe.sink import read_metadata
from tests.conftest import REPO, write_jsonl

GPU_CONFIGS = [str(REPO / "configs" / "gpu.yaml"), str(REPO / "configs" / "kuberay.yaml")]
ROW = {"kind": "cogvideox", "prompt": "a red kite over a beach", "seed": 11}


@pytest.fixture(scope="module")
def cluster():
    """A head (driver, CPU stages) and two 2-GPU nodes: only `kind_node` offers raypipe_cogvideox."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.kind_node = cluster.add_node(num_cpus=1, num_gpus=2, resources={"raypipe_cogvideox": 2})
    cluster.other_node = cluster.add_node(num_cpus=1, num_gpus=2, resources={"raypipe_animatediff": 2})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster
    ray.shutdown()
    cluster.shutdown()


# ---- what a gang and its pool hold (no Ray) ---------------------------------------------------


def test_ranks_carry_the_kinds_resources():
    from raypipe.parallel.gang import rank_actor_options
    from raypipe.parallel.validate import rank_resources

    kc = load_config(GPU_CONFIGS).kinds["cogvideox"]
    assert rank_resources(kc) == {"CPU": 4.0, "GPU": 1.0, "raypipe_cogvideox": 1.0}
    kc = kc.model_copy(update={"memory_gb": 80, "accelerator_type": "H100"})
    assert rank_resources(kc) == {
        "CPU": 4.0,
        "GPU": 1.0,
        "memory": 80 * 2**30,
        "raypipe_cogvideox": 1.0,
        "accelerator_type:H100": 0.001,  # what Ray's accelerator_type option asks of a node
    }
    options = rank_actor_options(kc)
    assert (options["num_cpus"], options["num_gpus"], options["memory"]) == (4.0, 1.0, 80 * 2**30)
    assert options["resources"] == {"raypipe_cogvideox": 1.0} and options["accelerator_type"] == "H100"


def test_an_sp_row_goes_to_a_pool_of_gangs_that_holds_only_the_gang():
    from raypipe.families import family
    from raypipe.pipeline.records import pool_route, split_route
    from raypipe.pipeline.waves import actor_holds, pool_waves

    config = load_config(GPU_CONFIGS)
    kc, stage = config.kinds["cogvideox"], family("cogvideox").stage
    assert (pool_route("cogvideox", 1), pool_route("cogvideox", 2)) == ("cogvideox", "cogvideox/sp2")
    assert split_route("cogvideox/sp4") == ("cogvideox", 4) and split_route("rejected") == ("rejected", 1)
    # a plain actor: its GPU and the kind's unit; a gang driver: CPU only, plus its gang's ranks
    assert actor_holds("cogvideox", kc, stage, config) == {"CPU": 4, "GPU": 1, "raypipe_cogvideox": 1}
    assert actor_holds("cogvideox/sp2", kc, stage, config) == {"CPU": 1 + 2 * 4, "GPU": 2, "raypipe_cogvideox": 2}
    cfg = kc.model_copy(update={"sp": kc.sp.model_copy(update={"cfg_parallel": True})})
    assert actor_holds("cogvideox/sp2", cfg, stage, config)["GPU"] == 4  # CFG parallel: 2 x 2 ranks
    # one 4-GPU pod: the plain pool's GPU and an SP-2 gang fit together; an SP-4 gang waits for a wave
    routes = {"cogvideox": 3, "cogvideox/sp2": 2, "cogvideox/sp4": 1}
    pod = {"CPU": 64.0, "GPU": 4.0, "raypipe_cogvideox": 4.0}
    assert pool_waves(sorted(routes), routes, config, {"cogvideox": stage}, pod) == [
        ["cogvideox", "cogvideox/sp2"],
        ["cogvideox/sp4"],
    ]


def test_the_kuberay_configs_cluster_is_the_raycluster():
    """configs/kuberay.yaml's `cluster` (what validate/plan check gangs against without --address)
    says what k8s/raycluster.yaml's worker groups are: one entry per group, in order."""
    from tests.test_k8s import GPU, quantity

    spec = yaml.safe_load((REPO / "k8s" / "raycluster.yaml").read_text())["spec"]
    declared = load_config(GPU_CONFIGS).cluster
    assert len(declared) == len(spec["workerGroupSpecs"])
    for nodes, group in zip(declared, spec["workerGroupSpecs"]):
        pod = group["template"]["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        assert nodes.count == group["maxReplicas"], group["groupName"]
        assert (nodes.num_cpus, nodes.num_gpus) == (quantity(limits["cpu"]), quantity(limits.get(GPU, 0)))
        assert nodes.memory_gb == pytest.approx(0.7 * quantity(limits["memory"]) / 2**30)  # 30%: object store
        assert nodes.resources == {k: quantity(v) for k, v in group.get("resources", {}).items()}
        product = pod.get("nodeSelector", {}).get("nvidia.com/gpu.product")
        assert nodes.accelerator_type == (product.split("-")[1] if product else None), group["groupName"]


# ---- in the cluster -----------------------------------------------------------------------------


class Held:
    """Samples, while a run goes on, the GPUs held in the cluster and the nodes of its gangs."""

    def __init__(self):
        import ray

        self.total = ray.cluster_resources().get("GPU", 0.0)
        self.gpus: list[float] = []
        self.gang_nodes: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)

    def sample(self):
        import ray

        while not self.stop.is_set():
            self.gpus.append(self.total - ray.available_resources().get("GPU", 0.0))
            for pg in ray.util.placement_group_table().values():
                if pg["state"] == "CREATED":
                    self.gang_nodes.update(pg["bundles_to_node_id"].values())
            time.sleep(0.1)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_an_sp2_row_holds_exactly_2_gpus_on_the_kinds_node(cluster, tmp_path):
    manifest = write_jsonl(tmp_path / "sp.jsonl", [{"id": "kite-sp2", **ROW, "sp_degree": 2}])
    config = tmp_path / "c.yaml"
    kind = {
        "num_gpus": 1,  # a plain row's actor would hold a GPU; an SP row's ranks hold one each
        "resources": {"raypipe_cogvideox": 1},
        "sp": {"rank_num_cpus": 0.25, "rank_num_gpus": 1, "start_timeout_s": 300, "row_timeout_s": 300},
    }
    config.write_text(yaml.safe_dump({"kinds": {"cogvideox": kind}}))
    out = tmp_path / "out"
    with Held() as held:
        assert main(["run", str(manifest), "--out", str(out), "--config", str(config)]) == 0
    (meta,) = read_metadata(str(out)).to_pylist()
    assert meta["status"] == "ok", meta["error"]
    assert held.gang_nodes == {cluster.kind_node.node_id}  # not the other 2-GPU node
    assert max(held.gpus) == 2  # the gang's two; the actor driving it holds none
    params = json.loads(meta["params_json"])
    assert (params["sp_ranks"], params["sp_gpus"]) == (2, 2)  # the gang's own record
    # and nothing stays reserved after the run: Ray keeps a placement group until its job ends,
    # not until the pool actor that made it goes (raypipe/parallel/gang.py remove_leftover_gangs)
    import ray

    gangs = [pg for pg in ray.util.placement_group_table().values() if pg["name"].startswith("raypipe-gang-")]
    assert gangs and all(pg["state"] == "REMOVED" for pg in gangs)
    deadline = time.monotonic() + 10  # the resource view lags the removal by a moment
    while ray.available_resources().get("GPU") != held.total and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU") == held.total


def test_validate_and_plan_here_do_not_reject_sp_rows_for_this_machine(cluster, tmp_path, capsys):
    from raypipe.parallel.validate import gang_nodes

    # gpu.yaml: ranks of 4 CPUs and 1 GPU; this cluster's nodes have 1 or 2 CPUs
    manifest = write_jsonl(
        tmp_path / "gpu.jsonl",
        [
            {"id": "plain", **ROW},
            {"id": "sp2", **ROW, "sp_degree": 2},
            {"id": "sp6", **ROW, "sp_degree": 6},  # 6 GPUs: more than a 4-GPU cogvideox pod
        ],
    )
    # no cluster given, none declared (gpu.yaml alone): not checked, and said so
    assert main(["validate", str(manifest), "--config", GPU_CONFIGS[0]]) == 0
    assert "gang size not checked: no cluster given; pass --address" in capsys.readouterr().err
    # configs/kuberay.yaml declares the pods: sp 2 fits one, sp 6 does not
    assert main(["validate", str(manifest), "--config", GPU_CONFIGS[0], "--config", GPU_CONFIGS[1]]) == 1
    captured = capsys.readouterr()
    assert "gang size checked against the config's `cluster`" in captured.err
    (line,) = captured.out.strip().splitlines()
    assert (
        "id=sp6" in line
        and (
            "a gang of 6 ranks x 1 GPU needs 6 GPU on one node (placement STRICT_PACK), but the largest node has "
            "4 GPU (nodes of the config's `cluster`: 6 x 4, 40 x 1, 8 x 0)"
        )
        in line
    )
    # plan: the plain pool's actors hold a GPU each, the SP-2 pool's a gang of 2 (its actors none)
    assert main(["plan", str(manifest), "--json", "--config", GPU_CONFIGS[0], "--config", GPU_CONFIGS[1]]) == 0
    plan = json.loads(capsys.readouterr().out)
    pools = {k["pool"]: k for k in plan["kinds"]}
    assert (plan["rows"], plan["rejected"], sorted(pools)) == (3, 1, ["cogvideox", "cogvideox/sp2"])
    assert (pools["cogvideox"]["gpus_per_actor"], pools["cogvideox"]["gpus"]) == (1.0, "1")
    sp = pools["cogvideox/sp2"]
    assert (sp["gpus_per_actor"], sp["gpus"], sp["pool_actors"], sp["sp_ranks"]) == (2.0, "2", "1", 2)
    assert sp["tflop"] == pytest.approx(pools["cogvideox"]["tflop"])  # the same row, split over 2 GPUs
    # with --address: checked against that cluster (its nodes have 2 CPUs at most)
    assert main(["validate", str(manifest), "--config", GPU_CONFIGS[0], "--address", cluster.address]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "but the largest node has 2 CPU (alive nodes: 2, 1, 1)" in lines[0]
    # a run's cluster: its alive nodes, and the config's `cluster` as nodes it may add (GPU groups at 0 pods)
    nodes, said = gang_nodes(load_config(GPU_CONFIGS), joined=True)
    assert len(nodes.nodes) == 3 + 54 and said.endswith("3 alive nodes, the config's `cluster` (54 nodes)")


def test_a_rank_that_stops_answering_fails_the_row_within_rank_timeout(cluster):
    from raypipe.families.cogvideox.stage import CogVideoXStage
    from raypipe.parallel.gang import Gang, SequenceParallelError
    from raypipe.schema import validate_row

    base = load_config().kinds["cogvideox"]
    sp = base.sp.model_copy(update={"rank_num_cpus": 0.25, "retries": 0, "row_timeout_s": 120})
    gang = Gang(CogVideoXStage, base.model_copy(update={"sp": sp}), 2)
    row = validate_row({"id": "stopped", **ROW, "sp_degree": 2, "num_inference_steps": 200}, base.defaults)
    gang.start()
    pid = int(gang.info[1]["worker"].rsplit(":", 1)[1])
    try:
        gang.config.sp.rank_timeout_s = 2.0
        os.kill(pid, signal.SIGSTOP)  # alive to the OS and to Ray, but it never answers again
        t0 = time.monotonic()
        with pytest.raises(SequenceParallelError) as info:
            gang.generate([row], [{}])
        elapsed = time.monotonic() - t0
        assert "generating: rank(s) [1] of 2 did not answer for 2s (sp.rank_timeout_s)" in str(info.value)
        assert elapsed < 20, elapsed  # not row_timeout_s (120 s)
        assert not gang.alive  # killed whole
    finally:
        gang.shutdown()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
