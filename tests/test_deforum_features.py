"""The Deforum features users turn on, piece by piece, against numbers computed by running
sd-webui-deforum's own functions (deforum_helpers/animation.py, hybrid_video.py, noise.py,
image_sharpening.py, load_images.py, composable_masks.py, animation_key_frames.py; commit
32242685), the ControlNet extension's (sd-webui-controlnet: preprocessor/legacy/processor.py,
controlnet.py detectmap_proc) and A1111's (modules/masking.py) on the same inputs, outside
raypipe. Only the numbers are here. No Ray, no models: see test_deforum_features_run.py."""

import numpy as np
import pytest
from PIL import Image

from raypipe.families.deforum import controlnet as cn
from raypipe.families.deforum import flow
from raypipe.families.deforum.masks import (
    MaskError,
    compose,
    crop_region,
    expand_region,
    fill_masked,
    parse_expression,
    prepare_inpaint,
    prepare_mask,
)
from raypipe.families.deforum.noise import add_noise, unsharp_mask
from raypipe.families.deforum.schedule import evaluate, evaluate_text
from raypipe.families.deforum.warps import perspective_flip, perspective_flip_matrix, warp_2d, warp_3d


def rgb_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def scene(height=48, width=64, shift=(0, 0)):
    """Smooth blobs and a red square, moved by `shift` (x, y) pixels: features for flow and SIFT."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.zeros((height, width, 3))
    image[..., 0] = 128 + 60 * np.sin((x - shift[0]) / 5.0) * np.cos((y - shift[1]) / 7.0)
    image[..., 1] = 128 + 50 * np.cos((x - shift[0]) / 9.0 + (y - shift[1]) / 6.0)
    image[..., 2] = 100 + 40 * np.sin((x + y - shift[0] - shift[1]) / 4.0)
    image[int(16 + shift[1]) : int(28 + shift[1]), int(20 + shift[0]) : int(34 + shift[0])] = (250, 30, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def same(array, expected):
    """`array` has Deforum's sum and middle row (its first 8 pixels)."""
    array = np.asarray(array)
    assert int(array.astype(np.int64).sum()) == expected["sum"]
    assert array[array.shape[0] // 2, :8].astype(float).tolist() == expected["row"]


# ---- perspective flip and the 3D warp --------------------------------------------------------------

FLIP = (10.0, 20.0, -15.0, 53.0)  # theta, phi, gamma, fv


def test_perspective_flip_matrix_is_deforums():
    # get_flip_perspective_matrix(64, 48, keys with theta 10, phi 20, gamma -15, fv 53)
    expected = [
        [0.6703507669886142, -0.2628927877508616, 19.55365361139136],
        [-0.06102507736686902, 0.6634055014811054, 10.841394881672663],
        [-0.002786188488302373, -0.002745962478524061, 1.09220397608439],
    ]
    assert np.allclose(perspective_flip_matrix(64, 48, *FLIP), expected, rtol=1e-12, atol=1e-12)
    # unrotated, the card fills a little less than the frame (Deforum's, too): 0.989 about the centre
    assert np.allclose(
        perspective_flip_matrix(64, 48, 0, 0, 0, 53), [[0.9889681, 0, 0.4930818], [0, 0.9889681, 0.4930805], [0, 0, 1]]
    )


def test_perspective_flip_moves_the_frame_as_its_matrix_says():
    # anim_frame_warp_2d with enable_perspective_flip (angle 5, zoom 1.1 about (0.4, 0.6), no translation)
    image = rgb_image(48, 64, 0)
    flipped = warp_2d(image, 5.0, 1.1, 0.0, 0.0, 0.4, 0.6, "replicate", flip=FLIP)
    same(
        flipped,
        {
            "sum": 1203232,
            "row": [
                [178, 67, 109],
                [167, 77, 109],
                [157, 86, 110],
                [146, 95, 110],
                [135, 104, 110],
                [125, 113, 111],
                [115, 122, 111],
                [113, 116, 105],
            ],
        },
    )
    # 3D mode flips the frame before the camera move (flip_3d_perspective, border wrap)
    same(perspective_flip(image, *FLIP, border="wrap"), {"sum": 1174333, "row": [
        [178, 152, 135], [226, 96, 49], [176, 108, 59], [146, 185, 210], [151, 70, 137], [32, 174, 187],
        [73, 117, 157], [101, 66, 35]]})  # fmt: skip
    # the geometry: a bright dot goes where the homography sends its position
    dot = np.zeros((48, 64, 3), np.uint8)
    dot[30:33, 40:43] = 255
    matrix = perspective_flip_matrix(64, 48, *FLIP)
    moved = warp_2d(dot, flip=FLIP)
    ys, xs = np.nonzero(moved[..., 0] > 60)
    # warpPerspective samples the source at M^-1 (x, y): the dot lands at M (41, 31)
    target = matrix @ [41, 31, 1]
    assert abs(xs.mean() - target[0] / target[2]) < 1.0 and abs(ys.mean() - target[1] / target[2]) < 1.0
    # raypipe keeps the 2D translation under the flip (Deforum's np.matmul drops it): 5 px further
    shifted = warp_2d(dot, translation_x=5, flip=FLIP)
    target = matrix @ [46, 31, 1]
    assert abs(np.nonzero(shifted[..., 0] > 60)[1].mean() - target[0] / target[2]) < 1.0


def test_3d_warp_truncates_as_deforum():
    # transform_image_3d_new (Midas depth, bicubic, border) of a random frame and depth
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (32, 40, 3)).astype(np.uint8)
    depth = rng.random((32, 40)).astype(np.float32)
    warped = warp_3d(image, depth, 12.0, -7.0, 30.0, 3.0, -4.0, 5.0)
    same(
        warped,
        {
            "sum": 493261,
            "row": [
                [167, 0, 1],
                [75, 23, 98],
                [54, 84, 87],
                [31, 162, 130],
                [244, 62, 80],
                [211, 192, 139],
                [156, 105, 199],
                [226, 64, 144],
            ],
        },
    )


