"""Deforum's masks: which part of each frame img2img repaints (use_mask), where the frame noise
goes (use_noise_mask), and the init image kept outside the mask (overlay_mask).

A mask is white where the frame is repainted. mask_file is loaded as Deforum's prepare_mask
does (resized to W x H with Lanczos, brightness then contrast adjusted with Pillow's
ImageEnhance, grey). mask_schedule / noise_mask_schedule compose masks per frame with
Deforum's operators (composable_masks.py), here parsed with precedence instead of its regular
expressions:

    {video_mask}   the mask_file mask        {everywhere}   all white
    [uri]          a mask file               !m   invert     a & b   and     a | b   or
    a ^ b          xor                       a \\ b   a and not b

`!` binds tightest, then `&`, `|`, `^`, `\\` (the order Deforum applies them), left to right.
Operands become black and white as Deforum's Image.convert('1') makes them (Floyd-Steinberg
dithering of grey). Word masks (`<cat>`, CLIPSeg) are not implemented.

img2img with a mask runs as A1111's img2img does (Deforum's host): the mask blurred by
mask_overlay_blur, the masked area filled from its surroundings first (fill 0, `fill`) or kept
(fill 1, `original`), with full_res_mask only the area around the mask (plus
full_res_mask_padding) repainted at full size and pasted back, and the init image laid over
the result outside the mask (A1111's overlay). Pure functions of PIL images and arrays.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PRESETS = ("everywhere", "video_mask")
# A1111's inpainting_fill, by Deforum's `fill` index; the latent ones are not implemented.
FILLS = ("fill", "original", "latent noise", "latent nothing")
_TOKEN = re.compile(r"\s*(?:\{(?P<var>[^}]*)\}|\[(?P<file>[^\]]*)\]|<(?P<word>[^>]*)>|(?P<op>[!&|^\\()]))")
# Binary operators, loosest first.
_BINARY = ("\\", "^", "|", "&")


class MaskError(ValueError):
    """A mask expression or mask file that cannot be used."""


def prepare_mask(image, size: tuple[int, int], brightness: float = 1.0, contrast: float = 1.0):
    """A mask image (PIL) as Deforum loads one: RGB, resized to size (W, H) with Lanczos,
    ImageEnhance brightness then contrast (when not 1), grey ('L')."""
    from PIL import Image, ImageEnhance

    mask = image.convert("RGB").resize(size, resample=Image.LANCZOS)
    if brightness != 1:
        mask = ImageEnhance.Brightness(mask).enhance(brightness)
    if contrast != 1:
        mask = ImageEnhance.Contrast(mask).enhance(contrast)
    return mask.convert("L")


# ---- composing -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    op: str  # "var", "file", "!", or a binary operator
    value: str = ""
    args: tuple[Node, ...] = ()


def parse_expression(text: str, where: str = "mask_schedule") -> Node:
    """The tree of a mask expression; MaskError names `where`."""
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise MaskError(f"{where}: cannot read {text[pos:]!r} in mask expression {text!r}")
        pos = match.end()
        if match["word"] is not None:
            raise MaskError(
                f"{where}: word masks (<{match['word']}>, CLIPSeg) are not implemented; use {{video_mask}}, "
                "{everywhere} or [mask file]"
            )
        if match["var"] is not None:
            if match["var"] not in PRESETS:
                raise MaskError(f"{where}: unknown mask {{{match['var']}}} (one of {{everywhere}}, {{video_mask}})")
            tokens.append(("var", match["var"]))
        elif match["file"] is not None:
            if not match["file"].strip():
                raise MaskError(f"{where}: empty [] in mask expression {text!r}")
            tokens.append(("file", match["file"].strip()))
        else:
            tokens.append(("op", match["op"]))
    if not tokens:
        raise MaskError(f"{where}: empty mask expression")
    index = 0

    def peek():
        return tokens[index] if index < len(tokens) else ("end", "")

    def binary(level: int) -> Node:
        nonlocal index
        if level == len(_BINARY):
            return unary()
        left = binary(level + 1)
        while peek() == ("op", _BINARY[level]):
            index += 1
            left = Node(_BINARY[level], args=(left, binary(level + 1)))
        return left

    def unary() -> Node:
        nonlocal index
        kind, value = peek()
        index += 1
        if (kind, value) == ("op", "!"):
            return Node("!", args=(unary(),))
        if (kind, value) == ("op", "("):
            inner = binary(0)
            if peek() != ("op", ")"):
                raise MaskError(f"{where}: unbalanced '(' in mask expression {text!r}")
            index += 1
            return inner
        if kind in ("var", "file"):
            return Node(kind, value)
        raise MaskError(f"{where}: expected a mask where {value or 'the end'!r} is, in mask expression {text!r}")

    tree = binary(0)
    if index != len(tokens):
        raise MaskError(f"{where}: unexpected {tokens[index][1]!r} in mask expression {text!r}")
    return tree


def files_of(node: Node) -> list[str]:
    """The [file] masks an expression reads."""
    if node.op == "file":
        return [node.value]
    return [uri for arg in node.args for uri in files_of(arg)]


def compose(node: Node, masks: Callable[[str, str], object]):
    """The mask (PIL '1') of an expression; masks(kind, name) gives an operand as PIL 'L'
    (kind "var": a preset, "file": a mask file's URI)."""
    from PIL import ImageChops

    if node.op in ("var", "file"):
        return masks(node.op, node.value).convert("1")
    if node.op == "!":
        return ImageChops.invert(compose(node.args[0], masks))
    left, right = (compose(arg, masks) for arg in node.args)
    if node.op == "&":
        return ImageChops.logical_and(left, right)
    if node.op == "|":
        return ImageChops.logical_or(left, right)
    if node.op == "^":
        return ImageChops.logical_xor(left, right)
    return ImageChops.logical_and(left, ImageChops.invert(right))  # "\"


def to_array(mask) -> np.ndarray | None:
    """A PIL mask as float [H, W] in 0..1; None when it is all black (Deforum then uses no mask)."""
    values = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
    return None if not values.any() else values


# ---- img2img with a mask (A1111's inpainting) -------------------------------------------------


def blur(mask: np.ndarray, radius: float) -> np.ndarray:
    """uint8 mask blurred as A1111 blurs it (mask_blur): a Gaussian of sigma `radius` along x,
    then y, each of 2 * int(2.5 * radius + 0.5) + 1 taps."""
    import cv2

    if radius <= 0:
        return mask
    taps = 2 * int(2.5 * radius + 0.5) + 1
    mask = cv2.GaussianBlur(mask, (taps, 1), radius)
    return cv2.GaussianBlur(mask, (1, taps), radius)


def crop_region(mask: np.ndarray, padding: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) around the mask's non-zero pixels plus `padding`, inside the frame (A1111's
    get_crop_region)."""
    height, width = mask.shape
    columns, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if not len(columns):
        return 0, 0, width, height
    return (
        max(int(columns[0]) - padding, 0),
        max(int(rows[0]) - padding, 0),
        min(int(columns[-1]) + 1 + padding, width),
        min(int(rows[-1]) + 1 + padding, height),
    )


def expand_region(region, width: int, height: int) -> tuple[int, int, int, int]:
    """The region grown to the frame's aspect ratio, shifted back inside the frame (A1111's
    expand_crop_region, whose processing size is the frame's own)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > width / height:
        grow = int((x2 - x1) / (width / height) - (y2 - y1))
        y1, y2 = y1 - grow // 2, y2 + grow - grow // 2
        y1, y2 = _inside(y1, y2, height)
    else:
        grow = int((y2 - y1) * (width / height) - (x2 - x1))
        x1, x2 = x1 - grow // 2, x2 + grow - grow // 2
        x1, x2 = _inside(x1, x2, width)
    return x1, y1, x2, y2


