"""Random views of the protected canvases during training: input diversity (DI-FGSM, Xie et al. CVPR 2019),
the Gaussian-smoothed view (LowKey, Cherepanova et al. ICLR 2021) and spectrum simulation (SSA, Long et al.
ECCV 2022), with the gradient helpers of the step."""

from __future__ import annotations

import math

import torch

from .train_config import TrainConfig


def diversity_draw(
    b: int, h: int, w: int, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One input-diversity draw for a batch of ``b`` canvases ``h x w``: ``(applied [B] bool, M [B, 2, 3])``,
    ``M`` the similarity transform ``p' = s R (p - c) + c + t`` in canvas pixels (float64). Draws a fixed
    number of random numbers per call, so the generator's stream does not depend on which images were picked."""
    u = torch.rand((b, 5), generator=gen, dtype=torch.float64)
    applied = u[:, 0] < cfg.input_diversity
    scale = 1.0 + (2 * u[:, 1] - 1) * cfg.di_scale
    angle = torch.deg2rad((2 * u[:, 2] - 1) * cfg.di_rotate)
    tx = (2 * u[:, 3] - 1) * cfg.di_shift * w
    ty = (2 * u[:, 4] - 1) * cfg.di_shift * h
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    m = torch.stack(
        [
            torch.stack([cos, -sin, cx - cos * cx + sin * cy + tx], 1),
            torch.stack([sin, cos, cy - sin * cx - cos * cy + ty], 1),
        ],
        1,
    )
    return applied, m


def diversity_apply(
    x: torch.Tensor, lm: torch.Tensor, applied: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp the canvases ``x`` and landmarks ``lm`` picked by ``applied`` with the draw's matrices ``m``."""
    from protego_nb.faces.align import warp_affine_torch

    if not bool(applied.any()):
        return x, lm
    h, w = x.shape[-2:]
    m = m.to(device=x.device, dtype=x.dtype)
    idx = applied.nonzero().flatten().to(x.device)
    warped = warp_affine_torch(x[idx], m[idx], (h, w))
    x_out = x.index_copy(0, idx, warped)
    lm_w = lm[idx] @ m[idx, :, :2].transpose(1, 2).to(lm.dtype) + m[idx, :, 2].unsqueeze(1).to(lm.dtype)
    lm_out = lm.index_copy(0, idx, lm_w)
    return x_out, lm_out


def diversity(
    x: torch.Tensor, lm: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random similarity transforms of protected canvases and their landmarks (per image, prob. ``p``).

    Returns ``(x', landmarks', applied [B] bool)``: :func:`diversity_draw` then :func:`diversity_apply`.
    """
    b, _, h, w = x.shape
    applied, m = diversity_draw(b, h, w, cfg, gen)
    x_out, lm_out = diversity_apply(x, lm, applied, m)
    return x_out, lm_out, applied



def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, C, H, W]`` with std ``sigma`` pixels (kernel 2*ceil(3 sigma)+1, reflect border)."""
    import kornia

    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def normalise_gradient(g: torch.Tensor, kind: str) -> torch.Tensor:
    n = g.abs().sum() if kind == "l1" else g.pow(2).sum().sqrt()
    return g / n if float(n) > 0 else g


def dct_matrix(n: int, dtype=torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (``[n, n]``): ``D @ v`` is the DCT of ``v``, ``D.T @ c`` its inverse."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype)


def spectrum_draw(shape: tuple[int, ...], cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One SSA draw for canvases of ``shape`` ``[B, C, H, W]``: ``(noise, mask)``, the Gaussian noise (std
    ``spectrum_sigma``) added in pixel space and the per-coefficient spectrum scale in ``[1 - rho, 1 + rho]``."""
    noise = torch.randn(shape, generator=gen) * cfg.spectrum_sigma
    mask = 1.0 + (torch.rand(shape, generator=gen) * 2 - 1) * cfg.spectrum_rho
    return noise, mask


def spectrum_apply(x: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``IDCT2(DCT2(x + noise) * mask)`` over the last two dimensions (differentiable in ``x``)."""
    h, w = x.shape[-2:]
    dh, dw = dct_matrix(h).to(x), dct_matrix(w).to(x)
    c = dh @ (x + noise.to(x)) @ dw.T
    return dh.T @ (c * mask.to(x)) @ dw