# ---- schedules of the features -------------------------------------------------------------------


def test_text_schedules_hold_each_keyframes_text():
    # FrameInterpolater.parse_inbetweens(..., is_single_string=True) over 120 and 10 frames
    names = evaluate_text('0: ("model1.ckpt"), 100: ("model2.safetensors")', 120)
    assert names == ["model1.ckpt"] * 100 + ["model2.safetensors"] * 20
    masks = evaluate_text('0: ("{video_mask}"), 4: ("{video_mask} & [m.png]"), "max_f-2": ("{everywhere}")', 10)
    assert masks == ["{video_mask}"] * 4 + ["{video_mask} & [m.png]"] * 3 + ["{everywhere}"] * 3
    # raypipe splits a keyframe at its first ':' only: a URI in a mask expression stays whole
    assert evaluate_text('0: ("[s3://b/m.png]")', 2) == ["[s3://b/m.png]"] * 2


def test_feature_schedules_evaluate_as_deforum():
    # DeformAnimKeys over 20 frames (seed 3)
    assert evaluate("0: (1.05)", 20, 3).tolist() == [1.05] * 20  # noise_multiplier_schedule
    assert evaluate("0: (1), 10: (2)", 20, 3).tolist() == pytest.approx([1 + i / 10 for i in range(11)] + [2.0] * 9)
    alpha = [0.5, 0.5210526316, 0.5421052632, 0.5631578947, 0.5842105263, 0.6052631579, 0.6263157895,
             0.6473684211, 0.6684210526, 0.6894736842, 0.7105263158, 0.7315789474, 0.7526315789, 0.7736842105,
             0.7947368421, 0.8157894737, 0.8368421053, 0.8578947368, 0.8789473684, 0.9]  # fmt: skip
    assert evaluate("0:(0.5), 19:(0.9)", 20, 3).tolist() == pytest.approx(alpha, abs=1e-10)
    assert evaluate("0: (t/4)", 20, 3).tolist() == pytest.approx([t / 4 for t in range(20)])


# ---- anti-blur and noise masks -------------------------------------------------------------------------


