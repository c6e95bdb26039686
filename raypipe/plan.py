"""`raypipe plan`: what a run of these manifests would ask for, without generating anything.

Rows per pool (a kind's pool, and for rows with sp_degree N > 1 the kind's pool of gangs
"<kind>/sp<N>"), the pool and the GPUs it holds, and the estimated FLOPs and GPU-seconds of its
rows (raypipe/flops.py; the GPU's peak and the MFU come from the config's `plan` section). The
GPUs are what is really held: a plain pool's actors hold theirs; a pool of gangs holds its gangs'
(N a gang, 2N with CFG parallel) and its actors none. The manifests are read and validated by the
same Ray Data stages as a run; each row is priced in the workers, so only a few sums reach the driver.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raypipe.config import KindConfig, RunConfig
from raypipe.flops import gpu_seconds, row_flops
from raypipe.parallel.validate import gang_nodes, gang_ranks
from raypipe.pipeline.graph import validated_dataset
from raypipe.pipeline.ray_init import joins_cluster
from raypipe.pipeline.records import split_route
from raypipe.pipeline.waves import actor_holds, pool_sizes

PRICE_COLUMNS = ("route", "rows", "flops", "unpriced")


def _price_batch(batch: dict[str, np.ndarray], kinds: dict[str, dict[str, Any]]) -> dict[str, list]:
    """Per route in this batch (a pool, "rejected"): rows, their FLOPs, rows without a FLOP model."""
    configs: dict[str, KindConfig] = {}
    sums: dict[str, list] = {}
    for route, row in zip(batch["route"], batch["rows"]):
        route, kind = str(route), split_route(str(route))[0]
        entry = sums.setdefault(route, [0, 0.0, 0])
        entry[0] += 1
        if kind in kinds:
            kc = configs.get(kind) or configs.setdefault(kind, KindConfig.model_validate(kinds[kind]))
            flops = row_flops(row, kc)
            if flops is None:
                entry[2] += 1
            else:
                entry[1] += flops
    out: dict[str, list] = {c: [] for c in PRICE_COLUMNS}
    for route, values in sums.items():
        for column, value in zip(PRICE_COLUMNS, [route, *values]):
            out[column].append(value)
    return out


@dataclass
class KindPlan:
    """One pool: a kind's, or its pool of gangs of one sp_degree."""

    kind: str
    rows: int
    model: str
    pool_actors: str  # "min-max"
    gpus_per_actor: float  # what one actor holds: its own GPUs, or its gang's
    gpus: str  # what the pool holds, "min-max"
    tflop: float
    gpu_seconds: float | None  # None when some rows have no FLOP model
    unpriced_rows: int
    wall_seconds_at_max_pool: float | None
    pool: str = ""  # the route: the kind, or "<kind>/sp<N>"
    sp_degree: int = 1
    sp_ranks: int = 0  # ranks of each gang (sp_degree, x2 with CFG parallel); 0: no gangs


