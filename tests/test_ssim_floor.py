"""Tests for protego_nb.protect.ssim_floor: every output meets the floor, the factor is the largest that does."""

import numpy as np
import pytest
import torch

from protego_nb.protect import ssim_floor as F
from protego_nb.protect.ssim import per_image_ssim

torch.set_num_threads(1)


def _images(n=6, s=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(n, 3, s, s, generator=g), 5, 1, 2)
    noise = (torch.rand(n, 3, s, s, generator=g) * 2 - 1) * torch.linspace(0.01, 0.12, n).view(-1, 1, 1, 1)
    return base, torch.clamp(base + noise, 0, 1)


def test_every_output_meets_the_floor_and_the_factor_is_the_largest():
    clean, prot = _images()
    floor = 0.9
    before = per_image_ssim(prot, clean)
    assert (before < floor).any() and (before >= floor).any()  # both kinds of image are in the batch
    out, a = F.enforce_ssim_floor(clean, prot, floor, tol=1e-3)
    after = per_image_ssim(out, clean)
    assert (after >= floor).all(), after
    delta = prot - clean
    for i in range(len(a)):
        if before[i] >= floor:
            assert a[i] == 1 and torch.equal(out[i], prot[i])  # unchanged, bit for bit
            continue
        assert 0 < a[i] < 1
        # a finer scan: no factor more than tol above a meets the floor
        grid = torch.linspace(float(a[i]) + 1.5e-3, 1.0, 40)
        x = torch.clamp(clean[i : i + 1] + grid.view(-1, 1, 1, 1) * delta[i : i + 1], 0, 1)
        assert (per_image_ssim(x, clean[i : i + 1].expand_as(x)) < floor).all()
        # and the scaled perturbation is the original one times the factor
        assert torch.allclose(out[i] - clean[i], a[i] * delta[i], atol=1e-6)


def test_floor_of_one_and_a_clean_image():
    clean, prot = _images(3)
    out, a = F.enforce_ssim_floor(clean, prot, 1.0, tol=1e-3)
    assert (a < 1e-2).all() and (per_image_ssim(out, clean) >= 1.0).all()  # (SSIM rounds to 1 in float32)
    same, a2 = F.enforce_ssim_floor(clean, clean.clone(), 0.95)
    assert (a2 == 1).all() and torch.equal(same, clean)


def test_protect_time_form_on_uint8_canvases():
    clean, prot = _images(4)
    canv = [(c.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for c in clean]
    deltas = (prot - clean).permute(0, 2, 3, 1).numpy().astype(np.float32)
    out, a = F.floor_perturbations(canv, deltas, 0.9)
    x = torch.from_numpy(np.stack(canv).astype(np.float32) / 255).permute(0, 3, 1, 2)
    d = torch.from_numpy(out).permute(0, 3, 1, 2)
    assert (per_image_ssim(torch.clamp(x + d, 0, 1), x) >= 0.9).all()
    assert np.allclose(out, deltas * a.reshape(-1, 1, 1, 1)) and (a < 1).any() and (a == 1).any()
    with pytest.raises(ValueError, match="perturbations"):
        F.floor_perturbations(canv[:2], deltas, 0.9)
    with pytest.raises(ValueError, match="floor"):
        F.floor_factors(clean, prot - clean, 1.5)
