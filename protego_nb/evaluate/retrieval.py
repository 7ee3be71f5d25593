"""Face-search evaluation: scenario galleries and per-user tables (similarity and rank metrics: :mod:`.ranking`).

The protocol follows the authors' ``prot_eval`` (``reference/protego_method.md`` section 2) and the
paper's scenarios, with two deliberate improvements: every model is scored with its *native*
similarity (cosine or Euclidean) as well as with cosine (the authors hard-coded cosine), and the
unseen-gallery and coverage variants the paper describes are first-class scenarios.

Scenarios (a query is one of the user's *query* images; the *true* entries are the user's gallery
images; the rest of the gallery is every distractor image plus, optionally, the other users'
gallery entries):

======== ================ =========================================================
name     query            user's true gallery entries
======== ================ =========================================================
``1b``   clean            clean                   (the unprotected FR baseline)
``1a``   clean            protected
``2b``   protected        clean
``2a``   protected        protected               (the case Protego's log-det targets)
``…-unseen``  as above    only ``gallery_unseen`` (never used to train the PPT); the user's seen
                          gallery images are left out of the gallery, so ``K`` = their count
``1-cov0.25`` clean       a seeded 25 % of the true entries protected, the rest clean
``2-cov0.25`` protected   idem (coverage sweep; ``cov0`` equals ``b``, ``cov1`` equals ``a``)
======== ================ =========================================================

Distractors (other identities' images) are always clean. Other users' gallery entries follow the
gallery's protection state (each protected with *their own* PPT) when ``protect_others=True``
(the authors' ``eval_scene = 1``; the default), else they stay clean; with coverage ``p`` each other
user has the same fraction ``p`` protected, chosen by their own seeded order.

Metrics per query and their tie handling: :mod:`.ranking`.

The ``features`` structure used by :func:`evaluate_users` is documented on :class:`Features`.

Size: the protocol in one place: scenarios, galleries with their protection states and the per-user table.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from ..data import Split, UserSplit
from .ranking import METRICS, ArrayLike, check_ks, rank_core, rank_metrics, similarity_matrix

BASE_SCENARIOS = ("1b", "1a", "2b", "2a")
DEFAULT_SCENARIOS = BASE_SCENARIOS + tuple(f"{s}-unseen" for s in BASE_SCENARIOS)
SCORE_COLUMNS = ("recall", "top1", "mAP")



# ============================================================================ features
class EmbeddingTable:
    """Embeddings ``[N, D]`` addressed by image id; built from a dict ``id -> [D]`` or ``(ids, matrix)``."""

    def __init__(self, ids: Sequence[str], emb: ArrayLike, name: str = "embeddings") -> None:
        t = emb.detach().to("cpu") if isinstance(emb, torch.Tensor) else torch.as_tensor(np.asarray(emb))
        if t.ndim != 2 or t.shape[0] != len(ids):
            raise ValueError(f"{name}: {len(ids)} ids but embeddings of shape {tuple(t.shape)}")
        self.ids = [str(i) for i in ids]
        self.emb = t.float()
        self.name = name
        bad = ~torch.isfinite(self.emb).all(dim=1) if len(self.ids) else torch.zeros(0, dtype=torch.bool)
        if bad.any():
            first = self.ids[int(bad.nonzero()[0, 0])]
            raise ValueError(f"{name}: {int(bad.sum())} embedding(s) contain NaN or inf, first {first!r}")
        self.index = {i: n for n, i in enumerate(self.ids)}
        if len(self.index) != len(self.ids):
            raise ValueError(f"{name}: duplicate image ids")

    @classmethod
    def coerce(cls, x: Any, name: str) -> EmbeddingTable:
        if isinstance(x, EmbeddingTable):
            return x
        if isinstance(x, Mapping):
            ids = list(x)
            if not ids:
                return cls([], torch.zeros(0, 0), name)
            rows = [v.detach().to("cpu").float() if isinstance(v, torch.Tensor)
                    else torch.as_tensor(np.asarray(v, np.float32)) for v in x.values()]
            return cls(ids, torch.stack([r.reshape(-1) for r in rows]), name)
        if isinstance(x, tuple) and len(x) == 2:
            return cls(list(x[0]), x[1], name)
        raise TypeError(f"{name}: expected a dict id -> embedding, an (ids, matrix) pair or an EmbeddingTable, "
                        f"got {type(x).__name__}")

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.emb.shape[1])

    def take(self, ids: Sequence[str]) -> torch.Tensor:
        """Rows for ``ids`` (``[len(ids), D]``); KeyError naming the first missing id."""
        try:
            idx = [self.index[i] for i in ids]
        except KeyError as e:
            raise KeyError(f"{self.name}: no embedding for image {e.args[0]!r}") from None
        return self.emb[torch.as_tensor(idx, dtype=torch.long)] if idx else self.emb[:0]


@dataclass
class Features:
    """The embeddings of one face-recognition model under one protection method.

    ``clean``      every image the evaluation touches, unprotected: the users' queries and gallery
                   entries and every distractor (a dict ``image id -> [D]``, an ``(ids, [N, D])`` pair
                   or an :class:`EmbeddingTable`; ids are the split's ``Name/Name_0001.jpg`` strings).
    ``protected``  the users' queries and gallery entries, each protected by the method with the
                   *owner's* PPT (or per-image cloak), same id keys. May be empty for 1b-only runs.
    ``similarity`` the model's native metric (``"cosine"`` or ``"euclidean"``), used for ``metric="native"``.
    ``model``, ``method``  labels copied into the result table.

    ``evaluate_users`` also accepts a plain dict with these keys (``Features.coerce``).
    """

    clean: Any
    protected: Any = field(default_factory=dict)
    similarity: str = "cosine"
    model: str = ""
    method: str = ""

    def __post_init__(self) -> None:
        self.clean = EmbeddingTable.coerce(self.clean, f"{self.model or 'model'} clean features")
        self.protected = EmbeddingTable.coerce(
            self.protected, f"{self.model or 'model'} {self.method or 'protected'} features"
        )
        if self.similarity not in METRICS:
            raise ValueError(f"native similarity must be one of {METRICS}, got {self.similarity!r}")
        if len(self.clean) and len(self.protected) and self.clean.dim != self.protected.dim:
            raise ValueError(f"clean features have dimension {self.clean.dim}, protected {self.protected.dim}")

    @classmethod
    def coerce(cls, x: Features | Mapping) -> Features:
        if isinstance(x, Features):
            return x
        if not isinstance(x, Mapping) or "clean" not in x:
            raise TypeError("features: expected a Features or a dict with at least a 'clean' entry "
                            "(and 'protected', 'similarity', 'model', 'method')")
        unknown = set(x) - {"clean", "protected", "similarity", "model", "method"}
        if unknown:
            raise ValueError(f"features: unknown keys {sorted(unknown)}")
        return cls(**x)

    @classmethod
    def from_model(cls, model: Any, clean: Any, protected: Any = None, method: str = "") -> Features:
        """Label the embeddings with the model's name and native metric (``spec.similarity`` or ``spec.metric``)."""
        spec = getattr(model, "spec", model)
        sim = getattr(spec, "similarity", None) or getattr(spec, "metric", None)
        if sim is None:
            raise ValueError(f"{getattr(spec, 'name', model)!r} has no spec.similarity / spec.metric")
        return cls(clean, {} if protected is None else protected, sim, getattr(spec, "name", ""), method)

    def table(self, protected: bool) -> EmbeddingTable:
        return self.protected if protected else self.clean

    def resolve_metric(self, metric: str) -> str:
        m = self.similarity if metric == "native" else metric
        if m not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose 'native' or one of {METRICS}")
        return m


# ============================================================================ scenarios
@dataclass(frozen=True)
class Scenario:
    """What the query and the gallery look like (module docstring).

    ``coverage`` is the fraction of the user's true gallery entries that are protected (0 clean, 1 all);
    ``unseen_only`` keeps only the gallery images never used to train the PPT.
    """

    query_protected: bool
    coverage: float
    unseen_only: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.coverage) <= 1.0:
            raise ValueError(f"coverage must be in [0, 1], got {self.coverage}")

    @property
    def name(self) -> str:
        q = "2" if self.query_protected else "1"
        if self.coverage in (0.0, 1.0):
            base = q + ("a" if self.coverage == 1.0 else "b")
        else:
            base = f"{q}-cov{self.coverage:g}"
        return base + ("-unseen" if self.unseen_only else "")

    @classmethod
    def parse(cls, s: str | Scenario) -> Scenario:
        """``1b``, ``1a``, ``2b``, ``2a``, optional ``-unseen``; ``1-cov0.25`` / ``2-cov0.25`` for coverage."""
        if isinstance(s, Scenario):
            return s
        m = re.fullmatch(r"([12])([ab])(-unseen)?", str(s))
        if m:
            return cls(m.group(1) == "2", 1.0 if m.group(2) == "a" else 0.0, bool(m.group(3)))
        m = re.fullmatch(r"([12])-cov([0-9]*\.?[0-9]+)(-unseen)?", str(s))
        if m:
            return cls(m.group(1) == "2", float(m.group(2)), bool(m.group(3)))
        raise ValueError(f"unknown scenario {s!r}; use 1b, 1a, 2b, 2a (optionally '-unseen') or 1-cov0.5 / 2-cov0.5")


