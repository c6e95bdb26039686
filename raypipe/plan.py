"""`raypipe plan`: what a run of these manifests would ask for, without generating anything.

Rows per kind (each kind is one actor pool), the pool and the GPUs the config gives it, and the
estimated FLOPs and GPU-seconds of its rows (raypipe/flops.py; the GPU's peak and the MFU come
from the config's `plan` section). The manifests are read and validated by the same Ray Data
stages as a run; each row is priced in the workers, so only a few sums reach the driver.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raypipe.config import KindConfig, RunConfig
from raypipe.flops import gpu_seconds, row_flops
from raypipe.pipeline.graph import validated_dataset

PRICE_COLUMNS = ("kind", "rows", "flops", "unpriced", "sp_rows", "max_sp_degree")


def _price_batch(batch: dict[str, np.ndarray], kinds: dict[str, dict[str, Any]]) -> dict[str, list]:
    """Per route in this batch: rows, their FLOPs, rows without a FLOP model, sequence-parallel rows."""
    configs: dict[str, KindConfig] = {}
    sums: dict[str, list] = {}
    for route, row in zip(batch["route"], batch["rows"]):
        route = str(route)
        entry = sums.setdefault(route, [0, 0.0, 0, 0, 1])
        entry[0] += 1
        if route in kinds:
            kc = configs.get(route) or configs.setdefault(route, KindConfig.model_validate(kinds[route]))
            flops = row_flops(row, kc)
            if flops is None:
                entry[2] += 1
            else:
                entry[1] += flops
            degree = getattr(row, "sp_degree", 1)
            if degree > 1:
                entry[3] += 1
                entry[4] = max(entry[4], degree)
    out: dict[str, list] = {c: [] for c in PRICE_COLUMNS}
    for route, values in sums.items():
        for column, value in zip(PRICE_COLUMNS, [route, *values]):
            out[column].append(value)
    return out


@dataclass
class KindPlan:
    kind: str
    rows: int
    model: str
    pool_actors: str  # "min-max"
    gpus_per_actor: float
    gpus: str  # what the pool asks for, "min-max"
    tflop: float
    gpu_seconds: float | None  # None when some rows have no FLOP model
    unpriced_rows: int
    wall_seconds_at_max_pool: float | None
    sp_rows: int = 0
    sp_gang_gpus: float = 0.0  # GPUs of the largest sequence-parallel gang, besides the pool


@dataclass
class Plan:
    rows: int
    rejected: int
    kinds: list[KindPlan] = field(default_factory=list)
    gpu: str = ""
    peak_tflops: float = 0.0
    mfu: float = 0.0

    @property
    def gpu_seconds(self) -> float:
        return sum(k.gpu_seconds or 0.0 for k in self.kinds)

    def to_json(self) -> str:
        data = asdict(self)
        data["gpu_seconds"] = self.gpu_seconds
        return json.dumps(data, indent=2)

    def table(self) -> str:
        header = (
            "kind",
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
                    k.kind,
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
                text.append(f"{k.kind}: {k.unpriced_rows} rows have no FLOP model (raypipe/flops.py); not priced")
            if k.sp_rows:
                text.append(
                    f"{k.kind}: {k.sp_rows} rows run sequence parallel; the largest gang holds "
                    f"{k.sp_gang_gpus:g} GPUs besides the pool"
                )
        text.append(
            f"assumes {self.gpu}: {self.peak_tflops:g} TFLOP/s peak x MFU {self.mfu:g} = "
            f"{self.peak_tflops * self.mfu:g} TFLOP/s per GPU (config `plan`); FLOPs per row: raypipe/flops.py"
        )
        return "\n".join(text)


def make_plan(uris: list[str], config: RunConfig) -> Plan:
    kinds = {kind: kc.model_dump() for kind, kc in config.kinds.items()}
    priced = validated_dataset(uris, config, then=functools.partial(_price_batch, kinds=kinds))
    sums: dict[str, list] = {}
    for batch in priced.iter_batches(batch_size=None, batch_format="numpy"):
        for kind, rows, flops, unpriced, sp_rows, degree in zip(*(batch[c] for c in PRICE_COLUMNS)):
            entry = sums.setdefault(str(kind), [0, 0.0, 0, 0, 1])
            entry[0] += int(rows)
            entry[1] += float(flops)
            entry[2] += int(unpriced)
            entry[3] += int(sp_rows)
            entry[4] = max(entry[4], int(degree))
    p = config.plan
    plan = Plan(
        rows=sum(v[0] for v in sums.values()),
        rejected=sums.get("rejected", [0])[0],
        gpu=p.gpu,
        peak_tflops=p.peak_tflops,
        mfu=p.mfu,
    )
    for kind in sorted(k for k in sums if k in config.kinds):
        rows, flops, unpriced, sp_rows, degree = sums[kind]
        kc = config.kinds[kind]
        low = min(kc.pool_size, rows)
        high = max(low, min(kc.max_pool_size or low, rows))
        seconds = None if unpriced else gpu_seconds(flops, p.peak_tflops, p.mfu)
        gpus_high = high * kc.num_gpus
        wall = None if seconds is None or gpus_high == 0 else seconds / gpus_high
        rank_gpus = kc.sp.rank_num_gpus if kc.sp.rank_num_gpus is not None else kc.num_gpus
        gang = degree * rank_gpus * (2 if kc.sp.cfg_parallel else 1) if sp_rows else 0.0
        plan.kinds.append(
            KindPlan(
                kind=kind,
                rows=rows,
                model=kc.model,
                pool_actors=f"{low}-{high}" if high > low else str(low),
                gpus_per_actor=kc.num_gpus,
                gpus=f"{low * kc.num_gpus:g}-{gpus_high:g}" if high > low else f"{gpus_high:g}",
                tflop=flops / 1e12,
                gpu_seconds=seconds,
                unpriced_rows=unpriced,
                wall_seconds_at_max_pool=wall,
                sp_rows=sp_rows,
                sp_gang_gpus=gang,
            )
        )
    return plan
