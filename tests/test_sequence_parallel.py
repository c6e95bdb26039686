"""Sequence parallelism (issues 4, 15, 16) in a real local Ray, with real tiny CogVideoX pipelines
on CPU: a gang of rank actors in a placement group, Ulysses attention over gloo, the transformer
wired by named diffusers hooks.

The claim tested: the same row with sp_degree 1 and N gives the same frames, for any N that
divides the heads (the video tokens padded to a multiple of N), with and without rotary
embeddings, with CFG parallel, and with step caching on. The sharded run only changes the order
of float sums, so before encoding the frames may differ by at most 1 level of 255 (rounding),
and after H.264 encoding and decoding by a few levels. The gang tests on a multi-node cluster
(placement, resources, a rank that stops answering) are in tests/test_gangs.py.
"""

import json
import os
import subprocess
import sys
import threading
import time

import decord
import numpy as np
import pytest

from raypipe import parallel
from raypipe.cli import main
from raypipe.config import KindConfig, load_config
from raypipe.parallel.validate import check_sequence_parallel
from raypipe.schema import validate_row
from raypipe.sink import read_metadata
from tests.conftest import write_jsonl

BASE = load_config().kinds["cogvideox"]
ROW = {"kind": "cogvideox", "prompt": "a red kite over a beach", "seed": 11}

# Tolerances, in levels of 255: frames straight from the pipeline (float sums in another order,
# then rounding to uint8), and frames decoded from the H.264 files.
RAW_MAX_DIFF = 1
MP4_MAX_DIFF, MP4_MEAN_DIFF = 12, 0.5


def kind_config(**sp) -> KindConfig:
    return BASE.model_copy(update={"sp": BASE.sp.model_copy(update=sp)})


def row(row_id, **fields):
    return validate_row({"id": row_id, **ROW, **fields}, BASE.defaults)


def rejection(row_obj, config=BASE, nodes=None):
    with pytest.raises(ValueError) as info:
        check_sequence_parallel(row_obj, config, nodes=nodes)
    return str(info.value)


# ---- rejections before any model runs (no Ray needed) -------------------------------------


def test_degree_must_divide_heads_not_latent_rows():
    # tiny CogVideoX: 4 heads, 8x VAE, 2x2 patches: height 64 -> 4 rows of tokens, 48 -> 3
    assert rejection(row("r", sp_degree=3)) == "sp_degree: must divide the 4 attention heads of tiny:cogvideox, got 3"
    assert rejection(row("r", sp_degree=8, height=128)).startswith("sp_degree: must divide the 4 attention heads")
    # issue 16: the video tokens are sharded (padded to a multiple of the degree), not the latent
    # rows, so 4 ranks over 3 rows of tokens is accepted now (it was rejected: "must divide the latent rows")
    check_sequence_parallel(row("r", sp_degree=4, height=48), BASE, nodes=[{"CPU": 2.0}])
    check_sequence_parallel(row("r", sp_degree=4), BASE, nodes=[{"CPU": 2.0}])  # 4 heads, 4 rows: fine
    check_sequence_parallel(row("r", sp_degree=1, height=48), BASE, nodes=[])  # sp 1: nothing to check


def test_cfg_parallel_doubles_the_gang_and_needs_cfg():
    cfg = kind_config(cfg_parallel=True, rank_num_cpus=0.5)
    assert parallel.gang_ranks(2, cfg) == 4
    assert rejection(row("r", sp_degree=2, guidance_scale=1.0), cfg, nodes=[{"CPU": 8.0}]).startswith(
        "guidance_scale: CFG parallel (sp.cfg_parallel) splits the two CFG branches and needs guidance_scale > 1"
    )
    # 2 ranks x 0.5 CPU fit a 1.5-CPU node; with CFG parallel, 4 ranks do not
    check_sequence_parallel(row("r", sp_degree=2), kind_config(rank_num_cpus=0.5), nodes=[{"CPU": 1.5}])
    assert rejection(row("r", sp_degree=2), cfg, nodes=[{"CPU": 1.5}, {"CPU": 1.0}]) == (
        "sp_degree: a gang of 4 ranks (x2 for CFG parallel) x 0.5 CPU needs 2 CPU on one node "
        "(placement STRICT_PACK), but the largest node has 1.5 CPU (alive nodes: 1.5, 1)"
    )


