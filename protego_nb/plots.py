"""Figures shared by the notebooks (matplotlib/seaborn). Each returns a Figure; save it with
``report.savefig(fig, name, profile)``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

LANDMARK_COLOURS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00"]


def montage(
    images: Sequence[np.ndarray],
    landmarks: Sequence[np.ndarray] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 6,
    size: float = 1.8,
):
    """Grid of uint8/float RGB images, optionally with 5-point landmarks drawn."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(size * ncols, size * nrows + (0.25 * nrows if titles else 0))
    )
    axes = np.atleast_1d(axes).ravel()
    for ax in axes:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes[i]
        ax.imshow(img)
        if landmarks is not None and landmarks[i] is not None:
            pts = np.asarray(landmarks[i])
            ax.scatter(
                pts[:, 0], pts[:, 1], s=8, c=LANDMARK_COLOURS[: len(pts)], edgecolors="white", linewidths=0.4
            )
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def bar_counts(counts: dict, title: str = "", xlabel: str = "count", log: bool = False):
    """Horizontal bars for a ``{label: count}`` mapping (e.g. failures by reason)."""
    labels = list(counts) or ["(none)"]
    values = [counts[k] for k in counts] or [0]
    fig, ax = plt.subplots(figsize=(5, 0.35 * len(labels) + 1.0))
    ax.barh(labels, values, color="#4c72b0")
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    ax.set_xlabel(xlabel)
    if log:
        ax.set_xscale("log")
    ax.set_title(title)
    ax.invert_yaxis()
    fig.tight_layout()
    return fig


def images_per_identity_hist(counts: np.ndarray, title: str = "images per identity"):
    fig, ax = plt.subplots(figsize=(5, 3))
    bins = np.unique(np.round(np.logspace(0, np.log10(max(counts.max(), 2)), 30)).astype(int))
    ax.hist(counts, bins=bins, color="#4c72b0")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("images per identity")
    ax.set_ylabel("identities")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def loss_curves(history: dict, title: str = ""):
    """Per-term training curves from ``TrainResult.history`` (total, log-det and cosine per model, SSIM)."""
    steps = np.asarray(history.get("step", range(len(history["total"]))))
    terms = sorted(k for k in history if k.startswith(("logdet/", "cosine/")))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.3))
    axes[0].plot(steps, history["total"], color="k")
    axes[0].set_title("total loss")
    for k in terms:
        axes[1].plot(steps, history[k], label=k, lw=1)
    axes[1].set_title("per-model terms (log-det: -log det(G+cI); cosine: cos(clean, protected))")
    axes[1].legend(fontsize=6, ncol=2)
    axes[2].plot(steps, history["ssim"], label="SSIM (batch mean)")
    if "ssim_weight" in history:
        ax2 = axes[2].twinx()
        ax2.plot(steps, history["ssim_weight"], color="tab:red", lw=0.8, label="SSIM weight")
        ax2.set_yscale("log")
        ax2.set_ylabel("SSIM weight", color="tab:red")
    axes[2].set_title("SSIM and its hinge weight")
    for ax in axes:
        ax.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def texture_image(texture, eps: float) -> np.ndarray:
    """A PPT ``[1, 3, T, T]`` in ``[-eps, eps]`` as an RGB image (0.5 grey = zero)."""
    t = texture.detach().cpu()[0].permute(1, 2, 0).numpy()
    return np.clip(t / (2 * eps) + 0.5, 0, 1)


def before_after(clean, protected, titles=None, amplify: float = 5.0, eps: float | None = None):
    """Rows: clean canvas, protected canvas, amplified difference. ``clean``/``protected`` [N,3,H,W] in [0,1]."""
    c = clean.detach().cpu().permute(0, 2, 3, 1).numpy()
    p = protected.detach().cpu().permute(0, 2, 3, 1).numpy()
    n = len(c)
    fig, axes = plt.subplots(3, n, figsize=(1.9 * n, 6.0), squeeze=False)
    for i in range(n):
        d = np.clip((p[i] - c[i]) * amplify + 0.5, 0, 1)
        for r, img in enumerate((c[i], p[i], d)):
            axes[r, i].imshow(img)
            axes[r, i].axis("off")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=7)
    axes[0, 0].text(-10, 112, "clean", rotation=90, va="center", ha="right")
    axes[1, 0].text(-10, 112, "protected", rotation=90, va="center", ha="right")
    axes[2, 0].text(-10, 112, f"diff x{amplify:g}", rotation=90, va="center", ha="right")
    fig.tight_layout()
    return fig


def recall_bars(table, title: str = ""):
    """Grouped bars of recall (%) per scenario for each row (e.g. model/method) of a pivoted table."""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(table.columns) + 2), 3.4))
    n = len(table)
    width = 0.8 / max(n, 1)
    x = np.arange(len(table.columns))
    for i, (label, row) in enumerate(table.iterrows()):
        ax.bar(
            x + i * width - 0.4 + width / 2,
            row.values,
            width,
            label=" / ".join(map(str, np.atleast_1d(label))),
        )
    ax.set_xticks(x)
    ax.set_xticklabels(table.columns, rotation=0)
    ax.set_ylabel("recall@K (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7)
    ax.set_title(title)
    fig.tight_layout()
    return fig
