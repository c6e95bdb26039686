"""Row validation: every rule names its field."""

import pytest

from raypipe.config import load_config
from raypipe.schema import seed_from_id, validate_row

DEFAULTS = load_config().kinds["cogvideox"].defaults


def reject(raw):
    with pytest.raises(ValueError) as info:
        validate_row(raw, DEFAULTS)
    return str(info.value)


def test_valid_row_gets_defaults_and_a_stable_seed():
    row = validate_row({"id": "a", "kind": "cogvideox", "prompt": "x"}, DEFAULTS)
    assert (row.num_frames, row.height, row.width) == (DEFAULTS["num_frames"], DEFAULTS["height"], DEFAULTS["width"])
    assert row.seed == seed_from_id("a") == validate_row({"id": "a", "kind": "cogvideox", "prompt": "y"}, DEFAULTS).seed
    assert seed_from_id("a") != seed_from_id("b")
    assert validate_row({"id": "a", "kind": "cogvideox", "prompt": "x", "seed": 5}).seed == 5


def test_unknown_field_is_named():
    assert (
        reject({"id": "a", "kind": "cogvideox", "num_frame": 9})
        == "num_frame: unknown field (not in the schema of this kind; a typo?)"
    )


@pytest.mark.parametrize("frames", [8, 10, 48, 0])
def test_cogvideox_frames_must_be_8k_plus_1(frames):
    assert reject({"id": "a", "kind": "cogvideox", "num_frames": frames}).startswith("num_frames: ")


@pytest.mark.parametrize("field", ["height", "width"])
def test_sizes_must_be_multiples_of_16(field):
    error = reject({"id": "a", "kind": "cogvideox", field: 50})
    assert error == f"{field}: must be a multiple of 16, got 50"


@pytest.mark.parametrize("bad_id", ["has space", "", "a/b", "x" * 129, "é"])
def test_id_pattern(bad_id):
    assert reject({"id": bad_id, "kind": "cogvideox"}).startswith("id: must match [A-Za-z0-9._-]{1,128}")


def test_kind_missing_or_unknown():
    assert reject({"id": "a"}).startswith("kind: required")
    assert reject({"id": "a", "kind": "sora"}).startswith("kind: unknown kind 'sora'")


def test_wrong_type_names_the_field():
    assert reject({"id": "a", "kind": "cogvideox", "num_inference_steps": "many"}).startswith("num_inference_steps: ")
    assert reject({"id": "a", "kind": "cogvideox", "lora": [{"weight": 1}]}).startswith("lora.0.path: ")