def test_gang_larger_than_any_gpu_node_is_refused_with_the_numbers():
    gpu = KindConfig(model="tiny:cogvideox", device="cuda", num_gpus=1, num_cpus=4)
    nodes = [{"CPU": 96.0, "GPU": 8.0}, {"CPU": 96.0, "GPU": 8.0}]
    check_sequence_parallel(row("r", sp_degree=4), gpu, nodes=nodes)  # 4 GPUs on one node
    error = rejection(
        row("r", sp_degree=4, height=128),
        gpu.model_copy(update={"sp": gpu.sp.model_copy(update={"cfg_parallel": True, "rank_num_cpus": 30})}),
        nodes=nodes,
    )
    assert error == (
        "sp_degree: a gang of 8 ranks (x2 for CFG parallel) x 30 CPU needs 240 CPU on one node "
        "(placement STRICT_PACK), but the largest node has 96 CPU (alive nodes: 96, 96)"
    )
    spread = gpu.model_copy(update={"sp": gpu.sp.model_copy(update={"placement_strategy": "PACK"})})
    check_sequence_parallel(row("r", sp_degree=4), spread, nodes=[{"CPU": 8.0, "GPU": 2.0}] * 2)
    assert "needs 4 GPU, but the cluster has 3 GPU" in rejection(
        row("r", sp_degree=4), spread, nodes=[{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 1.0}]
    )


# ---- a gang in a real local Ray ---------------------------------------------------------------


@pytest.fixture(scope="module")
def stage(ray_local):
    """A CogVideoX stage driven directly (no Ray Data), as a pool actor would drive it."""
    from raypipe.families.cogvideox.stage import CogVideoXStage

    s = CogVideoXStage(kind_config(row_timeout_s=120, start_timeout_s=180, retries=1))
    s.setup()
    yield s
    s.gangs.shutdown()


def test_sp2_frames_equal_sp1_frames_and_the_gang_is_reused(stage):
    one, two, again = stage.process([row("sp1"), row("sp2", sp_degree=2), row("sp2-again", sp_degree=2, seed=12)])
    assert one.meta["status"] == two.meta["status"] == again.meta["status"] == "ok", two.meta["error"]
    assert one.frames.shape == two.frames.shape == (9, 64, 64, 3)
    diff = np.abs(one.frames.astype(int) - two.frames.astype(int))
    assert diff.max() <= RAW_MAX_DIFF, f"max diff {diff.max()}"
    assert np.abs(again.frames.astype(int) - two.frames.astype(int)).mean() > 5  # another seed: another video
    params, params_again = json.loads(two.meta["params_json"]), json.loads(again.meta["params_json"])
    assert (params["sp_degree"], params["sp_ranks"], params["sp_backend"]) == (2, 2, "ulysses-gloo")
    assert two.meta["sp_degree"] == 2 and one.meta["sp_degree"] == 1 and "sp_backend" not in one.meta["params_json"]
    assert len(params["sp_rank_peak_rss_mb"]) == 2 and min(params["sp_rank_peak_rss_mb"]) > 0
    # one gang, created once, both sp rows on the same two rank processes
    assert params_again["sp_workers"] == params["sp_workers"] and len(set(params["sp_workers"])) == 2
    assert stage.gangs.get(2).starts == 1


def test_a_dead_rank_makes_the_row_retry_on_a_fresh_gang(stage):
    import ray

    gang = stage.gangs.get(2)
    if not gang.alive:
        gang.start()
    old_workers = [info["worker"] for info in gang.info]
    ray.kill(gang.ranks[1])  # rank 0 alone would block in its first all-to-all
    (result,) = stage.process([row("after-death", sp_degree=2)])
    assert result.meta["status"] == "ok", result.meta["error"]
    params = json.loads(result.meta["params_json"])
    assert "rank 1 of 2 died" in params["sp_retried_after"][0] and "ray.kill" in params["sp_retried_after"][0]
    assert not set(params["sp_workers"]) & set(old_workers)


