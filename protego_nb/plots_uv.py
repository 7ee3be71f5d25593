"""Figures and small analyses for notebook 01_uv_exploration (mesh, UV maps, textures, coverage).

Every ``fig_*`` function returns a matplotlib figure (save it with :func:`protego_nb.report.savefig`);
the analysis helpers return plain numbers so the notebook can store them in its results JSON.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .faces import mesh as _mesh
from .faces import uv as _uv


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _grid(n: int, ncols: int, panel: float = 2.2):
    plt = _plt()
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel * ncols, panel * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    return fig, axes


def composite(canvas: np.ndarray, layer: torch.Tensor, vis: torch.Tensor, alpha: float = 0.65) -> np.ndarray:
    """Blend a warped texture ``[3, H, W]`` over a ``uint8 [H, W, 3]`` canvas where ``vis [1, H, W]`` is 1."""
    img = canvas.astype(np.float32) / 255
    lay = layer.detach().cpu().permute(1, 2, 0).numpy()
    a = alpha * vis.detach().cpu()[0].numpy()[..., None]
    return np.clip(img * (1 - a) + lay * a, 0, 1)


def uv_to_rgb(uvmap: _uv.UVMap, i: int) -> np.ndarray:
    """UV map ``i`` as colours: red = u, green = v (both in [0, 1]), blue = 0.3 on the face; black elsewhere."""
    g = (uvmap.uv[i].detach().cpu().numpy() + 1) / 2
    vis = uvmap.vis[i, 0].detach().cpu().numpy()[..., None]
    rgb = np.concatenate([g, np.full_like(g[..., :1], 0.3)], -1)
    return np.clip(rgb, 0, 1) * vis


def fig_mesh_overlay(canvases: np.ndarray, vertices: np.ndarray, idx: Sequence[int], titles=None, ncols: int = 4):
    """Canvases with the 880-triangle mesh drawn over them (vertex colour = depth)."""
    _, tri = _mesh.load_tables()
    fig, axes = _grid(len(idx), ncols, panel=2.6)
    for k, i in enumerate(idx):
        ax = axes.ravel()[k]
        ax.imshow(canvases[i])
        v = vertices[i]
        if np.isfinite(v).all():
            ax.triplot(v[:, 0], v[:, 1], tri, lw=0.25, color="white", alpha=0.8)
            ax.scatter(v[:, 0], v[:, 1], c=v[:, 2], s=1.2, cmap="viridis")
        ax.set_title(titles[k] if titles is not None else f"#{i}", fontsize=8)
    fig.suptitle("468-point MediaPipe mesh on 224x224 canvases (dots: depth z, dark = near)", fontsize=9)
    fig.tight_layout()
    return fig


def fig_uv_maps(canvases: np.ndarray, uvmap: _uv.UVMap, idx: Sequence[int], titles=None):
    """Three rows per image set: the canvas, its UV map (red = u, green = v) and its visibility mask."""
    plt = _plt()
    n = len(idx)
    fig, axes = plt.subplots(3, n, figsize=(2.2 * n, 6.8), squeeze=False)
    for k, i in enumerate(idx):
        axes[0, k].imshow(canvases[i])
        axes[0, k].set_title(titles[k] if titles is not None else f"#{i}", fontsize=8)
        axes[1, k].imshow(uv_to_rgb(uvmap, i))
        axes[2, k].imshow(uvmap.vis[i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2, k].set_title(f"visible {float(uvmap.vis[i].mean()):.1%}", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("canvas", fontsize=9)
    axes[1, 0].set_ylabel("UV (R = u, G = v)", fontsize=9)
    axes[2, 0].set_ylabel("visibility", fontsize=9)
    fig.tight_layout()
    return fig


def fig_textures(textures: dict[str, torch.Tensor], legend: dict[str, tuple] | None = None):
    """The textures in UV space (u right, v down), with the canonical mesh drawn on top."""
    plt = _plt()
    uv468, tri = _mesh.load_tables()
    fig, axes = plt.subplots(1, len(textures), figsize=(3.6 * len(textures), 3.8), squeeze=False)
    for ax, (name, tex) in zip(axes[0], textures.items()):
        t = tex[0].detach().cpu().permute(1, 2, 0).numpy()
        s = t.shape[0] - 1
        ax.imshow(t, extent=(-0.5 / s, 1 + 0.5 / s, 1 + 0.5 / s, -0.5 / s))
        ax.triplot(uv468[:, 0], uv468[:, 1], tri, lw=0.2, color="k", alpha=0.35)
        ax.set_title(f"{name} texture (UV space)", fontsize=9)
        ax.set_xlabel("u")
        ax.set_ylabel("v")
    if legend:
        from matplotlib.patches import Patch

        handles = [Patch(color=c, label=k) for k, c in legend.items()]
        axes[0, -1].legend(handles=handles, fontsize=6, loc="lower right", framealpha=0.8)
    fig.tight_layout()
    return fig


def fig_textures_on_faces(
    canvases: np.ndarray,
    uvmap: _uv.UVMap,
    idx: Sequence[int],
    textures: dict[str, torch.Tensor],
    titles=None,
    alpha: float = 0.7,
):
    """Rows: the canvas, then each texture warped onto it (columns sorted as given, e.g. by yaw)."""
    plt = _plt()
    n, r = len(idx), 1 + len(textures)
    fig, axes = plt.subplots(r, n, figsize=(2.0 * n, 2.1 * r), squeeze=False)
    sub = uvmap[list(idx)]
    warped = {k: _uv.warp_texture(t.to(sub.uv.device), sub) for k, t in textures.items()}
    for k, i in enumerate(idx):
        axes[0, k].imshow(canvases[i])
        axes[0, k].set_title(titles[k] if titles is not None else f"#{i}", fontsize=7)
        for row, w in enumerate(warped.values(), start=1):
            axes[row, k].imshow(composite(canvases[i], w[k], sub.vis[k], alpha))
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for row, name in enumerate(["canvas", *textures], start=0):
        axes[row, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def fig_coverage(counts: torch.Tensor, n_images: int):
    """Where the texture is read: log-count of samples per texel, and the covered/never-covered mask."""
    plt = _plt()
    uv468, tri = _mesh.load_tables()
    c = counts.detach().cpu().numpy().astype(np.float64)
    s = c.shape[0] - 1
    ext = (-0.5 / s, 1 + 0.5 / s, 1 + 0.5 / s, -0.5 / s)
    fig, axes = plt.subplots(1, 2, figsize=(8.2, 4))
    im = axes[0].imshow(np.log10(1 + c), extent=ext, cmap="magma")
    fig.colorbar(im, ax=axes[0], fraction=0.046, label="log10(1 + samples)")
    axes[0].set_title(f"texel reads over {n_images} canvases", fontsize=9)
    axes[1].imshow(c > 0, extent=ext, cmap="gray", vmin=0, vmax=1)
    axes[1].triplot(uv468[:, 0], uv468[:, 1], tri, lw=0.2, color="tab:red", alpha=0.4)
    axes[1].set_title(f"ever sampled: {float((c > 0).mean()):.1%} of texels", fontsize=9)
    for ax in axes:
        ax.set_xlabel("u")
        ax.set_ylabel("v")
    fig.tight_layout()
    return fig


@dataclass
class YawFit:
    """Visible face area against head yaw: correlations and a quadratic fit ``frac ~ a + b yaw + c yaw^2``."""

    n: int
    pearson_abs_yaw: float  # Pearson r of visible fraction vs |yaw|
    spearman_abs_yaw: float
    coef: tuple[float, float, float]  # a, b, c
    r2: float


def visible_area_vs_yaw(yaw: np.ndarray, frac: np.ndarray) -> YawFit:
    """Correlate the visible fraction with |yaw| (scipy) and fit a quadratic in yaw (numpy least squares)."""
    from scipy import stats

    yaw, frac = np.asarray(yaw, float), np.asarray(frac, float)
    ok = np.isfinite(yaw) & np.isfinite(frac)
    yaw, frac = yaw[ok], frac[ok]
    if len(yaw) < 4:
        nan = float("nan")
        return YawFit(len(yaw), nan, nan, (nan, nan, nan), nan)
    c2, c1, c0 = np.polyfit(yaw, frac, 2)
    pred = np.polyval([c2, c1, c0], yaw)
    r2 = 1 - ((frac - pred) ** 2).sum() / max(((frac - frac.mean()) ** 2).sum(), 1e-12)
    return YawFit(
        len(yaw),
        float(stats.pearsonr(np.abs(yaw), frac).statistic),
        float(stats.spearmanr(np.abs(yaw), frac).statistic),
        (float(c0), float(c1), float(c2)),
        float(r2),
    )


def fig_vs_yaw(yaw: np.ndarray, panels: dict[str, tuple[np.ndarray, YawFit]]):
    """One scatter per panel: a per-image share (plotted in %) against estimated yaw, with its quadratic fit.

    ``panels``: y-axis label -> (values in [0, 1], :func:`visible_area_vs_yaw` fit of those values).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), squeeze=False)
    for ax, (label, (vals, fit)) in zip(axes[0], panels.items()):
        ax.scatter(yaw, 100 * np.asarray(vals), s=8, alpha=0.5)
        if np.isfinite(fit.r2):
            xs = np.linspace(np.nanmin(yaw), np.nanmax(yaw), 100)
            a, b, c = fit.coef
            ax.plot(xs, 100 * (a + b * xs + c * xs**2), color="tab:red", label=f"quadratic fit, R$^2$ = {fit.r2:.2f}")
            ax.legend(fontsize=8)
        ax.set_xlabel("estimated yaw (deg; + = nose to image right)")
        ax.set_ylabel(label)
        ax.set_title(f"n = {fit.n}, Pearson r(|yaw|, y) = {fit.pearson_abs_yaw:.2f}", fontsize=9)
    fig.tight_layout()
    return fig


def spread_by_yaw(yaw: np.ndarray, groups: Sequence[str], k: int) -> list[int]:
    """Pick ``k`` indices whose yaws span the observed range (quantiles), preferring distinct groups (identities).

    Returned in increasing yaw order; NaN yaws are never picked.
    """
    yaw = np.asarray(yaw, float)
    valid = np.where(np.isfinite(yaw))[0]
    if len(valid) == 0 or k <= 0:
        return []
    order = valid[np.argsort(yaw[valid])]
    targets = np.linspace(0, len(order) - 1, min(k, len(order)))
    chosen: list[int] = []
    used: set[str] = set()
    for t in targets:
        # nearest not-yet-chosen index to this quantile, from an unused identity when possible
        ranked = sorted(range(len(order)), key=lambda r: abs(r - t))
        pick = next((order[r] for r in ranked if order[r] not in chosen and groups[order[r]] not in used), None)
        if pick is None:
            pick = next((order[r] for r in ranked if order[r] not in chosen), None)
        if pick is None:
            break
        chosen.append(int(pick))
        used.add(groups[pick])
    return sorted(chosen, key=lambda i: yaw[i])
