"""Retrieval metrics and scenario galleries on synthetic embeddings with known answers."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from protego_nb.data import Split, UserSplit
from protego_nb.evaluate import ranking
from protego_nb.evaluate import retrieval as R

D = 32


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- helpers
def make_split(protocol: str = "paper") -> Split:
    """Three users with 2 queries, 3 seen and 2 unseen gallery images each; 6 distractors of 3 identities."""
    users = {}
    for u in ("Ann", "Bob", "Cid"):
        f = [f"{u}/{u}_{i:04d}.jpg" for i in range(1, 8)]
        if protocol == "paper":
            users[u] = UserSplit(u, train=f[2:5], queries=f[:2], gallery_seen=f[2:5], gallery_unseen=f[5:])
        else:
            users[u] = UserSplit(u, train=f[:3], queries=f[3:5], gallery_seen=[], gallery_unseen=f[5:])
    distractors = [f"{n}/{n}_{i:04d}.jpg" for n in ("Xa", "Ya", "Za") for i in (1, 2)]
    return Split(protocol, 0, {}, {}, users, distractors)


def cluster_features(split: Split, seed: int = 0, protected: str = "dense") -> dict:
    """Clean: tight cluster per identity. Protected ``dense``: every protected image of a user sits near
    minus its clean centre (the dense cluster of earlier methods); ``scatter``: random directions."""
    g = torch.Generator().manual_seed(seed)
    ids = {i.split("/")[0] for u in split.users.values() for i in u.all_used()} | {
        i.split("/")[0] for i in split.distractors}
    centre = {n: torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0) for n in sorted(ids)}
    clean, prot = {}, {}
    for u in split.users.values():
        for i in u.all_used():
            clean[i] = centre[u.identity] + 0.01 * torch.randn(D, generator=g)
            if protected == "dense":
                prot[i] = -centre[u.identity] + 0.01 * torch.randn(D, generator=g)
            else:
                prot[i] = torch.randn(D, generator=g)
    for i in split.distractors:
        clean[i] = centre[i.split("/")[0]] + 0.01 * torch.randn(D, generator=g)
    return {"clean": clean, "protected": prot, "similarity": "cosine", "model": "toy", "method": protected}


def brute_force_expected(sim: np.ndarray, rel: np.ndarray, k: int) -> float:
    """Expected #relevant in the top k over every ordering of tied scores (exhaustive)."""
    G = len(sim)
    vals = []
    for perm in itertools.permutations(range(G)):
        order = sorted(perm, key=lambda j: -sim[j])  # stable: ties kept in permutation order
        vals.append(rel[order[:k]].sum())
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- similarity
def test_similarity_matrix_values():
    q = torch.tensor([[3.0, 4.0]])
    g = torch.tensor([[6.0, 8.0], [0.0, 1.0], [3.0, 4.0]])
    cos = ranking.similarity_matrix(q, g, "cosine")
    np.testing.assert_allclose(cos.numpy(), [[1.0, 0.8, 1.0]], atol=1e-12)
    euc = ranking.similarity_matrix(q, g.numpy(), "euclidean")
    np.testing.assert_allclose(euc.numpy(), [[-5.0, -np.sqrt(9 + 9), 0.0]], atol=1e-12)
    with pytest.raises(ValueError, match="unknown metric"):
        ranking.similarity_matrix(q, g, "manhattan")
    with pytest.raises(ValueError, match="dimension"):
        ranking.similarity_matrix(q, torch.zeros(2, 3), "cosine")
    with pytest.raises(ValueError, match="NaN"):
        ranking.similarity_matrix(torch.tensor([[np.nan, 1.0]]), g, "cosine")


