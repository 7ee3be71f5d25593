"""Head pose per image and retrieval per pose bin, with user-level (cluster) bootstrap intervals.

Pose convention
---------------
Camera frame of the canvas: ``x`` to the image's right, ``y`` down, ``z`` away from the camera (the
mesh's frame, :mod:`protego_nb.faces.mesh`). The head frame is three orthonormal axes measured on the
468-point mesh, the columns of ``R = [a, d, f]``:

* ``a`` left to right: :func:`protego_nb.faces.mesh.head_axes` (mean difference of the mirror pairs);
* ``d`` top to bottom: the least-squares slope of the vertex positions along the canonical ``v`` (UV) of
  the layout (fitted jointly with ``u``, so it is linear and translation-free in the vertices), with its
  component along ``a`` removed;
* ``f = a x d``: front to back (the nose points to ``-f``).

``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (:func:`rotation`), with

* **yaw**, positive when the nose points to the image's right (the person turns to their own left);
  ``Ry(yaw)`` maps ``(1, 0, 0)`` to ``(cos yaw, 0, sin yaw)``, as in
  :func:`protego_nb.faces.mesh.estimate_yaw`, which this equals when the roll is 0;
* **pitch**, positive when the nose points up (the chin comes toward the camera);
* **roll**, positive when the head's left-to-right axis points down the image (the face is turned
  clockwise in the image).

Pitch zero is the mesh's own ``v`` direction: MediaPipe's relative depth leans that direction a few
degrees for a frontal face, so pitch has an offset on real photos (notebook 06 measures it on LFW);
yaw and roll have none (mirror symmetry). The angles are estimates from a weak-perspective mesh (a few
degrees), enough to bin photos by pose, not a calibrated head pose.

Intervals
---------
Queries of one user share that user's texture and gallery, so they are not independent: the unit of
replication is the user. :func:`user_bootstrap` resamples *users* with replacement (a cluster bootstrap)
and recomputes the statistic pooled over the resampled users' queries (each query weighs the same);
one set of resampling weights (same seed) serves every method, bin and model, so differences between
methods are paired. Resampling queries within users instead would treat a user's queries as independent
draws and give intervals that are too narrow (it ignores the between-user spread, which dominates here).
With few users the intervals are wide and coarse (5 users have 126 distinct resamples); they are
reported as measured.

Size: the pose estimate, the bins and the cluster bootstrap that uses them, kept together.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

POSE_COLUMNS = ("yaw", "pitch", "roll")
DEFAULT_EDGES = (0.0, 10.0, 25.0, 90.0)


# ------------------------------------------------------------------------------------------ rotations
def _rx(deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[1, 0, 0], [0, c, s], [0, -s, c]], dtype=np.float64)


def _ry(deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]], dtype=np.float64)


def _rz(deg):
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)


def rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (degrees; module docstring): head frame -> camera frame."""
    return _rz(roll) @ _ry(yaw) @ _rx(pitch)


def angles(R: np.ndarray) -> np.ndarray:
    """``[..., 3]`` (yaw, pitch, roll) in degrees of rotation matrices ``[..., 3, 3]`` (inverse of :func:`rotation`).

    With ``a = R[:, 0] = (cos roll cos yaw, sin roll cos yaw, sin yaw)``: ``yaw = asin(a_z)``,
    ``roll = atan2(a_y, a_x)``; then ``Ry(yaw)^T Rz(roll)^T R = Rx(pitch)``. Yaw is in [-90, 90].
    """
    R = np.asarray(R, dtype=np.float64)
    a = R[..., :, 0]
    yaw = np.arcsin(np.clip(a[..., 2], -1.0, 1.0))
    roll = np.arctan2(a[..., 1], a[..., 0])
    cy, sy, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(roll), np.sin(roll)
    z, o = np.zeros_like(cy), np.ones_like(cy)
    rz_t = np.stack([np.stack([cr, sr, z], -1), np.stack([-sr, cr, z], -1), np.stack([z, z, o], -1)], -2)
    ry_t = np.stack([np.stack([cy, z, sy], -1), np.stack([z, o, z], -1), np.stack([-sy, z, cy], -1)], -2)
    m = ry_t @ rz_t @ R
    pitch = np.arctan2(m[..., 1, 2], m[..., 2, 2])
    return np.degrees(np.stack([yaw, pitch, roll], -1))


