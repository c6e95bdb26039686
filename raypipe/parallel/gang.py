"""A gang: N rank actors reserved together (a Ray placement group) that generate one video.

The pool's actor (Ray Data) owns its gangs: it creates one the first time a row of that
degree comes, and reuses it for every later row (the ranks keep the model loaded). Every
rank runs the stage's own `generate` on the same rows with the same seeds; its transformer
is wired for sequence parallelism (hooks.py, ulysses.py or xdit.py), so each rank computes
only its shard of the video tokens. Rank 0 (the leader) decodes the latents and returns the frames; the
others skip the VAE decode.

In a run the owner is an actor of the kind's pool of gangs ("<kind>/sp<N>", raypipe/pipeline/
waves.py): it asks for CPU only and loads no model, so the GPUs held for a row are the gang's
alone. The ranks carry the kind's resources (GPUs, memory, custom resources, accelerator type:
validate.rank_resources), in the placement group's bundles and in their actor options, so they
land on (or make the autoscaler add) the kind's own nodes.

Failures never hang the run: the owner waits on the ranks with ray.wait and deadlines. A rank
that dies, stops answering the heartbeat for sp.rank_timeout_s (a ping served on a thread of its
own, so a rank busy computing or in a collective answers), or a gang that does not finish a row
in time, is killed whole (a rank blocked in a collective cannot be trusted), and the row runs
again on a fresh gang up to `sp.retries` times; after that it fails with the reason. A Python
error on a rank (bad input, out of memory) fails the row with that error and rank number.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raypipe.config import KindConfig
from raypipe.parallel.validate import ACCELERATOR_PREFIX, gang_ranks, rank_resources, resource_amount

# After one rank raised, how long the others may take to finish (or fail) before the gang
# counts as stuck in a collective and is killed.
ERROR_GRACE_S = 20.0
# The ranks' heartbeat runs in a concurrency group of its own: one thread beside the rank's work.
HEARTBEAT_GROUP = "heartbeat"


class SequenceParallelError(RuntimeError):
    """A row could not run on its gang; the message says which rank and why."""


class _GangBroken(Exception):
    """The gang is unusable (a rank died or a deadline passed): kill it, maybe retry."""


class RankWorker:
    """One rank of a gang (a Ray actor in one bundle of the gang's placement group): it joins the
    gang's process groups (context.join), builds the stage with its place in the gang
    (`stage_cls(config, sp=context)`: the stage wires every pipeline it loads with named hooks,
    raypipe/parallel/hooks.py) and runs the stage's generate on the rows it is given."""

    def __init__(self, rank: int, world_size: int, sp_degree: int, stage_cls, kind_config: dict[str, Any]):
        self.rank, self.world_size, self.sp_degree = rank, world_size, sp_degree
        self.stage_cls = stage_cls
        self.config = KindConfig.model_validate(kind_config)
        self.stage = None
        self.ctx = None

    def rendezvous_address(self) -> str:
        """tcp://<this node>:<a free port>, for torch.distributed (asked of rank 0)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def start(self, init_method: str) -> dict[str, Any]:
        """Join the process groups, build the stage, load (and wire) the model. All ranks call it at once."""
        import torch

        from raypipe.parallel.context import join

        cpus = max(1, int(rank_resources(self.config)["CPU"]))
        torch.set_num_threads(cpus)
        self.ctx = join(self.rank, self.world_size, self.sp_degree, init_method, self.config.sp, self.config.device)
        self.stage = self.stage_cls(self.config, sp=self.ctx)
        self.stage.setup()
        torch.set_num_threads(cpus)  # setup() set the kind's count, not the rank's
        return {"rank": self.rank, "backend": self.ctx.backend, "worker": f"{socket.gethostname()}:{os.getpid()}"}

    def generate(self, rows: list, inputs: list[dict[str, Any]]) -> tuple[list | None, dict[str, Any]]:
        """The stage's generate on this rank's shard; the leader returns the videos."""
        import torch

        from raypipe.parallel.context import peak_rss_reset, rss_mb

        on_cuda = torch.cuda.is_available() and self.config.device.startswith("cuda")
        peak_rss_reset()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_before = rss_mb("VmRSS")
        denoised = self.ctx.stats
        denoised.reset()
        t0, cpu0 = time.perf_counter(), time.process_time()
        generated = self.stage.generate(rows, inputs)
        stats = {
            "rank": self.rank,
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0,
            "peak_rss_mb": rss_mb("VmHWM"),
            "rss_before_mb": rss_before,
            "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
        }
        if denoised.denoise_end is not None:  # the denoising loop alone: up to its last transformer call
            stats.update(
                denoise_seconds=denoised.denoise_end - t0,
                denoise_cpu_seconds=denoised.denoise_end_cpu - cpu0,
                denoise_peak_rss_mb=denoised.denoise_peak_rss_mb,
            )
        return (generated if self.ctx.is_leader else None), stats


# Gangs' placement groups are named "raypipe-gang-<job id>-<random>": Ray keeps a placement group
# until it is removed or its job ends, not until its creator (a pool actor) goes, so the run's
# driver removes its job's leftovers once the pools are done (remove_leftover_gangs).
GANG_PREFIX = "raypipe-gang-"


def _gang_name() -> str:
    return f"{GANG_PREFIX}{ray.get_runtime_context().get_job_id()}-{uuid.uuid4().hex[:8]}"


def remove_leftover_gangs() -> int:
    """Remove the placement groups of this job's gangs that are still there (their pool actor was
    ended by Ray Data without shutting its gang down); the number removed. Call it only when no
    gang of this job is running (the run's driver, after an execution)."""
    prefix = f"{GANG_PREFIX}{ray.get_runtime_context().get_job_id()}-"
    removed = 0
    for info in ray.util.placement_group_table().values():
        if info["name"].startswith(prefix) and info["state"] != "REMOVED":
            try:
                remove_placement_group(ray.util.get_placement_group(info["name"]))
                removed += 1
            except Exception:  # noqa: BLE001 - removed meanwhile
                pass
    return removed


def rank_actor_options(kind_config: KindConfig) -> dict[str, Any]:
    """A rank actor's options: exactly its bundle (rank_resources), in Ray's option names."""
    bundle = rank_resources(kind_config)
    options: dict[str, Any] = {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0), "max_restarts": 0}
    if "memory" in bundle:
        options["memory"] = bundle["memory"]
    custom = {
        k: v for k, v in bundle.items() if k not in ("CPU", "GPU", "memory") and not k.startswith(ACCELERATOR_PREFIX)
    }
    if custom:
        options["resources"] = custom
    if kind_config.accelerator_type:
        options["accelerator_type"] = kind_config.accelerator_type
    return options