# ----------------------------------------------------------------------------- rank metrics
def test_true_entries_first_gives_one_and_last_gives_zero():
    sim = np.array([[0.9, 0.8, 0.5, 0.1, 0.0], [0.0, 0.1, 0.5, 0.8, 0.9]])
    rel = np.array([[True, True, False, False, False]] * 2)
    m = ranking.rank_metrics(sim, rel, k=[1, 3])
    np.testing.assert_allclose(m["recall"], [1.0, 0.0])
    np.testing.assert_allclose(m["top1"], [1.0, 0.0])
    np.testing.assert_allclose(m["ap"], [1.0, (1 / 4 + 2 / 5) / 2])
    np.testing.assert_allclose(m["recall@1"], [0.5, 0.0])
    np.testing.assert_allclose(m["recall@3"], [1.0, 0.0])
    np.testing.assert_allclose(m["n_relevant"], [2, 2])


def test_constructed_half_recall():
    # K = 4 true entries; the top 4 hold two of them
    sim = np.array([[0.99, 0.95, 0.9, 0.85, 0.5, 0.4, 0.3, 0.2]])
    rel = np.array([[True, False, True, False, True, True, False, False]])
    m = ranking.rank_metrics(sim, rel)
    assert m["recall"][0] == pytest.approx(0.5)
    assert m["top1"][0] == 1.0
    assert m["ap"][0] == pytest.approx(average_precision_score(rel[0], sim[0]))


def test_ap_equals_sklearn_including_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        Q, G = 4, int(rng.integers(2, 40))
        sim = np.round(rng.normal(size=(Q, G)), 1)  # many exact ties
        rel = rng.random((Q, G)) < 0.3
        rel[:, 0] = True
        m = ranking.rank_metrics(sim, rel)
        ref = [average_precision_score(rel[q], sim[q]) for q in range(Q)]
        np.testing.assert_allclose(m["ap"], ref, rtol=1e-12)


def test_ties_are_expected_value_over_random_orders():
    rng = np.random.default_rng(1)
    for _ in range(15):
        G = 6
        sim = rng.integers(0, 3, size=G).astype(float)
        rel = rng.random(G) < 0.5
        rel[rng.integers(G)] = True
        m = ranking.rank_metrics(sim[None], rel[None], k=[2])
        K = int(rel.sum())
        assert m["recall"][0] == pytest.approx(brute_force_expected(sim, rel, K) / K)
        assert m["top1"][0] == pytest.approx(brute_force_expected(sim, rel, 1))
        assert m["recall@2"][0] == pytest.approx(brute_force_expected(sim, rel, 2) / K)
    # all tied: every metric is the base rate, independent of gallery order
    m = ranking.rank_metrics(np.zeros((1, 4)), np.array([[True, False, False, False]]))
    assert m["recall"][0] == pytest.approx(0.25) and m["top1"][0] == pytest.approx(0.25)


def test_rank_metrics_edge_cases():
    m = ranking.rank_metrics(np.array([[0.3, 0.2]]), np.array([[False, False]]))
    assert np.isnan(m["recall"][0]) and np.isnan(m["ap"][0])
    with pytest.raises(ValueError, match="shape"):
        ranking.rank_metrics(np.zeros((2, 3)), np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="k must be"):
        ranking.rank_metrics(np.zeros((1, 3)), np.ones((1, 3), bool), k=0)


def test_euclidean_and_cosine_rank_differently():
    # the true entry points the same way as the query but is far; the distractor is near but at an angle
    q = np.array([[1.0, 0.0]])
    g = np.array([[10.0, 0.0], [1.0, 0.5]])
    rel = np.array([[True, False]])
    assert ranking.rank_metrics(ranking.similarity_matrix(q, g, "cosine"), rel)["recall"][0] == 1.0
    assert ranking.rank_metrics(ranking.similarity_matrix(q, g, "euclidean"), rel)["recall"][0] == 0.0


# ----------------------------------------------------------------------------- scenarios
def test_scenario_names_round_trip():
    for name in ["1b", "1a", "2b", "2a", "2a-unseen", "1-cov0.25", "2-cov0.5-unseen"]:
        assert R.Scenario.parse(name).name == name
    assert R.Scenario.parse("2a") == R.Scenario(True, 1.0)
    assert R.Scenario(False, 0.0).name == "1b"
    with pytest.raises(ValueError, match="unknown scenario"):
        R.Scenario.parse("3c")
    with pytest.raises(ValueError, match="coverage"):
        R.Scenario(True, 1.5)
    sweep = R.coverage_scenarios([0, 0.5, 1], queries=("protected",))
    assert [s.name for s in sweep] == ["2b", "2-cov0.5", "2a"]