# ------------------------------------------------------------------------------------------ head frame
@functools.cache
def _v_slope_weights() -> np.ndarray:
    """``[468]`` weights ``w`` with ``w @ V`` = the least-squares slope of the vertices ``V`` along canonical ``v``.

    Rows of the pseudo-inverse of the design ``[1, u - mean u, v - mean v]``: they sum to 0
    (translation-free) and the result is linear in ``V`` (so it rotates with the head).
    """
    from ..faces import mesh

    uv = np.asarray(mesh.load_tables()[0], dtype=np.float64)
    design = np.stack([np.ones(len(uv)), uv[:, 0] - uv[:, 0].mean(), uv[:, 1] - uv[:, 1].mean()], 1)
    w = np.linalg.pinv(design)[2]
    w.setflags(write=False)
    return w


def head_frame(vertices) -> np.ndarray:
    """``[..., 3, 3]`` head frame ``[a, d, f]`` (columns; module docstring) of meshes ``[..., 468, 3]``; NaN rows stay NaN."""
    from ..faces import mesh

    v = np.asarray(vertices, dtype=np.float64)
    a = mesh.head_axes(v)
    d = np.einsum("n,...nk->...k", _v_slope_weights(), v)
    d = d - (d * a).sum(-1, keepdims=True) * a
    with np.errstate(invalid="ignore", divide="ignore"):
        d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    f = np.cross(a, d)
    return np.stack([a, d, f], -1)


def head_pose(vertices) -> np.ndarray:
    """``[..., 3]`` (yaw, pitch, roll) in degrees of meshes ``[..., 468, 3]`` (module docstring for the convention)."""
    return angles(head_frame(vertices))


def pose_frame(ids: Sequence[str], vertices, **columns) -> pd.DataFrame:
    """One row per image: ``id``, ``yaw``, ``pitch``, ``roll``, ``abs_yaw`` (NaN where there is no mesh) + ``columns``."""
    p = head_pose(vertices).reshape(-1, 3)
    if len(p) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(p)} meshes")
    df = pd.DataFrame({"id": list(ids), "yaw": p[:, 0], "pitch": p[:, 1], "roll": p[:, 2]})
    df["abs_yaw"] = df["yaw"].abs()
    for k, v in columns.items():
        df[k] = v
    return df


# ------------------------------------------------------------------------------------------ bins
def bin_labels(edges: Sequence[float]) -> list[str]:
    """``"0-10"``, ``"10-25"``, ``">=25"`` style labels (the last bin is open-ended up to the last edge)."""
    e = [float(x) for x in edges]
    out = [f"{e[i]:g}-{e[i + 1]:g}" for i in range(len(e) - 2)]
    out.append(f">={e[-2]:g}" if e[-1] >= 90 else f"{e[-2]:g}-{e[-1]:g}")
    return out


def _check_edges(edges: Sequence[float]) -> list[float]:
    e = [float(x) for x in edges]
    if len(e) < 2 or any(b <= a for a, b in zip(e, e[1:])) or e[0] < 0:
        raise ValueError(f"bin edges must be >= 0 and strictly increasing, got {list(edges)}")
    return e


def assign_bins(abs_yaw, edges: Sequence[float]) -> np.ndarray:
    """Bin index of each ``|yaw|`` (``[lo, hi)``; the last bin also holds values above the last edge); -1 for NaN."""
    e = _check_edges(edges)
    x = np.asarray(abs_yaw, dtype=np.float64)
    idx = np.searchsorted(np.asarray(e[1:-1]), x, side="right")
    return np.where(np.isnan(x), -1, idx)


def merge_sparse_bins(abs_yaw, edges: Sequence[float], min_count: int) -> list[float]:
    """Drop inner edges until every bin holds at least ``min_count`` of ``abs_yaw`` (or one bin is left).

    The sparsest bin is merged into its sparser neighbour, repeatedly; the outer edges stay.
    """
    e = _check_edges(edges)
    x = np.asarray(abs_yaw, dtype=np.float64)
    x = x[~np.isnan(x)]
    while len(e) > 2:
        counts = np.bincount(assign_bins(x, e), minlength=len(e) - 1)
        k = int(np.argmin(counts))
        if counts[k] >= min_count:
            break
        if k == 0:
            drop = 1
        elif k == len(counts) - 1:
            drop = k
        else:
            drop = k if counts[k - 1] <= counts[k + 1] else k + 1
        e.pop(drop)
    return e


