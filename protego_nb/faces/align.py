"""Shared face geometry: 5-point templates and similarity alignment.

Conventions used everywhere in the package:

* Images are RGB. A *canvas* is a ``CANVAS_SIZE`` x ``CANVAS_SIZE`` face crop; as a
  tensor it is ``float32 [B, 3, H, W]`` in ``[0, 1]``, as an array ``uint8 [H, W, 3]``.
* 5 landmarks, MTCNN order: image-left eye, image-right eye, nose tip, image-left
  mouth corner, image-right mouth corner; ``(x, y)`` pixel coordinates where the
  centre of pixel ``(i, j)`` is ``(j, i)`` (OpenCV convention).
* An affine ``M`` (2x3) maps *source* pixel coordinates to *destination* pixel
  coordinates: ``dst = M @ [x, y, 1]`` (the matrix ``cv2.warpAffine`` takes).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: ArcFace / InsightFace 112x112 5-point template (Deng et al., CVPR 2019).
ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)

CANVAS_SIZE = 224
#: Canvas template: the ArcFace template at 224 scaled by CANVAS_SCALE about the centre,
#: so the canvas holds the whole face with a margin (forehead, chin, cheeks) that every
#: model's own crop (ArcFace-112, dlib 150 chip, faceres 224) and the face mesh need.
CANVAS_SCALE = 0.75
CANVAS_TEMPLATE = (ARCFACE_112 * (CANVAS_SIZE / 112.0) - CANVAS_SIZE / 2) * CANVAS_SCALE + CANVAS_SIZE / 2


def template(size: int = CANVAS_SIZE, scale: float = CANVAS_SCALE) -> np.ndarray:
    """The ArcFace 5-point template for a ``size`` square, scaled by ``scale`` about the centre."""
    return (ARCFACE_112 * (size / 112.0) - size / 2) * scale + size / 2


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` -> ``dst``.

    Umeyama (1991), "Least-squares estimation of transformation parameters between
    two point patterns", without reflection. Returns a 2x3 matrix.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    r = u @ np.diag(d) @ vt
    var_s = (s0**2).sum() / len(src)
    scale = (sig * d).sum() / var_s if var_s > 0 else 1.0
    t = mu_d - scale * r @ mu_s
    return np.hstack([scale * r, t[:, None]])


def similarity_transform_torch(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Batched, differentiable similarity fit ``src[B,N,2] -> dst[B,N,2]`` (or dst [N,2]).

    Closed form for 2-D similarities (complex-number least squares), no SVD, so it is
    cheap and stable on CPU and CUDA. Returns ``[B, 2, 3]``.
    """
    if dst.dim() == 2:
        dst = dst.unsqueeze(0).expand(src.shape[0], -1, -1)
    dst = dst.to(src)
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s0, d0 = src - mu_s, dst - mu_d
    den = (s0**2).sum((1, 2)).clamp_min(1e-12)
    a = ((s0[..., 0] * d0[..., 0] + s0[..., 1] * d0[..., 1]).sum(1)) / den  # s*cos
    b = ((s0[..., 0] * d0[..., 1] - s0[..., 1] * d0[..., 0]).sum(1)) / den  # s*sin
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [B,2,2]
    t = mu_d.squeeze(1) - (rot @ mu_s.squeeze(1).unsqueeze(-1)).squeeze(-1)
    return torch.cat([rot, t.unsqueeze(-1)], -1)


def invert_affine(M: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine."""
    A = np.vstack([np.asarray(M, dtype=np.float64), [0, 0, 1]])
    return np.linalg.inv(A)[:2]


def invert_affine_torch(M: torch.Tensor) -> torch.Tensor:
    """Batched inverse of ``[B, 2, 3]`` affines."""
    A, t = M[..., :2], M[..., 2:]
    Ai = torch.linalg.inv(A)
    return torch.cat([Ai, -Ai @ t], -1)


def apply_affine(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map ``[N, 2]`` points with a 2x3 affine."""
    pts = np.asarray(pts, dtype=np.float64)
    return pts @ np.asarray(M)[:, :2].T + np.asarray(M)[:, 2]


def warp_affine_torch(
    img: torch.Tensor, M: torch.Tensor, out_size: int | tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Differentiable ``cv2.warpAffine`` for a batch: ``img [B,C,H,W]``, ``M [B,2,3]`` src->dst pixels.

    Pixels outside the source are zero. Uses ``affine_grid``/``grid_sample`` with
    ``align_corners=False`` and converts the pixel-coordinate matrix to normalised
    coordinates, so it agrees with OpenCV's pixel-centre convention.
    """
    if isinstance(out_size, int):
        out_size = (out_size, out_size)
    oh, ow = out_size
    b, _, h, w = img.shape
    Minv = invert_affine_torch(M.to(img.dtype))  # dst pixel -> src pixel
    # normalised dst -> dst pixel: x_pix = ((x_n + 1) * W - 1) / 2
    dev, dt = img.device, img.dtype
    n2p_dst = torch.tensor([[ow / 2, 0, (ow - 1) / 2], [0, oh / 2, (oh - 1) / 2], [0, 0, 1]], device=dev, dtype=dt)
    p2n_src = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], device=dev, dtype=dt)
    Minv3 = torch.cat([Minv, torch.tensor([[[0, 0, 1]]], device=dev, dtype=dt).expand(b, -1, -1)], 1)
    theta = (p2n_src @ Minv3 @ n2p_dst)[:, :2]
    grid = F.affine_grid(theta, [b, img.shape[1], oh, ow], align_corners=False)
    return F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=False)
