"""The run's Ray Data datasets: the read, the validated records, a branch per pool, the others."""

from __future__ import annotations

from raypipe.config import KindConfig, RunConfig
from raypipe.parallel.validate import GangNodes
from raypipe.pipeline.actors import StageActor
from raypipe.pipeline.batches import count_routes_batch, load_inputs, read_fn, rejected_meta, validate_batch
from raypipe.pipeline.ray_init import quiet_ray_data
from raypipe.pipeline.records import READ_BATCH_ROWS, split_route
from raypipe.pipeline.waves import pool_actor_resources, pool_sizes

# Manifests and metadata parts (the resume index) of up to this many bytes in all are counted on
# the driver, in this process: a Ray Data pass starts a read task and validating tasks in new
# worker processes, seconds before the first generation on 2 cores (BENCHMARKS.md), while the
# driver validates a few thousand small rows in well under a second. Larger inputs are counted
# by the validating tasks, and the driver never holds them.
DRIVER_COUNT_BYTES = 4 << 20


def records_dataset(
    manifests,
    config: RunConfig,
    out: str | None = None,
    run_id: str | None = None,
    sweep: bool = False,
    read_cpus: float = 0.0,
):
    """Every manifest row as a record (id, source, line, kind, route, raw_json, error, sweep),
    read by one task a manifest, in parallel, each in its line order; route is "pending",
    "rejected" or "skip" (ok in `out` already). manifests: the URIs, or a read prepared once for
    several passes (pipeline.read.prepare_read: the ids, duplicates and resume index, computed in
    Ray tasks). sweep: checked against the sweep's index (every id this run has a row for).

    read_cpus: a read task's CPU. 0 beside pools: it may live as long as the run (backpressure
    pauses it) and must never hold a CPU that a pool's actors or the CPU stages wait for. 1 in
    the passes that only read or validate (count, `raypipe validate`, `raypipe plan`): the read is
    their one sequential part, and without a CPU of its own the validating tasks crowd it out.
    At most one read task per two CPUs of the cluster runs at once: the rest validate."""
    import ray
    import ray.data

    from raypipe.pipeline.read import ManifestRead, for_sweep, prepare_read

    quiet_ray_data()
    if isinstance(manifests, ManifestRead):
        read = for_sweep(manifests, out, run_id) if sweep else manifests
    else:
        read = prepare_read(list(manifests), out, run_id, sweep)
    count = len(read.uris)
    parallel = max(1, min(count, int(ray.cluster_resources().get("CPU", 2) // 2)))
    return ray.data.from_items([{"manifest": i} for i in range(count)], override_num_blocks=count).map_batches(
        read_fn(read), batch_size=1, num_cpus=read_cpus, compute=ray.data.TaskPoolStrategy(size=parallel)
    )


def validate(
    records,
    config: RunConfig,
    keep_rows: bool = True,
    then=None,
    num_cpus: float | None = None,
    nodes: GangNodes | None = None,
):
    """nodes: what sequence-parallel gangs must fit (parallel.validate.gang_nodes); None: not checked."""
    return records.map_batches(
        validate_batch,
        fn_kwargs=validate_kwargs(config, keep_rows, then, nodes),
        batch_size=READ_BATCH_ROWS,
        batch_format="pyarrow",
        num_cpus=num_cpus or config.cpu_stage_num_cpus,
    )


def validate_kwargs(config: RunConfig, keep_rows: bool = True, then=None, nodes: GangNodes | None = None) -> dict:
    """validate_batch's arguments besides the batch."""
    defaults = {kind: kc.defaults for kind, kc in config.kinds.items()}
    kinds = {kind: kc.model_dump() for kind, kc in config.kinds.items()}
    return {"defaults": defaults, "kinds": kinds, "keep_rows": keep_rows, "then": then, "nodes": nodes}


def validated_dataset(
    uris: list[str],
    config: RunConfig,
    out: str | None = None,
    run_id: str | None = None,
    keep_rows: bool = True,
    then=None,
    nodes: GangNodes | None = None,
):
    """Records of every manifest row with their route: a pool (a kind, or "<kind>/sp<N>"),
    'rejected' or 'skip'; with keep_rows, the validated row packed (`row`). then: see
    validate_batch. For the passes that only validate (the count, `raypipe validate`,
    `raypipe plan`: no pools beside them)."""
    # Validation is pure Python work: a validating process per half core is enough (more only
    # adds switching; measured in BENCHMARKS.md), the read keeps a core of its own.
    return validate(
        records_dataset(uris, config, out, run_id, read_cpus=1.0),
        config,
        keep_rows,
        then,
        num_cpus=max(0.5, config.cpu_stage_num_cpus),
        nodes=nodes,
    )


def count_routes(
    uris,
    config: RunConfig,
    out: str | None = None,
    run_id: str | None = None,
    nodes: GangNodes | None = None,
) -> dict[str, int]:
    """Valid rows per pool (a kind, or "<kind>/sp<N>"), and rows "rejected" or to "skip" (ok in
    `out` already): which pools start, and how large. Counted in the validating tasks (no row is
    kept: each is validated again in its branch, where it is packed), so only a few numbers reach
    the driver. uris: the manifests' URIs or their prepared read (records_dataset). Small inputs
    (DRIVER_COUNT_BYTES) are counted on the driver, by the same functions in this process."""
    from raypipe.manifest import read_batches
    from raypipe.pipeline.read import ManifestRead
    from raypipe.sink import build_done_index

    counts: dict[str, int] = {}
    manifests = uris.uris if isinstance(uris, ManifestRead) else list(uris)
    prepared = uris if isinstance(uris, ManifestRead) else None
    if prepared.here if prepared else input_bytes(manifests, out) <= DRIVER_COUNT_BYTES:
        if prepared:  # the read the run prepared on the driver: its ids and index
            batches = read_fn(prepared)({"manifest": range(len(manifests))})
        else:
            done = build_done_index(out, exclude_run=run_id) if out else None
            batches = read_batches(manifests, done, READ_BATCH_ROWS)
        kwargs = validate_kwargs(config, keep_rows=False, then=count_routes_batch, nodes=nodes)
        tallies = [validate_batch(records, **kwargs) for records in batches]
    else:
        tallies = validated_dataset(
            uris, config, out, run_id, keep_rows=False, then=count_routes_batch, nodes=nodes
        ).iter_batches(batch_size=None, batch_format="numpy")
    for batch in tallies:
        for route, rows in zip(batch["route"], batch["rows"]):
            counts[str(route)] = counts.get(str(route), 0) + int(rows)
    return counts


def input_bytes(uris: list[str], out: str | None = None) -> float:
    """Bytes of the manifests and of `out`'s metadata parts; infinite when a size is unknown."""
    import fsspec

    from raypipe.sink import metadata_dir

    try:
        total = 0
        for uri in uris:
            fs, path = fsspec.core.url_to_fs(uri)
            total += fs.size(path)
        if out:
            fs, path = fsspec.core.url_to_fs(metadata_dir(out))
            if fs.exists(path):
                total += fs.du(path)
        return total
    except Exception:  # noqa: BLE001 - a size it cannot tell: count in Ray Data, as for a large input
        return float("inf")


def pool_dataset(
    records,
    route: str,
    kc: KindConfig,
    rows: int,
    out: str,
    config: RunConfig,
    stage_path: str,
    attempts=None,
    nodes: GangNodes | None = None,
    with_rejected: bool = True,
):
    """One pool's branch: its kind's rows validated, those routed to it kept, inputs decoded on
    CPU, generated by its actor pool, encoded and committed by CPU tasks. route: the kind (its
    pool of model-holding actors) or "<kind>/sp<N>" (CPU actors driving gangs of N ranks: the
    ranks hold the GPUs). with_rejected: the kind's rows rejected by validation go this way too
    (one branch of each kind takes them; they pass through its actors as metadata)."""
    import ray.data
    from ray.data.expressions import col

    from raypipe.sink import write_videos

    kind, sp_degree = split_route(route)
    cpu = config.cpu_stage_num_cpus
    low, high = pool_sizes(route, kc, rows)
    compute = ray.data.ActorPoolStrategy(min_size=low, max_size=high)
    # Blocks of one actor batch each: a task takes whole blocks and yields its output as one
    # block at its end, so a block of a thousand rows would go to one actor, and reach the
    # writers only once all of it is generated. One batch per block spreads the rows over the
    # pool's actors (and the input decoding over CPU tasks), and each video is encoded and
    # committed as soon as its batch is done.
    validated = validate(
        records.filter(expr=(col("kind") == kind) & (col("route") == "pending"), num_cpus=0), config, nodes=nodes
    )
    mine = col("route").is_in([route, "rejected"]) if with_rejected else col("route") == route
    batches = validated.filter(expr=mine, num_cpus=0).repartition(target_num_rows_per_block=kc.batch_size)
    with_inputs = batches.map_batches(
        load_inputs,
        fn_kwargs={"stage_path": stage_path, "kind_config": kc.model_dump()},
        batch_size=kc.batch_size,
        num_cpus=cpu,
    )
    generated = with_inputs.map_batches(
        StageActor,
        fn_constructor_args=(kind, stage_path, kc.model_dump(), attempts, config.max_row_attempts, sp_degree == 1),
        compute=compute,
        batch_size=kc.batch_size,
        **pool_actor_resources(route, kc, stage_path, config),
    )
    # The quality gate scores each video here, on CPU (raypipe/quality.py), not on the pool's time.
    # One call a generated batch (a block), not one a row: a task's output leaves at its end
    # whatever the batch size, and each batch costs Ray Data a slice and a conversion.
    writer = {"out": out, "quality": kc.quality.model_dump(), "scoring": config.quality.model_dump()}
    return generated.map_batches(write_videos, fn_kwargs=writer, batch_size=kc.batch_size, num_cpus=cpu)


def others_dataset(records, pooled: list[str], config: RunConfig, nodes: GangNodes | None = None):
    """The branch of rows whose kind has no pool: rejected (or, in the sweep, lost). pooled: kinds."""
    from ray.data.expressions import col

    cpu = config.cpu_stage_num_cpus
    no_pool = (col("route") == "rejected") | (col("route") == "pending")
    if pooled:
        no_pool = (col("route") == "rejected") | ((col("route") == "pending") & ~col("kind").is_in(pooled))
    validated = validate(records.filter(expr=no_pool, num_cpus=0), config, nodes=nodes)
    return validated.map_batches(rejected_meta, num_cpus=cpu)