# ------------------------------------------------------------------------------------------ bootstrap
def bootstrap_weights(n_users: int, n_boot: int, seed: int) -> np.ndarray:
    """``int [n_boot, n_users]``: how often each user is drawn in each bootstrap resample (with replacement)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_boot)


def user_bootstrap(
    values, users, weights: np.ndarray, user_order: Sequence[str], level: float = 0.95
) -> dict[str, float]:
    """Pooled mean of ``values`` (one per query) and its percentile interval over user resamples.

    ``weights`` from :func:`bootstrap_weights` over ``user_order``; a resample whose users hold no value
    is skipped (counted in ``n_empty``). Returns ``mean``, ``lo``, ``hi``, ``n`` (values), ``n_users``
    (users with at least one value), ``n_empty``.
    """
    v = np.asarray(values, dtype=np.float64)
    u = np.asarray(users, dtype=object)
    ok = ~np.isnan(v)
    v, u = v[ok], u[ok]
    pos = {name: i for i, name in enumerate(user_order)}
    unknown = sorted(set(u) - set(pos))
    if unknown:
        raise KeyError(f"users {unknown} are not in the bootstrap's user order")
    idx = np.array([pos[x] for x in u], dtype=np.int64)
    n_u = len(user_order)
    sums = np.bincount(idx, weights=v, minlength=n_u)
    counts = np.bincount(idx, minlength=n_u).astype(np.float64)
    out = {"mean": float(v.mean()) if len(v) else float("nan"), "n": int(len(v)),
           "n_users": int((counts > 0).sum())}
    num, den = weights @ sums, weights @ counts
    good = den > 0
    out["n_empty"] = int((~good).sum())
    if good.any() and len(v):
        stats = num[good] / den[good]
        a = (1.0 - level) / 2
        out["lo"], out["hi"] = (float(q) for q in np.quantile(stats, [a, 1 - a]))
    else:
        out["lo"] = out["hi"] = float("nan")
    return out


# ------------------------------------------------------------------------------------------ tables
def attach_pose(per_query: pd.DataFrame, poses: pd.DataFrame, edges: Sequence[float]) -> pd.DataFrame:
    """Per-query rows (``evaluate_users(..., per_query=True)``) with the query's pose and ``|yaw|`` bin.

    Raises if a query has no pose row; queries without a mesh keep NaN angles and bin ``-1`` (excluded
    from the bins, counted by :func:`recall_by_bin` in ``n_no_pose``).
    """
    missing = sorted(set(per_query["query"]) - set(poses["id"]))
    if missing:
        raise KeyError(f"{len(missing)} queries have no pose row, first {missing[0]!r}")
    p = poses.drop_duplicates("id").set_index("id")[list(POSE_COLUMNS) + ["abs_yaw"]]
    out = per_query.join(p, on="query")
    labels = bin_labels(edges)
    out["bin_index"] = assign_bins(out["abs_yaw"], edges)
    out["bin"] = [labels[i] if i >= 0 else "no pose" for i in out["bin_index"]]
    return out


def recall_by_bin(
    rows: pd.DataFrame,
    edges: Sequence[float],
    value: str = "recall",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    users: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per (model, method, scenario, bin) and an ``all`` row: pooled ``value`` (x100), its user
    bootstrap interval, the query and user counts. ``rows`` from :func:`attach_pose`."""
    users = sorted(set(rows["user"])) if users is None else list(users)
    w = bootstrap_weights(len(users), n_boot, seed)
    labels = bin_labels(edges)
    out = []
    for (model, method, scenario), g in rows.groupby(["model", "method", "scenario"], sort=False):
        n_no_pose = int((g["bin_index"] < 0).sum())
        for b, label in [*enumerate(labels), (None, "all")]:
            sub = g if b is None else g[g["bin_index"] == b]
            s = user_bootstrap(sub[value], sub["user"], w, users, level)
            out.append({"model": model, "method": method, "scenario": scenario, "bin": label,
                        "lo_deg": float(edges[0] if b is None else edges[b]),
                        "hi_deg": float(edges[-1] if b is None else edges[b + 1]),
                        "mean_abs_yaw": float(sub["abs_yaw"].mean()) if len(sub) else float("nan"),
                        value: 100 * s["mean"], "ci_lo": 100 * s["lo"], "ci_hi": 100 * s["hi"],
                        "n_queries": s["n"], "n_users": s["n_users"], "n_no_pose": n_no_pose})
    return pd.DataFrame(out)