def test_anti_blur_is_deforums_unsharp_mask():
    image = rgb_image(24, 32, 2)
    same(unsharp_mask(image, 5, 1.0, 0.1, 0), {"sum": 294571, "row": [
        [13, 228, 0], [121, 84, 212], [16, 19, 102], [183, 254, 197], [0, 47, 148], [20, 23, 243], [147, 236, 177],
        [19, 3, 151]]})  # fmt: skip
    # threshold 5: the low-contrast pixels stay (the difference taken on uint8, as Deforum)
    same(unsharp_mask(image, 3, 1.5, 0.7, 5), {"sum": 292835, "row": [
        [0, 255, 0], [131, 57, 245], [0, 0, 66], [209, 255, 225], [0, 5, 144], [0, 0, 255], [167, 255, 191],
        [0, 0, 164]]})  # fmt: skip
    assert unsharp_mask(image, 5, 1.0, 0.0, 0) is image


def test_noise_stays_inside_the_noise_mask():
    # add_noise(sample, 0.3, 1234, "uniform", ..., noise_mask, invert_mask) at 64 x 64, where
    # Deforum's uniform noise and raypipe's draw the same numbers
    image = rgb_image(64, 64, 3)
    mask = np.zeros((64, 64), np.float32)
    mask[:, :40] = 1.0
    mask[10:20, :] = 100 / 255  # grey rounds to 0: no noise there
    row_noised = [[229, 87, 105], [56, 97, 114], [165, 80, 172], [148, 130, 151], [240, 58, 188], [91, 115, 72],
                  [46, 163, 46], [81, 188, 121]]  # fmt: skip
    same(add_noise(image, 0.3, 1234, "uniform"), {"sum": 1563142, "row": row_noised})
    same(add_noise(image, 0.3, 1234, "uniform", mask=mask), {"sum": 1560017, "row": row_noised})
    same(add_noise(image, 0.3, 1234, "uniform", mask=1.0 - mask), {"sum": 1565480, "row": [
        [191, 82, 133], [86, 135, 134], [203, 51, 160], [186, 149, 170], [201, 51, 184], [53, 138, 49],
        [77, 124, 66], [82, 149, 123]]})  # fmt: skip


# ---- masks -------------------------------------------------------------------------------------------


@pytest.fixture
def mask_files():
    """The two masks of the reference run: an RGB noise image (30 x 50) and a grey one (40 x 40)."""
    video_mask = Image.fromarray(rgb_image(30, 50, 4))
    grey = np.zeros((40, 40), np.uint8)
    grey[5:30, 8:25] = 255
    grey[:, 30:] = 140
    return video_mask, Image.fromarray(grey)


def test_mask_files_load_as_deforums_prepare_mask(mask_files):
    # prepare_mask(file, (32, 24), brightness 1.3, contrast 0.8)
    same(
        prepare_mask(mask_files[0], (32, 24), 1.3, 0.8),
        {"sum": 126284, "row": [188, 174, 165, 187, 122, 154, 207, 231]},
    )


COMPOSED = {
    "{video_mask}": (98940, [255, 0, 255, 255, 0, 255, 255, 255]),
    "{video_mask} & [m2.png]": (38250, [0, 0, 0, 0, 0, 0, 255, 255]),
    "{video_mask} | [m2.png]": (139485, [255, 0, 255, 255, 0, 255, 255, 255]),
    "{video_mask} ^ [m2.png]": (101235, [255, 0, 255, 255, 0, 255, 0, 0]),
    "{video_mask} \\ [m2.png]": (60690, [255, 0, 255, 255, 0, 255, 0, 0]),
    "!{video_mask}": (96900, [0, 255, 0, 0, 255, 0, 0, 0]),
}


@pytest.mark.parametrize("expression", COMPOSED)
def test_composed_masks_are_deforums(expression, mask_files):
    # compose_mask_with_check at 32 x 24 (operands dithered to black and white as Deforum's convert('1'))
    loaded = {"video_mask": prepare_mask(mask_files[0], (32, 24)), "m2.png": prepare_mask(mask_files[1], (32, 24))}

    def operand(kind, name):
        return Image.new("L", (32, 24), 255) if name == "everywhere" else loaded[name]

    mask = np.asarray(compose(parse_expression(expression), operand).convert("L"))
    total, row = COMPOSED[expression]
    same(mask, {"sum": total, "row": row})


