"""The Kubernetes side (k8s/, configs/kuberay.yaml): every RayCluster / RayJob validated with
jsonschema against the openAPIV3Schema of the KubeRay CRDs in ../shared/k8s-schemas/ (made
strict: an unknown field is an error, as `kubectl apply --validate=strict` would say), plus the
rules the schema cannot express, and the cross-references between the files: the PodMonitor
scrapes ports the pods name, the dashboard plots metrics raypipe/metrics.py defines, the
RayJob's entrypoint is a valid `raypipe run` command, each kind's actors fit its worker group."""

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

from raypipe.cli import _parser
from raypipe.config import load_config
from raypipe.families import kinds
from raypipe.metrics import METRICS
from raypipe.pipeline.ray_init import RAYLET_ENV
from tests.conftest import REPO, SHARED, needs_shared

K8S = REPO / "k8s"
GPU = "nvidia.com/gpu"
SECRET = "raypipe-object-store"
HF_SECRET = "raypipe-hf-token"


def documents() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def the(kind: str) -> dict:
    found = [doc for _, doc in documents() if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def strict(schema):
    """The CRD schema with additionalProperties: false wherever it lists properties (the API
    server prunes unknown fields silently; here a typo is an error)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


CRDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


@functools.cache
def validator(kind: str, version: str = "v1") -> jsonschema.Draft7Validator:
    # libyaml's loader: the CRDs are megabytes of YAML
    crd = yaml.load((SHARED / "k8s-schemas" / CRDS[kind]).read_text(), Loader=yaml.CSafeLoader)
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return jsonschema.Draft7Validator(strict(served["schema"]["openAPIV3Schema"]))


def cluster_specs() -> dict[str, dict]:
    return {"RayCluster": the("RayCluster")["spec"], "RayJob": the("RayJob")["spec"]["rayClusterSpec"]}


def pod_templates(spec: dict) -> dict[str, dict]:
    """{group name: pod template} of a RayCluster spec, the head as 'head'."""
    return {
        "head": spec["headGroupSpec"]["template"],
        **{g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]},
    }


def quantity(text) -> float:
    """A Kubernetes quantity ("500m", "32", "320Gi") as a number (bytes for memory)."""
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text)).groups()
    scale = {
        "": 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }[suffix]
    return float(number) * scale


# ---- the schema -----------------------------------------------------------------------------


def test_every_manifest_has_its_schema_or_checks():
    kinds = sorted(doc["kind"] for _, doc in documents())
    assert kinds == ["PodMonitor", "RayCluster", "RayJob"]
    for path, doc in documents():
        assert doc["apiVersion"] == {"PodMonitor": "monitoring.coreos.com/v1"}.get(doc["kind"], "ray.io/v1"), path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path


@needs_shared
@pytest.mark.parametrize("kind", sorted(CRDS))
def test_manifest_validates_against_the_kuberay_crd(kind):
    errors = sorted(validator(kind).iter_errors(the(kind)), key=str)
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@needs_shared
def test_the_strict_schema_catches_mistakes():
    cluster = the("RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["workerGroupSpecs"][0]["minReplica"] = 1  # not minReplicas
    bad_gpu = copy.deepcopy(cluster)
    bad_gpu["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"][GPU] = "four"
    job = copy.deepcopy(the("RayJob"))
    job["spec"]["backoffLimit"] = "2"
    for doc, kind in [(typo, "RayCluster"), (bad_gpu, "RayCluster"), (job, "RayJob")]:
        assert list(validator(kind).iter_errors(doc)), kind


# ---- rules the schema cannot express -----------------------------------------------------------


def test_rayjob_lifecycle():
    spec = the("RayJob")["spec"]
    # KubeRay: a TTL only applies to a cluster the job deletes when it finishes
    assert spec.get("ttlSecondsAfterFinished", 0) == 0 or spec["shutdownAfterJobFinishes"] is True
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
    assert "clusterSelector" not in spec  # it owns its cluster, so it may delete it


def test_rayjob_runs_the_raycluster_spec():
    specs = cluster_specs()
    assert specs["RayJob"] == specs["RayCluster"]


@pytest.mark.parametrize("which", ["RayCluster", "RayJob"])
def test_worker_groups(which):
    spec = cluster_specs()[which]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no tasks next to GCS and the driver
    names = [g["groupName"] for g in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names))
    for group in spec["workerGroupSpecs"]:
        name = group["groupName"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name  # it goes into pod names
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], name
        assert group["maxReplicas"] >= 1, name


@pytest.mark.parametrize("which", ["RayCluster", "RayJob"])
def test_gpu_pods(which):
    templates = pod_templates(cluster_specs()[which])
    gpu_groups = 0
    for name, template in templates.items():
        for container in template["spec"]["containers"]:
            requests = container["resources"].get("requests", {})
            limits = container["resources"].get("limits", {})
            if GPU in requests or GPU in limits:
                gpu_groups += 1
                # extended resources: Kubernetes wants request == limit (and no overcommit)
                assert quantity(requests.get(GPU, -1)) == quantity(limits.get(GPU, -2)) >= 1, name
                tolerations = template["spec"].get("tolerations", [])
                assert any(
                    t["key"] == GPU and t["operator"] == "Exists" and t.get("effect") == "NoSchedule"
                    for t in tolerations
                ), name
            for resource in ("cpu", "memory"):  # Ray sizes itself from the limits
                assert quantity(requests[resource]) == quantity(limits[resource]), (name, resource)
    assert gpu_groups == len(kinds())


@pytest.mark.parametrize("which", ["RayCluster", "RayJob"])
def test_every_container_gets_the_object_store_credentials(which):
    for name, template in pod_templates(cluster_specs()[which]).items():
        for container in template["spec"]["containers"]:
            refs = {
                e["name"]: e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert refs[key] == {"name": SECRET, "key": key}, (name, key)  # required: no `optional`


@pytest.mark.parametrize("which", ["RayCluster", "RayJob"])
def test_every_container_gets_the_hub_token_from_its_secret(which):
    """HF_TOKEN (gated and private models) from the Secret raypipe-hf-token in every container, the
    driver's (head) and every worker's; optional, so a cluster of public models needs no Secret."""
    for name, template in pod_templates(cluster_specs()[which]).items():
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                "name": HF_SECRET,
                "key": "HF_TOKEN",
                "optional": True,
            }, name
            assert "value" not in env["HF_TOKEN"], name  # never the token itself in the manifest


@pytest.mark.parametrize("which", ["RayCluster", "RayJob"])
def test_every_raylet_has_the_settings_of_a_ray_raypipe_starts(which):
    """Every node's raylet (and the workers and the job's driver it starts) reads from its
    environment how long an idle task worker lives (not Ray's 1 s: workers restarted between
    bursts) and how large a result stays out of the object store (not Ray's 100 KiB: queued
    blocks in the driver's memory): the values raypipe sets for a Ray it starts itself."""
    for name, template in pod_templates(cluster_specs()[which]).items():
        for container in template["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert {k: env.get(k) for k in RAYLET_ENV} == RAYLET_ENV, name


# ---- one worker group per model family, and the run config that uses them ----------------------


def kind_groups(spec: dict) -> dict[str, dict]:
    """{kind: its worker group}: the group offering the custom resource raypipe_<kind>."""
    groups = {}
    for group in spec["workerGroupSpecs"]:
        for resource in group.get("resources", {}):
            kind = resource.removeprefix("raypipe_")
            assert resource.startswith("raypipe_") and kind in kinds(), resource
            assert kind not in groups, kind
            groups[kind] = group
    return groups


def test_each_kind_has_its_gpu_group_and_its_actors_fit():
    groups = kind_groups(cluster_specs()["RayCluster"])
    assert sorted(groups) == sorted(kinds())
    config = load_config([str(REPO / "configs/gpu.yaml"), str(REPO / "configs/kuberay.yaml")])
    overlay = yaml.safe_load((REPO / "configs/kuberay.yaml").read_text())["kinds"]
    assert sorted(overlay) == sorted(kinds())
    for kind, group in groups.items():
        resource = f"raypipe_{kind}"
        assert group["template"]["metadata"]["labels"]["raypipe.io/kind"] == kind
        kc = config.kinds[kind]
        assert kc.resources == {resource: 1}, kind
        pod = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        gpus = quantity(pod[GPU])
        assert quantity(group["resources"][resource]) == gpus, kind  # one unit per GPU
        actors = int(gpus)  # each actor takes one unit
        if kc.num_gpus > 0:  # the kind has real checkpoints in configs/gpu.yaml
            assert actors * kc.num_gpus <= gpus, kind
            assert actors * kc.num_cpus <= quantity(pod["cpu"]), kind
            if kc.memory_gb:
                assert actors * kc.memory_gb * 2**30 <= quantity(pod["memory"]), kind
        assert kc.pool_size <= group["maxReplicas"] * actors, kind
        assert kc.max_pool_size == group["maxReplicas"] * actors, kind  # the pool can use the whole group


def test_rayjob_entrypoint_is_a_raypipe_run():
    job = the("RayJob")["spec"]
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["python", "/app/jobs/generate.py"]
    args = _parser().parse_args(["run", *argv[2:]])
    assert args.out.startswith("s3://") and args.pushgateway.startswith("http://")
    # the image holds the checkout at /app (k8s/Dockerfile)
    for path in [argv[1], *args.config]:
        assert (REPO / Path(path).relative_to("/app")).is_file(), path
    head = pod_templates(job["rayClusterSpec"])["head"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["raypipe-metrics"] == args.metrics_port
    dockerfile = (K8S / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and "rayproject/ray:2.60.0" in dockerfile


# ---- monitoring --------------------------------------------------------------------------------


def test_podmonitor_scrapes_every_ray_pod():
    monitor = the("PodMonitor")["spec"]
    selector = monitor["selector"]["matchLabels"]
    assert set(monitor) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel"}
    endpoints = monitor["podMetricsEndpoints"]
    assert {e["port"] for e in endpoints} == {"metrics", "raypipe-metrics"}
    for e in endpoints:
        assert set(e) <= {"port", "path", "interval", "relabelings", "scrapeTimeout", "honorLabels"}
    for which, spec in cluster_specs().items():
        for name, template in pod_templates(spec).items():
            labels = template["metadata"]["labels"]
            assert selector.items() <= labels.items(), (which, name)
            container = template["spec"]["containers"][0]
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            rayparams = (
                spec["headGroupSpec"]
                if name == "head"
                else next(g for g in spec["workerGroupSpecs"] if g["groupName"] == name)
            )["rayStartParams"]
            assert ports["metrics"] == int(rayparams["metrics-export-port"]), (which, name)
            assert ("raypipe-metrics" in ports) == (name == "head"), (which, name)


def test_dashboard_plots_raypipe_metrics():
    dashboard = json.loads((K8S / "grafana" / "raypipe-dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    used_driver, used_ray = set(), set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            names = re.findall(r"\b(ray_)?(raypipe_[a-z_]+)", target["expr"])
            assert names, target["expr"]
            for ray_prefix, name in names:
                base = re.sub(r"_(bucket|sum|count)$", "", name)
                assert base in METRICS, name
                if name != base:
                    assert METRICS[base][0] == "histogram", name
                (used_ray if ray_prefix else used_driver).add(base)
    assert used_driver == set(METRICS)  # every metric of the run is on the dashboard
    ray_side = {
        "raypipe_videos_total",
        "raypipe_generation_seconds",
        "raypipe_encode_seconds",
        "raypipe_upload_seconds",
        "raypipe_output_bytes_total",
        "raypipe_model_load_seconds",
        "raypipe_rows_in_flight",
    }  # what the actors and writers record (metrics.py)
    assert used_ray == ray_side