def paired_difference(
    rows: pd.DataFrame,
    a: str,
    b: str,
    edges: Sequence[float],
    value: str = "recall",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    users: Sequence[str] | None = None,
    min_users: int = 3,
) -> pd.DataFrame:
    """Method ``a`` minus method ``b`` on the same queries (x100), per (model, scenario, bin) and ``all``,
    with a user bootstrap interval. ``effect``: ``"<a> lower"`` / ``"<a> higher"`` when the interval excludes
    0, ``"no measurable effect"`` when it holds 0, ``"too few users (n)"`` when fewer than ``min_users``
    users have queries in the bin (a percentile interval over 1 or 2 clusters means nothing)."""
    key = ["model", "scenario", "user", "query"]
    left = rows[rows["method"] == a].set_index(key)
    right = rows[rows["method"] == b].set_index(key)
    if left.empty or right.empty:
        raise ValueError(f"no rows for method {a!r} or {b!r} (have {sorted(set(rows['method']))})")
    both = left[[value, "bin_index", "abs_yaw"]].join(right[[value]].add_suffix("_b"), how="inner").reset_index()
    both["diff"] = both[value] - both[f"{value}_b"]
    users = sorted(set(both["user"])) if users is None else list(users)
    w = bootstrap_weights(len(users), n_boot, seed)
    labels = bin_labels(edges)
    out = []
    for (model, scenario), g in both.groupby(["model", "scenario"], sort=False):
        for bi, label in [*enumerate(labels), (None, "all")]:
            sub = g if bi is None else g[g["bin_index"] == bi]
            s = user_bootstrap(sub["diff"], sub["user"], w, users, level)
            lo, hi = 100 * s["lo"], 100 * s["hi"]
            if s["n_users"] < min_users:
                effect = f"too few users ({s['n_users']})"
            elif lo > 0 or hi < 0:
                effect = f"{a} higher" if lo > 0 else f"{a} lower"
            else:
                effect = "no measurable effect"
            out.append({"model": model, "scenario": scenario, "a": a, "b": b, "bin": label,
                        "diff": 100 * s["mean"], "ci_lo": lo, "ci_hi": hi, "n_queries": s["n"],
                        "n_users": s["n_users"], "effect": effect})
    return pd.DataFrame(out)