def test_mask_expressions_parse_with_precedence_and_reject_what_they_cannot_run():
    tree = parse_expression("{everywhere} \\ {video_mask} | [a.png] & ![b.png]")
    assert tree.op == "\\" and tree.args[1].op == "|" and tree.args[1].args[1].op == "&"
    for text, reason in {
        "<cat>": "word masks",
        "{human_mask}": "unknown mask {human_mask}",
        "{video_mask} &": "expected a mask",
        "[]": "empty []",
        "{video_mask} {everywhere}": "unexpected",
    }.items():
        with pytest.raises(MaskError) as info:
            parse_expression(text, "deforum.mask_schedule")
        assert str(info.value).startswith("deforum.mask_schedule: ") and reason in str(info.value)


def test_inpainting_regions_and_fill_are_a1111s():
    # masking.get_crop_region / expand_crop_region (64 x 48 frame) and masking.fill
    mask = np.zeros((48, 64), np.uint8)
    mask[10:20, 30:40] = 255
    assert crop_region(mask, 4) == (26, 6, 44, 24)
    assert expand_region((26, 6, 44, 24), 64, 48) == (23, 6, 47, 24)
    assert expand_region((0, 0, 60, 10), 64, 48) == (0, 0, 60, 45)
    image = Image.fromarray(scene())
    filled = np.asarray(fill_masked(image, Image.fromarray(mask)))
    assert int(filled.astype(np.int64).sum()) == 1071312
    assert filled[15, 30:33].tolist() == [[182, 100, 58], [178, 99, 61], [173, 101, 68]]
    assert np.array_equal(filled[mask == 0], np.asarray(image)[mask == 0])  # only the masked area changes
    assert np.abs(filled[mask > 0].astype(int) - np.asarray(image)[mask > 0]).mean() > 5
    # the overlay: A1111 doubles the blurred mask without full_res_mask, keeps it with it
    soft = mask.astype(np.float32) / 255
    prepared = prepare_inpaint(scene(), soft, 4, 1, False, 4)
    assert prepared.region is None and prepared.overlay.max() == 255 and prepared.overlay[0, 0] == 0
    prepared = prepare_inpaint(scene(), soft, 0, 1, True, 4)
    assert prepared.region == (23, 6, 47, 24) and prepared.init.size == (64, 48)


# ---- optical flow and hybrid video ------------------------------------------------------------------------

FLOWS = {
    # hybrid_video.get_flow_from_images: mean flow (x, y) and the flow at (30, 24)
    "DIS Medium": ([2.98454, 2.0005], [2.94639, 1.9937]),
    "DIS Fine": ([3.01164, 1.92189], [3.0005, 1.99939]),
    "Farneback": ([2.2918, 1.49512], [2.99864, 1.99918]),
}


@pytest.mark.parametrize("method", FLOWS)
def test_optical_flow_methods_are_deforums(method):
    mean, at = FLOWS[method]
    moved = flow.flow(scene(), scene(shift=(3, 2)), method)
    assert moved.reshape(-1, 2).mean(0).tolist() == pytest.approx(mean, abs=1e-4)
    assert moved[24, 30].tolist() == pytest.approx(at, abs=1e-4)


def test_warps_by_flow_and_matrices_are_deforums():
    a, b = scene(), scene(shift=(3, 2))
    moved = flow.flow(a, b, "DIS Medium")
    # image_transform_optical_flow(a, flow, 0.7)
    same(flow.warp_by_flow(a, moved, 0.7), {"sum": 1073822, "row": [
        [103, 95, 95], [115, 91, 85], [127, 87, 76], [117, 90, 84], [105, 94, 93], [95, 99, 103], [85, 103, 113],
        [78, 108, 122]]})  # fmt: skip
    relative = flow.relative_flow(moved, 64, 48)  # abs_flow_to_rel_flow
    assert relative.sum() == pytest.approx(88.47626153193414, rel=1e-9)
    assert relative[24, 0].tolist() == pytest.approx([0.0152, 0.0136], abs=1e-4)
    back = flow.absolute_flow(relative * 0.9, 64, 48)  # rel_flow_to_abs_flow
    assert back.sum() == pytest.approx(4045.461326599121, rel=1e-9)
    # get_transformation_matrix_from_images + image_transform_ransac, 4 px right and 3 down
    big_a, big_b = scene(96, 128), scene(96, 128, shift=(4, 3))
    expected = {
        "Affine": ([[1.001403, 0.000682, 3.918577], [-0.000682, 1.001403, 2.908625]], 4338774),
        "Perspective": (
            [[1.011468, 0.004593, 3.651628], [0.001379, 1.012515, 2.67176], [5.9e-05, 8.2e-05, 1.0]],
            4338669,
        ),
    }
    for kind, (matrix, total) in expected.items():
        found = flow.motion_matrix(big_a, big_b, kind)
        assert np.allclose(found, matrix, atol=2e-6)
        assert int(flow.warp_by_matrix(big_a, found, kind).astype(np.int64).sum()) == total
    # too few features: the identity
    assert np.array_equal(flow.motion_matrix(np.zeros((32, 32, 3), np.uint8), big_b[:32, :32], "Affine"), np.eye(2, 3))