def coverage_scenarios(
    fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    queries: Sequence[str] = ("clean", "protected"),
    unseen_only: bool = False,
) -> list[Scenario]:
    """The coverage sweep: one scenario per (query state, protected fraction of the true entries)."""
    bad = [q for q in queries if q not in ("clean", "protected")]
    if bad:
        raise ValueError(f"queries must be 'clean' or 'protected', got {bad}")
    return [Scenario(q == "protected", float(p), unseen_only) for q in queries for p in fractions]


def _protected_subset(ids: Sequence[str], fraction: float, seed: int, owner: str) -> set[str]:
    """A seeded ``round(fraction * n)`` of ``ids``; nested in ``fraction`` (one fixed order per owner)."""
    n = len(ids)
    if fraction >= 1.0:
        return set(ids)
    n_prot = int(round(fraction * n))
    if n_prot == 0:
        return set()
    sub = int.from_bytes(hashlib.sha256(f"coverage:{seed}:{owner}".encode()).digest()[:8], "little")
    order = np.random.default_rng(sub).permutation(n)
    return {ids[i] for i in order[:n_prot]}


@dataclass
class Gallery:
    """One user's queries and gallery for one scenario (ids, embeddings, protection state, relevance)."""

    user: str
    scenario: Scenario
    query_ids: list[str]
    queries: torch.Tensor  # [Q, D]
    ids: list[str]
    emb: torch.Tensor  # [G, D]
    protected: np.ndarray  # [G] bool: the entry's protection state
    relevant: np.ndarray  # [G] bool: the user's true entries
    source: np.ndarray  # [G] str: "user", "other_user" or "distractor"
    n_missing: int = 0  # images skipped because an embedding was missing

    @property
    def K(self) -> int:
        return int(self.relevant.sum())

    def metrics(self, metric: str = "cosine", k: int | Sequence[int] | None = None) -> dict[str, np.ndarray]:
        sim = similarity_matrix(self.queries, self.emb, metric)
        rel = np.broadcast_to(self.relevant, (len(self.query_ids), len(self.ids)))
        return rank_metrics(sim, rel, k)


