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


def detection_outcomes(counts: dict, notes: dict, n_images: int):
    """Bars of detection failures and notes by reason over ``n_images`` images."""
    return bar_counts({**{f"fail: {k}": v for k, v in counts.items()}, **{f"note: {k}": v for k, v in notes.items()}},
                      title=f"detection outcome over {n_images} LFW images")


def verification_roc(rocs: dict, accuracy, n_pairs: int):
    """ROC curves ``{model: (fpr, tpr, auc)}`` on a log false-accept axis; ``accuracy[model]`` in % in the legend."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, (fpr, tpr, auc) in rocs.items():
        ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.4f}, acc {accuracy[name]:.2f}%)")
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"LFW verification, {n_pairs} pairs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def texture_panel(texture, eps: float, title: str = ""):
    """One UV-space texture (:func:`texture_image`: grey = 0) in a small square figure."""
    fig, ax = plt.subplots(1, 1, figsize=(3.2, 3.2))
    ax.imshow(texture_image(texture, eps))
    ax.set_title(title)
    ax.axis("off")
    return fig


def cohesion_bars(coh, models: Sequence[str]):
    """Mean within-user cosine per state (clean first), one panel per model; ``coh`` indexed by (model, state)."""
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.2), squeeze=False)
    for ax, name in zip(axes[0], models):
        sub = coh.loc[name]
        ax.bar(sub.index, sub["within"], color=["#888"] + ["#4c72b0"] * (len(sub) - 1))
        ax.set_title(f"{name}: mean within-user cosine")
        ax.set_ylim(min(0, sub["within"].min()) - 0.05, 1)
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def umap_embeddings(emb: dict, name: str, methods: Sequence[str], users: Sequence[str], n_neighbors: int, seed: int):
    """UMAP (cosine) of one model's clean and protected embeddings ``emb[(name, state)][user]``; a panel per method."""
    import umap

    colours = plt.cm.tab20(np.linspace(0, 1, max(len(users), 2)))
    states = ["clean"] + list(methods)
    X = np.concatenate([emb[(name, s)][u] for s in states for u in users])
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    tags = [(s, u) for s in states for u in users for _ in range(len(emb[(name, s)][u]))]
    Y = umap.UMAP(n_neighbors=min(n_neighbors, len(X) - 1), metric="cosine", random_state=seed).fit_transform(X)
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        for k, u in enumerate(users):
            c = [i for i, t in enumerate(tags) if t == ("clean", u)]
            p = [i for i, t in enumerate(tags) if t == (m, u)]
            ax.scatter(Y[c, 0], Y[c, 1], s=10, color=colours[k], alpha=0.35, marker="o")
            ax.scatter(Y[p, 0], Y[p, 1], s=22, color=colours[k], marker="x", label=u if m == methods[0] else None)
        ax.set_title(f"{m} ({name}); o clean, x protected")
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].legend(fontsize=6, loc="best")
    fig.tight_layout()
    return fig


def ablation_bars(abl, intruder: str, white_box: str):
    """Per ablation: black- and white-box 2a recall (bars, clean 1b dashed), and black-box 2a against SSIM."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    x = np.arange(len(abl))
    axes[0].bar(x - 0.2, abl["bb_2a"], 0.4, label=f"black-box {intruder} 2a")
    axes[0].bar(x + 0.2, abl["wb_2a"], 0.4, label=f"white-box {white_box} 2a")
    axes[0].axhline(abl["bb_1b"].iloc[0], color="k", lw=0.8, ls="--", label="black-box 1b (clean)")
    axes[0].set_xticks(x)
    axes[0].set_xticklabels(abl.index, rotation=45, ha="right")
    axes[0].set_ylabel("recall@K (%)")
    axes[0].legend(fontsize=7)
    axes[1].scatter(abl["ssim"], abl["bb_2a"])
    for name, row in abl.iterrows():
        axes[1].annotate(name, (row["ssim"], row["bb_2a"]), fontsize=7)
    axes[1].set_xlabel("mean SSIM")
    axes[1].set_ylabel("black-box 2a recall (%)")
    fig.tight_layout()
    return fig


def coverage_curves(coverage: dict, fractions: Sequence[float]):
    """Recall against the protected fraction of the gallery, clean and protected queries; ``coverage[method][scenario]``."""
    from .evaluate.retrieval import Scenario

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, qk in zip(axes, (1, 2)):
        for m, row in coverage.items():
            ax.plot(fractions, [row[Scenario(qk == 2, float(c)).name] for c in fractions], marker="o", label=m)
        ax.set_title(["", "clean query", "protected query"][qk])
        ax.set_xlabel("fraction of gallery protected")
    axes[0].set_ylabel("recall@K (%)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig
