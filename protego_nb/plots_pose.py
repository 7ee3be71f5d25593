"""Figures for notebook 06 (pose study): the pose sanity check and recall vs yaw per method.

Every ``fig_*`` function returns a matplotlib figure (save it with :func:`protego_nb.report.savefig`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .evaluate import pose as P


def _plt():
    import matplotlib.pyplot as plt

    return plt


def fig_pose_sanity(
    canvases: Sequence[np.ndarray], vertices: np.ndarray, poses: pd.DataFrame, n: int = 6, length: float = 45.0
):
    """Top row: the ``n`` canvases spanning the yaw range (most negative to most positive), each with its
    head frame drawn from the nose tip (red: left-to-right axis ``a``, green: down axis ``d``, blue: the
    nose direction ``-f`` projected on the image) and its (yaw, pitch, roll). Bottom row: histograms of
    yaw, pitch and roll over ``poses``, and ``yaw`` against notebook 01's ``yaw_axis``."""
    from .faces import mesh

    plt = _plt()
    ok = np.flatnonzero(np.isfinite(poses["yaw"].to_numpy(float)))
    order = ok[np.argsort(poses["yaw"].to_numpy(float)[ok])]
    pick = order[np.unique(np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int))]
    fig = plt.figure(figsize=(2.2 * max(n, 4), 5.2))
    gs = fig.add_gridspec(2, max(n, 4), height_ratios=[1.1, 1.0])
    for k, i in enumerate(pick):
        ax = fig.add_subplot(gs[0, k])
        ax.imshow(canvases[i])
        v = vertices[i]
        R = P.head_frame(v)
        o = v[mesh.NOSE_TIP, :2]
        for col, c, sign in ((0, "r", 1), (1, "g", 1), (2, "b", -1)):
            d = sign * R[:, col] * length
            ax.annotate("", xy=(o[0] + d[0], o[1] + d[1]), xytext=(o[0], o[1]),
                        arrowprops=dict(arrowstyle="->", color=c, lw=1.8))
        r = poses.iloc[i]
        ax.set_title(f"yaw {r.yaw:+.0f}  pitch {r.pitch:+.0f}\nroll {r.roll:+.0f}", fontsize=8)
        ax.axis("off")
    axes = [fig.add_subplot(gs[1, k]) for k in range(4)]
    for ax, col in zip(axes, P.POSE_COLUMNS):
        ax.hist(poses[col].dropna(), bins=30, color="0.5")
        ax.set_xlabel(f"{col} (deg)")
        ax.axvline(float(poses[col].median()), color="k", ls="--", lw=1)
    axes[0].set_ylabel("images")
    axes[3].scatter(poses["yaw_axis"], poses["yaw"], s=6)
    lim = float(np.nanmax(np.abs(poses[["yaw", "yaw_axis"]].to_numpy(float)))) + 2
    axes[3].plot([-lim, lim], [-lim, lim], "k:", lw=1)
    axes[3].set_xlabel("yaw, notebook 01 (deg)")
    axes[3].set_ylabel("yaw, head frame (deg)")
    fig.tight_layout()
    return fig


def fig_recall_vs_yaw(
    table: pd.DataFrame,
    models: Sequence[str],
    scenarios: Sequence[str],
    methods: Sequence[str],
    value: str = "recall",
    intruder: str | None = None,
    xlabel: str = "|yaw| of the query (deg), bin mean",
):
    """Recall (%) per ``|yaw|`` bin with its 95% user-bootstrap interval: one panel per (scenario, model),
    one line per method, x at the mean ``|yaw|`` of the bin's queries, tick labels with the query counts.
    ``table`` from :func:`protego_nb.evaluate.pose.recall_by_bin`."""
    plt = _plt()
    t = table[table["bin"] != "all"]
    fig, axes = plt.subplots(len(scenarios), len(models), figsize=(3.4 * len(models), 2.7 * len(scenarios)),
                             squeeze=False, sharex=True, sharey=True)
    for r, sc in enumerate(scenarios):
        for c, model in enumerate(models):
            ax = axes[r, c]
            for j, m in enumerate(methods):
                s = t[(t["model"] == model) & (t["scenario"] == sc) & (t["method"] == m)]
                if s.empty:
                    continue
                x = s["mean_abs_yaw"].to_numpy(float) + (j - (len(methods) - 1) / 2) * 0.8
                y = s[value].to_numpy(float)
                err = np.stack([y - s["ci_lo"].to_numpy(float), s["ci_hi"].to_numpy(float) - y])
                ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", ms=4, capsize=3, label=m)
            s0 = t[(t["model"] == model) & (t["scenario"] == sc)].drop_duplicates("bin")
            ax.set_xticks(s0["mean_abs_yaw"].to_numpy(float))
            ax.set_xticklabels([f"{b}\nn={n}" for b, n in zip(s0["bin"], s0["n_queries"])], fontsize=7)
            role = "black-box" if model == intruder else "white-box"
            ax.set_title(f"{sc} · {model} ({role})", fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{value}@K (%)")
            if r == len(scenarios) - 1:
                ax.set_xlabel(xlabel)
            ax.set_ylim(-3, 103)
    axes[0, -1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