def _entries(
    table_clean: EmbeddingTable,
    table_prot: EmbeddingTable,
    ids: Sequence[str],
    protected: set[str],
    on_missing: str,
    what: str,
) -> tuple[list[str], list[torch.Tensor], list[bool], int]:
    """Embeddings of ``ids`` (protected for those in ``protected``), dropping or raising on missing ones."""
    keep, rows, states, missing = [], [], [], []
    for i in ids:
        tab = table_prot if i in protected else table_clean
        if i in tab:
            keep.append(i)
            rows.append(tab.emb[tab.index[i]])
            states.append(i in protected)
        else:
            missing.append(i)
    if missing and on_missing == "raise":
        raise KeyError(f"{what}: no {'protected' if missing[0] in protected else 'clean'} embedding for "
                       f"{len(missing)} image(s), first {missing[0]!r}")
    return keep, rows, states, len(missing)


@dataclass
class _UserSide:
    """Everything of one user's gallery except the distractors."""

    q_ids: list[str]
    q_emb: torch.Tensor
    t_ids: list[str]
    t_emb: torch.Tensor
    t_state: list[bool]
    o_ids: list[str]
    o_emb: torch.Tensor
    o_state: list[bool]
    n_missing: int


def _user_side(
    feats: Features, split: Split, user: str, sc: Scenario, protect_others: bool, include_others: bool,
    seed: int, on_missing: str,
) -> _UserSide:
    if user not in split.users:
        raise KeyError(f"user {user!r} is not in the split (users: {', '.join(split.user_names)})")
    if on_missing not in ("drop", "raise"):
        raise ValueError(f"on_missing must be 'drop' or 'raise', got {on_missing!r}")
    u: UserSplit = split.users[user]
    clean, prot = feats.clean, feats.protected
    dim = clean.dim if len(clean) else (prot.dim if len(prot) else 0)
    stack = lambda rows: torch.stack(rows) if rows else torch.zeros(0, dim)  # noqa: E731

    q_ids = list(u.queries)
    q_prot = set(q_ids) if sc.query_protected else set()
    q_keep, q_rows, _, q_miss = _entries(clean, prot, q_ids, q_prot, on_missing, f"{user} queries")

    true_ids = list(u.gallery_unseen) if sc.unseen_only else list(u.gallery)
    prot_true = _protected_subset(true_ids, sc.coverage, seed, user)
    t_keep, t_rows, t_state, t_miss = _entries(clean, prot, true_ids, prot_true, on_missing, f"{user} gallery")

    o_keep: list[str] = []
    o_rows: list[torch.Tensor] = []
    o_state: list[bool] = []
    o_miss = 0
    if include_others:
        for other in split.user_names:
            if other == user:
                continue
            ids = list(split.users[other].gallery)
            p_o = _protected_subset(ids, sc.coverage, seed, other) if protect_others else set()
            k_, r_, s_, m_ = _entries(clean, prot, ids, p_o, on_missing, f"{other} gallery (other user)")
            o_keep += k_
            o_rows += r_
            o_state += s_
            o_miss += m_
    return _UserSide(q_keep, stack(q_rows), t_keep, stack(t_rows), t_state, o_keep, stack(o_rows), o_state,
                     q_miss + t_miss + o_miss)


