"""LFW verification metric: known answers on synthetic embeddings, and the real pairs.txt."""

from __future__ import annotations

import numpy as np
import pytest

from protego_nb import paths
from protego_nb.evaluate import verification as V


def _synthetic_pairs(n_folds: int = 10, per: int = 30) -> V.PairSet:
    a, b, same, fold = [], [], [], []
    for f in range(n_folds):
        for s in (True, False):
            for k in range(per):
                a.append(f"f{f}/{s}/{k}/a")
                b.append(f"f{f}/{s}/{k}/b")
                same.append(s)
                fold.append(f)
    return V.PairSet(tuple(a), tuple(b), np.array(same), np.array(fold))


def test_perfectly_separable_embeddings():
    pairs = _synthetic_pairs()
    rng = np.random.default_rng(0)
    emb = {}
    for a, b, s in zip(pairs.a, pairs.b, pairs.same):
        x = rng.normal(size=16)
        emb[a] = x
        emb[b] = x + 0.05 * rng.normal(size=16) if s else rng.normal(size=16)  # random pairs: |cos| << 1
    res = V.verify(emb, pairs, "cosine")
    assert res.accuracy == 1.0 and res.accuracy_std == 0.0 and res.auc == 1.0
    assert len(res.fold_accuracy) == 10 and res.n_pairs == 600
    # Euclidean scores (minus distance) separate them too; thresholds are negative distances
    res_e = V.verify(emb, pairs, "euclidean")
    assert res_e.accuracy == 1.0 and (res_e.thresholds < 0).all()


def test_known_accuracy_with_flipped_pairs():
    """Per fold, 3 of 30 mismatched pairs score like matched ones: best accuracy is exactly 57/60."""
    pairs = _synthetic_pairs()
    scores = np.where(pairs.same, 0.9, 0.1)
    for f in range(10):
        idx = np.flatnonzero((pairs.fold == f) & ~pairs.same)[:3]
        scores[idx] = 0.9
    accs, thrs = V.kfold_accuracy(scores, pairs.same, pairs.fold)
    np.testing.assert_allclose(accs, 57 / 60)
    np.testing.assert_allclose(thrs, 0.5)  # midway between the two score levels


def test_threshold_is_chosen_on_the_other_folds():
    """Fold 0's own best threshold would be perfect, but the 9 training folds pick another one."""
    pairs = _synthetic_pairs(n_folds=10, per=10)
    scores = np.where(pairs.same, 1.0, 0.0)
    f0 = pairs.fold == 0
    scores[f0 & pairs.same] = 0.4  # fold 0: matched 0.4, mismatched 0.0 -> separable on its own
    accs, thrs = V.kfold_accuracy(scores, pairs.same, pairs.fold)
    assert thrs[0] == pytest.approx(0.5)  # folds 1..9: midway between mismatched 0 and matched 1
    assert accs[0] == 0.5  # every matched pair of fold 0 falls below it
    assert (accs[1:] == 1.0).all() and np.allclose(thrs[1:], 0.2)  # with fold 0 in training: 0.4 vs 0


def test_best_threshold_and_roc_auc_known():
    same = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.3, 0.4, 0.2, 0.1])
    t, acc = V.best_threshold(scores, same)
    assert acc == pytest.approx(5 / 6) and 0.4 < t <= 0.8
    res = V.verify(
        {f"a{i}": np.array([s, 0.0]) for i, s in enumerate(scores)}
        | {f"b{i}": np.array([1.0, 0.0]) for i in range(6)},
        V.PairSet(
            tuple(f"a{i}" for i in range(6)), tuple(f"b{i}" for i in range(6)), same, np.array([0, 1] * 3)
        ),
        metric=lambda x, y: x[:, 0],  # score = the stored number
    )
    assert res.auc == pytest.approx(8 / 9)  # 8 of the 9 (matched, mismatched) orderings are right


def test_missing_embeddings():
    pairs = _synthetic_pairs(n_folds=2, per=5)
    emb = {k: np.ones(4) for k in pairs.images()}
    del emb[pairs.a[0]]
    with pytest.raises(KeyError, match="1 of 20 pairs lack an embedding"):
        V.verify(emb, pairs)
    scores, kept = V.pair_scores(emb, pairs, missing="drop")
    assert len(kept) == 19 and 0 not in kept


def test_real_pairs_file():
    path = paths.lfw_dir() / "pairs.txt"
    if not path.is_file():
        pytest.skip("LFW pairs.txt not available")
    pairs = V.load_pairs(path)
    assert len(pairs) == 6000 and pairs.same.sum() == 3000 and pairs.n_folds == 10
    for f in range(10):
        assert ((pairs.fold == f) & pairs.same).sum() == 300 and (
            (pairs.fold == f) & ~pairs.same
        ).sum() == 300
    # matched pairs share the name, mismatched ones do not; the first lines as in the file
    assert all(a.split("/")[0] == b.split("/")[0] for a, b, s in zip(pairs.a, pairs.b, pairs.same) if s)
    assert not any(
        a.split("/")[0] == b.split("/")[0] for a, b, s in zip(pairs.a, pairs.b, pairs.same) if not s
    )
    assert (
        pairs.a[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
        and pairs.b[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    )
    images = pairs.images()
    assert all((paths.lfw_images_dir() / rel).is_file() for rel in images[:: max(1, len(images) // 50)])
    sub = pairs.sample(30, seed=0)
    assert len(sub) == 300 and sub.same.sum() == 150 and set(np.unique(sub.fold)) == set(range(10))


def test_bad_pairs_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        V.load_pairs(tmp_path / "nope.txt")
    bad = tmp_path / "pairs.txt"
    bad.write_text("2\t1\nA\t1\t2\nB\t1\tC\t2\nD\t1\t2\n")
    with pytest.raises(ValueError, match="3 pair lines, the header announces 4"):
        V.load_pairs(bad, expect_folds=2)
    bad.write_text("1\t1\nA\t1\tB\t2\nD\t1\t2\n")
    with pytest.raises(ValueError, match="line 2 should be a matched"):
        V.load_pairs(bad, expect_folds=None)