def yaw_slope(
    rows: pd.DataFrame,
    value: str = "recall",
    per_deg: float = 10.0,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    users: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Least-squares slope of ``value`` (x100) against ``|yaw|``, in points per ``per_deg`` degrees, per
    (model, method, scenario), pooled over queries, with a user bootstrap interval (no binning needed)."""
    users = sorted(set(rows["user"])) if users is None else list(users)
    w = bootstrap_weights(len(users), n_boot, seed).astype(np.float64)
    pos = {u: i for i, u in enumerate(users)}
    out = []
    for (model, method, scenario), g in rows.groupby(["model", "method", "scenario"], sort=False):
        g = g[np.isfinite(g[value]) & np.isfinite(g["abs_yaw"])]
        idx = np.array([pos[u] for u in g["user"]], dtype=np.int64)
        x, y = g["abs_yaw"].to_numpy(float), 100 * g[value].to_numpy(float)
        stats = np.stack([np.bincount(idx, weights=t, minlength=len(users))
                          for t in (np.ones_like(x), x, y, x * x, x * y)])
        point = float(_slope(np.ones((1, len(users))), stats, per_deg)[0]) if len(x) > 1 else float("nan")
        boots = _slope(w, stats, per_deg)
        boots = boots[np.isfinite(boots)]
        a = (1 - level) / 2
        lo, hi = (float(q) for q in np.quantile(boots, [a, 1 - a])) if len(boots) else (float("nan"),) * 2
        out.append({"model": model, "method": method, "scenario": scenario, "slope_per_10deg": point,
                    "ci_lo": lo, "ci_hi": hi, "n_queries": int(len(x))})
    return pd.DataFrame(out)


def _slope(wt: np.ndarray, stats: np.ndarray, per_deg: float) -> np.ndarray:
    """OLS slopes for user weights ``wt [B, U]`` from per-user sums ``stats [5, U]`` (n, x, y, xx, xy)."""
    n, x, y, xx, xy = (wt @ stats.T).T
    with np.errstate(invalid="ignore", divide="ignore"):
        return per_deg * (xy - x * y / n) / (xx - x * x / n)


def bin_counts(abs_yaw, edges: Sequence[float]) -> Mapping[str, int]:
    """``{label: count}`` of ``abs_yaw`` per bin (NaN values under ``"no pose"`` when any)."""
    idx = assign_bins(abs_yaw, edges)
    labels = bin_labels(edges)
    out = {lab: int((idx == i).sum()) for i, lab in enumerate(labels)}
    if (idx < 0).any():
        out["no pose"] = int((idx < 0).sum())
    return out


def rebin(rows: pd.DataFrame, edges: Sequence[float]) -> pd.DataFrame:
    """A copy of per-query rows (:func:`attach_pose`) with ``bin_index`` and ``bin`` recomputed for ``edges``."""
    out = rows.copy()
    labels = bin_labels(edges)
    out["bin_index"] = assign_bins(out["abs_yaw"], edges)
    out["bin"] = [labels[i] if i >= 0 else "no pose" for i in out["bin_index"]]
    return out


def records(df: pd.DataFrame, digits: int = 4) -> list[dict]:
    """Rows of a table as JSON-ready dicts (floats rounded to ``digits``)."""
    return [{k: (round(float(v), digits) if isinstance(v, float | np.floating) else v) for k, v in r.items()}
            for r in df.to_dict(orient="records")]


# ------------------------------------------------------------------------------------------ per gallery entry
def entry_found(sim, relevant) -> np.ndarray:
    """``[Q, R]``: for each query and each of its ``R`` true entries, whether the entry is in the query's top
    ``K = R`` (the recall@K cut), as an expectation under random order of tied similarities.

    ``sim [Q, G]``, ``relevant [G]`` bool (the same true entries for every query, as in a
    :class:`protego_nb.evaluate.retrieval.Gallery`). Each row sums to the query's expected hits, so the
    mean over a query's row is exactly its ``recall`` in :func:`protego_nb.evaluate.ranking.rank_metrics`.
    """
    s = np.asarray(sim, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    k = int(rel.sum())
    if k == 0 or s.shape[0] == 0:
        return np.zeros((s.shape[0], k))
    t = -np.sort(-s, axis=1)[:, k - 1 : k]  # the K-th largest similarity of each query
    n_gt = (s > t).sum(1, keepdims=True)
    n_eq = (s == t).sum(1, keepdims=True)
    r = s[:, rel]
    return np.where(r > t, 1.0, np.where(r == t, (k - n_gt) / n_eq, 0.0))


def entry_rows(gal, metric: str) -> pd.DataFrame:
    """One row per true gallery entry of a :class:`~protego_nb.evaluate.retrieval.Gallery`: ``entry``, its
    protection state, and ``recall`` = the fraction of the user's queries that find it in their top K
    (the entry's share of recall@K: the mean over entries equals the mean recall over queries)."""
    from .ranking import similarity_matrix

    sim = similarity_matrix(gal.queries, gal.emb, metric).numpy()
    found = entry_found(sim, gal.relevant)
    ids = [i for i, r in zip(gal.ids, gal.relevant) if r]
    prot = gal.protected[gal.relevant]
    rate = found.mean(0) if len(gal.query_ids) else np.full(len(ids), np.nan)
    return pd.DataFrame({"user": gal.user, "scenario": gal.scenario.name, "entry": ids, "entry_protected": prot,
                         "recall": rate, "n_queries": len(gal.query_ids)})