def build_gallery(
    features: Features | Mapping,
    split: Split,
    user: str,
    scenario: str | Scenario,
    protect_others: bool = True,
    include_others: bool = True,
    distractors: Sequence[str] | None = None,
    seed: int = 0,
    on_missing: str = "drop",
) -> Gallery:
    """Assemble the queries and gallery of ``user`` under ``scenario`` (module docstring).

    Gallery order: the user's true entries, the other users' entries, the distractors.
    ``distractors`` defaults to ``split.distractors``; ``on_missing`` is ``"drop"`` (skip images without
    an embedding, e.g. no face detected, and count them in ``n_missing``) or ``"raise"``.
    """
    feats = Features.coerce(features)
    sc = Scenario.parse(scenario)
    side = _user_side(feats, split, user, sc, protect_others, include_others, seed, on_missing)
    d_ids, d_emb, d_miss = _distractors(feats.clean, split.distractors if distractors is None else distractors,
                                        on_missing)
    n_t, n_o, n_d = len(side.t_ids), len(side.o_ids), len(d_ids)
    return Gallery(
        user=user,
        scenario=sc,
        query_ids=side.q_ids,
        queries=side.q_emb,
        ids=side.t_ids + side.o_ids + d_ids,
        emb=torch.cat([side.t_emb, side.o_emb, d_emb.reshape(n_d, side.t_emb.shape[1])]),
        protected=np.array(side.t_state + side.o_state + [False] * n_d, dtype=bool),
        relevant=np.array([True] * n_t + [False] * (n_o + n_d), dtype=bool),
        source=np.array(["user"] * n_t + ["other_user"] * n_o + ["distractor"] * n_d, dtype=object),
        n_missing=side.n_missing + d_miss,
    )


