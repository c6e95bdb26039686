"""Wan 2.x (Wan-AI): text-to-video and image-to-video diffusion transformers, up to 81 frames."""

from raypipe.config import ON_CPU
from raypipe.families import Family, register
from raypipe.families.wan.flops import wan_flops
from raypipe.families.wan.schema import WanRow
from raypipe.families.wan.tiny import build_wan, build_wan_i2v


def row_model(row, kc) -> str:
    """A row's `model`, else the config's for its mode (i2v has its own checkpoint)."""
    if row.model:
        return row.model
    if row.mode == "i2v":
        if "i2v" not in kc.models:
            raise ValueError("model: no image-to-video model in the run config (kinds.wan.models.i2v)")
        return kc.models["i2v"]
    return kc.model


def check(row, kc) -> None:
    """Against the kind's config: Wan runs the two CFG branches as two transformer calls, so the
    gang cannot split them (raypipe/families/wan/parallel.py refuses it on the ranks too)."""
    if row.sp_degree > 1 and kc.sp.cfg_parallel:
        raise ValueError("sp_degree: CFG parallel (sp.cfg_parallel) does not apply to kind wan; turn it off")


FAMILY = register(
    Family(
        kind="wan",
        row=WanRow,
        stage="raypipe.families.wan.stage:WanStage",
        config={
            "model": "tiny:wan",
            "models": {"i2v": "tiny:wan-i2v"},
            **ON_CPU,
            "defaults": {
                "num_frames": 9,
                "height": 64,
                "width": 64,
                "num_inference_steps": 4,
                "guidance_scale": 5.0,
                "fps": 16,
            },
            # sp_degree rows: small CPU shares per rank, so a 2-rank gang fits a 2-core laptop (as cogvideox)
            "sp": {"rank_num_cpus": 0.25},
        },
        tiny={"wan": build_wan, "wan-i2v": build_wan_i2v},
        flops=wan_flops,
        row_model=row_model,
        # raypipe/families/wan/parallel.py wires Wan's self-attention across a gang.
        sequence_parallel=True,
        check=check,
    )
)
