"""What a platform may do to an uploaded photo before an intruder sees it, applied to protected canvases."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
import torch

from .protections import Protection

TRANSFORMS = ("jpeg75", "jpeg90", "resize0.5", "blur")


def transform_canvases(x: torch.Tensor, kind: str) -> torch.Tensor:
    """What a platform may do to an uploaded (protected) photo before the intruder sees it.

    ``jpegQ``: real JPEG encode/decode at quality Q (OpenCV, 8-bit); ``resizeS``: down by S (area) and back
    up (bilinear); ``blur``: Gaussian blur, kernel 5, sigma 1 (kornia). Input/output ``[N,3,H,W]`` in [0,1].
    """
    import cv2
    import kornia
    import torch.nn.functional as F

    if kind.startswith("jpeg"):
        q = int(kind[4:])
        out = []
        for img in (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy():
            ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
            out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy())
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255
    if kind.startswith("resize"):
        s = float(kind[6:])
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(round(h * s), round(w * s)), mode="area")
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    if kind == "blur":
        return kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0)).clamp(0, 1)
    raise ValueError(f"unknown transform {kind!r}; choose one of {TRANSFORMS}")


def transformed(protections: Mapping[str, Mapping[str, Protection]], kind: str) -> dict:
    """The same protections with ``transform_canvases(kind)`` applied to every protected canvas."""
    return {
        m: {
            u: replace(p, protected=transform_canvases(p.protected, kind))
            for u, p in prots.items()
        }
        for m, prots in protections.items()
    }

