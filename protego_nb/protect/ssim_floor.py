"""The SSIM floor as a guarantee for every image, not an average.

Training keeps the *batch-mean* SSIM near the floor (the hinge acts on the mean), so single protected canvases
fall below it (the study measured a mean of 0.937 against the 0.95 floor). :func:`enforce_ssim_floor` scales
each image's perturbation ``delta = x' - x`` by the largest factor ``a`` in ``[0, 1]`` (bisection, to within
``tol``) for which ``SSIM(clip(x + a delta, 0, 1), x) >= floor``; an image already at or above the floor is
returned unchanged (``a = 1``, bit for bit). SSIM is the project's one SSIM
(:func:`protego_nb.protect.ssim.per_image_ssim`: kornia, Gaussian window 11, sigma 1.5, over the whole
canvas). The search assumes SSIM falls as the perturbation grows along its own direction (it does for the
perturbations here; ``a = 0`` always meets the floor), and returns a factor that meets the floor in any case.

Used at protect time (:class:`protego_nb.protect.media.Protector` ``ssim_floor``, the CLI's ``--ssim-floor``,
measured on each face's canvas before the perturbation is pasted into the photo) and in the study's evaluation
(:mod:`protego_nb.transfer_study`).
"""

from __future__ import annotations

import numpy as np
import torch

from .ssim import per_image_ssim

__all__ = ["DEFAULT_TOL", "enforce_ssim_floor", "floor_factors", "floor_perturbations"]

#: Bisection tolerance on the scale factor.
DEFAULT_TOL = 1e-3


@torch.no_grad()
def floor_factors(clean: torch.Tensor, delta: torch.Tensor, floor: float, tol: float = DEFAULT_TOL) -> torch.Tensor:
    """``[B]`` the largest ``a`` in ``[0, 1]`` (within ``tol``, from below) with
    ``SSIM(clip(clean + a delta, 0, 1), clean) >= floor``; ``clean``, ``delta`` ``[B, 3, H, W]``."""
    if clean.shape != delta.shape or clean.dim() != 4:
        raise ValueError(f"clean and delta must be [B, 3, H, W] of one shape, got {tuple(clean.shape)}, "
                         f"{tuple(delta.shape)}")
    if not 0 < floor <= 1:
        raise ValueError(f"the SSIM floor must be in (0, 1], got {floor}")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol}")
    clean, delta = clean.float(), delta.float()

    def ok(a: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(clean[sel] + a.view(-1, 1, 1, 1) * delta[sel], 0.0, 1.0)
        return per_image_ssim(x, clean[sel]) >= floor

    b = clean.shape[0]
    factor = torch.ones(b)
    if b == 0:
        return factor
    everyone = torch.arange(b)
    below = everyone[~ok(torch.ones(b), everyone).cpu()]
    if len(below) == 0:
        return factor
    lo, hi = torch.zeros(len(below)), torch.ones(len(below))
    while float((hi - lo).max()) > tol:
        mid = (lo + hi) / 2
        good = ok(mid.to(clean.device), below.to(clean.device)).cpu()
        lo = torch.where(good, mid, lo)
        hi = torch.where(good, hi, mid)
    factor[below] = lo
    return factor


@torch.no_grad()
def enforce_ssim_floor(
    clean: torch.Tensor, protected: torch.Tensor, floor: float, tol: float = DEFAULT_TOL
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(protected', factors [B])``: each protected canvas with its perturbation scaled down by the largest
    factor that meets ``floor`` (:func:`floor_factors`); canvases already meeting it are returned unchanged."""
    if clean.shape != protected.shape:
        raise ValueError(f"clean and protected must have one shape, got {tuple(clean.shape)}, {tuple(protected.shape)}")
    delta = protected.float() - clean.float()
    a = floor_factors(clean, delta, floor, tol)
    scaled = torch.clamp(clean.float() + a.view(-1, 1, 1, 1).to(delta) * delta, 0.0, 1.0).to(protected.dtype)
    keep = (a >= 1.0).view(-1, 1, 1, 1).to(protected.device)
    return torch.where(keep, protected, scaled), a


def floor_perturbations(
    canvases: list[np.ndarray], deltas: np.ndarray, floor: float, tol: float = DEFAULT_TOL
) -> tuple[np.ndarray, np.ndarray]:
    """Protect-time form: ``canvases`` ``uint8 [S, S, 3]`` of the faces, ``deltas`` ``float32 [n, S, S, 3]``
    (units of 1 = 255 levels). Returns ``(deltas scaled per face, factors [n])``."""
    if len(canvases) != len(deltas):
        raise ValueError(f"{len(canvases)} canvases but {len(deltas)} perturbations")
    if len(deltas) == 0:
        return deltas, np.ones(0, np.float32)
    x = torch.from_numpy(np.stack([np.asarray(c, np.float32) / 255.0 for c in canvases])).permute(0, 3, 1, 2)
    d = torch.from_numpy(np.ascontiguousarray(deltas, np.float32)).permute(0, 3, 1, 2)
    a = floor_factors(x, d, floor, tol).numpy().astype(np.float32)
    out = deltas * a.reshape(-1, 1, 1, 1) if (a < 1).any() else deltas
    return out.astype(np.float32, copy=False), a
