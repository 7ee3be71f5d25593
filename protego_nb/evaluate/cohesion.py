"""The dense-cluster measure: how tightly one person's embeddings cluster (within) versus across people."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def cohesion(emb_by_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """How tightly a user's embeddings cluster: mean pairwise cosine *within* each user (off-diagonal),
    averaged over users, and mean cosine *between* different users' embeddings.

    The "dense cluster" of earlier protections is a high within-user cosine among protected images
    (they still match each other); Protego's log-det term aims to lower it.
    """
    within, normed = [], {}
    for u, e in emb_by_user.items():
        z = np.asarray(e, dtype=np.float64)
        z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
        normed[u] = z
        if len(z) > 1:
            g = z @ z.T
            within.append((g.sum() - np.trace(g)) / (len(z) * (len(z) - 1)))
    users = list(normed)
    between = [float((normed[a] @ normed[b].T).mean()) for i, a in enumerate(users) for b in users[i + 1 :]]
    return {
        "within": float(np.mean(within)) if within else float("nan"),
        "between": float(np.mean(between)) if between else float("nan"),
    }


def within_cosine(emb_by_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per user, the mean pairwise cosine between two different images of theirs (NaN for one image):
    the per-user numbers behind :func:`cohesion`'s ``within``, for paired comparisons across methods."""
    out = {}
    for u, e in emb_by_user.items():
        z = np.asarray(e, dtype=np.float64)
        z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
        g = z @ z.T
        out[u] = float((g.sum() - np.trace(g)) / (len(z) * (len(z) - 1))) if len(z) > 1 else float("nan")
    return out
