"""Similarity and rank metrics of face search: per query, how the true gallery entries rank.

Metrics per query (then averaged over the user's queries, then mean +- std over users):

* ``recall``: recall@K with K = number of true gallery entries (= R-precision), the paper's metric;
* ``top1``: whether the best-ranked gallery entry is a true entry;
* ``ap``: average precision, exactly ``sklearn.metrics.average_precision_score`` (mean over queries
  gives ``mAP``);
* ``recall@k``: fraction of the true entries among the top ``k`` (optional, for given ``k``).

Ties: ``recall``, ``top1`` and ``recall@k`` are the *expected* values when tied similarities are
ordered uniformly at random (McSherry & Najork, ECIR 2008, "Computing information retrieval
performance measures efficiently in the presence of tied scores"). They are deterministic, do not
depend on the order of the gallery, and favour neither the attacker nor the protection. ``ap`` keeps
scikit-learn's convention (all items tied at a threshold enter together).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("cosine", "euclidean")

ArrayLike = torch.Tensor | np.ndarray


# ============================================================================ similarity
def as_float_tensor(x: ArrayLike | Sequence, name: str) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [N, D] of embeddings, got shape {tuple(t.shape)}")
    return t.to(device="cpu", dtype=torch.float64)


def similarity_matrix(q: ArrayLike, g: ArrayLike, metric: str = "cosine") -> torch.Tensor:
    """Similarity ``[Q, G]`` (float64, larger = more similar) between query and gallery embeddings.

    ``cosine``: dot product of the L2-normalised embeddings. ``euclidean``: minus the L2 distance
    of the raw embeddings (computed exactly, without the ``|a|^2 + |b|^2 - 2ab`` shortcut, so equal
    embeddings tie exactly).
    """
    qt, gt = as_float_tensor(q, "queries"), as_float_tensor(g, "gallery")
    if qt.shape[1] != gt.shape[1]:
        raise ValueError(f"query dimension {qt.shape[1]} != gallery dimension {gt.shape[1]}")
    if not (torch.isfinite(qt).all() and torch.isfinite(gt).all()):
        raise ValueError("embeddings contain NaN or inf")
    if metric == "cosine":
        return F.normalize(qt, dim=1) @ F.normalize(gt, dim=1).T
    if metric == "euclidean":
        if qt.shape[0] == 0 or gt.shape[0] == 0:
            return torch.zeros(qt.shape[0], gt.shape[0], dtype=torch.float64)
        return -torch.cdist(qt, gt, compute_mode="donot_use_mm_for_euclid_dist")
    raise ValueError(f"unknown metric {metric!r}; choose one of {METRICS}")


# ============================================================================ rank metrics
def count_ge(sorted_asc: torch.Tensor, values: torch.Tensor, strict: bool) -> torch.Tensor:
    """Per row, how many entries of ``sorted_asc`` are ``>= values`` (``> values`` if strict)."""
    n = sorted_asc.shape[1]
    return n - torch.searchsorted(sorted_asc, values.contiguous(), right=strict)


def rank_core(
    rel_sorted: torch.Tensor,
    groups: Sequence[torch.Tensor],
    n_rel: torch.Tensor,
    n_items: torch.Tensor,
    ks: Sequence[int] = (),
) -> dict[str, torch.Tensor]:
    """Metrics from sorted similarities, split into the relevant entries and groups of irrelevant ones.

    ``rel_sorted`` ``[Q, R]`` and every ``groups[j]`` ``[Q, M_j]`` are sorted ascending per row and may be
    padded with ``-inf`` (padding is never counted: every real similarity is finite). ``n_rel`` and
    ``n_items`` ``[Q]`` count the real relevant entries and all real entries. Keeping the groups apart
    lets the caller sort the large, fixed distractor block once and reuse it for every scenario.
    """
    Q = rel_sorted.shape[0]
    nan = torch.full((Q,), torch.nan, dtype=torch.float64)
    valid = n_rel > 0
    denom = n_rel.double().clamp(min=1)

    def count_all(t: torch.Tensor, strict: bool) -> torch.Tensor:
        c = count_ge(rel_sorted, t, strict)
        for g in groups:
            c = c + count_ge(g, t, strict)
        return c

    kmax = max([1, *ks, int(n_rel.max()) if Q else 1])
    top = torch.cat([x[:, -kmax:] for x in (rel_sorted, *groups)], 1).sort(dim=1, descending=True).values

    def expected_hits(k: torch.Tensor) -> torch.Tensor:
        """Expected number of relevant entries in the top ``k[q]`` under random tie order."""
        if top.shape[1] == 0:
            return torch.zeros(Q, dtype=torch.float64)
        k = torch.minimum(k, n_items).clamp(min=0)
        t = top.gather(1, (k - 1).clamp(min=0).unsqueeze(1))  # the k-th largest similarity
        n_gt, n_ge = count_all(t, True).squeeze(1), count_all(t, False).squeeze(1)
        r_gt = count_ge(rel_sorted, t, True).squeeze(1)
        r_ge = count_ge(rel_sorted, t, False).squeeze(1)
        n_eq, r_eq = (n_ge - n_gt).double(), (r_ge - r_gt).double()
        hits = r_gt.double() + (k - n_gt).double() * r_eq / n_eq.clamp(min=1)
        return torch.where(k > 0, hits, torch.zeros_like(hits))

    out: dict[str, torch.Tensor] = {"n_relevant": n_rel.double()}
    out["recall"] = torch.where(valid, expected_hits(n_rel) / denom, nan)
    out["top1"] = torch.where(valid, expected_hits(torch.ones_like(n_rel)), nan)
    # AP = 1/|R| * sum over relevant i of  #{rel: s >= s_i} / #{all: s >= s_i}   (sklearn's step rule)
    real = torch.isfinite(rel_sorted)
    n_all_ge = count_all(rel_sorted, False).double()
    n_rel_ge = count_ge(rel_sorted, rel_sorted, False).double()
    prec = torch.where(real, n_rel_ge / n_all_ge.clamp(min=1), torch.zeros_like(n_all_ge))
    out["ap"] = torch.where(valid, prec.sum(1) / denom, nan)
    for kk in ks:
        kt = torch.full((Q,), int(kk), dtype=torch.long)
        out[f"recall@{int(kk)}"] = torch.where(valid, expected_hits(kt) / denom, nan)
    return out


def check_ks(k: int | Sequence[int] | None) -> list[int]:
    ks = [] if k is None else ([k] if isinstance(k, int) else list(k))
    for kk in ks:
        if int(kk) < 1:
            raise ValueError(f"k must be >= 1, got {kk}")
    return [int(kk) for kk in ks]


def rank_metrics(
    sim: ArrayLike, relevant: ArrayLike, k: int | Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Per-query retrieval metrics from a similarity matrix and a relevance mask (both ``[Q, G]``).

    Returns a dict of float arrays ``[Q]``: ``recall`` (recall@K with K = the query's number of
    relevant entries, = R-precision), ``top1``, ``ap`` (average precision, identical to
    ``sklearn.metrics.average_precision_score(relevant[q], sim[q])``), ``n_relevant``, and
    ``recall@k`` for every ``k`` given. Ties: see the module docstring. A query without relevant
    entries gets NaN (its metrics are undefined).
    """
    s = as_float_tensor(sim, "sim")
    if isinstance(relevant, torch.Tensor):
        r = relevant.detach().to("cpu").bool()
    else:
        r = torch.from_numpy(np.array(relevant, dtype=bool))
    if r.shape != s.shape:
        raise ValueError(f"relevant mask shape {tuple(r.shape)} != similarity shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError("similarity matrix contains NaN or inf")
    ks = check_ks(k)
    Q, G = s.shape
    pad = torch.full_like(s, -torch.inf)
    rel_sorted = torch.where(r, s, pad).sort(dim=1).values.contiguous()
    irr_sorted = torch.where(r, pad, s).sort(dim=1).values.contiguous()
    out = rank_core(rel_sorted, [irr_sorted], r.sum(1), torch.full((Q,), G, dtype=torch.long), ks)
    return {name: v.numpy() for name, v in out.items()}
