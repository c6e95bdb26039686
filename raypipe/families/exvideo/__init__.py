"""ExVideo (ECNU-CILab): long videos from post-tuned CogVideoX (LoRA, 129 frames) and SVD (128)."""

from raypipe.config import ON_CPU
from raypipe.families import Family, register
from raypipe.families.cogvideox.tiny import build_cogvideox
from raypipe.families.exvideo.flops import exvideo_flops
from raypipe.families.exvideo.schema import ExVideoRow
from raypipe.families.exvideo.tiny import build_exvideo_lora, build_svd


def row_model(row, kc) -> str:
    """A row's `model`, else the config's base checkpoint of its base (svd: models.svd)."""
    if row.model:
        return row.model
    if row.base == "svd":
        if "svd" not in kc.models:
            raise ValueError("model: the run config has no kinds.exvideo.models.svd")
        return kc.models["svd"]
    return kc.model


FAMILY = register(
    Family(
        kind="exvideo",
        row=ExVideoRow,
        stage="raypipe.families.exvideo.stage:ExVideoStage",
        config={
            # base cogvideox: `model` + the ExVideo LoRA; base svd: `models.svd` + the ExVideo-SVD weights
            "model": "tiny:cogvideox",
            "models": {
                "lora": "tiny:exvideo-lora/ExVideo-CogVideoX-LoRA-129f-v1.safetensors",
                "svd": "tiny:svd",
                "svd_extension": "tiny:svd/model.fp16.safetensors",
            },
            **ON_CPU,
            "defaults": {
                "num_frames": 17,
                "height": 64,
                "width": 64,
                "num_inference_steps": 2,
                "guidance_scale": 3.0,
                "fps": 8,
            },
            "sp": {"rank_num_cpus": 0.25},
        },
        tiny={"cogvideox": build_cogvideox, "exvideo-lora": build_exvideo_lora, "svd": build_svd},
        flops=exvideo_flops,
        row_model=row_model,
        sequence_parallel=True,
    )
)
