"""The Wan family on tiny models: the rejections (each naming its field); the stage driven directly
(batched == alone, i2v uses its image, a LoRA in Wan's own key names, flow_shift); t2v and i2v
rows in a real local Ray, the videos read back by decord; the FLOP model against
torch.utils.flop_counter on the meta device and `raypipe plan` pricing Wan rows."""

import json
from pathlib import Path

import decord
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from raypipe.cli import main
from raypipe.config import load_config
from raypipe.families.wan.flops import WAN_13B, WAN_14B, WAN_14B_I2V, wan_forward_flops, wan_shape
from raypipe.families.wan.stage import WanStage
from raypipe.schema import validate_row
from raypipe.sink import read_metadata
from tests.conftest import REPO, write_jsonl

IMAGE = str(REPO / "manifests" / "inputs" / "sunset.png")
DEFAULTS = load_config().kinds["wan"].defaults

# ---- validation -------------------------------------------------------------------------------

REJECTED = [
    ({"num_frames": 12}, "num_frames: must be 4k+1"),
    ({"num_frames": 85}, "num_frames: at most 81 for Wan"),
    ({"num_frames": 0}, "num_frames: must be positive"),
    ({"height": 40}, "height: must be a multiple of 16 (Wan: 8x VAE x 2x2 patches), got 40"),
    ({"width": 100}, "width: must be a multiple of 16"),
    ({"height": 1280, "width": 1280}, "height: 1280 x 1280 is larger than Wan's largest size"),
    ({"prompt": ""}, "prompt: required for mode t2v"),
    ({"prompt": "   "}, "prompt: required for mode t2v"),
    ({"image": IMAGE}, "image: only for mode i2v"),
    ({"mode": "i2v"}, "image: required for mode i2v"),
    ({"mode": "v2v"}, "mode: Input should be 't2v' or 'i2v'"),
    ({"num_frame": 9}, "num_frame: unknown field"),
]


@pytest.mark.parametrize("fields,error", REJECTED, ids=[e.split(":")[0] + str(i) for i, (_, e) in enumerate(REJECTED)])
def test_rows_outside_the_models_rules_are_rejected_naming_the_field(fields, error):
    with pytest.raises(ValueError) as info:
        validate_row({"id": "r", "kind": "wan", "prompt": "a cat", **fields}, DEFAULTS)
    assert str(info.value).startswith(error), str(info.value)


def test_the_released_models_settings_are_the_defaults_and_limits():
    # without config defaults a row gets the released models' own settings
    row = validate_row({"id": "a", "kind": "wan", "prompt": "x"})
    assert (row.num_frames, row.height, row.width, row.num_inference_steps, row.guidance_scale, row.fps) == (
        81,
        480,
        832,
        50,
        5.0,
        16,
    )
    assert validate_row({"id": "b", "kind": "wan", "prompt": "x", "height": 720, "width": 1280}).width == 1280
    assert validate_row({"id": "c", "kind": "wan", "prompt": "x", "height": 1280, "width": 720}).height == 1280
    # i2v has the image to go on: no prompt needed
    assert validate_row({"id": "d", "kind": "wan", "mode": "i2v", "image": IMAGE}).mode == "i2v"


def test_example_manifest_validates_and_its_inputs_exist():
    lines = (REPO / "manifests" / "wan.jsonl").read_text().splitlines()
    modes = set()
    for line in lines:
        raw = json.loads(line)
        modes.add(validate_row(raw, DEFAULTS).mode)
        if "image" in raw:  # relative to the repo root, where `raypipe run manifests/...` runs
            assert not Path(raw["image"]).is_absolute() and (REPO / raw["image"]).is_file(), raw["image"]
    assert modes == {"t2v", "i2v"}


# ---- the stage, driven directly -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage():
    stage = WanStage(load_config().kinds["wan"])
    stage.setup()
    return stage


def rows_of(*fields) -> list:
    return [validate_row({"id": f"r{i}", "kind": "wan", **f}, DEFAULTS) for i, f in enumerate(fields)]


BATCHES = {
    "t2v": [{"prompt": "a cat"}, {"prompt": "a dog on a red sofa", "seed": 3}],
    "i2v": [{"mode": "i2v", "image": IMAGE, "prompt": "dusk"}, {"mode": "i2v", "image": IMAGE, "seed": 5}],
}