COMPOSITES = {
    # hybrid_composite(alpha 0.6, mask_blend_alpha 0.3, mask_contrast 1.4, cutoffs 5..95) of scene()
    # with the moved scene as the video frame: (mask type, inverse, equalize, auto contrast) -> sum, row
    ("None", False, "None", False): (1069796, [[147, 84, 71], [137, 87, 75], [125, 90, 82], [114, 94, 89],
                                               [104, 97, 97], [94, 102, 105], [86, 107, 113], [78, 111, 120]]),
    ("Blend", False, "None", False): (1070070, [[140, 88, 77], [129, 91, 84], [117, 95, 91], [107, 99, 100],
                                                [97, 103, 108], [88, 109, 115], [81, 114, 122], [75, 119, 127]]),
    ("Difference", True, "Before", True): (1072930, [[128, 95, 88], [116, 98, 97], [109, 101, 103], [101, 104, 109],
                                                     [93, 107, 114], [86, 111, 118], [81, 113, 122], [77, 116, 124]]),
    ("Blend", False, "Both", False): (1071875, [[141, 87, 76], [131, 91, 82], [119, 95, 90], [108, 98, 98],
                                                [98, 102, 106], [89, 108, 114], [81, 113, 122], [75, 119, 127]]),
}  # fmt: skip


@pytest.mark.parametrize("case", COMPOSITES)
def test_hybrid_composite_is_deforums(case):
    mask_type, inverse, equalize, auto = case
    out = flow.composite(scene(), scene(shift=(3, 2)), 0.6, mask_type, 0.3, 1.4, inverse, equalize, auto, 5, 95)
    total, row = COMPOSITES[case]
    same(out, {"sum": total, "row": row})


# ---- ControlNet preprocessing ----------------------------------------------------------------------------


def test_controlnet_units_pick_their_models_by_kind():
    assert cn.kind_of("canny", "None") == "canny" and cn.kind_of("depth_zoe", "x") == "depth"
    assert cn.kind_of("none", "control_v11p_sd15_canny [d14c016b]") == "canny"
    assert cn.kind_of("openpose", "control_v11p_sd15_openpose") is None and cn.kind_of("none", "None") is None
    assert cn.role("depth") == "controlnet_depth"


def test_controlnet_maps_are_the_extensions():
    image = scene()
    # processor.canny(img, res=64, thr_a=100, thr_b=200): the short side 48 -> 64, cubic up
    edges = cn.canny(image, 64, 100, 200)
    assert edges.shape == (64, 85) and edges.dtype == np.uint8 and set(np.unique(edges)) == {0, 255}
    assert int(edges.sum()) // 255 == 68
    # detectmap_proc's three resize modes: a map of the frame's aspect (all three alike), and a
    # taller one (cropped, stretched, or padded with its border's median)
    wide = np.tile(np.linspace(0, 255, 40, dtype=np.uint8)[None, :, None], (30, 1, 3))
    tall = np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 80, 3))
    for mode, (wide_sum, tall_sum) in {
        "Just Resize": (1155888, 1152000),
        "Inner Fit (Scale to Fit)": (1155888, 1124160),
        "Outer Fit (Shrink to Fit)": (1155888, 1153152),
    }.items():
        for control, total in ((wide, wide_sum), (tall, tall_sum)):
            fitted = cn.fit(control, mode, 48, 64)
            assert fitted.shape == (48, 64, 3) and int(fitted.astype(np.int64).sum()) == total, mode
    # pixel perfect: the extension's estimate of the map's resolution from the frame's size
    unit = cn.Unit(1, "canny", "x", "canny", 64, 100, 200, "Inner Fit (Scale to Fit)", False, True, "")
    assert cn.resolution(unit, (30, 40, 3), 48, 64) == 48
    assert cn.resolution(unit, (60, 40, 3), 48, 64) == 64
    # the depth map: min-max to 0..255, truncated
    assert cn.depth_map(np.array([[0.5, 1.0], [2.0, 1.25]])).tolist() == [[0, 85], [255, 127]]


