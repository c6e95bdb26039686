"""CogVideoX (THUDM): text-, image- and video-to-video diffusion transformers, up to 49 frames."""

from raypipe.config import ON_CPU
from raypipe.families import Family, register
from raypipe.families.cogvideox.flops import cogvideox_flops
from raypipe.families.cogvideox.schema import CogVideoXRow
from raypipe.families.cogvideox.tiny import build_cogvideox, build_cogvideox_i2v


def row_model(row, kc) -> str:
    """A row's `model`, else the config's for its mode (i2v has its own checkpoint)."""
    if row.model:
        return row.model
    if row.mode == "i2v":
        if "i2v" not in kc.models:
            raise ValueError("model: no image-to-video model in the run config (kinds.cogvideox.models.i2v)")
        return kc.models["i2v"]
    return kc.model


FAMILY = register(
    Family(
        kind="cogvideox",
        row=CogVideoXRow,
        stage="raypipe.families.cogvideox.stage:CogVideoXStage",
        config={
            "model": "tiny:cogvideox",
            "models": {"i2v": "tiny:cogvideox-i2v"},
            **ON_CPU,
            "defaults": {
                "num_frames": 9,
                "height": 64,
                "width": 64,
                "num_inference_steps": 4,
                "guidance_scale": 6.0,
                "fps": 8,
            },
            # sp_degree rows: small CPU shares per rank, so a 2-rank gang, the pool actor and the
            # CPU stages fit on a 2-core laptop
            "sp": {"rank_num_cpus": 0.25},
        },
        tiny={"cogvideox": build_cogvideox, "cogvideox-i2v": build_cogvideox_i2v},
        flops=cogvideox_flops,
        row_model=row_model,
        sequence_parallel=True,
    )
)
