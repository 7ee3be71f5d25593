"""SSIM of image batches: the project's one definition (training loss, SSIM floor, quality metrics).

kornia's SSIM map (``kornia.metrics.ssim``) with a Gaussian window of ``window_size`` taps (11; kornia fixes
sigma = 1.5), ``K1 = 0.01``, ``K2 = 0.03`` (Wang et al., IEEE TIP 2004), data range ``data_range`` (1 for
images in ``[0, 1]``), ``padding="valid"`` (the map is ``window_size // 2`` pixels smaller on each side) and no
denominator epsilon: the quantity ``pytorch_msssim.ssim`` computes, which the authors used. Images are
``[B, C, H, W]`` float tensors; the second one is cast to the first one's dtype. Everything here is
differentiable.

* :func:`ssim_map` - the per-pixel, per-channel map ``[B, C, H', W']``;
* :func:`per_image_ssim` - its mean per image ``[B]`` (the SSIM floor, the baselines, quality tables);
* :func:`batch_ssim` - its mean over the whole batch, a scalar (the training loss's SSIM hinge). This is the
  mean over all map entries at once, which for float inputs need not equal the mean of :func:`per_image_ssim`
  to the last bit, so both are offered.
"""

from __future__ import annotations

import torch

__all__ = ["DATA_RANGE", "WINDOW", "batch_ssim", "per_image_ssim", "ssim_map"]

#: Gaussian window taps (kornia fixes sigma = 1.5).
WINDOW = 11
#: Data range of images in ``[0, 1]``.
DATA_RANGE = 1.0


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, window_size: int = WINDOW, data_range: float = DATA_RANGE
) -> torch.Tensor:
    """The SSIM map ``[B, C, H - 2p, W - 2p]`` (``p = window_size // 2``) of two batches of one shape."""
    import kornia.metrics

    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"SSIM needs two [B, C, H, W] batches of one shape; got {tuple(x.shape)}, {tuple(y.shape)}")
    h, w = x.shape[-2:]
    if min(h, w) < window_size:
        raise ValueError(
            f"images of {h}x{w} pixels are smaller than the SSIM window ({window_size}x{window_size})"
        )
    return kornia.metrics.ssim(x, y.to(x.dtype), window_size, max_val=float(data_range), eps=0.0, padding="valid")


def per_image_ssim(
    x: torch.Tensor, y: torch.Tensor, window_size: int = WINDOW, data_range: float = DATA_RANGE
) -> torch.Tensor:
    """SSIM of each image pair, ``[B]``: the map's mean over channels and pixels."""
    return ssim_map(x, y, window_size, data_range).mean((1, 2, 3))


def batch_ssim(
    x: torch.Tensor, y: torch.Tensor, window_size: int = WINDOW, data_range: float = DATA_RANGE
) -> torch.Tensor:
    """Mean SSIM of two batches, a scalar: the map's mean over images, channels and pixels at once
    (``pytorch_msssim``'s ``size_average=True``)."""
    return ssim_map(x, y, window_size, data_range).mean()