# ---- settings: meaning, not keys -----------------------------------------------------------------------


def settings_of(deforum=None, **fields):
    from raypipe.schema import validate_row

    return validate_row({"id": "r", "kind": "deforum", **fields, "deforum": deforum or {}}).settings


def rejection(**raw):
    from raypipe.schema import validate_row

    with pytest.raises(ValueError) as info:
        validate_row({"id": "r", "kind": "deforum", **raw})
    return str(info.value)


def kind_config(**changes):
    from raypipe.config import load_config

    config = load_config().kinds["deforum"]
    return config.model_copy(update=changes)


def test_keys_of_features_that_are_off_are_neither_reported_nor_checked():
    off = {
        "cn_1_module": "openpose",  # cn_1_enabled is false
        "cn_2_weight": "0:(oops(",
        "hybrid_flow_method": "RAFT",  # hybrid_motion None
        "hybrid_comp_mask_type": "Depth",
        "optical_flow_cadence": "RAFT",  # diffusion_cadence 1: no tweens
        "diffusion_cadence": 1,
        "fill": 3,  # use_mask false
        "mask_schedule": '0: ("<cat>")',
        "perspective_flip_theta": "0:(x)",  # enable_perspective_flip false
        "use_looper": False,
        "tiling": False,
        "seed_resize_from_w": 0,
        "parseq_manifest": "",
        "add_soundtrack": "None",
        "batch_name": "Deforum_{timestring}",
    }
    settings = settings_of(off)
    assert settings.unimplemented == [] and settings.unknown_keys == []
    assert settings.features == {"noise_multiplier"}  # Deforum's default: on
    assert "cn_1_module" not in settings.summary() and "perspective_flip_theta" not in settings.summary()
    assert settings_of({"enable_noise_multiplier_scheduling": False}).features == set()


def test_features_turned_on_that_raypipe_lacks_are_listed_with_their_key():
    settings = settings_of(
        {
            "cn_1_enabled": True,
            "cn_1_module": "openpose",
            "cn_2_enabled": True,
            "cn_2_module": "canny",
            "cn_2_control_mode": "ControlNet is more important",
            "animation_mode": "2D",
            "hybrid_motion": "Optical Flow",
            "hybrid_flow_method": "RAFT",
            "video_init_path": "in.mp4",
            "use_mask": True,
            "mask_file": "m.png",
            "fill": 2,
            "mask_schedule": '0: ("{video_mask} & <cat>")',
            "use_looper": True,
            "tiling": True,
            "color_coherence": "Image",
        }
    )
    lines = settings.unimplemented
    for part in (
        "deforum.cn_1_module 'openpose': ControlNet preprocessor 'openpose' is not implemented",
        "deforum.cn_2_control_mode 'ControlNet is more important'",
        "deforum.hybrid_flow_method 'RAFT': RAFT needs torchvision",
        "deforum.fill 2: mask fill 'latent noise' is not implemented",
        "deforum.mask_schedule",
        "deforum.use_looper True: Guided Images (looper) is not implemented",
        "deforum.tiling True: seamless tiling is not implemented",
        "deforum.color_coherence 'Image'",
    ):
        assert any(line.startswith(part) for line in lines), (part, lines)
    # ... and turned off for a run that allows them: the openpose unit, RAFT's motion, the fill
    assert "cn_1" not in settings.features and [u.number for u in settings.units] == [2]
    assert settings["hybrid_motion"] == "None" and settings["fill"] == 1 and settings["color_coherence"] == "None"
    assert settings["cn_2_control_mode"] == "Balanced" and settings["mask_schedule"] == '0: ("{video_mask}")'


