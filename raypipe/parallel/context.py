"""A rank's place in its gang (SPContext), and `join`, which makes it: the process groups and the
backend (xDiT where it can run, raypipe's Ulysses otherwise, and why).

The context is handed to the rank's stage when it is built (`Stage(config, sp=context)`); the
stage's pipelines are then wired with named hooks (raypipe/parallel/hooks.py) that read it.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from raypipe.config import SequenceParallelConfig


@dataclass(frozen=True)
class TokenLayout:
    """How `total` video tokens are spread over `size` ranks: `per` each, in order, the last rank(s)
    padded up to `padded` = per * size. Padded tokens are dropped before attention and after the
    gather, so they never change a real token."""

    total: int
    size: int

    @property
    def per(self) -> int:
        return -(-self.total // self.size)

    @property
    def padded(self) -> int:
        return self.per * self.size

    def valid(self, rank: int) -> int:
        """Real (not padding) tokens in rank's shard: the first valid(rank) of its `per`."""
        return max(0, min(self.per, self.total - rank * self.per))


@dataclass
class RankStats:
    """When this rank's denoising loop ended (its last transformer call, set by the stats hook):
    the rank's timings and peak memory for the row, read by the gang (gang.py)."""

    denoise_end: float | None = None
    denoise_end_cpu: float | None = None
    denoise_peak_rss_mb: float | None = None

    def reset(self) -> None:
        self.denoise_end = self.denoise_end_cpu = self.denoise_peak_rss_mb = None

    def mark(self) -> None:
        self.denoise_end, self.denoise_end_cpu = time.perf_counter(), time.process_time()
        self.denoise_peak_rss_mb = rss_mb("VmHWM")


@dataclass
class SPContext:
    """One rank's place in the gang and its process groups (rank = cfg_rank * sp_size + sp_rank)."""

    sp_rank: int
    sp_size: int
    sp_group: Any  # torch ProcessGroup of the ranks sharing one video
    rank: int = 0  # in the gang: rank 0 is its leader
    cfg_rank: int = 0
    cfg_size: int = 1
    cfg_group: Any = None  # ranks holding the same tokens of the other CFG branch
    # attention(text_q, text_k, text_v, q, k, v) -> (text_out, out); None: Ulysses over sp_group
    attention: Any = None
    backend: str = "ulysses"
    stats: RankStats = field(default_factory=RankStats, repr=False)
    # Set by the token-sharding hook at each transformer call: the video tokens of that call.
    layout: TokenLayout | None = field(default=None, repr=False)

    @property
    def world_size(self) -> int:
        return self.cfg_size * self.sp_size

    @property
    def is_leader(self) -> bool:
        """Rank 0 decodes the video and returns it; the others' frames are never used."""
        return self.rank == 0

    def valid_tokens(self) -> int:
        """Real tokens in this rank's shard of the current call."""
        return self.layout.valid(self.sp_rank) if self.layout is not None else 0


# ---- memory of this process ------------------------------------------------------------------


def peak_rss_reset() -> None:
    try:  # Linux: "5" resets the process's peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def rss_mb(field_name: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory, MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- joining the gang --------------------------------------------------------------------------


def error_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip().rstrip(":")


def _agreed_problem(problem: str | None) -> str | None:
    """Every rank's problem (None: none), gathered: the first one, naming its rank, or None when no
    rank has one. All ranks get the same answer, so they all take the same backend."""
    import torch.distributed as dist

    problems: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)
    for rank, text in enumerate(problems):
        if text is not None:
            return f"rank {rank}: {text}" if len(problems) > 1 else text
    return None


def join(
    rank: int, world_size: int, sp_degree: int, init_method: str, sp: SequenceParallelConfig, device: str
) -> SPContext:
    """Join the gang's process groups as `rank` (all ranks call it at once) and return the context.

    Backend (sp.backend): "xdit" uses xfuser or fails saying why; "auto" tries xfuser where it is
    installed and falls back to raypipe's Ulysses on any failure to import or initialise it (or
    without CUDA), the backend string saying why; "ulysses" is raypipe's own. Every rank takes
    the same backend: their problems are gathered before deciding."""
    import torch
    import torch.distributed as dist

    from raypipe.parallel import xdit

    cfg_degree = world_size // sp_degree
    on_cuda = device.startswith("cuda")
    timeout = timedelta(seconds=sp.row_timeout_s)
    try_xdit = sp.backend == "xdit" or (sp.backend == "auto" and importlib.util.find_spec("xfuser") is not None)
    problem = xdit.unusable(on_cuda) if try_xdit else None
    if problem and sp.backend == "xdit":
        raise RuntimeError(f"sp.backend: xdit cannot run here: {problem}")
    if on_cuda:
        torch.cuda.set_device(0)  # Ray gives each rank one GPU: cuda:0 in this process
    if not dist.is_initialized():  # our own init first, for its timeout (xDiT's leaves torch's default)
        backend = "nccl" if on_cuda else "gloo"
        dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout)
    if try_xdit:
        problem = _agreed_problem(problem)  # could every rank import xfuser?
        if problem is None:
            try:
                ctx = xdit.init(rank, world_size, init_method, sp_degree, sp.ring_degree, cfg_degree)
            except Exception as err:  # noqa: BLE001 - any failure to initialise: fall back (or fail, below)
                problem = f"xfuser failed to initialise: {error_line(err)}"
            problem = _agreed_problem(problem)  # did every rank initialise it?
            if problem is None:
                return ctx
        if sp.backend == "xdit":
            raise RuntimeError(f"sp.backend: xdit cannot run here: {problem}")
    # the grid cfg x sp: rank = cfg_rank * sp_degree + sp_rank (new_group is collective: all ranks, same order)
    sp_groups = [dist.new_group(list(range(c * sp_degree, (c + 1) * sp_degree))) for c in range(cfg_degree)]
    cfg_groups = (
        [dist.new_group(list(range(s, world_size, sp_degree))) for s in range(sp_degree)]
        if cfg_degree > 1
        else [None] * sp_degree
    )
    cfg_rank, sp_rank = divmod(rank, sp_degree)
    notes = []
    if problem:
        notes.append(f"xdit not used: {problem}")
    if sp.ring_degree > 1:
        notes.append(f"ring_degree {sp.ring_degree} runs as Ulysses")
    name = f"ulysses-{'nccl' if on_cuda else 'gloo'}" + (f" ({'; '.join(notes)})" if notes else "")
    return SPContext(
        sp_rank=sp_rank,
        sp_size=sp_degree,
        sp_group=sp_groups[cfg_rank],
        rank=rank,
        cfg_rank=cfg_rank,
        cfg_size=cfg_degree,
        cfg_group=cfg_groups[sp_rank],
        backend=name,
    )