@dataclass
class Plan:
    rows: int
    rejected: int
    kinds: list[KindPlan] = field(default_factory=list)
    gpu: str = ""
    peak_tflops: float = 0.0
    mfu: float = 0.0
    gang_check: str = ""  # what the gang-fits check of the SP rows used (parallel.validate.gang_nodes)

    @property
    def gpu_seconds(self) -> float:
        return sum(k.gpu_seconds or 0.0 for k in self.kinds)

    def to_json(self) -> str:
        data = asdict(self)
        data["gpu_seconds"] = self.gpu_seconds
        return json.dumps(data, indent=2)

    def table(self) -> str:
        header = (
            "pool",
            "rows",
            "model",
            "pool actors",
            "GPUs/actor",
            "GPUs",
            "TFLOP",
            "GPU-hours",
            "wall h (max pool)",
        )
        lines = [header]
        for k in self.kinds:
            hours = "n/a" if k.gpu_seconds is None else f"{k.gpu_seconds / 3600:.3g}"
            wall = "n/a" if k.wall_seconds_at_max_pool is None else f"{k.wall_seconds_at_max_pool / 3600:.3g}"
            lines.append(
                (
                    k.pool or k.kind,
                    str(k.rows),
                    k.model,
                    k.pool_actors,
                    f"{k.gpus_per_actor:g}",
                    k.gpus,
                    f"{k.tflop:,.0f}",
                    hours,
                    wall,
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        text.append(
            f"{self.rows} rows: {self.rows - self.rejected} to generate, {self.rejected} rejected; "
            f"{self.gpu_seconds / 3600:.3g} GPU-hours in all"
        )
        for k in self.kinds:
            if k.unpriced_rows:
                text.append(f"{k.pool}: {k.unpriced_rows} rows have no FLOP model (raypipe/flops.py); not priced")
            if k.sp_ranks:
                text.append(
                    f"{k.pool}: rows with sp_degree {k.sp_degree}, each on a gang of {k.sp_ranks} ranks holding "
                    f"{k.gpus_per_actor:g} GPUs; the pool's actors drive the gangs and hold no GPU"
                )
        if any(k.sp_ranks for k in self.kinds):
            text.append(self.gang_check)
        text.append(
            f"assumes {self.gpu}: {self.peak_tflops:g} TFLOP/s peak x MFU {self.mfu:g} = "
            f"{self.peak_tflops * self.mfu:g} TFLOP/s per GPU (config `plan`); FLOPs per row: raypipe/flops.py"
        )
        return "\n".join(text)


def make_plan(uris: list[str], config: RunConfig, address: str | None = None) -> Plan:
    """address: the --address given; without one (nor RAY_ADDRESS) the SP rows' gangs are checked
    against the config's `cluster`, or not at all (the plan says so), never against this machine."""
    from raypipe.families import family

    nodes, gang_check = gang_nodes(config, joined=joins_cluster(address))
    kinds = {kind: kc.model_dump() for kind, kc in config.kinds.items()}
    priced = validated_dataset(uris, config, then=functools.partial(_price_batch, kinds=kinds), nodes=nodes)
    sums: dict[str, list] = {}
    for batch in priced.iter_batches(batch_size=None, batch_format="numpy"):
        for route, rows, flops, unpriced in zip(*(batch[c] for c in PRICE_COLUMNS)):
            entry = sums.setdefault(str(route), [0, 0.0, 0])
            entry[0] += int(rows)
            entry[1] += float(flops)
            entry[2] += int(unpriced)
    p = config.plan
    plan = Plan(
        rows=sum(v[0] for v in sums.values()),
        rejected=sums.get("rejected", [0])[0],
        gpu=p.gpu,
        peak_tflops=p.peak_tflops,
        mfu=p.mfu,
        gang_check=gang_check,
    )
    for pool in sorted(r for r in sums if split_route(r)[0] in config.kinds):
        kind, degree = split_route(pool)
        rows, flops, unpriced = sums[pool]
        kc = config.kinds[kind]
        low, high = pool_sizes(pool, kc, rows)
        per_actor = actor_holds(pool, kc, family(kind).stage, config).get("GPU", 0.0)
        seconds = None if unpriced else gpu_seconds(flops, p.peak_tflops, p.mfu)
        wall = None if seconds is None or high * per_actor == 0 else seconds / (high * per_actor)
        plan.kinds.append(
            KindPlan(
                kind=kind,
                rows=rows,
                model=kc.model,
                pool_actors=f"{low}-{high}" if high > low else str(low),
                gpus_per_actor=per_actor,
                gpus=f"{low * per_actor:g}-{high * per_actor:g}" if high > low else f"{high * per_actor:g}",
                tflop=flops / 1e12,
                gpu_seconds=seconds,
                unpriced_rows=unpriced,
                wall_seconds_at_max_pool=wall,
                pool=pool,
                sp_degree=degree,
                sp_ranks=gang_ranks(degree, kc) if degree > 1 else 0,
            )
        )
    return plan