def test_a_stuck_gang_fails_the_row_with_the_reason_and_never_hangs(stage):
    import ray

    stage.config.sp.retries = 0
    try:
        gang = stage.gangs.get(2)
        if not gang.alive:
            gang.start()
        # a rank dies in the middle of a long row: the others wait in a collective forever,
        # unless the gang is killed
        threading.Timer(1.0, lambda: ray.kill(gang.ranks[1])).start()
        t0 = time.monotonic()
        (result,) = stage.process([row("killed", sp_degree=2, num_inference_steps=400)])
        assert result.meta["status"] == "failed"
        assert result.meta["error"].startswith("SequenceParallelError: sp_degree 2: generating: rank 1 of 2 died")
        assert time.monotonic() - t0 < 60 and not gang.alive  # killed whole, not left blocked
        # a row past its deadline: the same
        stage.config.sp.row_timeout_s = 1.0
        gang.start()
        (result,) = stage.process([row("slow", sp_degree=2, num_inference_steps=400)])
        assert result.meta["status"] == "failed"
        assert "generating: rank(s) [0, 1] of 2 did not finish in time" in result.meta["error"]
        assert not gang.alive
    finally:
        stage.config.sp.retries, stage.config.sp.row_timeout_s = 1, 120.0
        stage.gangs.shutdown()  # free the CPUs for the run below


# ---- the wiring: the rank's context given to its stage, named hooks (no Ray needed) ----------------


def test_a_rank_stage_is_wired_by_named_hooks_that_can_be_removed(tmp_path):
    import torch.distributed as dist
    from diffusers.hooks import HookRegistry
    from diffusers.models.attention_processor import CogVideoXAttnProcessor2_0

    from raypipe.families.cogvideox.parallel import SequenceParallelCogVideoXAttnProcessor
    from raypipe.families.cogvideox.stage import CogVideoXStage
    from raypipe.parallel import hooks
    from raypipe.parallel.context import SPContext

    assert CogVideoXStage.supports_sequence_parallel  # from the family's flag (raypipe/families/cogvideox)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        context = SPContext(sp_rank=0, sp_size=1, sp_group=dist.new_group([0]))
        rank_stage = CogVideoXStage(BASE, sp=context)  # a gang of one rank: the wiring without the sharding
        assert rank_stage.gangs is None and rank_stage.output_type == "np"  # the leader decodes
        rank_stage.setup()
        alone = CogVideoXStage(BASE)
        alone.setup()
        (wired,) = rank_stage.generate([row("wired")], [{}])
        (plain,) = alone.generate([row("wired")], [{}])
        assert np.abs(wired.frames.astype(int) - plain.frames.astype(int)).max() <= RAW_MAX_DIFF
        assert context.stats.denoise_end is not None  # the stats hook saw the denoising loop

        transformer = rank_stage.pipeline().transformer

        def hook(module, name):
            return HookRegistry.check_if_exists_or_initialize(module).get_hook(name)

        assert isinstance(hook(transformer, "raypipe_sp_shard"), hooks.TransformerShardHook)
        assert isinstance(hook(transformer, "raypipe_sp_rank_stats"), hooks.RankStatsHook)
        assert isinstance(hook(transformer.patch_embed, "raypipe_sp_tokens"), hooks.ShardTokensHook)
        assert isinstance(hook(transformer.proj_out, "raypipe_sp_gather"), hooks.GatherTokensHook)
        processors = transformer.attn_processors.values()
        assert all(isinstance(p, SequenceParallelCogVideoXAttnProcessor) for p in processors)

        hooks.disable_sequence_parallel(transformer)
        for module in transformer.modules():
            for name in hooks.HOOK_NAMES:
                assert hook(module, name) is None, name
        assert all(isinstance(p, CogVideoXAttnProcessor2_0) for p in transformer.attn_processors.values())
        (unwired,) = rank_stage.generate([row("unwired")], [{}])
        assert np.array_equal(unwired.frames, plain.frames)  # diffusers' own transformer again
    finally:
        dist.destroy_process_group()


# ---- a rotary-embedding transformer (as CogVideoX-5B and 1.5), any degree that divides the heads --

# 8 heads x 16 (3D RoPE splits a head into 4 + 6 + 6); at 48x48 px a latent frame has 3 x 3 patches:
# 9 frames -> 3 latent frames -> 27 video tokens, padded to 28 on 2 and 4 ranks. 3 rows of patches,
# so the old rule (the degree must divide the latent rows) refused 2 and 4.
ROPE = {"height": 48, "width": 48}


