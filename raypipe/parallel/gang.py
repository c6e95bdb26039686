"""A gang: N rank actors reserved together (a Ray placement group) that generate one video.

The pool's actor (Ray Data) owns its gangs: it creates one the first time a row of that
degree comes, and reuses it for every later row (the ranks keep the model loaded). Every
rank runs the stage's own `generate` on the same rows with the same seeds; its transformer
is wired for sequence parallelism (ulysses.py or xdit.py), so each rank computes only its
rows of video tokens. Rank 0 (the leader) decodes the latents and returns the frames; the
others skip the VAE decode.

Failures never hang the run: the pool actor waits on the ranks with ray.wait and deadlines.
A rank that dies, or a gang that does not finish a row in time, is killed whole (a rank
blocked in a collective cannot be trusted), and the row runs again on a fresh gang up to
`sp.retries` times; after that it fails with the reason. A Python error on a rank (bad
input, out of memory) fails the row with that error and rank number.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import timedelta
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from raypipe.config import KindConfig
from raypipe.parallel.validate import gang_ranks, rank_resources

# After one rank raised, how long the others may take to finish (or fail) before the gang
# counts as stuck in a collective and is killed.
ERROR_GRACE_S = 20.0


class SequenceParallelError(RuntimeError):
    """A row could not run on its gang; the message says which rank and why."""


class _GangBroken(Exception):
    """The gang is unusable (a rank died or a deadline passed): kill it, maybe retry."""


def _peak_rss_reset() -> None:
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_mb(field: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _MeasuredDecode:
    """Replaces vae.decode on a rank: notes when denoising ended (time, peak memory so far), then
    decodes on the leader; on the other ranks returns a 1-frame 8x8 stand-in (never returned)."""

    def __init__(self, decode, skip: bool):
        self.decode, self.skip = decode, skip
        self.started: float | None = None
        self.started_cpu: float | None = None
        self.peak_rss_mb: float | None = None

    def __call__(self, latents, *args, **kwargs):
        if self.started is None:  # the first decode of the row
            self.started, self.started_cpu = time.perf_counter(), time.process_time()
            self.peak_rss_mb = _rss_mb("VmHWM")
        if not self.skip:
            return self.decode(latents, *args, **kwargs)
        import torch
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(
            sample=torch.zeros(latents.shape[0], 3, 1, 8, 8, dtype=latents.dtype, device=latents.device)
        )


class RankWorker:
    """One rank of a gang (a Ray actor in one bundle of the gang's placement group)."""

    def __init__(self, rank: int, world_size: int, sp_degree: int, stage_cls, kind_config: dict[str, Any]):
        self.rank, self.world_size, self.sp_degree = rank, world_size, sp_degree
        self.stage_cls = stage_cls
        self.config = KindConfig.model_validate(kind_config)
        self.stage = None
        self.ctx = None
        self.decoders: list[_MeasuredDecode] = []

    def rendezvous_address(self) -> str:
        """tcp://<this node>:<a free port>, for torch.distributed (asked of rank 0)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return f"tcp://{ray.util.get_node_ip_address()}:{port}"

    def start(self, init_method: str) -> dict[str, Any]:
        """Join the process group, wire the attention, load the model. All ranks call it at once."""
        import torch
        import torch.distributed as dist

        from raypipe.parallel import ulysses, xdit

        sp = self.config.sp
        cfg_degree = self.world_size // self.sp_degree
        cpus = rank_resources(self.config)["CPU"]
        torch.set_num_threads(max(1, int(cpus)))
        timeout = timedelta(seconds=sp.row_timeout_s)
        on_cuda = self.config.device.startswith("cuda")
        backend = sp.backend
        if backend == "auto":
            backend = "xdit" if on_cuda and xdit.available() else "ulysses"
        if backend == "xdit":
            if not xdit.available():
                raise RuntimeError("sp.backend: xdit needs a GPU and xfuser (pip install 'raypipe[gpu]')")
            self.ctx = xdit.init(
                self.rank, self.world_size, init_method, self.sp_degree, sp.ring_degree, cfg_degree, timeout
            )
        else:
            if on_cuda:
                torch.cuda.set_device(0)  # Ray gives each rank one GPU: cuda:0 in this process
            dist.init_process_group(
                "nccl" if on_cuda else "gloo",
                init_method=init_method,
                rank=self.rank,
                world_size=self.world_size,
                timeout=timeout,
            )
            # the grid cfg x sp: rank = cfg_rank * sp_degree + sp_rank (new_group is collective: all ranks, same order)
            sp_groups = [
                dist.new_group(list(range(c * self.sp_degree, (c + 1) * self.sp_degree))) for c in range(cfg_degree)
            ]
            cfg_groups = (
                [dist.new_group(list(range(s, self.world_size, self.sp_degree))) for s in range(self.sp_degree)]
                if cfg_degree > 1
                else [None] * self.sp_degree
            )
            cfg_rank, sp_rank = divmod(self.rank, self.sp_degree)
            note = f" (ring_degree {sp.ring_degree} runs as Ulysses: no xfuser)" if sp.ring_degree > 1 else ""
            self.ctx = ulysses.SPContext(
                sp_rank=sp_rank,
                sp_size=self.sp_degree,
                sp_group=sp_groups[cfg_rank],
                cfg_rank=cfg_rank,
                cfg_size=cfg_degree,
                cfg_group=cfg_groups[sp_rank],
                backend=f"ulysses-{'nccl' if on_cuda else 'gloo'}{note}",
            )
        self.stage = self.stage_cls(self.config)
        self.stage.sp_context = self.ctx  # tells the stage's dispatch that it runs inside a gang
        load = self.stage.load_pipeline

        def load_parallel(path: str):
            pipe = load(path)
            ulysses.parallelize_transformer(pipe.transformer, self.ctx)
            # only the leader's frames are kept: the others skip the VAE decode (on the VAE itself,
            # so that every pipeline built from these modules skips it: v2v, i2v)
            pipe.vae.decode = _MeasuredDecode(pipe.vae.decode, skip=self.rank != 0)
            self.decoders.append(pipe.vae.decode)
            return pipe

        self.stage.load_pipeline = load_parallel
        self.stage.setup()
        torch.set_num_threads(max(1, int(cpus)))  # setup() set the pool actor's count
        return {"rank": self.rank, "backend": self.ctx.backend, "worker": f"{socket.gethostname()}:{os.getpid()}"}

    def generate(self, rows: list, inputs: list[dict[str, Any]]) -> tuple[list | None, dict[str, Any]]:
        """The stage's generate on this rank's shard; the leader returns the videos."""
        import torch

        on_cuda = torch.cuda.is_available() and self.config.device.startswith("cuda")
        _peak_rss_reset()
        if on_cuda:
            torch.cuda.reset_peak_memory_stats()
        rss_before = _rss_mb("VmRSS")
        for decoder in self.decoders:
            decoder.started = decoder.peak_rss_mb = None
        t0, cpu0 = time.perf_counter(), time.process_time()
        generated = self.stage.generate(rows, inputs)
        stats = {
            "rank": self.rank,
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - cpu0,
            "peak_rss_mb": _rss_mb("VmHWM"),
            "rss_before_mb": rss_before,
            "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
        }
        decoded = [d for d in self.decoders if d.started is not None]
        if decoded:  # the denoising loop alone: up to the first VAE decode
            stats.update(
                denoise_seconds=decoded[0].started - t0,
                denoise_cpu_seconds=decoded[0].started_cpu - cpu0,
                denoise_peak_rss_mb=decoded[0].peak_rss_mb,
            )
        return (generated if self.rank == 0 else None), stats


class Gang:
    """N rank actors in a placement group, owned by the process that created it (a pool actor)."""

    def __init__(self, stage_cls, kind_config: KindConfig, sp_degree: int):
        self.stage_cls, self.config, self.sp_degree = stage_cls, kind_config, sp_degree
        self.world_size = gang_ranks(sp_degree, kind_config)
        self.bundle = rank_resources(kind_config)
        self.pg = None
        self.ranks: list = []
        self.info: list[dict[str, Any]] = []
        self.starts = 0
        self.last_stats: list[dict[str, Any]] = []  # per rank, of the last row (benchmarks read it)

    # ---- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        sp = self.config.sp
        deadline = time.monotonic() + sp.start_timeout_s
        self.starts += 1
        self.pg = placement_group([dict(self.bundle)] * self.world_size, strategy=sp.placement_strategy)
        try:
            ray.get(self.pg.ready(), timeout=sp.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            available = ray.available_resources()
            self.shutdown()
            raise SequenceParallelError(
                f"sp_degree {self.sp_degree}: could not place a gang of {self.world_size} ranks x {self.bundle} "
                f"({sp.placement_strategy}) within {sp.start_timeout_s:g}s; available now: "
                f"CPU {available.get('CPU', 0):g}, GPU {available.get('GPU', 0):g}"
            ) from None
        # plain int/float resources: a rank holds exactly its bundle
        options = {"num_cpus": self.bundle["CPU"], "num_gpus": self.bundle.get("GPU", 0), "max_restarts": 0}
        actor_cls = ray.remote(RankWorker)
        self.ranks = [
            actor_cls.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=i, placement_group_capture_child_tasks=False
                ),
                **options,
            ).remote(i, self.world_size, self.sp_degree, self.stage_cls, self.config.model_dump())
            for i in range(self.world_size)
        ]
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
        """Results of one call per rank; raises _GangBroken (death, deadline) or SequenceParallelError."""
        pending = {ref: i for i, ref in enumerate(refs)}
        results: list = [None] * len(refs)
        failed: tuple[int, BaseException] | None = None
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                if failed:  # one rank raised, the others are stuck waiting for it in a collective
                    self.shutdown()
                    break
                ranks = sorted(pending.values())
                raise _GangBroken(f"{what}: rank(s) {ranks} of {len(refs)} did not finish in time")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            for ref in ready:
                i = pending.pop(ref)
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
