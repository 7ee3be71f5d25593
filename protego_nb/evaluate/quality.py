"""Visual quality of protected images: SSIM, PSNR and the authors' perturbation norms, per image.

* **SSIM** - the project's one SSIM (:func:`protego_nb.protect.ssim.ssim_map`: ``kornia.metrics.ssim`` with an
  11-tap Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03`` (Wang et al., IEEE TIP 2004),
  ``padding="valid"`` and ``eps = 0``: the settings of ``pytorch_msssim.ssim`` that the authors used), averaged
  over channels and pixels. An optional mask
  restricts the average to, e.g., the face region (the authors' SSIM over the whole crop lets the
  untouched background inflate it, ``reference/protego_method.md`` section 7.4).
* **PSNR** - ``kornia.metrics.psnr`` applied per image (``torch.vmap``), ``10 log10(R^2 / MSE)`` over all
  pixels and channels; identical images give ``inf``.
* **Norms** (the authors' ``utils.py`` definitions, section 2 of the reference), with ``d = protected -
  clean`` in [0, 1] units: ``l0`` = fraction of pixels changed in any channel; ``l1`` =
  ``sum |d| / (3 H W eps)`` (the mean perturbation as a fraction of the budget; needs ``eps``);
  ``linf_255`` = ``255 max |d|``. The authors also report an ``"l2"`` that is ``sum sqrt(d^2)``, i.e. an
  un-normalised L1 sum; it is *not* reproduced. ``l2`` here is the true Euclidean norm ``||d||_2``.

Images are ``[B, 3, H, W]`` float tensors in [0, 1], or uint8 / float arrays ``[B, H, W, 3]`` (or a
single ``[H, W, 3]``); uint8 is divided by 255. Canvases come in batches; full-resolution images of
different sizes go through :func:`full_image_quality`, which batches equal sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import kornia.metrics
import numpy as np
import pandas as pd
import torch

from ..protect.ssim import WINDOW, ssim_map


def to_tensor(x: torch.Tensor | np.ndarray, name: str = "image") -> torch.Tensor:
    """``[B, C, H, W]`` float in [0, 1] from a tensor (``[B,C,H,W]`` / ``[C,H,W]``) or array (``[B,H,W,C]`` / ``[H,W,C]``)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.ndim == 3:
            t = t.unsqueeze(0)
        if t.ndim != 4:
            raise ValueError(f"{name}: expected a tensor [B, C, H, W], got shape {tuple(x.shape)}")
    else:
        a = np.asarray(x)
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4:
            raise ValueError(f"{name}: expected an array [B, H, W, C] or [H, W, C], got shape {np.shape(x)}")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2)
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if not t.is_floating_point():
        raise ValueError(f"{name}: expected uint8 or float pixels, got {t.dtype}")
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _pair(clean, protected) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = to_tensor(clean, "clean"), to_tensor(protected, "protected")
    if a.shape != b.shape:
        raise ValueError(f"clean and protected images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    b = b.to(a.device)
    dtype = torch.promote_types(a.dtype, b.dtype)
    return a.to(dtype), b.to(dtype)


def ssim(
    clean: torch.Tensor | np.ndarray,
    protected: torch.Tensor | np.ndarray,
    mask: torch.Tensor | np.ndarray | None = None,
    window_size: int = WINDOW,
    data_range: float = 1.0,
) -> torch.Tensor:
    """Per-image SSIM ``[B]`` (see the module docstring).

    ``mask`` (``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]``, nonzero = inside) averages the SSIM map only
    where the mask is set; with valid padding the map is ``window_size // 2`` pixels smaller on each
    side, and so is the mask. An image whose mask is empty there gets NaN.
    """
    a, b = _pair(clean, protected)
    H, W = a.shape[-2:]
    smap = ssim_map(a, b, window_size, data_range)
    if mask is None:
        return smap.mean(dim=(1, 2, 3))
    m0 = mask.detach() if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
    ok = m0.ndim in (2, 3, 4) and tuple(m0.shape[-2:]) == (H, W) and (m0.ndim != 4 or m0.shape[1] == 1)
    m = m0.to(smap.device).reshape(-1, 1, H, W) if ok else None
    if m is None or m.shape[0] not in (1, a.shape[0]):
        raise ValueError(f"mask must be [H, W], [B, H, W] or [B, 1, H, W] with B, H, W = {a.shape[0]}, {H}, {W}; "
                         f"got {tuple(m0.shape)}")
    p = window_size // 2
    m = (m[..., p : H - p, p : W - p] != 0).to(smap.dtype).expand(a.shape[0], 1, H - 2 * p, W - 2 * p)
    num = (smap * m).sum(dim=(1, 2, 3))
    den = m.sum(dim=(1, 2, 3)) * smap.shape[1]
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(num, torch.nan))


def psnr(
    clean: torch.Tensor | np.ndarray, protected: torch.Tensor | np.ndarray, data_range: float = 1.0
) -> torch.Tensor:
    """Per-image PSNR ``[B]`` in dB (``inf`` for identical images)."""
    a, b = _pair(clean, protected)
    return torch.vmap(lambda x, y: kornia.metrics.psnr(x, y, float(data_range)))(a, b)


