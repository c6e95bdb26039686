"""Deforum's camera moves: 2D affine warps (OpenCV) with the perspective flip, and 3D warps from a
depth map (torch).

They take and return uint8 RGB frames [H, W, 3] (or float flow fields, for optical_flow_cadence);
the parameters are one frame's schedule values, in Deforum's units (degrees, pixels for 2D
translation, Deforum's 3D units).
"""

from __future__ import annotations

import math

import numpy as np

# Deforum (after Disco Diffusion) moves the 3D camera by translation / 200 per frame.
TRANSLATION_SCALE = 1.0 / 200.0


def warp_2d(
    image: np.ndarray,
    angle: float = 0.0,
    zoom: float = 1.0,
    translation_x: float = 0.0,
    translation_y: float = 0.0,
    center_x: float = 0.5,
    center_y: float = 0.5,
    border: str = "replicate",
    flip: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Rotate by `angle` degrees and scale by `zoom` about (center_x, center_y) (fractions of
    the frame), after shifting by (translation_x, translation_y) pixels; pixels that come in
    from outside repeat the edge (`replicate`) or the opposite side (`wrap`).

    flip: (theta, phi, gamma, fv) of Deforum's perspective flip, applied after the move. (Deforum's
    anim_frame_warp_2d means the same but loses the translation: np.matmul's third argument is
    its output, not a third factor; raypipe keeps it.)"""
    import cv2

    height, width = image.shape[:2]
    rotation = np.vstack([cv2.getRotationMatrix2D((width * center_x, height * center_y), angle, zoom), [0, 0, 1]])
    translation = np.array([[1, 0, translation_x], [0, 1, translation_y], [0, 0, 1]], dtype=np.float64)
    matrix = rotation @ translation
    if flip is not None:
        matrix = perspective_flip_matrix(width, height, *flip) @ matrix
    return cv2.warpPerspective(image, matrix, (width, height), borderMode=_border(border))


def _border(border: str) -> int:
    import cv2

    return cv2.BORDER_WRAP if border == "wrap" else cv2.BORDER_REPLICATE


def _rotation_xyz_degrees(phi: float, gamma: float, theta: float) -> np.ndarray:
    """4x4 rotation about x by phi, y by gamma and z by theta (degrees): Rx @ Ry @ Rz."""
    cx, sx = math.cos(math.radians(phi)), math.sin(math.radians(phi))
    cy, sy = math.cos(math.radians(gamma)), math.sin(math.radians(gamma))
    cz, sz = math.cos(math.radians(theta)), math.sin(math.radians(theta))
    rot_x = np.array([[1, 0, 0, 0], [0, cx, -sx, 0], [0, sx, cx, 0], [0, 0, 0, 1]])
    rot_y = np.array([[cy, 0, sy, 0], [0, 1, 0, 0], [-sy, 0, cy, 0], [0, 0, 0, 1]])
    rot_z = np.array([[cz, -sz, 0, 0], [sz, cz, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    return rot_x @ rot_y @ rot_z


def perspective_flip_matrix(width: int, height: int, theta: float, phi: float, gamma: float, fv: float) -> np.ndarray:
    """Deforum's perspective flip (enable_perspective_flip): the frame as a card at the centre of
    a camera of vertical field of view `fv` degrees, rotated by phi (about x), gamma (about y)
    and theta (about z) in degrees, projected back; a 3x3 homography in pixels. The card's
    corners go through the camera and the homography maps the frame's corners to them,
    scaled to the card's side d / cos(fv / 2) (d the frame's diagonal) and centred."""
    import cv2

    half = math.radians(fv / 2.0)
    diagonal = math.hypot(width, height)
    side = diagonal / math.cos(half)
    distance = diagonal / (2.0 * math.sin(half))
    near, far = distance - diagonal / 2.0, distance + diagonal / 2.0
    move = np.eye(4)
    move[2, 3] = -distance
    projection = np.eye(4)  # w = 1 - z: Deforum's projection keeps the identity's 1 at [3, 3]
    projection[0, 0] = projection[1, 1] = 1.0 / math.tan(half)
    projection[2, 2] = -(far + near) / (far - near)
    projection[2, 3] = -(2.0 * far * near) / (far - near)
    projection[3, 2] = -1.0
    camera = projection @ move @ _rotation_xyz_degrees(phi, gamma, theta)
    corners = np.array(
        [
            [-width / 2, height / 2, 0],
            [width / 2, height / 2, 0],
            [width / 2, -height / 2, 0],
            [-width / 2, -height / 2, 0],
        ]
    )
    seen = np.c_[corners, np.ones(4)] @ camera.T
    projected = seen[:, :2] / seen[:, 3:]
    source = (corners[:, :2] + [width / 2, height / 2]).astype(np.float32)
    target = ((projected + 1.0) * (0.5 * side)).astype(np.float32)
    homography = cv2.getPerspectiveTransform(source, target)
    centre = np.array([[1, 0, (width - side) / 2], [0, 1, (height - side) / 2], [0, 0, 1]], dtype=np.float32)
    return homography @ centre


def perspective_flip(image: np.ndarray, theta: float, phi: float, gamma: float, fv: float, border: str = "replicate"):
    """The frame through perspective_flip_matrix (3D mode flips the frame before the camera move)."""
    import cv2

    height, width = image.shape[:2]
    matrix = perspective_flip_matrix(width, height, theta, phi, gamma, fv)
    return cv2.warpPerspective(image, matrix, (width, height), borderMode=_border(border))


# ---- 3D ----------------------------------------------------------------------------------------


def rotation_matrix_xyz(rx: float, ry: float, rz: float):
    """Rotation of Euler angles (radians) in the XYZ convention: Rx @ Ry @ Rz (pytorch3d's)."""
    import torch

    cx, sx, cy, sy, cz, sz = math.cos(rx), math.sin(rx), math.cos(ry), math.sin(ry), math.cos(rz), math.sin(rz)
    rot_x = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    rot_y = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rot_z = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return rot_x @ rot_y @ rot_z


def fov_projection(near: float, far: float, aspect_ratio: float, fov_degrees: float):
    """The projection matrix of pytorch3d's FoVPerspectiveCameras (what Deforum uses).
    near and far only set the depth row: like in Deforum, they do not move pixels in x/y."""
    import torch

    tan_half = math.tan(math.radians(fov_degrees) / 2)
    matrix = torch.zeros(4, 4, dtype=torch.float64)
    matrix[0, 0] = 1.0 / (tan_half * aspect_ratio)
    matrix[1, 1] = 1.0 / tan_half
    matrix[3, 2] = 1.0
    matrix[2, 2] = far / (far - near) if far != near else 1.0
    matrix[2, 3] = -(far * near) / (far - near) if far != near else 0.0
    return matrix


def _project(points, rotation, translation, projection):
    """World points [N, 3] through a camera (row vectors: X @ R + T) to NDC x, y."""
    import torch

    view = points @ rotation + translation
    homogeneous = torch.cat([view, torch.ones_like(view[:, :1])], dim=1) @ projection.T
    w = homogeneous[:, 3:]
    w = torch.where(w.abs() < 1e-6, torch.full_like(w, 1e-6), w)
    return homogeneous[:, :2] / w


def depth_to_z(depth: np.ndarray | None, shape: tuple[int, int], disparity: bool = True) -> np.ndarray:
    """Deforum's depth normalisation: min-max to [0, 1], histogram-equalised, then to z in
    [1, 2] (near = 1). Depth models of the MiDaS kind predict disparity (larger = nearer),
    metric ones (ZoeDepth) distance. No depth, or a flat / non-finite one: z = 1 everywhere."""
    if depth is None or not np.all(np.isfinite(depth)) or float(depth.max()) == float(depth.min()):
        return np.ones(shape, dtype=np.float64)
    depth = depth.astype(np.float64)
    normalized = (depth - depth.min()) / (depth.max() - depth.min())
    hist, edges = np.histogram(normalized, bins=1024, range=(0, 1))
    cdf = hist.cumsum() / float(hist.sum())
    equalized = np.interp(normalized, edges[:-1], cdf)
    return 2.0 - equalized if disparity else 1.0 + equalized


def warp_3d(
    image: np.ndarray,
    depth: np.ndarray | None = None,
    translation_x: float = 0.0,
    translation_y: float = 0.0,
    translation_z: float = 0.0,
    rotation_x: float = 0.0,
    rotation_y: float = 0.0,
    rotation_z: float = 0.0,
    fov: float = 70.0,
    near: float = 200.0,
    far: float = 10000.0,
    aspect_ratio: float = 1.0,
    padding_mode: str = "border",
    sampling_mode: str = "bicubic",
    disparity: bool = True,
) -> np.ndarray:
    """Move the camera through the scene that `depth` (same H x W as the image) describes, as
    Deforum's transform_image_3d_new: every pixel becomes a 3D point at its depth, is seen
    from the moved camera, and the image is resampled (torch grid_sample with `sampling_mode`
    bicubic/bilinear/nearest and `padding_mode` border/reflection/zeros where it runs out).
    Translations are Deforum's units (1/200 of the unit depth), rotations in degrees. A uint8
    frame comes back truncated to uint8 as Deforum's; a float array (a flow field of
    optical_flow_cadence, any channels) comes back as floats, unclipped."""
    import torch
    import torch.nn.functional as F

    height, width = image.shape[:2]
    z = torch.from_numpy(depth_to_z(depth, (height, width), disparity))
    y, x = torch.meshgrid(
        torch.linspace(-1.0, 1.0, height, dtype=torch.float64),
        torch.linspace(-1.0, 1.0, width, dtype=torch.float64),
        indexing="ij",
    )
    points = torch.stack([x.flatten(), y.flatten(), z.flatten()], dim=1)
    projection = fov_projection(near, far, aspect_ratio, fov)
    translate = torch.tensor(
        [-translation_x * TRANSLATION_SCALE, translation_y * TRANSLATION_SCALE, -translation_z * TRANSLATION_SCALE],
        dtype=torch.float64,
    )
    rotate = rotation_matrix_xyz(math.radians(rotation_x), math.radians(rotation_y), math.radians(rotation_z))
    old = _project(points, torch.eye(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), projection)
    new = _project(points, rotate, translate, projection)
    offset = (new - old).reshape(height, width, 2).to(torch.float32)

    identity = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    grid = F.affine_grid(identity, [1, 1, height, width], align_corners=False) - offset.unsqueeze(0)
    source = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)
    warped = F.grid_sample(source, grid, mode=sampling_mode, padding_mode=padding_mode, align_corners=False)
    warped = warped[0].permute(1, 2, 0)
    if image.dtype != np.uint8:  # a flow field (optical_flow_cadence): values as they are
        return warped.numpy().astype(image.dtype)
    # float to uint8 truncates, as Deforum's astype(uint8) does
    return warped.clamp(0, 255).to(torch.uint8).numpy()
