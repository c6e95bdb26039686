"""SDXL video: SDXL inflated with temporal modules, generating a long video chunk by chunk."""

from raypipe.config import ON_CPU
from raypipe.families import Family, register
from raypipe.families.sdxl_video.flops import sdxl_video_flops
from raypipe.families.sdxl_video.schema import SDXLVideoRow
from raypipe.families.sdxl_video.tiny import build_sdxl, build_sdxl_video

FAMILY = register(
    Family(
        kind="sdxl_video",
        row=SDXLVideoRow,
        stage="raypipe.families.sdxl_video.stage:SDXLVideoStage",
        config={
            "model": "tiny:sdxl_video",
            **ON_CPU,
            "defaults": {
                "num_frames": 4,
                "num_repeats": 2,
                "num_conditioning_frames": 2,
                "conditioning_strength": 1.0,
                "height": 64,
                "width": 64,
                "num_inference_steps": 2,
                "guidance_scale": 5.0,
                "fps": 8,
            },
            # Frames the VAE decodes at once (memory per decode, not per video).
            "options": {"decode_chunk_size": 8},
        },
        tiny={"sdxl": build_sdxl, "sdxl_video": build_sdxl_video},
        flops=sdxl_video_flops,
    )
)