@pytest.fixture(scope="module")
def rope_model(tmp_path_factory) -> str:
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

    from raypipe.families.cogvideox.tiny import tiny_cogvideox_components
    from raypipe.models.tiny import seeded

    path = tmp_path_factory.mktemp("models") / "cogvideox-rope-8heads"
    components = tiny_cogvideox_components()
    seeded(3)
    rotary = {"num_attention_heads": 8, "attention_head_dim": 16, "use_rotary_positional_embeddings": True}
    components["transformer"] = CogVideoXTransformer3DModel.from_config({**components["transformer"].config, **rotary})
    CogVideoXPipeline(**components).save_pretrained(path)
    return str(path)


def rope_config(model: str, **sp) -> KindConfig:
    return kind_config(row_timeout_s=300, start_timeout_s=300, retries=0, **sp).model_copy(update={"model": model})


@pytest.fixture(scope="module")
def rope_stage(ray_local, rope_model):
    from raypipe.families.cogvideox.stage import CogVideoXStage

    s = CogVideoXStage(rope_config(rope_model))
    s.setup()
    yield s
    s.gangs.shutdown()


def test_rotary_model_on_any_degree_that_divides_its_heads(rope_stage, rope_model):
    check_sequence_parallel(row("r", sp_degree=4, **ROPE), rope_stage.config, nodes=[{"CPU": 2.0}])
    assert rejection(row("r", sp_degree=3, **ROPE), rope_stage.config).startswith(
        "sp_degree: must divide the 8 attention heads"
    )
    one, two, four = rope_stage.process(
        [row("sp1", **ROPE), row("sp2", sp_degree=2, **ROPE), row("sp4", sp_degree=4, **ROPE)]
    )
    for result in (one, two, four):
        assert result.meta["status"] == "ok", result.meta["error"]
        assert result.frames.shape == (9, 48, 48, 3)
    for result in (two, four):
        assert np.abs(one.frames.astype(int) - result.frames.astype(int)).max() <= RAW_MAX_DIFF
    params = json.loads(four.meta["params_json"])
    assert (params["sp_degree"], params["sp_ranks"], params["sp_backend"]) == (4, 4, "ulysses-gloo")
    assert len(set(params["sp_workers"])) == 4


def test_cfg_parallel_2x2_equals_one_process(rope_stage, rope_model):
    from raypipe.families.cogvideox.stage import CogVideoXStage

    rope_stage.gangs.shutdown()  # room for four ranks
    cfg = CogVideoXStage(rope_config(rope_model, cfg_parallel=True))  # no setup: its rows run on the gang
    try:
        (one,) = rope_stage.process([row("cfg-sp1", **ROPE)])
        (grid,) = cfg.process([row("cfg2-sp2", sp_degree=2, **ROPE)])
        assert grid.meta["status"] == "ok", grid.meta["error"]
        assert np.abs(one.frames.astype(int) - grid.frames.astype(int)).max() <= RAW_MAX_DIFF
        params = json.loads(grid.meta["params_json"])
        assert (params["sp_ranks"], params["sp_cfg_parallel"]) == (4, True)  # 2 CFG branches x 2 token shards
    finally:
        cfg.gangs.shutdown()


def test_exvideo_base_cogvideox_with_its_lora_sp2_equals_sp1(stage):
    from raypipe.families.exvideo.stage import ExVideoStage

    stage.gangs.shutdown()
    base = load_config().kinds["exvideo"]
    exvideo = ExVideoStage(base.model_copy(update={"sp": base.sp.model_copy(update={"row_timeout_s": 300})}))
    exvideo.setup()
    try:
        fields = {"kind": "exvideo", "prompt": "a red kite over a beach", "seed": 4, "num_frames": 9}
        one, two = exvideo.process(
            [validate_row({"id": f"ex{d}", **fields, "sp_degree": d}, base.defaults) for d in (1, 2)]
        )
        assert one.meta["status"] == two.meta["status"] == "ok", two.meta["error"]
        assert np.abs(one.frames.astype(int) - two.frames.astype(int)).max() <= RAW_MAX_DIFF
        assert json.loads(two.meta["params_json"])["exvideo_lora"] == base.models["lora"]
    finally:
        exvideo.gangs.shutdown()


# ---- Wan: self-attention over the video tokens only (text by cross-attention), 3D RoPE -------------


