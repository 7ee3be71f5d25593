"""Diagnostics of black-box transfer: does a protection move a user's photos together or apart?

:func:`shift_decomposition` splits the embedding change of each protected photo, ``delta_i = z'_i - z_i`` with
``z`` and ``z'`` the clean and protected embeddings **L2-normalised onto the unit sphere** (the geometry
cosine retrieval sees; the raw norms of different models are not comparable), into the user's mean change
``m = mean_i delta_i`` (the *common* shift: the whole cluster translated) and the per-image residual
``r_i = delta_i - m`` (the *scatter*). Exactly ``mean_i |delta_i|^2 = |m|^2 + mean_i |r_i|^2``, so
``common_fraction = |m|^2 / mean_i |delta_i|^2`` in ``[0, 1]`` says which part dominates. A texture that moves
every photo the same way (``common_fraction`` near 1) can move them far from their clean versions (1a/2b fall)
and still leave protected photos finding each other (2a stays high); scenario 2a needs the residual.
Also reported: the mean within-user pairwise cosine of the clean and of the protected embeddings (the
"dense cluster" of notebook 03) and the mean cosine of each protected photo to its own clean one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["SHIFT_KEYS", "shift_by_user", "shift_decomposition"]

#: Keys of :func:`shift_decomposition`'s result (besides ``n``).
SHIFT_KEYS = (
    "shift_rms",
    "common_norm",
    "residual_rms",
    "common_fraction",
    "cos_to_clean",
    "within_cos_clean",
    "within_cos_protected",
)


def _unit(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("embeddings contain NaN or inf")
    return z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)


def _within(z: np.ndarray) -> float:
    n = len(z)
    if n < 2:
        return float("nan")
    g = z @ z.T
    return float((g.sum() - np.trace(g)) / (n * (n - 1)))


def shift_decomposition(clean: np.ndarray, protected: np.ndarray) -> dict[str, float]:
    """Common vs per-image embedding change of one user's photos under one model (rows paired by photo).

    ``clean``, ``protected``: ``[N, D]`` raw embeddings (normalised here). Returns ``n`` and, on the unit
    sphere: ``shift_rms`` ``sqrt(mean |delta_i|^2)``, ``common_norm`` ``|m|``, ``residual_rms``
    ``sqrt(mean |r_i|^2)``, ``common_fraction`` ``|m|^2 / mean |delta_i|^2`` (NaN when nothing moved),
    ``cos_to_clean`` ``mean cos(z'_i, z_i)``, ``within_cos_clean`` / ``within_cos_protected`` (mean pairwise
    cosine between two different photos; NaN for one photo).
    """
    zc, zp = _unit(clean), _unit(protected)
    if zc.shape != zp.shape:
        raise ValueError(f"clean and protected embeddings must pair up, got {zc.shape} and {zp.shape}")
    if len(zc) == 0:
        raise ValueError("no embeddings")
    delta = zp - zc
    m = delta.mean(0)
    r = delta - m
    ms_delta = float((delta**2).sum(1).mean())
    common2 = float((m**2).sum())
    return {
        "n": int(len(zc)),
        "shift_rms": ms_delta**0.5,
        "common_norm": common2**0.5,
        "residual_rms": float((r**2).sum(1).mean()) ** 0.5,
        "common_fraction": common2 / ms_delta if ms_delta > 1e-24 else float("nan"),
        "cos_to_clean": float((zp * zc).sum(1).mean()),
        "within_cos_clean": _within(zc),
        "within_cos_protected": _within(zp),
    }


def shift_by_user(
    clean: Mapping[str, np.ndarray], protected: Mapping[str, np.ndarray], users: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, float]]:
    """:func:`shift_decomposition` per user: ``clean`` / ``protected`` map image ids to embeddings ``[D]``,
    ``users`` maps each user to their image ids (ids missing from either map are skipped)."""
    out = {}
    for user, ids in users.items():
        keep = [i for i in ids if i in clean and i in protected]
        if not keep:
            raise ValueError(f"user {user!r}: none of their images has both a clean and a protected embedding")
        out[user] = shift_decomposition(np.stack([clean[i] for i in keep]), np.stack([protected[i] for i in keep]))
    return out
