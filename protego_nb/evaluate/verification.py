"""LFW face verification: the official ``pairs.txt`` protocol, 10-fold accuracy, ROC and AUC.

Protocol (Huang et al., "Labeled Faces in the Wild", UMass TR 07-49, 2007; "unrestricted,
labeled outside data" setting as used by FR papers): ``pairs.txt`` holds 10 folds of 300
matched and 300 mismatched pairs. For each fold, the decision threshold is the one that
maximises accuracy on the other 9 folds and is applied to the held-out fold; the result
is the mean and (population, ``ddof=0``) standard deviation of the 10 fold accuracies. ROC and AUC are computed
over all pairs with scikit-learn.

All functions are pure: they take embeddings (a mapping ``image -> vector``, keys as in
``pairs.txt``: ``Name/Name_NNNN.jpg``) and return numbers; scores are similarities
(higher = same person), so a Euclidean metric is scored as minus the distance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from .. import data, paths

__all__ = [
    "PairSet",
    "VerificationResult",
    "best_threshold",
    "kfold_accuracy",
    "load_pairs",
    "pair_scores",
    "verify",
]

Metric = str | Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PairSet:
    """LFW pairs as arrays: image keys ``a``/``b``, ``same`` (bool), ``fold`` (0-based)."""

    a: tuple[str, ...]
    b: tuple[str, ...]
    same: np.ndarray
    fold: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.a)

    @property
    def n_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self) else 0

    def images(self) -> list[str]:
        """Every image the pairs use, sorted, without duplicates."""
        return sorted(set(self.a) | set(self.b))

    def subset(self, index: np.ndarray | Sequence[int]) -> PairSet:
        idx = np.asarray(index, dtype=int)
        return PairSet(
            tuple(self.a[i] for i in idx),
            tuple(self.b[i] for i in idx),
            self.same[idx],
            self.fold[idx],
            self.source,
        )

    def sample(self, per_fold: int, seed: int = 0) -> PairSet:
        """A balanced subset: ``per_fold`` pairs from each fold, half matched, seeded."""
        rng = np.random.default_rng(seed)
        keep = []
        for f in range(self.n_folds):
            for s in (True, False):
                idx = np.flatnonzero((self.fold == f) & (self.same == s))
                keep.extend(rng.choice(idx, size=min(len(idx), per_fold // 2), replace=False).tolist())
        return self.subset(np.sort(np.asarray(keep, dtype=int)))


def load_pairs(path: str | Path | None = None, expect_folds: int | None = 10) -> PairSet:
    """Parse LFW ``pairs.txt`` (default ``<data>/lfw/pairs.txt``) into a :class:`PairSet`.

    Both line forms are read: ``Name i j`` (matched) and ``Name1 i Name2 j`` (mismatched);
    the header ``folds pairs_per_class`` fixes the layout (per fold: the matched, then the
    mismatched lines). Raises ``FileNotFoundError``/``ValueError`` naming the file and the
    problem. ``expect_folds`` checks the header (None: accept any).
    """
    path = Path(path) if path is not None else paths.lfw_dir() / "pairs.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: LFW pairs file not found ({paths.LFW_HELP.format(path=path.parent)})"
        )
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    try:
        n_folds, per = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{path}: the first line must be '<folds> <pairs per class>'") from exc
    if expect_folds is not None and n_folds != expect_folds:
        raise ValueError(f"{path}: header says {n_folds} folds, expected {expect_folds}")
    if len(lines) - 1 != 2 * n_folds * per:
        raise ValueError(f"{path}: {len(lines) - 1} pair lines, the header announces {2 * n_folds * per}")
    for k, ln in enumerate(lines[1:], start=2):
        matched = ((k - 2) // per) % 2 == 0
        ok = len(ln) == 3 if matched else len(ln) == 4
        if not ok or not all(t.isdigit() for t in (ln[1:] if matched else (ln[1], ln[3]))):
            kind = "matched 'Name i j'" if matched else "mismatched 'Name1 i Name2 j'"
            raise ValueError(f"{path}: non-blank line {k} should be a {kind} pair, got {' '.join(ln)!r}")
    pairs = data.read_pairs(path)
    return PairSet(
        tuple(p.a for p in pairs),
        tuple(p.b for p in pairs),
        np.array([p.same for p in pairs], dtype=bool),
        np.array([p.fold for p in pairs], dtype=int),
        str(path),
    )


def _score_fn(metric: Metric) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if callable(metric):
        return metric
    if metric == "cosine":

        def cos(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            nx = np.linalg.norm(x, axis=1)
            ny = np.linalg.norm(y, axis=1)
            return (x * y).sum(1) / np.maximum(nx * ny, 1e-12)

        return cos
    if metric == "euclidean":
        return lambda x, y: -np.linalg.norm(x - y, axis=1)
    raise ValueError(f"unknown metric {metric!r}; expected 'cosine', 'euclidean' or a function")


def pair_scores(
    embeddings: Mapping[str, np.ndarray], pairs: PairSet, metric: Metric = "cosine", missing: str = "error"
) -> tuple[np.ndarray, np.ndarray]:
    """Similarity of each pair; returns ``(scores, kept)`` with ``kept`` the indices scored.

    ``missing="error"`` raises ``KeyError`` (with a count and examples) when a pair's image
    has no embedding; ``"drop"`` leaves such pairs out (report ``len(pairs) - len(kept)``).
    """
    if missing not in ("error", "drop"):
        raise ValueError(f"missing must be 'error' or 'drop', got {missing!r}")
    has = np.array([a in embeddings and b in embeddings for a, b in zip(pairs.a, pairs.b)], dtype=bool)
    if missing == "error" and not has.all():
        lost = [a if a not in embeddings else b for a, b, h in zip(pairs.a, pairs.b, has) if not h]
        raise KeyError(
            f"{(~has).sum()} of {len(pairs)} pairs lack an embedding, e.g. {lost[:3]}; pass missing='drop'"
        )
    kept = np.flatnonzero(has)
    if len(kept) == 0:
        return np.zeros(0), kept
    xa = np.stack([np.asarray(embeddings[pairs.a[i]], dtype=np.float64) for i in kept])
    xb = np.stack([np.asarray(embeddings[pairs.b[i]], dtype=np.float64) for i in kept])
    return np.asarray(_score_fn(metric)(xa, xb), dtype=np.float64), kept


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``score >= t`` -> same; returns ``(t, accuracy)``.

    Candidates are all distinct scores (from ``sklearn.metrics.roc_curve``); the returned
    threshold is the midpoint between the best candidate and the next lower score, so it
    sits in the middle of the gap rather than on a training sample.
    """
    same = np.asarray(same, dtype=bool)
    if same.all() or not same.any():
        raise ValueError("threshold selection needs both matched and mismatched pairs")
    fpr, tpr, thr = roc_curve(same, scores, drop_intermediate=False)
    p, n = same.sum(), (~same).sum()
    acc = (tpr * p + (1 - fpr) * n) / (p + n)
    k = int(np.argmax(acc))
    t = float(thr[k])
    if not np.isfinite(t):  # best is "everything different"
        return float(np.inf), float(acc[k])
    lower = scores[scores < t]
    return (t + float(lower.max())) / 2 if lower.size else t, float(acc[k])