def test_wan_t2v_and_i2v_on_gangs_equal_one_process(stage, tmp_path):
    from PIL import Image

    from raypipe.families.wan.stage import WanStage

    stage.gangs.shutdown()
    base = load_config().kinds["wan"]
    assert WanStage.supports_sequence_parallel  # raypipe/families/wan: sequence_parallel on
    image = tmp_path / "first.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(image)
    # tiny:wan: 4 heads; 9 frames at 48x48 px: 3 latent frames x 3 x 3 patches = 27 tokens (padded to 28)
    fields = {"kind": "wan", "prompt": "a red kite over a beach", "seed": 5, "height": 48, "width": 48}
    t2v = [validate_row({"id": f"t2v-sp{d}", **fields, "sp_degree": d}, base.defaults) for d in (1, 2, 4)]
    i2v = [
        validate_row({"id": f"i2v-sp{d}", **fields, "mode": "i2v", "image": str(image), "sp_degree": d}, base.defaults)
        for d in (1, 2)
    ]
    assert rejection(t2v[0].model_copy(update={"sp_degree": 3}), base, nodes=[{"CPU": 8.0}]) == (
        "sp_degree: must divide the 4 attention heads of tiny:wan, got 3"
    )
    sp = {"row_timeout_s": 300, "retries": 0, "rank_num_cpus": 0.25, "max_gangs": 2}
    wan = WanStage(base.model_copy(update={"sp": base.sp.model_copy(update=sp)}))
    wan.setup()
    try:
        results = dict(zip([r.id for r in t2v + i2v], wan.process(t2v + i2v)))
        for result in results.values():
            assert result.meta["status"] == "ok", result.meta["error"]
            assert result.frames.shape == (9, 48, 48, 3)
        frames = {name: result.frames.astype(int) for name, result in results.items()}
        for mode, degrees in (("t2v", (2, 4)), ("i2v", (2,))):
            for degree in degrees:
                diff = np.abs(frames[f"{mode}-sp1"] - frames[f"{mode}-sp{degree}"]).max()
                assert diff <= RAW_MAX_DIFF, (mode, degree, diff)
        assert np.abs(frames["t2v-sp1"] - frames["i2v-sp1"]).mean() > 5  # the first frame did condition i2v
        params = json.loads(results["t2v-sp4"].meta["params_json"])
        assert (params["sp_degree"], params["sp_ranks"], params["sp_backend"]) == (4, 4, "ulysses-gloo")
    finally:
        wan.gangs.shutdown()


# ---- step caching under SP: one decision for the whole gang ---------------------------------------

# first-block cache at this threshold skips some of the 8 steps, and the ranks' own shards measure
# differently (0.136 and 0.143 at one step): before the fix, rank 0 skipped and rank 1 did not, and
# the gang hung in its collectives until row_timeout_s.
STEP_CACHES = {
    "first_block_cache": {"type": "first_block_cache", "threshold": 0.14},
    "pyramid_attention_broadcast": {"type": "pyramid_attention_broadcast"},
}


@pytest.mark.parametrize("cache", sorted(STEP_CACHES))
def test_step_caching_under_sp_takes_one_decision_for_the_gang(stage, cache):
    from raypipe.families.cogvideox.stage import CogVideoXStage

    stage.gangs.shutdown()
    options = {"step_cache": STEP_CACHES[cache]}
    cached = CogVideoXStage(kind_config(row_timeout_s=300, retries=0).model_copy(update={"options": options}))
    cached.setup()
    try:
        t0 = time.monotonic()
        one, two = cached.process([row("c1", num_inference_steps=8), row("c2", sp_degree=2, num_inference_steps=8)])
        assert two.meta["status"] == "ok", two.meta["error"]  # finishes: no rank waits for another forever
        assert time.monotonic() - t0 < 300
        assert np.abs(one.frames.astype(int) - two.frames.astype(int)).max() <= RAW_MAX_DIFF
        (uncached,) = stage.process([row("u", num_inference_steps=8)])
        # the cache did skip work (the frames changed), so the decisions were really taken
        assert np.abs(one.frames.astype(int) - uncached.frames.astype(int)).max() > RAW_MAX_DIFF
    finally:
        cached.gangs.shutdown()


# ---- the xDiT backend: a failure to import xfuser falls back (auto) or fails the row (xdit) -------

