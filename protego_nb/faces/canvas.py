"""The 224x224 face canvas: a similarity warp that maps the 5 detected points onto
:data:`protego_nb.faces.align.CANVAS_TEMPLATE`, and the maps between canvas and image pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from . import align
from .images import check_rgb

# --------------------------------------------------------------------------- canvas


def make_canvas(
    img: np.ndarray, points: np.ndarray, size: int = align.CANVAS_SIZE, border: str = "constant"
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``img`` so that ``points`` (5, 2) land on ``align.template(size)``.

    Returns ``(canvas uint8 [size, size, 3], M)`` where ``M`` (2x3, float64) maps original
    image pixels to canvas pixels exactly. Bilinear interpolation; when the warp shrinks
    the face by more than 2x, the region the canvas sees is first reduced with
    ``INTER_AREA`` (box filter, no aliasing) to the target scale and the warp is composed
    accordingly, so ``M`` stays exact. ``border="constant"`` fills canvas pixels outside
    the image with black (as InsightFace's ``norm_crop`` does); ``"replicate"`` repeats
    the edge pixels.
    """
    img = check_rgb(img)
    flag = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}.get(border)
    if flag is None:
        raise ValueError(f"border must be 'constant' or 'replicate', got {border!r}")
    M = align.similarity_transform(np.asarray(points, np.float64), align.template(size))
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    src, M_eff = img, M
    if scale < 0.5:
        h, w = img.shape[:2]
        corners = align.apply_affine(align.invert_affine(M), [[-1, -1], [size, -1], [size, size], [-1, size]])
        margin = math.ceil(2.0 / scale) + 2
        x0, y0 = (max(0, math.floor(corners[:, i].min()) - margin) for i in (0, 1))
        x1 = min(w, math.ceil(corners[:, 0].max()) + margin + 1)
        y1 = min(h, math.ceil(corners[:, 1].max()) + margin + 1)
        if x1 > x0 and y1 > y0:
            crop = img[y0:y1, x0:x1]
            ch, cw = crop.shape[:2]
            nw, nh = max(1, round(cw * scale)), max(1, round(ch * scale))
            sx, sy = nw / cw, nh / ch
            src = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
            # small pixel -> original pixel: x = (x' + .5) / sx - .5 + x0
            back = np.array([[1 / sx, 0, 0.5 / sx - 0.5 + x0], [0, 1 / sy, 0.5 / sy - 0.5 + y0], [0, 0, 1]])
            M_eff = (np.vstack([M, [0, 0, 1]]) @ back)[:2]
    canvas = cv2.warpAffine(src, M_eff, (size, size), flags=cv2.INTER_LINEAR, borderMode=flag, borderValue=0)
    return canvas, M


@dataclass(frozen=True, eq=False)
class FaceCanvas:
    """A face canvas and everything needed to map it back onto its source image."""

    path: str
    sha256: str
    canvas: np.ndarray  # uint8 (224, 224, 3)
    landmarks: np.ndarray  # float32 (5, 2), canvas pixels (= M applied to src_points)
    src_points: np.ndarray  # float32 (5, 2), original image pixels
    M: np.ndarray  # float64 (2, 3), original -> canvas
    box: np.ndarray  # float32 (4,), original image pixels
    prob: float
    n_faces: int
    image_size: tuple[int, int]  # (w, h) of the upright image
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CanvasFailure:
    """An input that gave no canvas: ``reason`` is an image or detection failure reason."""

    path: str
    reason: str
    message: str


def canvas_to_image_transform(fc: FaceCanvas) -> np.ndarray:
    """2x3 affine mapping canvas pixels back to original-image pixels (the inverse of ``fc.M``)."""
    return align.invert_affine(fc.M)


def canvas_points_to_image(fc: FaceCanvas, pts: np.ndarray) -> np.ndarray:
    """Map ``[N, 2]`` canvas pixel coordinates to original-image pixel coordinates."""
    return align.apply_affine(canvas_to_image_transform(fc), pts)


def canvases_to_tensor(
    canvases: Sequence[FaceCanvas], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack canvases as ``(x float32 [B, 3, H, W] in [0, 1], landmarks float32 [B, 5, 2])``."""
    if len(canvases) == 0:
        s = align.CANVAS_SIZE
        return torch.zeros(0, 3, s, s, device=device), torch.zeros(0, 5, 2, device=device)
    x = torch.from_numpy(np.stack([c.canvas for c in canvases])).permute(0, 3, 1, 2)
    x = x.to(device=device, dtype=torch.float32).div_(255.0).contiguous()
    lm = torch.from_numpy(np.stack([np.asarray(c.landmarks, np.float32) for c in canvases])).to(device)
    return x, lm
