"""Deforum's frame noising: before img2img repairs a warped frame, a little noise is blended
in (noise_schedule), so that detail keeps being re-invented instead of smearing. `uniform`
is white Gaussian noise; `perlin` modulates it with fractal Perlin noise. Seeded by the
frame's seed, so a row renders the same on every run. A noise mask (masks.py) keeps the noise
to its white part; elsewhere the frame is blended with mid-grey (Deforum's zero noise).

Also Deforum's anti-blur (amount_schedule > 0): an unsharp mask of the warped frame before
the noise, against the blur that repeated warping brings."""

from __future__ import annotations

import math

import numpy as np


def perlin_2d(shape: tuple[int, int], res: tuple[int, int], generator):
    """Gradient (Perlin) noise in about [-1, 1] over `shape` pixels, on a res[0] x res[1]
    lattice (shape must be a multiple of res)."""
    import torch

    cells = (shape[0] // res[0], shape[1] // res[1])
    ys = torch.arange(shape[0], dtype=torch.float32) / cells[0]
    xs = torch.arange(shape[1], dtype=torch.float32) / cells[1]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    iy, ix = gy.floor().long(), gx.floor().long()
    fy, fx = gy - iy, gx - ix
    angles = 2 * math.pi * torch.rand(res[0] + 1, res[1] + 1, generator=generator)
    grads = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)

    def corner(dy: int, dx: int):
        g = grads[iy + dy, ix + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t):
        return 6 * t**5 - 15 * t**4 + 10 * t**3

    wy, wx = fade(fy), fade(fx)
    top = torch.lerp(corner(0, 0), corner(0, 1), wx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), wx)
    return math.sqrt(2) * torch.lerp(top, bottom, wy)


def perlin_octaves(shape: tuple[int, int], res: tuple[int, int], octaves: int, persistence: float, generator):
    import torch

    noise = torch.zeros(shape)
    frequency, amplitude = 1, 1.0
    for _ in range(int(octaves)):
        noise += amplitude * perlin_2d(shape, (frequency * res[0], frequency * res[1]), generator)
        frequency *= 2
        amplitude *= persistence
    return noise


def add_noise(
    image: np.ndarray,
    amount: float,
    seed: int,
    noise_type: str = "perlin",
    perlin_res: tuple[float, float] = (8, 8),
    octaves: int = 4,
    persistence: float = 0.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """uint8 RGB image blended with noise: (1 - amount) * image + amount * noise image.
    mask: [H, W] in 0..1, rounded to 0 / 1 as Deforum's condition_noise_mask: noise only where 1."""
    import cv2
    import torch
    import torch.nn.functional as F

    if amount <= 0:
        return image
    generator = torch.Generator("cpu").manual_seed(int(seed) % 2**63)
    height, width = image.shape[:2]
    res = (max(1, int(perlin_res[1])), max(1, int(perlin_res[0])))  # (rows, columns)
    if noise_type == "perlin":
        # Deforum rounds the noise field down to multiples of 64 px; round up instead, to the
        # lattice of the finest octave, so small frames get noise too.
        unit = (res[0] * 2 ** (int(octaves) - 1), res[1] * 2 ** (int(octaves) - 1))
        shape = (math.ceil(height / unit[0]) * unit[0], math.ceil(width / unit[1]) * unit[1])
        noise = torch.randn((3, *shape), generator=generator)
        noise = noise * (perlin_octaves(shape, res, octaves, persistence, generator) + 1) / 2
        noise = F.interpolate(noise.unsqueeze(0), size=(height, width)).squeeze(0)
    else:
        noise = torch.randn((3, height, width), generator=generator)
    if mask is not None:
        noise = noise * torch.from_numpy(np.round(np.asarray(mask, dtype=np.float32)))[None]
    noise_image = ((noise.permute(1, 2, 0).numpy() * 0.5 + 0.5).clip(0, 1) * 255).astype(np.uint8)
    return cv2.addWeighted(image, 1.0 - amount, noise_image, amount, 0)


def unsharp_mask(image: np.ndarray, kernel: int, sigma: float, amount: float, threshold: float) -> np.ndarray:
    """Deforum's anti-blur: image + amount * (image - Gaussian blur of it), clipped and rounded;
    with threshold > 0 the pixels whose difference to the blur is below it stay as they were
    (the difference taken on uint8, wrapping below 0, as Deforum takes it)."""
    import cv2

    if amount == 0:
        return image
    blurred = cv2.GaussianBlur(image, (kernel, kernel), sigma)
    sharpened = np.clip(float(amount + 1) * image - float(amount) * blurred, 0, 255).round().astype(np.uint8)
    if threshold > 0:
        keep = np.absolute(image - blurred) < threshold  # uint8 - uint8 wraps, as in Deforum
        np.copyto(sharpened, image, where=keep)
    return sharpened