# A real import failure: an `xfuser` package on the rank's path whose import raises, as xfuser
# does on a machine without a GPU (xfuser is not installed in this venv).
FAKE_XFUSER = 'raise RuntimeError("Found no NVIDIA driver on your system")\n'
NO_DRIVER = "xfuser failed to import: RuntimeError: Found no NVIDIA driver on your system"
RANK_SCRIPT = """
import json, socket
import numpy as np
from raypipe.config import load_config
from raypipe.families.cogvideox.stage import CogVideoXStage
from raypipe.parallel.gang import RankWorker
from raypipe.schema import validate_row

def address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"

base = load_config().kinds["cogvideox"]
out = {}
forced = base.model_copy(update={"sp": base.sp.model_copy(update={"backend": "xdit"})})
try:
    RankWorker(0, 1, 1, CogVideoXStage, forced.model_dump()).start(address())
except RuntimeError as err:
    out["forced"] = str(err)
rank = RankWorker(0, 1, 1, CogVideoXStage, base.model_dump())  # sp.backend: auto
out["backend"] = rank.start(address())["backend"]
row = validate_row({"id": "r", "kind": "cogvideox", "prompt": "a kite", "seed": 3}, base.defaults)
(video,), stats = rank.generate([row], [{}])
alone = CogVideoXStage(base)
alone.setup()
(expected,) = alone.generate([row], [{}])
out["diff"] = int(np.abs(video.frames.astype(int) - expected.frames.astype(int)).max())
out["denoise_seconds"] = stats.get("denoise_seconds")
print("RESULT " + json.dumps(out))
"""


def test_xfuser_that_fails_to_import_falls_back_or_fails_the_row_saying_why(tmp_path):
    package = tmp_path / "site" / "xfuser"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_XFUSER)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run(
        [sys.executable, "-c", RANK_SCRIPT], env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["forced"] == f"sp.backend: xdit cannot run here: {NO_DRIVER}"  # the row fails with this
    assert out["backend"] == f"ulysses-gloo (xdit not used: {NO_DRIVER})"  # the row's sp_backend
    assert out["diff"] <= RAW_MAX_DIFF and out["denoise_seconds"] > 0


def test_run_with_sp_degree_1_and_2_gives_the_same_video(ray_local, tmp_path):
    manifest = write_jsonl(
        tmp_path / "sp.jsonl",
        [
            {"id": "kite-sp1", **ROW},
            {"id": "kite-sp2", **ROW, "sp_degree": 2},
            {"id": "bad-degree", **ROW, "sp_degree": 3},
            {"id": "three-rows-sp4", **ROW, "sp_degree": 4, "height": 48},
        ],
    )
    out = tmp_path / "out"
    assert main(["run", str(manifest), "--out", str(out)]) == 1  # one row rejected
    meta = {m["id"]: m for m in read_metadata(str(out)).to_pylist()}
    assert meta["bad-degree"]["status"] == "rejected"
    assert meta["bad-degree"]["error"] == "sp_degree: must divide the 4 attention heads of tiny:cogvideox, got 3"
    # issue 16: 3 rows of tokens on 4 ranks runs now (it was rejected: "must divide the latent rows")
    assert meta["three-rows-sp4"]["status"] == "ok", meta["three-rows-sp4"]["error"]
    assert (meta["three-rows-sp4"]["height"], meta["three-rows-sp4"]["sp_degree"]) == (48, 4)
    assert meta["kite-sp1"]["status"] == meta["kite-sp2"]["status"] == "ok", meta["kite-sp2"]["error"]
    assert (meta["kite-sp1"]["sp_degree"], meta["kite-sp2"]["sp_degree"]) == (1, 2)
    assert json.loads(meta["kite-sp2"]["params_json"])["sp_backend"] == "ulysses-gloo"
    videos = [
        decord.VideoReader(str(out / "videos" / f"{name}.mp4")).get_batch(range(9)).asnumpy().astype(int)
        for name in ("kite-sp1", "kite-sp2")
    ]
    assert videos[0].shape == videos[1].shape == (9, 64, 64, 3)
    diff = np.abs(videos[0] - videos[1])
    assert diff.max() <= MP4_MAX_DIFF and diff.mean() <= MP4_MEAN_DIFF, (diff.max(), diff.mean())


def test_a_gang_larger_than_the_real_nodes_is_refused(ray_local):
    # the node sizes come from the running Ray (2 CPUs here)
    error = rejection(row("r", sp_degree=2), kind_config(rank_num_cpus=1.5))
    assert error == (
        "sp_degree: a gang of 2 ranks x 1.5 CPU needs 3 CPU on one node (placement STRICT_PACK), "
        "but the largest node has 2 CPU (alive nodes: 2)"
    )