def _distractors(
    clean: EmbeddingTable, ids: Sequence[str], on_missing: str
) -> tuple[list[str], torch.Tensor, int]:
    keep = [i for i in ids if i in clean]
    if len(keep) != len(ids) and on_missing == "raise":
        first = next(i for i in ids if i not in clean)
        raise KeyError(f"distractors: no clean embedding for {len(ids) - len(keep)} image(s), first {first!r}")
    return keep, clean.take(keep), len(ids) - len(keep)


def _prep(x: torch.Tensor, metric: str) -> torch.Tensor:
    x = x.to(torch.float64)
    return F.normalize(x, dim=1) if metric == "cosine" else x


def _sorted_sim(q: torch.Tensor, g: torch.Tensor, metric: str) -> torch.Tensor:
    """Ascending per-row similarities of prepared (``_prep``) queries and gallery rows."""
    if q.shape[0] == 0 or g.shape[0] == 0:
        return torch.zeros(q.shape[0], g.shape[0], dtype=torch.float64)
    s = q @ g.T if metric == "cosine" else -torch.cdist(q, g, compute_mode="donot_use_mm_for_euclid_dist")
    return s.sort(dim=1).values.contiguous()


# ============================================================================ tables
def evaluate_users(
    features: Features | Mapping,
    split: Split,
    scenarios: Sequence[str | Scenario] = DEFAULT_SCENARIOS,
    metric: str | Sequence[str] = "native",
    users: Sequence[str] | None = None,
    k: Sequence[int] = (),
    protect_others: bool = True,
    include_others: bool = True,
    seed: int = 0,
    on_missing: str = "drop",
    per_query: bool = False,
) -> pd.DataFrame:
    """One row per (metric, user, scenario): ``recall``, ``top1``, ``mAP`` (means over the user's queries),
    ``K``, ``n_queries``, ``gallery_size`` and bookkeeping columns.

    ``features``: see :class:`Features`. ``metric``: ``"native"`` (the model's own), ``"cosine"``,
    ``"euclidean"``, or a list of them (``("native", "cosine")`` reports both; duplicates after
    resolving ``native`` are kept once). ``k``: extra ``recall@k`` columns. Queries or gallery images
    without an embedding are dropped and counted in ``n_missing`` (``on_missing="raise"`` to fail).
    A user with no query or no true entry left gets NaN scores. The results equal
    ``build_gallery(...).metrics(...)``; the distractor similarities are computed and sorted once per
    user, query state and metric, and shared by all scenarios.

    ``per_query=True`` returns one row per (metric, user, scenario, query) instead, with the query's id in
    ``query`` and its own ``recall``, ``top1``, ``mAP`` (its average precision) and ``recall@k``, and the
    same bookkeeping columns; the per-user rows are exactly the means of these over each user's queries.
    """
    feats = Features.coerce(features)
    metrics = [metric] if isinstance(metric, str) else list(metric)
    resolved: list[str] = []
    for m in metrics:
        r = feats.resolve_metric(m)
        if r not in resolved:
            resolved.append(r)
    ks = check_ks(list(k))
    scs = [Scenario.parse(s) for s in scenarios]
    if any(s.query_protected or s.coverage > 0 for s in scs) and len(feats.protected) == 0:
        raise ValueError(f"scenarios {[s.name for s in scs if s.query_protected or s.coverage > 0]} need "
                         "protected features, but features['protected'] is empty")
    users = split.user_names if users is None else list(users)
    d_ids, d_emb, d_miss = _distractors(feats.clean, split.distractors, on_missing)
    d_prep = {m: _prep(d_emb, m) for m in resolved}
    n_d = len(d_ids)
    rows = []
    for user in users:
        d_sorted: dict[tuple[bool, str], torch.Tensor] = {}  # (query protected, metric) -> [Q, n_d]
        for sc in scs:
            side = _user_side(feats, split, user, sc, protect_others, include_others, seed, on_missing)
            Q, n_t, n_o = len(side.q_ids), len(side.t_ids), len(side.o_ids)
            for m in resolved:
                q = _prep(side.q_emb, m)
                key = (sc.query_protected, m)
                if key not in d_sorted:
                    d_sorted[key] = _sorted_sim(q, d_prep[m], m)
                rel = _sorted_sim(q, _prep(side.t_emb, m), m)
                oth = _sorted_sim(q, _prep(side.o_emb, m), m)
                res = rank_core(rel, [oth, d_sorted[key]], torch.full((Q,), n_t, dtype=torch.long),
                                 torch.full((Q,), n_t + n_o + n_d, dtype=torch.long), ks)
                head = {
                    "model": feats.model,
                    "method": feats.method,
                    "metric": m,
                    "native": m == feats.similarity,
                    "user": user,
                    "scenario": sc.name,
                    "query_protected": sc.query_protected,
                    "coverage": sc.coverage,
                    "unseen_only": sc.unseen_only,
                }
                tail = dict(
                    K=n_t,
                    n_queries=Q,
                    gallery_size=n_t + n_o + n_d,
                    n_protected_true=int(sum(side.t_state)),
                    n_other_user_entries=n_o,
                    n_distractors=n_d,
                    n_missing=side.n_missing + d_miss,
                )
                names = {"recall": "recall", "top1": "top1", "mAP": "ap", **{f"recall@{kk}": f"recall@{kk}" for kk in ks}}
                if per_query:
                    vals = {c: res[r].numpy() for c, r in names.items()}
                    for qi, qid in enumerate(side.q_ids):
                        rows.append({**head, "query": qid, **{c: float(v[qi]) for c, v in vals.items()}, **tail})
                else:
                    rows.append({**head, **{c: _mean(res[r].numpy()) for c, r in names.items()}, **tail})
    return pd.DataFrame(rows)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) and not np.isnan(x).all() else float("nan")


def summarise(df: pd.DataFrame, text: bool = False, scale: float = 100.0, digits: int = 1) -> pd.DataFrame:
    """Mean and std (pandas' sample std, ddof 1) over users of ``recall``, ``top1``, ``mAP`` (and any
    ``recall@k``), grouped by model, method, metric and scenario, in the order scenarios first appear.

    ``text=True`` returns ``"mean ± std"`` strings scaled by ``scale`` (percent by default) instead.
    """
    keys = [c for c in ("model", "method", "metric", "scenario") if c in df.columns]
    scores = [c for c in df.columns if c in SCORE_COLUMNS or c.startswith("recall@")]
    g = df.groupby(keys, sort=False, dropna=False)
    mean, std = g[scores].mean(), g[scores].std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    for c in scores:
        if text:
            out[c] = [f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}" if np.isfinite(s)
                      else f"{m * scale:.{digits}f}" for m, s in zip(mean[c], std[c])]
        else:
            out[f"{c}_mean"] = mean[c]
            out[f"{c}_std"] = std[c]
    out["n_users"] = g["user"].nunique() if "user" in df.columns else g.size()
    if "K" in df.columns:
        out["K_mean"] = g["K"].mean()
    return out.reset_index()
