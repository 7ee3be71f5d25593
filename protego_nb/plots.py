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
