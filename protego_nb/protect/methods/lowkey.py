"""**LowKey-style** (Cherepanova et al., "LowKey: Leveraging Adversarial Attacks to Protect Social Media
Users from Facial Recognition", ICLR 2021), :func:`lowkey_protect`: a per-image untargeted attack
maximising the mean over the ensemble of ``||f(x') - f(x)||^2 / ||f(x)||^2``, each model also fed a
Gaussian-smoothed copy (``kornia.filters.gaussian_blur2d``, kernel 7, sigma 3; its clean target is the
model's embedding of the smoothed clean image, as LowKey's ``get_ensemble(..., combination=True)``).
Signed steps of 0.0025 for 50 iterations from Gaussian init noise of std 0.005. **LPIPS is not available
offline here, so LowKey's ``- c_sim * LPIPS`` penalty is replaced by the per-image SSIM hinge with the
dynamic weight**, and the L-inf bound ``eps`` (which LowKey's ``lpips`` mode does not use) is enforced.

The common budget (L-inf bound and SSIM floor) and the per-image methods' "best iterate at the floor" rule: see
:mod:`protego_nb.protect.methods`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn as nn

from .. import losses
from ..ssim import per_image_ssim
from ..train import as_model_dict
from .common import check_budget, check_faces, linf_box, progress_bar

# ---------------------------------------------------------------------------------------- LowKey
#: LowKey's published settings (``util/attack_utils.py``, ``app.py``).
LOWKEY_DEFAULTS = {"steps": 50, "lr": 0.0025, "init_noise": 0.005, "blur_kernel": 7, "blur_sigma": 3.0}


def lowkey_distance(x_adv: torch.Tensor, lm: torch.Tensor, clean: list, blur: Callable) -> torch.Tensor:
    """``[B]`` mean over (model, plain/smoothed) of ``||f(x') - t||^2 / ||t||^2``; ``clean`` holds ``(f, t, t_blur)``."""
    xa_b = blur(x_adv)
    d = x_adv.new_zeros(x_adv.shape[0])
    for mdl, t, tb in clean:
        d = d + ((mdl(x_adv, lm) - t) ** 2).sum(1) / (t**2).sum(1).clamp_min(1e-12)
        d = d + ((mdl(xa_b, lm) - tb) ** 2).sum(1) / (tb**2).sum(1).clamp_min(1e-12)
    return d / (2 * len(clean))


def lowkey_protect(
    faces,
    surrogates: Mapping[str, nn.Module],
    eps: float = 16 / 255,
    min_ssim: float = 0.95,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    *,
    steps: int = LOWKEY_DEFAULTS["steps"],
    lr: float = LOWKEY_DEFAULTS["lr"],
    init_noise: float = LOWKEY_DEFAULTS["init_noise"],
    blur_kernel: int = LOWKEY_DEFAULTS["blur_kernel"],
    blur_sigma: float = LOWKEY_DEFAULTS["blur_sigma"],
    batch_size: int = 16,
    progress: bool = False,
    return_info: bool = False,
):
    """LowKey-style protected canvases ``[N, 3, H, W]`` (CPU; see the module docstring).

    ``kind="per_image"`` method entry point. LPIPS is replaced by the per-image SSIM hinge
    ``w_i * max(min_ssim - SSIM_i, 0)`` (``w_i`` per image by the dynamic rule), and ``x'`` is kept in the
    L-inf box. With ``return_info`` returns ``(protected, info)`` with the ensemble distance of the
    returned images (``dist``, ``[N]``, 0 for clean) and their SSIM.
    """
    import kornia.filters

    check_budget(eps, min_ssim)
    if steps < 0 or lr <= 0 or init_noise < 0 or batch_size < 1:
        raise ValueError(
            f"steps {steps} must be >= 0, lr {lr} > 0, init_noise {init_noise} >= 0, batch_size {batch_size} >= 1"
        )
    x_all, lm_all = faces.x, faces.lm
    check_faces(x_all, lm_all, "LowKey")
    models = as_model_dict(surrogates)
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = int(x_all.shape[0])
    ksize, sig = (int(blur_kernel), int(blur_kernel)), (float(blur_sigma), float(blur_sigma))

    def blur(t: torch.Tensor) -> torch.Tensor:
        return kornia.filters.gaussian_blur2d(t, ksize, sig)

    out = torch.empty_like(x_all)
    dist_best, ssim_best = torch.empty(n), torch.empty(n)
    pbar = progress_bar(n, "LowKey", progress)
    for s0 in range(0, n, batch_size):
        sl = slice(s0, min(s0 + batch_size, n))
        x = x_all[sl].to(device)
        lm = lm_all[sl].to(device=device, dtype=torch.float32)
        b = x.shape[0]
        lo, hi = linf_box(x, eps)
        with torch.no_grad():
            xb = blur(x)
            clean = [(mdl, mdl(x, lm), mdl(xb, lm)) for mdl in models.values()]

        x_adv = torch.minimum(
            torch.maximum(x + init_noise * torch.randn(x.shape, generator=gen).to(device), lo), hi
        )
        weights = [losses.DynamicSSIMWeight(floor=min_ssim) for _ in range(b)]
        best, best_d = x.clone(), torch.zeros(b, device=device)
        for it in range(steps + 1):
            x_adv = x_adv.detach().requires_grad_(True)
            d = lowkey_distance(x_adv, lm, clean, blur)
            with torch.no_grad():
                s = per_image_ssim(x_adv, x)
                ok = (s >= min_ssim) & (d > best_d)
                best[ok] = x_adv[ok].detach()
                best_d = torch.where(ok, d.detach(), best_d)
            if it == steps:
                break
            loss = -d.sum()
            below = s <= min_ssim
            if bool(below.any()):
                sel = below.nonzero().flatten()
                w = torch.tensor([weights[int(i)].weight for i in sel], device=device, dtype=x.dtype)
                loss = loss + (w * torch.clamp(min_ssim - per_image_ssim(x_adv[sel], x[sel]), min=0)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            for i in range(b):
                weights[i].update(float(s[i]))
            with torch.no_grad():
                x_adv = torch.minimum(torch.maximum(x_adv - lr * torch.sign(grad), lo), hi)
        out[sl] = best.detach().cpu()
        dist_best[sl] = best_d.detach().cpu()
        ssim_best[sl] = per_image_ssim(best, x).detach().cpu()
        pbar.update(b)
    pbar.close()
    if return_info:
        return out, {"dist": dist_best, "ssim": ssim_best, "steps": steps, "lr": lr}
    return out
