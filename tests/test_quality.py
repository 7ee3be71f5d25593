"""SSIM, PSNR and perturbation norms against hand-computed cases."""

import math

import numpy as np
import pytest
import torch

from protego_nb.evaluate import quality as Qm

pytestmark = pytest.mark.usefixtures("one_thread")


def rand_images(b: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g) * 0.8 + 0.1  # headroom: +-0.1 never clips


def signs(shape, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def test_identical_images_give_ssim_one_and_psnr_inf():
    x = rand_images()
    s, p = Qm.ssim(x, x), Qm.psnr(x, x)
    assert torch.all(s == 1.0)
    assert torch.all(torch.isposinf(p))
    n = Qm.perturbation_norms(x, x, eps=16 / 255)
    assert all(torch.all(v == 0) for v in n.values())


def test_known_noise_level_gives_known_psnr():
    x = rand_images()
    for a in (1 / 255, 4 / 255, 0.1):
        y = x + a * signs(x.shape)  # |d| = a everywhere -> MSE = a^2
        np.testing.assert_allclose(Qm.psnr(x, y).numpy(), -20 * math.log10(a), rtol=1e-4)
    # mixed batch: only the changed image is finite; per-image, not pooled over the batch
    y = x.clone()
    y[1] += 0.1
    p = Qm.psnr(x, y)
    assert math.isinf(p[0]) and math.isinf(p[2]) and p[1].item() == pytest.approx(20.0, rel=1e-4)
    # data range 255 on [0, 255] images gives the same number
    assert Qm.psnr(x * 255, y * 255, data_range=255.0)[1].item() == pytest.approx(20.0, rel=1e-4)


def test_flat_offset_ssim_is_the_luminance_term():
    # flat images: variances are 0, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    x = torch.full((1, 3, 24, 24), 0.5)
    y = torch.full((1, 3, 24, 24), 0.6)
    c1 = 0.01**2
    want = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert Qm.ssim(x.double(), y.double()).item() == pytest.approx(want, rel=1e-7)
    assert Qm.ssim(x, y).item() == pytest.approx(want, rel=1e-4)  # float32: E[x^2] - mu^2 is not exactly 0


def test_ssim_decreases_with_noise_and_is_symmetric():
    x = rand_images(b=1, h=48, w=48)
    vals = [Qm.ssim(x, (x + a * signs(x.shape)).clamp(0, 1)).item() for a in (0.01, 0.03, 0.1)]
    assert vals[0] > vals[1] > vals[2] and vals[0] < 1.0
    y = (x + 0.05 * signs(x.shape)).clamp(0, 1)
    assert Qm.ssim(x, y).item() == pytest.approx(Qm.ssim(y, x).item(), abs=1e-6)


def test_uint8_arrays_and_tensors_agree():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    ta = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255
    tb = torch.from_numpy(b).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(Qm.ssim(a, b), Qm.ssim(ta, tb))
    torch.testing.assert_close(Qm.psnr(a, b), Qm.psnr(ta, tb))
    assert Qm.ssim(a[0], b[0]).shape == (1,)  # single [H, W, 3]
    with pytest.raises(ValueError, match="differ in shape"):
        Qm.ssim(a, b[:, :20])
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        Qm.ssim(a[:, :8, :8], b[:, :8, :8])


def test_masked_ssim_ignores_changes_outside_the_mask():
    x = rand_images(b=2, h=64, w=64)
    y = x.clone()
    y[..., :, 40:] += 0.1 * signs(y[..., :, 40:].shape)  # change only the right part
    mask = torch.zeros(64, 64)
    mask[:, :24] = 1  # left part; >= 5 px (half window) away from the change
    assert torch.all(Qm.ssim(x, y, mask=mask) == 1.0)
    assert torch.all(Qm.ssim(x, y) < 0.99)
    per_image = torch.stack([mask, 1 - mask]).unsqueeze(1)
    s = Qm.ssim(x, y, mask=per_image)
    assert s[0] == 1.0 and s[1] < Qm.ssim(x, y)[1]  # the changed region alone scores lower than the whole
    with pytest.raises(ValueError, match="mask must be"):
        Qm.ssim(x, y, mask=torch.ones(32, 32))
    assert torch.isnan(Qm.ssim(x, y, mask=torch.zeros(64, 64))).all()


def test_authors_norms_by_hand():
    x = torch.full((1, 3, 10, 10), 0.5)
    eps = 16 / 255
    # every pixel moved by exactly eps in every channel: l0 = 1, l1 = 1, linf = 16, l2 = eps * sqrt(300)
    n = Qm.perturbation_norms(x, x + eps * signs(x.shape), eps=eps)
    assert n["l0"].item() == 1.0
    assert n["l1"].item() == pytest.approx(1.0, rel=1e-5)
    assert n["linf_255"].item() == pytest.approx(16.0, rel=1e-5)
    assert n["l2"].item() == pytest.approx(eps * math.sqrt(300), rel=1e-5)
    # 5 of 100 pixels changed, in one channel only, by 2/255
    y = x.clone()
    y[0, 1, 0, :5] += 2 / 255
    n = Qm.perturbation_norms(x, y, eps=eps)
    assert n["l0"].item() == pytest.approx(0.05)
    assert n["l1"].item() == pytest.approx(5 * (2 / 255) / (300 * eps), rel=1e-5)
    assert n["linf_255"].item() == pytest.approx(2.0, rel=1e-5)
    assert Qm.perturbation_norms(x, y, tol=3 / 255)["l0"].item() == 0.0
    assert "l1" not in Qm.perturbation_norms(x, y)


def test_canvas_quality_table():
    x = rand_images()
    y = x + (4 / 255) * signs(x.shape)
    df = Qm.canvas_quality(x, y, eps=8 / 255, names=["a", "b", "c"], mask=torch.ones(32, 32))
    assert list(df["image"]) == ["a", "b", "c"]
    assert set(df.columns) >= {"ssim", "psnr", "ssim_masked", "l0", "l1", "l2", "linf_255"}
    np.testing.assert_allclose(df["l1"], 0.5, rtol=1e-5)
    np.testing.assert_allclose(df["ssim_masked"], df["ssim"], rtol=1e-6)
    s = Qm.summarise_quality(Qm.canvas_quality(x, torch.cat([x[:1], y[1:]])))
    assert s.loc["psnr", "n_identical"] == 1 and s.loc["psnr", "n"] == 2
    assert s.loc["psnr", "mean"] == pytest.approx(20 * math.log10(255 / 4), rel=1e-4)


def test_full_images_of_different_sizes_keep_order_and_match_batched():
    rng = np.random.default_rng(3)
    sizes = [(40, 50), (30, 30), (40, 50), (64, 20)]
    clean = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    prot = [np.clip(c.astype(int) + rng.integers(-6, 7, c.shape), 0, 255).astype(np.uint8) for c in clean]
    prot[1] = clean[1].copy()
    df = Qm.full_image_quality(clean, prot, names=list("abcd"), max_batch_pixels=2500)
    assert list(df["image"]) == list("abcd")
    assert list(zip(df["height"], df["width"])) == sizes
    assert df["ssim"].iloc[1] == 1.0 and np.isinf(df["psnr"].iloc[1])
    for i in (0, 2, 3):
        assert df["ssim"].iloc[i] == pytest.approx(Qm.ssim(clean[i], prot[i]).item(), abs=1e-6)
        assert df["psnr"].iloc[i] == pytest.approx(Qm.psnr(clean[i], prot[i]).item(), rel=1e-6)
    with pytest.raises(ValueError, match="b: clean .* differ in size"):
        Qm.full_image_quality(clean[:2], [prot[0], prot[0]], names=["a", "b"])
