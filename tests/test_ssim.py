"""The one SSIM (protego_nb.protect.ssim) and the call sites that use it."""

import kornia.metrics
import pytest
import torch

from protego_nb.evaluate import quality
from protego_nb.protect import losses
from protego_nb.protect import ssim as S


def _pair(seed=0, shape=(3, 3, 30, 26), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=dtype)
    y = (x + 0.1 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)
    return x, y


def _kornia(x, y, window=11, data_range=1.0):
    return kornia.metrics.ssim(x, y.to(x.dtype), window, max_val=data_range, eps=0.0, padding="valid")


def test_the_one_ssim_is_kornias_valid_gaussian_window_without_epsilon():
    x, y = _pair()
    assert torch.equal(S.ssim_map(y, x), _kornia(y, x))
    assert S.ssim_map(y, x).shape == (3, 3, 20, 16)
    assert torch.equal(S.per_image_ssim(y, x), _kornia(y, x).mean((1, 2, 3)))
    assert torch.equal(S.batch_ssim(y, x), _kornia(y, x).mean())
    assert torch.equal(S.per_image_ssim(y, x, window_size=7, data_range=2.0), _kornia(y, x, 7, 2.0).mean((1, 2, 3)))
    assert torch.equal(S.per_image_ssim(x, x), torch.ones(3))
    assert S.per_image_ssim(y.double(), x).dtype == torch.float64  # the second batch takes the first one's dtype


def test_the_call_sites_use_the_one_ssim_bit_for_bit():

    x, y = _pair(1)
    assert torch.equal(losses.ssim(y, x), S.batch_ssim(y, x))
    assert torch.equal(losses.ssim_hinge(y, x, 0.99)[1], S.batch_ssim(y, x))
    assert torch.equal(quality.ssim(x, y), S.per_image_ssim(x, y))
    assert quality.WINDOW == S.WINDOW == 11


def test_gradient_and_errors():
    x, y = _pair(2)
    y.requires_grad_(True)
    S.per_image_ssim(y, x).sum().backward()
    assert y.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="one shape"):
        S.per_image_ssim(x, x[:, :, :20])
    with pytest.raises(ValueError, match="one shape"):
        S.batch_ssim(x[0], x[0])
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        S.ssim_map(torch.rand(1, 3, 8, 30), torch.rand(1, 3, 8, 30))