def test_the_run_config_rejects_or_allows_them():
    from raypipe.families.deforum.settings import check_run_config

    settings = settings_of({"use_looper": True, "cn_1_enabled": True, "cn_1_module": "depth_midas"})
    with pytest.raises(ValueError) as info:
        check_run_config(settings, kind_config())
    message = str(info.value)
    assert message.startswith("deforum: turns on Deforum features raypipe does not implement: deforum.use_looper True")
    assert "kinds.deforum.options.allow_unimplemented: true" in message
    allowed = kind_config(options={"allow_unimplemented": True})
    assert check_run_config(settings, allowed) == settings.unimplemented
    # a unit whose ControlNet the config does not name
    no_depth = kind_config(options={"allow_unimplemented": True}, models={"depth": "tiny:depth"})
    with pytest.raises(ValueError, match=r"^deforum.cn_1_module: cn_1 \(depth\) needs a ControlNet in the run config"):
        check_run_config(settings, no_depth)


def test_checkpoints_are_found_by_name_in_the_run_config():
    from raypipe.families.deforum.settings import check_run_config, checkpoint_model

    models = {"checkpoint:model1": "/ckpt/one", "checkpoint:model2.safetensors": "/ckpt/two"}
    assert checkpoint_model("model1.ckpt", models) == "/ckpt/one"  # with or without the suffix
    assert checkpoint_model("model2", models) == "/ckpt/two" and checkpoint_model("model3.ckpt", models) is None
    settings = settings_of({"enable_checkpoint_scheduling": True, "max_frames": 120})  # Deforum's default schedule
    assert settings.checkpoints(120)[99:101] == ["model1.ckpt", "model2.safetensors"]
    with pytest.raises(ValueError, match=r"checkpoint 'model1.ckpt' is not in the run config"):
        check_run_config(settings, kind_config())
    assert check_run_config(settings, kind_config(models=models)) == []


def test_feature_values_are_checked_at_validation():
    assert rejection(deforum={"use_mask": True}).startswith("deforum.use_mask: true needs mask_file")
    assert rejection(deforum={"use_mask": True, "mask_file": "m.png", "mask_schedule": '0: ("{human}")'}).startswith(
        "deforum.mask_schedule: unknown mask {human}"
    )
    assert rejection(deforum={"use_mask": True, "mask_file": "m.png", "mask_overlay_blur": -1}).startswith(
        "deforum.mask_overlay_blur: must be between 0"
    )
    bad_guidance = {
        "cn_1_enabled": True,
        "cn_1_module": "canny",
        "cn_1_guidance_start": "0:(0.8)",
        "cn_1_guidance_end": "0:(0.5)",
    }
    assert rejection(deforum=bad_guidance).startswith("deforum.cn_1_guidance_start: guidance start and end")
    assert rejection(deforum={"kernel_schedule": "0:(4)"}).startswith("deforum.kernel_schedule: the anti-blur kernel")
    assert rejection(deforum={"hybrid_composite": "Normal"}).startswith("video: hybrid video needs the input video")
    assert rejection(deforum={"enable_perspective_flip": True, "perspective_flip_fv": "0:(x)"}).startswith(
        "deforum.perspective_flip_fv: "
    )
    assert rejection(deforum={"enable_checkpoint_scheduling": True, "checkpoint_schedule": "0: ()"}).startswith(
        "deforum.checkpoint_schedule: a keyframe names no checkpoint"
    )
    # the row's `video` serves hybrid video too; compositing with init_image needs no video
    assert settings_of({"hybrid_composite": "Normal"}, video="in.mp4").on("hybrid")
    assert settings_of({"hybrid_composite": "Normal", "hybrid_use_init_image": True, "init_image": "i.png"}).on(
        "hybrid"
    )
    assert rejection(deforum={"hybrid_composite": "Normal", "hybrid_use_init_image": True}).startswith(
        "deforum.hybrid_use_init_image: true needs init_image"
    )


# ---- Parseq ---------------------------------------------------------------------------------------------