def _heartbeat(_worker) -> None:
    """The ping a rank answers on its heartbeat thread (run there by the actor's __ray_call__)."""


class _Heartbeats:
    """Pings every rank of a gang while its owner waits on it. A rank that answered once (it is
    up: a ping, or any call's result) and then leaves a ping unanswered for sp.rank_timeout_s is
    silent: stopped, swapped out, or cut off. Before its first answer the rank is still starting
    (sp.start_timeout_s bounds that)."""

    def __init__(self, ranks: list, sp):
        self.ranks, self.sp = ranks, sp
        self.sent: dict[int, tuple[Any, float]] = {}  # rank -> (ping, sent at), unanswered
        self.answered: dict[int, float] = {}  # rank -> when it last answered

    @property
    def timeout(self) -> float:
        return self.sp.rank_timeout_s

    @property
    def interval(self) -> float:
        return max(0.05, self.timeout / 4)

    def answer(self, rank: int) -> None:
        self.answered[rank] = time.monotonic()

    def silent(self) -> list[int]:
        """Collect answers, send the pings due; the ranks that are silent now."""
        if self.sent:
            ready, _ = ray.wait([ref for ref, _ in self.sent.values()], num_returns=len(self.sent), timeout=0)
            for i, (ref, _) in list(self.sent.items()):
                if ref in ready:
                    del self.sent[i]
                    self.answer(i)
                    try:
                        ray.get(ref)
                    except Exception:  # noqa: BLE001 - a dead rank: the wait on its result says so
                        pass
        now = time.monotonic()
        for i, rank in enumerate(self.ranks):
            if i not in self.sent and now - self.answered.get(i, 0.0) >= self.interval:
                ping = rank.__ray_call__.options(concurrency_group=HEARTBEAT_GROUP).remote(_heartbeat)
                self.sent[i] = (ping, now)
        return sorted(i for i, (_, at) in self.sent.items() if i in self.answered and now - at > self.timeout)