@pytest.mark.parametrize("name,q_prot,g_prot", [("1b", False, False), ("1a", False, True),
                                                 ("2b", True, False), ("2a", True, True)])
def test_gallery_holds_right_entries_with_right_state(name, q_prot, g_prot):
    split = make_split()
    feats = cluster_features(split)
    gal = R.build_gallery(feats, split, "Bob", name)
    bob = split.users["Bob"]
    assert gal.query_ids == bob.queries
    want_q = torch.stack([feats["protected" if q_prot else "clean"][i] for i in bob.queries]).float()
    assert torch.equal(gal.queries, want_q)
    # true entries: Bob's whole gallery, in the scenario's state
    assert [i for i, r in zip(gal.ids, gal.relevant) if r] == bob.gallery
    assert gal.K == 5
    # other users' gallery entries follow the gallery state; distractors are clean
    others = [i for i, s in zip(gal.ids, gal.source) if s == "other_user"]
    assert sorted(others) == sorted(split.users["Ann"].gallery + split.users["Cid"].gallery)
    assert [i for i, s in zip(gal.ids, gal.source) if s == "distractor"] == split.distractors
    for i, s, p, row in zip(gal.ids, gal.source, gal.protected, gal.emb):
        want = g_prot and s != "distractor"
        assert p == want, (i, s)
        assert torch.equal(row, feats["protected" if want else "clean"][i].float())
    assert gal.n_missing == 0


def test_gallery_options_for_other_users():
    split = make_split()
    feats = cluster_features(split)
    gal = R.build_gallery(feats, split, "Ann", "2a", protect_others=False)
    assert not gal.protected[gal.source == "other_user"].any()
    assert gal.protected[gal.relevant].all()
    gal = R.build_gallery(feats, split, "Ann", "2a", include_others=False)
    assert set(gal.source) == {"user", "distractor"}
    assert len(gal.ids) == 5 + 6


def test_unseen_variant_restricts_true_entries():
    split = make_split()
    feats = cluster_features(split)
    gal = R.build_gallery(feats, split, "Cid", "1a-unseen")
    cid = split.users["Cid"]
    assert gal.K == len(cid.gallery_unseen) == 2
    assert [i for i, r in zip(gal.ids, gal.relevant) if r] == cid.gallery_unseen
    assert not set(cid.gallery_seen) & set(gal.ids)  # seen entries are not in the gallery at all
    df = R.evaluate_users(feats, split, ["1b-unseen", "2a-unseen"])
    assert (df["K"] == 2).all()
    # release protocol: gallery_seen is empty, so unseen == full gallery
    rel = make_split("release")
    f2 = cluster_features(rel)
    a = R.evaluate_users(f2, rel, ["2a", "2a-unseen"])
    assert a["recall"].tolist()[0::2] == a["recall"].tolist()[1::2]


def test_coverage_extremes_equal_clean_and_protected_scenarios():
    split = make_split()
    feats = cluster_features(split, protected="scatter")
    cols = ["user", "recall", "top1", "mAP", "K", "gallery_size", "n_protected_true"]
    base = R.evaluate_users(feats, split, ["1b", "1a", "2b", "2a"], metric=["cosine", "euclidean"])
    sweep = R.evaluate_users(feats, split, R.coverage_scenarios([0.0, 1.0]), metric=["cosine", "euclidean"])
    for name in ["1b", "1a", "2b", "2a"]:
        a = base[base.scenario == name][cols].reset_index(drop=True)
        b = sweep[sweep.scenario == name][cols].reset_index(drop=True)
        assert len(a) == 6
        assert a.equals(b)