def parseq_manifest():
    """A manifest in Parseq's format (as sd-webui-deforum's tests/testdata/parseq.json): per-frame
    values, their `_delta`s for the motion fields, the output fps and cadence."""
    frames, angle = [], 0.0
    for f in range(6):
        new_angle = 10.0 * f + (f % 2)
        frames.append(
            {
                "frame": f,
                "angle": new_angle,
                "angle_delta": new_angle - angle,
                "zoom": 1 + 0.01 * f,
                "zoom_delta": 1 + 0.002 * f,
                "strength": 0.5 + 0.05 * f,
                "noise": 0.02,
                "seed": 100 + 3 * f,
                "deforum_prompt": f"a cat {f} --neg dog",
                "translation_x": 2.0 * f,
                "translation_x_delta": 2.0,
                "cn_1_weight": 0.1 * f,
                "noise_multiplier": 1.0 + f / 100,
            }
        )
        angle = new_angle
    return {"options": {"output_fps": 24, "cadence": 3}, "rendered_frames": frames}


@pytest.mark.parametrize("deltas,overrides", [(True, True), (False, False)])
def test_parseq_manifests_set_the_schedules_as_deforums_adapter(deltas, overrides, tmp_path):
    import json

    from raypipe.families.deforum.settings import frame_seeds

    uri = tmp_path / "manifest.json"  # from a URI; inline JSON text works the same
    uri.write_text(json.dumps(parseq_manifest()))
    deforum = {
        "parseq_manifest": str(uri) if deltas else json.dumps(parseq_manifest()),
        "parseq_use_deltas": deltas,
        "parseq_non_schedule_overrides": overrides,
        "max_frames": 8,
        "cn_1_enabled": True,
        "cn_1_module": "canny",
    }
    settings = settings_of(deforum)
    frames = settings["max_frames"]
    series = settings.series(frames)
    # ParseqAdapter's anim_keys / cn_keys over the same settings
    if overrides:
        assert (frames, settings["fps"], settings["diffusion_cadence"]) == (6, 24, 3)
    else:
        assert (frames, settings["fps"], settings["diffusion_cadence"]) == (8, 15, 2)
    hold = [] if overrides else [None, None]  # past the manifest: its last frame's values
    expected = {
        "angle": [0.0, 11.0, 9.0, 11.0, 9.0, 11.0] if deltas else [0.0, 11.0, 20.0, 31.0, 40.0, 51.0],
        "zoom": [1.0, 1.002, 1.004, 1.006, 1.008, 1.01] if deltas else [1.0, 1.01, 1.02, 1.03, 1.04, 1.05],
        "translation_x": [2.0] * 6 if deltas else [0.0, 2.0, 4.0, 6.0, 8.0, 10.0],
        "strength_schedule": [0.5, 0.55, 0.6, 0.65, 0.7, 0.75],
        "seed_schedule": [100.0, 103.0, 106.0, 109.0, 112.0, 115.0],
        "noise_multiplier_schedule": [1.0, 1.01, 1.02, 1.03, 1.04, 1.05],
        "cn_1_weight": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
    }
    for name, values in expected.items():
        values = values + [values[-1] for _ in hold]
        assert series[name].tolist() == pytest.approx(values), name
    assert series["translation_y"].tolist() == [0.0] * frames  # not in the manifest: the settings'
    assert settings.prompt_for_frame(4, frames) == ("a cat 4", "dog")
    assert settings.prompt_for_frame(frames - 1, frames) == ("a cat 5", "dog")
    # the manifest's seeds are the seeds of the diffused frames
    cadence = settings["diffusion_cadence"]
    assert list(frame_seeds(settings, list(range(0, frames, cadence)), frames).values()) == [
        int(series["seed_schedule"][f]) for f in range(0, frames, cadence)
    ]


def test_bad_parseq_manifests_are_rejected(tmp_path):
    assert rejection(deforum={"parseq_manifest": "{not json"}).startswith(
        "deforum.parseq_manifest: not a Parseq manifest"
    )
    assert "needs `rendered_frames`" in rejection(deforum={"parseq_manifest": {"frames": []}})
    assert rejection(deforum={"parseq_manifest": str(tmp_path / "none.json")}).startswith(
        "deforum.parseq_manifest: cannot read"
    )
