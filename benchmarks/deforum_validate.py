"""What validating a Deforum row costs (BENCHMARKS.md, Deforum section).

    .venv/bin/python benchmarks/deforum_validate.py [--rows 200]

Prints milliseconds per row of raypipe.schema.validate_row plus the family's run-config check
(what a validating task does for a deforum row) for: a row of common fields only, the shared real
settings file (../shared/deforum/default_settings.txt, 120 frames), and a row turning on ControlNet,
hybrid video, masks, the perspective flip and optical-flow cadence. Each twice, side by side in
one run: with the schedule parse cache (rows of one settings file share their schedules' texts:
each is parsed once per process) and with the cache emptied before every row.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "deforum" / "default_settings.txt"
FEATURES = {
    "animation_mode": "2D",
    "max_frames": 120,
    "video_init_path": "in.mp4",
    "hybrid_composite": "Normal",
    "hybrid_motion": "Optical Flow",
    "hybrid_flow_method": "DIS Medium",
    "use_mask": True,
    "mask_file": "m.png",
    "mask_schedule": '0: ("{video_mask}"), 60: ("{video_mask} & [m2.png]")',
    "cn_1_enabled": True,
    "cn_1_module": "canny",
    "cn_1_weight": "0:(1), 60:(0.5*sin(t/10)+0.5)",
    "cn_2_enabled": True,
    "cn_2_module": "depth_midas",
    "enable_perspective_flip": True,
    "perspective_flip_theta": "0:(2*sin(t/8))",
    "optical_flow_cadence": "DIS Fine",
}


def per_row_ms(raw: dict, rows: int, clear: bool) -> float:
    from raypipe.config import load_config
    from raypipe.families.deforum import check_row
    from raypipe.families.deforum.schedule import _parse_cached
    from raypipe.schema import validate_row

    config = load_config().kinds["deforum"]
    check_row(validate_row({**raw, "id": "warm"}), config)
    started = time.perf_counter()
    for i in range(rows):
        if clear:
            _parse_cached.cache_clear()
        check_row(validate_row({**raw, "id": f"row-{i}"}), config)
    return (time.perf_counter() - started) / rows * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    cases = {"common fields only": {"kind": "deforum", "prompt": "a cat"}}
    if SHARED.exists():
        cases["the shared settings file"] = {
            "kind": "deforum",
            "deforum_settings": str(SHARED),
            "deforum": {"max_frames": 120},
        }
    cases["ControlNet + hybrid + masks + flip + flow"] = {"kind": "deforum", "prompt": "a cat", "deforum": FEATURES}
    print(f"{'row':<45} {'cached ms/row':>14} {'uncached ms/row':>16}")
    for name, raw in cases.items():
        cached, uncached = per_row_ms(raw, args.rows, False), per_row_ms(raw, args.rows, True)
        print(f"{name:<45} {cached:>14.2f} {uncached:>16.2f}")


if __name__ == "__main__":
    main()