def test_coverage_fraction_is_seeded_and_nested():
    split = make_split()
    feats = cluster_features(split)
    sets = []
    for p in (0.2, 0.4, 0.6, 0.8):
        gal = R.build_gallery(feats, split, "Ann", R.Scenario(True, p), seed=3)
        again = R.build_gallery(feats, split, "Ann", R.Scenario(True, p), seed=3)
        prot = {i for i, r, s in zip(gal.ids, gal.relevant, gal.protected) if r and s}
        assert prot == {i for i, r, s in zip(again.ids, again.relevant, again.protected) if r and s}
        assert len(prot) == round(p * 5)
        others = gal.protected[gal.source == "other_user"]
        assert others.sum() == 2 * round(p * 5)
        sets.append(prot)
    assert all(a <= b for a, b in itertools.pairwise(sets))
    # the seed matters: over a few seeds the chosen subsets are not all the same
    chosen = set()
    for seed in range(6):
        gal = R.build_gallery(feats, split, "Ann", R.Scenario(False, 0.4), seed=seed)
        chosen.add(frozenset(i for i, r, s in zip(gal.ids, gal.relevant, gal.protected) if r and s))
    assert len(chosen) > 1


def test_dense_cluster_known_answers():
    """Clean clusters: 1b perfect. Protected = minus the clean centre (one dense cluster): a clean query
    ranks protected entries last (1a = 2b = 0) but protected queries find them (2a = 1)."""
    split = make_split()
    feats = cluster_features(split, protected="dense")
    df = R.evaluate_users(feats, split, ["1b", "1a", "2b", "2a"], k=[1])
    by = df.groupby("scenario")["recall"].agg(["min", "max"])
    assert by.loc["1b"].tolist() == [1.0, 1.0]
    assert by.loc["1a"].tolist() == [0.0, 0.0]
    assert by.loc["2b"].tolist() == [0.0, 0.0]
    assert by.loc["2a"].tolist() == [1.0, 1.0]
    assert (df[df.scenario == "2a"]["top1"] == 1.0).all()
    assert (df["n_queries"] == 2).all() and (df["gallery_size"] == 5 + 10 + 6).all()
    assert (df["metric"] == "cosine").all() and df["native"].all()


def test_native_metric_and_both_reported():
    split = make_split()
    feats = cluster_features(split)
    feats["similarity"] = "euclidean"
    df = R.evaluate_users(feats, split, ["1b"], metric=("native", "cosine", "euclidean"))
    assert sorted(df["metric"].unique()) == ["cosine", "euclidean"]  # native resolved, kept once
    assert df[df.metric == "euclidean"]["native"].all() and not df[df.metric == "cosine"]["native"].any()
    with pytest.raises(ValueError, match="unknown metric"):
        R.evaluate_users(feats, split, ["1b"], metric="dot")


def test_missing_embeddings_are_dropped_and_counted_or_raise():
    split = make_split()
    feats = cluster_features(split)
    gone = split.users["Ann"].gallery[0]
    del feats["protected"][gone]
    del feats["clean"][split.distractors[0]]
    df = R.evaluate_users(feats, split, ["1a"], users=["Ann"])
    assert df["K"].iloc[0] == 4 and df["n_missing"].iloc[0] == 2
    with pytest.raises(KeyError, match="Ann gallery.*protected.*" + gone.split("/")[1]):
        R.build_gallery(feats, split, "Ann", "1a", on_missing="raise")
    with pytest.raises(ValueError, match="need protected features"):
        R.evaluate_users({"clean": feats["clean"]}, split, ["2a"])
    with pytest.raises(KeyError, match="not in the split"):
        R.build_gallery(feats, split, "Zed", "1b")


def test_summarise_mean_and_std_over_users():
    split = make_split()
    feats = cluster_features(split, protected="scatter")
    df = R.evaluate_users(feats, split, ["1b", "2a"], k=[1])
    s = R.summarise(df)
    assert list(s["scenario"]) == ["1b", "2a"]
    row = s[s.scenario == "2a"].iloc[0]
    vals = df[df.scenario == "2a"]["recall"]
    assert row["recall_mean"] == pytest.approx(vals.mean())
    assert row["recall_std"] == pytest.approx(vals.std(ddof=1))
    assert row["n_users"] == 3 and "recall@1_mean" in s.columns
    t = R.summarise(df, text=True)
    assert t[t.scenario == "1b"]["recall"].iloc[0] == "100.0 ± 0.0"


