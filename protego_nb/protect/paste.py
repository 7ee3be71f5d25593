"""Paste canvas-space perturbations back onto a full-resolution image.

Each face's perturbation ``delta`` (on its 224x224 canvas, ``|delta| <= eps``, zero off the face surface) is
mapped back onto the image through the inverse of the canvas transform ``M`` (``cv2.warpAffine`` with
``WARP_INVERSE_MAP``, bilinear, zero outside the canvas), only over the face's bounding rectangle; a bilinear
mix of values in ``[-eps, eps]`` stays in ``[-eps, eps]``, and pixels off the face get exactly 0. The output
is ``round(clip(img + 255 * delta, 0, 255))``: rounded to the nearest level, **not truncated** (the authors'
``.mul(255).to(uint8)`` truncates, a bias of -0.5 levels). Since ``img`` is integral,
``|out - img| <= round(255 eps)``; pixels outside every face are bit-identical.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

from ..faces import align

__all__ = ["paste_perturbation"]


def paste_perturbation(
    image: np.ndarray, deltas: Sequence[np.ndarray], transforms: Sequence[np.ndarray], eps: float
) -> np.ndarray:
    """Add canvas-space perturbations to a full-resolution image; returns a new ``uint8`` image.

    ``deltas[k]`` ``float32 [S, S, 3]`` in ``[-eps, eps]`` (units of 1 = 255 levels), zero off the face;
    ``transforms[k]`` the 2x3 map image pixel -> canvas pixel of that face. Each delta is resampled onto the
    image grid (bilinear, through the inverse of the map) over the rectangle its non-zero pixels cover, the
    sum is clipped to ``+-255 eps`` (faces that overlap cannot exceed the bound), and the result is
    ``round(clip(image + delta, 0, 255))``. Pixels outside every rectangle are copied unchanged.
    """
    h, w = image.shape[:2]
    out = image.copy()
    rois = []
    for delta, M in zip(deltas, transforms):
        nz = np.abs(delta).max(-1) > 0
        if not nz.any():
            continue
        ys, xs = np.nonzero(nz)
        c = np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.min() - 1],
                      [xs.max() + 1, ys.max() + 1], [xs.min() - 1, ys.max() + 1]], np.float64)
        p = align.apply_affine(align.invert_affine(M), c)
        x0, y0 = max(0, math.floor(p[:, 0].min()) - 1), max(0, math.floor(p[:, 1].min()) - 1)
        x1, y1 = min(w, math.ceil(p[:, 0].max()) + 2), min(h, math.ceil(p[:, 1].max()) + 2)
        if x1 > x0 and y1 > y0:
            rois.append((delta, np.asarray(M, np.float64), (x0, y0, x1, y1)))
    if not rois:
        return out
    X0, Y0 = min(r[2][0] for r in rois), min(r[2][1] for r in rois)
    X1, Y1 = max(r[2][2] for r in rois), max(r[2][3] for r in rois)
    acc = np.zeros((Y1 - Y0, X1 - X0, 3), np.float32)
    for delta, M, (x0, y0, x1, y1) in rois:
        # image pixel (x0 + u, y0 + v) -> canvas pixel M @ (x0 + u, y0 + v, 1)
        Mr = M.copy()
        Mr[:, 2] = M[:, 2] + M[:, :2] @ np.array([x0, y0], np.float64)
        d = cv2.warpAffine(np.ascontiguousarray(delta, np.float32) * np.float32(255.0), Mr, (x1 - x0, y1 - y0),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
        acc[y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0] += d.reshape(y1 - y0, x1 - x0, 3)
    bound = np.float32(255.0 * eps)
    np.clip(acc, -bound, bound, out=acc)
    region = out[Y0:Y1, X0:X1].astype(np.float32) + acc
    out[Y0:Y1, X0:X1] = np.rint(np.clip(region, 0, 255)).astype(np.uint8)
    return out