def perturbation_norms(
    clean: torch.Tensor | np.ndarray,
    protected: torch.Tensor | np.ndarray,
    eps: float | None = None,
    tol: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The authors' L0 / L1 / L-inf per image, plus the true L2 (module docstring).

    ``tol``: a pixel counts as changed for ``l0`` when some channel moves by more than ``tol`` (0 =
    any change; use e.g. ``0.5 / 255`` for float images that went through uint8). ``l1`` is only
    returned when ``eps`` (the L-inf budget in [0, 1] units) is given.
    """
    a, b = _pair(clean, protected)
    d = b - a
    ad = d.abs()
    B, C, H, W = d.shape
    out = {
        "l0": (ad > tol).any(dim=1).flatten(1).float().mean(1),
        "l2": d.flatten(1).norm(dim=1),
        "linf_255": ad.flatten(1).amax(1) * 255.0 if d.numel() else torch.zeros(B),
    }
    if eps is not None:
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        out["l1"] = ad.flatten(1).sum(1) / (C * H * W * eps)
    return out


def canvas_quality(
    clean: torch.Tensor | np.ndarray,
    protected: torch.Tensor | np.ndarray,
    eps: float | None = None,
    mask: torch.Tensor | np.ndarray | None = None,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per canvas: ``ssim``, ``psnr``, ``l0``, ``l2``, ``linf_255``, ``l1`` (with ``eps``) and
    ``ssim_masked`` (with ``mask``, e.g. the face's visibility mask)."""
    a, b = _pair(clean, protected)
    cols: dict[str, torch.Tensor] = {"ssim": ssim(a, b), "psnr": psnr(a, b)}
    if mask is not None:
        cols["ssim_masked"] = ssim(a, b, mask=mask)
    cols.update(perturbation_norms(a, b, eps=eps))
    df = pd.DataFrame({k: v.detach().cpu().double().numpy() for k, v in cols.items()})
    if names is not None:
        if len(names) != len(df):
            raise ValueError(f"{len(names)} names for {len(df)} images")
        df.insert(0, "image", list(names))
    return df


def full_image_quality(
    clean_images: Sequence[torch.Tensor | np.ndarray],
    protected_images: Sequence[torch.Tensor | np.ndarray],
    names: Sequence[str] | None = None,
    max_batch_pixels: int = 2**24,
) -> pd.DataFrame:
    """SSIM and PSNR of full-resolution images (``[H, W, 3]`` arrays or ``[3, H, W]`` tensors, any sizes).

    Images of equal size are evaluated together, in batches of at most ``max_batch_pixels`` pixels.
    Rows keep the input order; ``width`` and ``height`` are reported. A pair whose sizes differ raises a
    ValueError naming it.
    """
    if len(clean_images) != len(protected_images):
        raise ValueError(f"{len(clean_images)} clean images but {len(protected_images)} protected images")
    n = len(clean_images)
    names = [str(i) for i in range(n)] if names is None else list(names)
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} images")
    tens_a, tens_b = [], []
    for i in range(n):
        a, b = to_tensor(clean_images[i], f"clean {names[i]}"), to_tensor(protected_images[i], f"protected {names[i]}")
        if a.shape != b.shape:
            raise ValueError(f"{names[i]}: clean {tuple(a.shape[1:])} and protected {tuple(b.shape[1:])} differ in size")
        tens_a.append(a[0])
        tens_b.append(b[0])
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, t in enumerate(tens_a):
        groups.setdefault(tuple(t.shape), []).append(i)
    s_out, p_out = np.full(n, np.nan), np.full(n, np.nan)
    for shape, idx in groups.items():
        per = max(1, max_batch_pixels // (shape[1] * shape[2]))
        for s in range(0, len(idx), per):
            chunk = idx[s : s + per]
            a = torch.stack([tens_a[i] for i in chunk])
            b = torch.stack([tens_b[i] for i in chunk])
            try:
                s_out[chunk] = ssim(a, b).double().cpu().numpy()
            except ValueError as e:
                raise ValueError(f"{names[chunk[0]]}: {e}") from None
            p_out[chunk] = psnr(a, b).double().cpu().numpy()
    return pd.DataFrame({
        "image": names,
        "height": [t.shape[1] for t in tens_a],
        "width": [t.shape[2] for t in tens_a],
        "ssim": s_out,
        "psnr": p_out,
    })


def summarise_quality(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max of every numeric metric column over images.

    PSNR statistics are over the images that changed (finite PSNR); ``n_identical`` counts the others.
    """
    skip = {"height", "width"}
    rows = {}
    for c in df.columns:
        if c in skip or not pd.api.types.is_numeric_dtype(df[c]):
            continue
        v = df[c].to_numpy(dtype=float)
        finite = v[np.isfinite(v)]
        rows[c] = {
            "mean": finite.mean() if len(finite) else np.nan,
            "std": finite.std(ddof=1) if len(finite) > 1 else np.nan,
            "min": finite.min() if len(finite) else np.nan,
            "max": finite.max() if len(finite) else np.nan,
            "n": len(finite),
        }
    out = pd.DataFrame(rows).T
    out["n"] = out["n"].astype(int)
    if "psnr" in df.columns:
        out["n_identical"] = 0
        out.loc["psnr", "n_identical"] = int(np.isposinf(df["psnr"].to_numpy(dtype=float)).sum())
    return out