def test_evaluate_users_equals_gallery_reference_path():
    """The fast path (distractors sorted once per user) gives exactly the per-gallery rank_metrics."""
    split = make_split()
    feats = cluster_features(split, protected="scatter", seed=7)
    scs = ["1b", "2a", "1a-unseen", "2-cov0.4"]
    df = R.evaluate_users(feats, split, scs, metric=["cosine", "euclidean"], k=[2, 7])
    for row in df.itertuples():
        gal = R.build_gallery(feats, split, row.user, row.scenario)
        ref = gal.metrics(row.metric, k=[2, 7])
        assert row.recall == pytest.approx(ref["recall"].mean(), abs=1e-12)
        assert row.mAP == pytest.approx(ref["ap"].mean(), abs=1e-12)
        assert row.top1 == pytest.approx(ref["top1"].mean(), abs=1e-12)
        assert df.loc[row.Index, "recall@7"] == pytest.approx(ref["recall@7"].mean(), abs=1e-12)
        assert row.gallery_size == len(gal.ids) and row.K == gal.K


def test_per_query_rows_average_to_the_per_user_rows_and_match_the_reference():
    """per_query=True: one row per query, each equal to build_gallery's metric for that query; the per-user
    rows of the default path are exactly their means (the default numbers are unchanged)."""
    split = make_split()
    feats = cluster_features(split, protected="scatter", seed=3)
    scs = ["1b", "1a", "2b", "2a", "2-cov0.5"]
    agg = R.evaluate_users(feats, split, scs, metric=["cosine", "euclidean"], k=[2])
    pq = R.evaluate_users(feats, split, scs, metric=["cosine", "euclidean"], k=[2], per_query=True)
    assert list(agg.columns) == [c for c in pq.columns if c != "query"]
    keys = ["metric", "user", "scenario"]
    assert len(pq) == int(agg["n_queries"].sum())
    assert (pq.groupby(keys, sort=False).size().values == agg["n_queries"].values).all()
    means = pq.groupby(keys, sort=False)[["recall", "top1", "mAP", "recall@2"]].mean().reset_index()
    for c in ("recall", "top1", "mAP", "recall@2"):
        np.testing.assert_allclose(means[c].values, agg[c].values, rtol=0, atol=1e-12)
    for row in pq[pq.scenario.isin(["2a", "1b"])].itertuples():
        gal = R.build_gallery(feats, split, row.user, row.scenario)
        qi = gal.query_ids.index(row.query)
        ref = gal.metrics(row.metric, k=[2])
        assert row.recall == pytest.approx(ref["recall"][qi], abs=1e-12)
        assert row.mAP == pytest.approx(ref["ap"][qi], abs=1e-12)
    assert set(pq["query"]) == {q for u in split.users.values() for q in u.queries}


def test_non_finite_embeddings_are_refused_with_the_image_named():
    split = make_split()
    feats = cluster_features(split)
    feats["clean"]["Bob/Bob_0003.jpg"] = torch.full((D,), float("nan"))
    with pytest.raises(ValueError, match="NaN or inf, first 'Bob/Bob_0003.jpg'"):
        R.evaluate_users(feats, split, ["1b"])


def test_features_from_model_reads_the_native_metric():
    from types import SimpleNamespace

    split = make_split()
    f = cluster_features(split)
    for spec in (SimpleNamespace(name="m1", similarity="euclidean"), SimpleNamespace(name="m2", metric="euclidean")):
        feats = R.Features.from_model(SimpleNamespace(spec=spec), f["clean"], f["protected"], method="x")
        assert feats.similarity == "euclidean" and feats.model == spec.name and feats.method == "x"
    with pytest.raises(ValueError, match="no spec.similarity"):
        R.Features.from_model(SimpleNamespace(spec=SimpleNamespace(name="m3")), f["clean"])