class Gang:
    """N rank actors in a placement group, owned by the process that created it (in a run: an
    actor of the kind's pool of gangs, which holds no GPU)."""

    def __init__(self, stage_cls, kind_config: KindConfig, sp_degree: int):
        self.stage_cls, self.config, self.sp_degree = stage_cls, kind_config, sp_degree
        self.world_size = gang_ranks(sp_degree, kind_config)
        self.bundle = rank_resources(kind_config)
        self.pg = None
        self.ranks: list = []
        self.heartbeats = _Heartbeats([], kind_config.sp)
        self.info: list[dict[str, Any]] = []
        self.starts = 0
        self.last_stats: list[dict[str, Any]] = []  # per rank, of the last row (benchmarks read it)

    @property
    def gpus(self) -> float:
        """GPUs the gang holds (its ranks' bundles)."""
        return self.world_size * self.bundle.get("GPU", 0.0)

    # ---- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        sp = self.config.sp
        deadline = time.monotonic() + sp.start_timeout_s
        self.starts += 1
        self.pg = placement_group(
            [dict(self.bundle)] * self.world_size, strategy=sp.placement_strategy, name=_gang_name()
        )
        try:
            ray.get(self.pg.ready(), timeout=sp.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            available = ray.available_resources()
            self.shutdown()
            per_rank = ", ".join(resource_amount(name, amount) for name, amount in self.bundle.items())
            free = ", ".join(resource_amount(name, available.get(name, 0.0)) for name in self.bundle)
            raise SequenceParallelError(
                f"sp_degree {self.sp_degree}: could not place a gang of {self.world_size} ranks x {{{per_rank}}} "
                f"({sp.placement_strategy}) within {sp.start_timeout_s:g}s; available now: {free}"
            ) from None
        # Each rank asks for exactly its bundle (and the heartbeat thread beside its work).
        actor_cls = ray.remote(concurrency_groups={HEARTBEAT_GROUP: 1})(RankWorker)
        self.ranks = [
            actor_cls.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=i, placement_group_capture_child_tasks=False
                ),
                **rank_actor_options(self.config),
            ).remote(i, self.world_size, self.sp_degree, self.stage_cls, self.config.model_dump())
            for i in range(self.world_size)
        ]
        self.heartbeats = _Heartbeats(self.ranks, sp)
        try:
            init_method = self._wait([self.ranks[0].rendezvous_address.remote()], deadline, "starting rank 0")[0]
            self.info = self._wait(
                [rank.start.remote(init_method) for rank in self.ranks],
                deadline,
                "starting the ranks (process group, model load)",
            )
        except BaseException:
            self.shutdown()
            raise

    def shutdown(self) -> None:
        for rank in self.ranks:
            try:
                ray.kill(rank, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.ranks = []
        if self.pg is not None:
            try:
                remove_placement_group(self.pg)
            except Exception:  # noqa: BLE001 - already removed
                pass
            self.pg = None

    @property
    def alive(self) -> bool:
        return bool(self.ranks)

    # ---- running rows ---------------------------------------------------------------------

    def _wait(self, refs: list, deadline: float, what: str) -> list:
        """Results of one call per rank (refs[i] on rank i); raises _GangBroken (death, deadline,
        a silent rank) or SequenceParallelError (a rank raised)."""
        pending = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        failed: tuple[int, BaseException] | None = None
        heartbeats = self.heartbeats
        while pending:
            left = deadline - time.monotonic()
            silent = heartbeats.silent()
            if left <= 0 or silent:
                if failed:  # one rank raised, the others are stuck waiting for it in a collective
                    self.shutdown()
                    break
                if silent:
                    raise _GangBroken(
                        f"{what}: rank(s) {silent} of {len(self.ranks)} did not answer for "
                        f"{heartbeats.timeout:g}s (sp.rank_timeout_s)"
                    )
                ranks = sorted(pending.values())
                raise _GangBroken(f"{what}: rank(s) {ranks} of {len(refs)} did not finish in time")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(left, heartbeats.interval))
            for ref in ready:
                i = pending.pop(ref)
                heartbeats.answer(i)
                try:
                    results[i] = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    raise _GangBroken(f"{what}: rank {i} of {len(refs)} died: {_first_lines(err)}") from None
                except ray.exceptions.RayTaskError as err:
                    if failed is None:
                        failed = (i, err.cause if err.cause is not None else err)
                        deadline = min(deadline, time.monotonic() + ERROR_GRACE_S)
        if failed:
            i, cause = failed
            raise SequenceParallelError(
                f"sp_degree {self.sp_degree}, rank {i}: {type(cause).__name__}: {_first_lines(cause)}"
            )
        return results

    def generate(self, rows: list, inputs: list[dict[str, Any]]) -> list:
        """The videos of `rows` (one batch_key), generated across the gang; retried on a fresh gang
        when a rank dies or the row runs past sp.row_timeout_s."""
        sp = self.config.sp
        problems: list[str] = []
        for _attempt in range(sp.retries + 1):
            try:
                if not self.alive:
                    self.start()
                deadline = time.monotonic() + sp.row_timeout_s
                outputs = self._wait(
                    [rank.generate.remote(rows, inputs) for rank in self.ranks], deadline, "generating"
                )
                break
            except _GangBroken as err:
                self.shutdown()
                problems.append(str(err))
        else:
            retried = f" (tried {sp.retries + 1} times on fresh gangs)" if sp.retries else ""
            raise SequenceParallelError(f"sp_degree {self.sp_degree}: {'; '.join(problems)}{retried}")
        generated, _ = outputs[0]
        stats = self.last_stats = [s for _, s in outputs]
        params = {
            "sp_degree": self.sp_degree,
            "sp_ranks": self.world_size,
            "sp_backend": self.info[0]["backend"],
            "sp_cfg_parallel": sp.cfg_parallel,
            "sp_placement": sp.placement_strategy,
            "sp_gpus": self.gpus,  # what the gang held; the pool actor that drove it holds none
            "sp_rank_seconds": [round(s["seconds"], 3) for s in stats],
            "sp_rank_peak_rss_mb": [round(s["peak_rss_mb"], 1) for s in stats],
            "sp_workers": [info["worker"] for info in self.info],
        }
        if stats[0]["peak_cuda_mb"] is not None:
            params["sp_rank_peak_cuda_mb"] = [round(s["peak_cuda_mb"], 1) for s in stats]
        if problems:
            params["sp_retried_after"] = problems
        for gen in generated:
            gen.params.update(params)
        return generated


def _first_lines(err: BaseException, limit: int = 600) -> str:
    """The error on one line, without Ray's ids (actor_id, namespace, ...)."""
    lines = [
        line.strip()
        for line in str(err).splitlines()
        if not line.strip().startswith(("actor_id:", "namespace:", "class_name:", "ip:"))
    ]
    text = " ".join(" ".join(lines).split())
    return text if len(text) <= limit else text[:limit] + "..."