def _inside(start: int, stop: int, size: int) -> tuple[int, int]:
    if stop >= size:
        start, stop = start - (stop - size), size
    if start < 0:
        start, stop = 0, stop - start
    return start, min(stop, size)


def fill_masked(image, mask):
    """The masked area of `image` (PIL RGB) filled with its surroundings' colours, by stacking
    ever sharper blurs of the unmasked part (A1111's masking.fill, `fill` 0)."""
    from PIL import Image, ImageFilter, ImageOps

    filled = Image.new("RGBA", image.size)
    unmasked = Image.new("RGBa", image.size)
    unmasked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = unmasked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    return filled.convert("RGB")


@dataclass
class Inpaint:
    """What img2img with a mask needs: the (possibly cropped) init and mask at the frame's size,
    and how to put the result back (paste_to, overlay)."""

    init: object  # PIL RGB, what img2img starts from
    mask: object  # PIL L, white = repaint
    region: tuple[int, int, int, int] | None  # full_res_mask: the frame's area repainted
    overlay: np.ndarray  # uint8 [H, W]: how much of the result shows over the original init

    def paste(self, generated: np.ndarray, original: np.ndarray) -> np.ndarray:
        """The frame: `generated` (uint8 RGB at the frame's size, or the region's) back in place,
        the original init laid over it outside the mask."""
        from PIL import Image

        if self.region is not None:
            x1, y1, x2, y2 = self.region
            base = original.copy()
            base[y1:y2, x1:x2] = np.asarray(Image.fromarray(generated).resize((x2 - x1, y2 - y1), Image.LANCZOS))
            generated = base
        alpha = self.overlay.astype(np.float32)[..., None] / 255.0
        return np.clip(np.round(generated * alpha + original * (1.0 - alpha)), 0, 255).astype(np.uint8)


def prepare_inpaint(
    init: np.ndarray, mask: np.ndarray, blur_radius: float, fill: int, full_res: bool, padding: int
) -> Inpaint:
    """A1111's preparation of img2img with a mask. init: uint8 RGB [H, W, 3]; mask: float [H, W]
    in 0..1 (white = repaint)."""
    from PIL import Image

    height, width = mask.shape
    blurred = blur(np.clip(np.round(mask * 255.0), 0, 255).astype(np.uint8), blur_radius)
    image, mask_image, region = Image.fromarray(init), Image.fromarray(blurred), None
    if full_res:
        overlay = blurred
        region = expand_region(crop_region(blurred, padding), width, height)
        image = image.crop(region).resize((width, height), Image.LANCZOS)
        mask_image = mask_image.crop(region).resize((width, height), Image.LANCZOS)
    else:
        overlay = np.clip(blurred.astype(np.float32) * 2, 0, 255).astype(np.uint8)
    if FILLS[fill] == "fill":
        image = fill_masked(image, mask_image)
    return Inpaint(image, mask_image, region, overlay)


def overlay(image: np.ndarray, keep: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Deforum's overlay_mask: `image` where the mask is white, `keep` (the init image, or the
    Video Input frame) where it is black, blended between (PIL Image.composite)."""
    from PIL import Image

    mask_image = Image.fromarray(np.clip(np.round(mask * 255.0), 0, 255).astype(np.uint8))
    return np.asarray(Image.composite(Image.fromarray(image), Image.fromarray(keep), mask_image))