def kfold_accuracy(scores: np.ndarray, same: np.ndarray, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold test accuracy and threshold (threshold chosen on the other folds)."""
    scores, same, fold = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool), np.asarray(fold)
    folds = np.unique(fold)
    if len(folds) < 2:
        raise ValueError("k-fold accuracy needs at least 2 folds")
    accs, thrs = [], []
    for f in folds:
        test = fold == f
        t, _ = best_threshold(scores[~test], same[~test])
        accs.append(float(((scores[test] >= t) == same[test]).mean()))
        thrs.append(t)
    return np.array(accs), np.array(thrs)


@dataclass
class VerificationResult:
    """10-fold accuracy (mean, std over folds), ROC and AUC over all scored pairs."""

    accuracy: float
    accuracy_std: float
    fold_accuracy: np.ndarray
    thresholds: np.ndarray
    auc: float
    fpr: np.ndarray = field(repr=False)
    tpr: np.ndarray = field(repr=False)
    n_pairs: int = 0
    n_dropped: int = 0
    metric: str = ""

    def to_dict(self) -> dict:
        """JSON-friendly summary (no ROC arrays)."""
        return {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "fold_accuracy": [float(a) for a in self.fold_accuracy],
            "thresholds": [float(t) for t in self.thresholds],
            "auc": self.auc,
            "n_pairs": self.n_pairs,
            "n_dropped": self.n_dropped,
            "metric": self.metric,
        }


def verify(
    embeddings: Mapping[str, np.ndarray], pairs: PairSet, metric: Metric = "cosine", missing: str = "error"
) -> VerificationResult:
    """LFW verification of ``embeddings`` on ``pairs`` (see the module docstring)."""
    scores, kept = pair_scores(embeddings, pairs, metric, missing)
    same, fold = pairs.same[kept], pairs.fold[kept]
    accs, thrs = kfold_accuracy(scores, same, fold)
    fpr, tpr, _ = roc_curve(same, scores)
    return VerificationResult(
        accuracy=float(accs.mean()),
        accuracy_std=float(accs.std()),
        fold_accuracy=accs,
        thresholds=thrs,
        auc=float(roc_auc_score(same, scores)),
        fpr=fpr,
        tpr=tpr,
        n_pairs=len(kept),
        n_dropped=len(pairs) - len(kept),
        metric=metric if isinstance(metric, str) else getattr(metric, "__name__", "custom"),
    )