@pytest.mark.parametrize("mode", list(BATCHES))
def test_a_batched_video_is_the_video_made_alone(stage, mode):
    rows = rows_of(*BATCHES[mode])
    together = stage.process(rows)
    alone = [stage.process([row])[0] for row in rows]
    for batched, single in zip(together, alone):
        assert batched.meta["status"] == single.meta["status"] == "ok", batched.meta["error"] + single.meta["error"]
        assert json.loads(batched.meta["params_json"])["batch_rows"] == 2
        # Float summation order differs with the batch size: at most 1 level of 255, on under 0.1%.
        diff = np.abs(batched.frames.astype(int) - single.frames.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (diff.max(), (diff > 0).mean())
    assert np.abs(together[0].frames.astype(int) - together[1].frames.astype(int)).mean() > 1  # seeds differ


def test_i2v_starts_from_its_image_and_needs_an_i2v_checkpoint(stage, tmp_path):
    other = tmp_path / "flipped.png"
    Image.open(IMAGE).convert("RGB").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(other)
    common = {"mode": "i2v", "prompt": "dusk", "seed": 1}
    sunset, flipped = stage.process(rows_of({**common, "image": IMAGE}, {**common, "image": str(other)}))
    assert sunset.meta["status"] == flipped.meta["status"] == "ok"
    # same prompt, seed and model: only the first frame differs (two batch keys, two calls)
    assert json.loads(sunset.meta["params_json"])["batch_rows"] == 1
    assert np.abs(sunset.frames.astype(int) - flipped.frames.astype(int)).mean() > 2
    params = json.loads(sunset.meta["params_json"])
    assert (params["pipeline"], params["scheduler"], params["flow_shift"]) == (
        "WanImageToVideoPipeline",
        "UniPCMultistepScheduler",
        3.0,
    )
    (wrong,) = stage.process(rows_of({**common, "image": IMAGE, "model": "tiny:wan"}))
    assert wrong.meta["error"].startswith(
        "ValueError: model: tiny:wan is a WanPipeline; mode i2v needs a WanImageToVideoPipeline checkpoint"
    )


def wan_original_lora(path: Path, rank: int = 4) -> str:
    """A LoRA in the original Wan repo's module names (`diffusion_model.blocks.<i>.self_attn.q`,
    `cross_attn.*`, `ffn.0` / `ffn.2`), lora_down / lora_up with alphas, the layout in which most
    Wan LoRAs are released (diffusers' WanLoraLoaderMixin renames it), for the tiny transformer."""
    from raypipe.families.wan.tiny import FFN_DIM, HEAD_DIM, HEADS

    width, ffn = HEADS * HEAD_DIM, FFN_DIM
    layers = {f"{attn}.{p}": (width, width) for attn in ("self_attn", "cross_attn") for p in "qkvo"}
    layers.update({"ffn.0": (width, ffn), "ffn.2": (ffn, width)})
    generator = torch.Generator().manual_seed(0)
    weights = {}
    for block in range(2):
        for layer, (fan_in, fan_out) in layers.items():
            key = f"diffusion_model.blocks.{block}.{layer}"
            weights[f"{key}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator)
            weights[f"{key}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.5
            weights[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(weights, str(path))
    return str(path)


def test_a_row_lora_in_wans_own_names_changes_the_video_and_goes_away_after(stage, tmp_path):
    lora = wan_original_lora(tmp_path / "wan_lora.safetensors")
    common = {"prompt": "a lighthouse", "seed": 4, "num_inference_steps": 2}
    rows = rows_of(
        common, {**common, "lora": [{"path": lora, "weight": 1.0}]}, {**common, "lora": [{"path": lora, "weight": 0.0}]}
    )
    plain, on, off, again = (stage.process([row])[0] for row in [*rows, rows[0]])  # one call each, in this order
    assert all(r.meta["status"] == "ok" for r in (plain, on, off, again)), on.meta["error"]
    assert np.abs(plain.frames.astype(int) - on.frames.astype(int)).mean() > 2
    assert np.array_equal(plain.frames, off.frames)  # weight 0 is no LoRA
    assert np.array_equal(plain.frames, again.frames)  # the adapter is off for a row without it
    assert json.loads(on.meta["params_json"])["lora"] == [{"path": lora, "weight": 1.0}]


def test_flow_shift_option_and_bad_options(stage):
    row = rows_of({"prompt": "a cat", "num_inference_steps": 2})
    plain = stage.process(row)[0]
    shifted_stage = WanStage(stage.config.model_copy(update={"options": {"flow_shift": 5.0}}))
    shifted_stage.setup()
    assert shifted_stage.pipeline().scheduler.config.flow_shift == 5.0
    shifted = shifted_stage.process(row)[0]
    assert json.loads(shifted.meta["params_json"])["flow_shift"] == 5.0
    assert np.abs(shifted.frames.astype(int) - plain.frames.astype(int)).max() > 0
    for options, error in (
        ({"flow_shift": -1}, "options.flow_shift: a positive number"),
        ({"flow_shift": "high"}, "options.flow_shift: a positive number"),
        ({"vae_tilling": True}, "options.vae_tilling: unknown option"),
    ):
        with pytest.raises(ValueError, match=error):
            WanStage(stage.config.model_copy(update={"options": options})).setup()


# ---- t2v and i2v in a real local Ray ---------------------------------------------------------------

OK_ROWS = [
    # the first two share a batch_key and run as one pipeline call (batch_size 2)
    {"id": "t2v-a", "kind": "wan", "prompt": "a red kite over a beach"},
    {"id": "t2v-b", "kind": "wan", "prompt": "rain on a window", "seed": 3},
    {"id": "t2v-17", "kind": "wan", "prompt": "a city at night", "num_frames": 17, "height": 48, "width": 80},
    {"id": "i2v", "kind": "wan", "mode": "i2v", "image": IMAGE, "prompt": "the sun sets"},
    {"id": "i2v-13", "kind": "wan", "mode": "i2v", "image": IMAGE, "num_frames": 13, "height": 32},
]
FAILED_ROWS = [{"id": "i2v-missing", "kind": "wan", "mode": "i2v", "image": "/nonexistent/sunset.png"}]
REJECTED_ROWS = [
    {"id": "frames-12", "kind": "wan", "prompt": "x", "num_frames": 12},
    {"id": "no-prompt", "kind": "wan"},
    {"id": "no-image", "kind": "wan", "mode": "i2v", "prompt": "x"},
]


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wan")
    manifest = write_jsonl(tmp / "wan.jsonl", OK_ROWS + FAILED_ROWS + REJECTED_ROWS)
    config = tmp / "config.yaml"
    config.write_text("kinds:\n  wan:\n    batch_size: 2\n")
    out = tmp / "out"
    code = main(["run", str(manifest), "--out", str(out), "--config", str(config)])
    meta = {m["id"]: m for m in read_metadata(str(out)).to_pylist()}
    return out, code, meta


def test_t2v_and_i2v_rows_make_videos_of_the_asked_frames_and_size(run):
    out, code, meta = run
    assert code == 1  # the failed and rejected rows
    assert len(meta) == len(OK_ROWS) + len(FAILED_ROWS) + len(REJECTED_ROWS)
    for row in OK_ROWS:
        m = meta[row["id"]]
        assert m["status"] == "ok", (row["id"], m["error"])
        frames = row.get("num_frames", DEFAULTS["num_frames"])
        size = (row.get("height", DEFAULTS["height"]), row.get("width", DEFAULTS["width"]))
        reader = decord.VideoReader(str(out / "videos" / f"{row['id']}.mp4"))
        assert len(reader) == frames == m["num_frames"], row["id"]
        assert reader[0].shape == (*size, 3) and (m["height"], m["width"]) == size, row["id"]
        assert abs(reader.get_avg_fps() - 16) < 0.01
    made_with = {i: (meta[i]["mode"], meta[i]["model"], json.loads(meta[i]["params_json"])) for i in ("t2v-a", "i2v")}
    assert made_with["t2v-a"][:2] == ("t2v", "tiny:wan") and made_with["i2v"][:2] == ("i2v", "tiny:wan-i2v")
    assert made_with["t2v-a"][2]["pipeline"] == "WanPipeline" and made_with["t2v-a"][2]["batch_rows"] == 2
    assert made_with["i2v"][2]["pipeline"] == "WanImageToVideoPipeline"


def test_bad_rows_fail_or_are_rejected_naming_the_field(run):
    out, _, meta = run
    missing = meta["i2v-missing"]
    assert missing["status"] == "failed" and missing["error"].startswith(
        "image: cannot read /nonexistent/sunset.png: FileNotFoundError"
    )
    assert not (out / "videos" / "i2v-missing.mp4").exists()
    expect = {
        "frames-12": "num_frames: must be 4k+1",
        "no-prompt": "prompt: required for mode t2v",
        "no-image": "image: required for mode i2v",
    }
    for row_id, start in expect.items():
        assert meta[row_id]["status"] == "rejected" and meta[row_id]["error"].startswith(start), meta[row_id]["error"]


# ---- the FLOP model and `raypipe plan` -------------------------------------------------------------


def count_flops(config: dict, frames: int, height: int, width: int, image_tokens: int = 0) -> float:
    """torch.utils.flop_counter over one forward of the released architecture, on the meta device."""
    from diffusers import WanTransformer3DModel
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")
    with meta:
        model = WanTransformer3DModel(**config)
    latent = (config["in_channels"], (frames - 1) // 4 + 1, height // 8, width // 8)
    args = {
        "hidden_states": torch.empty(1, *latent, device=meta),
        "timestep": torch.empty(1, device=meta),
        "encoder_hidden_states": torch.empty(1, 512, 4096, device=meta),
    }
    if image_tokens:
        args["encoder_hidden_states_image"] = torch.empty(1, image_tokens, config["image_dim"], device=meta)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**args)
    return float(counter.get_total_flops())


# diffusers' scripts/convert_wan_to_diffusers.py, Wan-T2V-1.3B and Wan-I2V-14B-480p
WAN_T2V_13B_CONFIG = dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30, in_channels=16)
WAN_I2V_14B_CONFIG = dict(
    num_attention_heads=40,
    attention_head_dim=128,
    ffn_dim=13824,
    num_layers=40,
    in_channels=36,
    image_dim=1280,
    added_kv_proj_dim=5120,
)


@pytest.mark.parametrize(
    "config,shape,image_tokens",
    [(WAN_T2V_13B_CONFIG, WAN_13B, 0), (WAN_I2V_14B_CONFIG, WAN_14B_I2V, 257)],
    ids=["t2v-1.3b", "i2v-14b"],
)
def test_the_flop_formula_matches_a_flop_count_of_the_released_architecture(config, shape, image_tokens):
    counted = count_flops({**config, "out_channels": 16, "text_dim": 4096}, 9, 160, 160, image_tokens)
    assert abs(wan_forward_flops(shape, 9, 160, 160) / counted - 1) < 0.05
    # at the released size: 21 x 30 x 52 = 32,760 video tokens
    assert wan_forward_flops(WAN_13B, 81, 480, 832) / 1e12 == pytest.approx(283.0, abs=0.1)


def test_wan_shapes_come_from_the_config_files_or_the_table():
    tiny = wan_shape("tiny:wan-i2v")  # the tiny I2V's own config: CLIP at 32 px, patches of 8
    assert (tiny.layers, tiny.hidden, tiny.image_tokens, tiny.image_dim, tiny.patch) == (2, 48, 17, 16, (1, 2, 2))
    assert wan_shape("Wan-AI/Wan2.1-T2V-14B-Diffusers") == WAN_14B
    assert wan_shape("Wan-AI/Wan2.1-I2V-14B-720P-Diffusers") == WAN_14B_I2V
    assert wan_shape("someone/not-a-wan") is None


def test_plan_prices_wan_rows(ray_local, tmp_path, capsys):
    manifest = write_jsonl(
        tmp_path / "plan.jsonl",
        [
            {"id": "t2v", "kind": "wan", "prompt": "a"},  # gpu.yaml: T2V-1.3B, 81 x 480 x 832, 50 steps, CFG
            {"id": "i2v", "kind": "wan", "mode": "i2v", "image": IMAGE},  # I2V-14B-480P
            {"id": "t2v-14b", "kind": "wan", "prompt": "b", "model": "Wan-AI/Wan2.1-T2V-14B-Diffusers"},
            {"id": "bad", "kind": "wan", "prompt": "c", "num_frames": 80},
        ],
    )
    assert main(["plan", str(manifest), "--config", str(REPO / "configs" / "gpu.yaml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    (wan,) = plan["kinds"]
    assert (plan["rows"], plan["rejected"], wan["kind"], wan["rows"], wan["unpriced_rows"]) == (4, 1, "wan", 3, 0)
    per_forward = [wan_forward_flops(s, 81, 480, 832) for s in (WAN_13B, WAN_14B_I2V, WAN_14B)]
    assert wan["tflop"] == pytest.approx(50 * 2 * sum(per_forward) / 1e12, rel=1e-6)
    assert wan["gpu_seconds"] == pytest.approx(wan["tflop"] * 1e12 / (989e12 * 0.35), rel=1e-6)
    assert wan["model"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers" and wan["gpus_per_actor"] == 1.0
