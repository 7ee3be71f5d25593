"""protego_nb.evaluate.pose: head pose convention on synthetic rotated meshes, bins, user bootstrap, tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from protego_nb.evaluate import pose as P

ANGLES = [(0, 0, 0), (30, 0, 0), (-45, 0, 0), (0, 20, 0), (0, -25, 0), (0, 0, 15), (35, -15, 10), (-60, 25, -20),
          (70, 10, 5)]


@pytest.mark.parametrize("yaw,pitch,roll", ANGLES)
def test_rotation_and_angles_round_trip(yaw, pitch, roll):
    R = P.rotation(yaw, pitch, roll)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(P.angles(R), [yaw, pitch, roll], atol=1e-9)


def test_rotation_signs_match_the_convention():
    nose = np.array([0.0, 0.0, -1.0])  # the nose points to -z (toward the camera) in a frontal head
    assert (P.rotation(30) @ nose)[0] > 0  # positive yaw: nose to the image's right
    assert (P.rotation(0, 20) @ nose)[1] < 0  # positive pitch: nose up (y points down)
    assert (P.rotation(0, 0, 20) @ np.array([1.0, 0, 0]))[1] > 0  # positive roll: left-to-right axis points down
    np.testing.assert_allclose(P.rotation(30)[:, 0], [np.cos(np.radians(30)), 0, np.sin(np.radians(30))])


def _synthetic_head() -> np.ndarray:
    """A head built on the canonical layout (half-cylinder across, a nose bump), re-oriented so its own
    measured frame is the identity (pose 0, 0, 0 by construction)."""
    from protego_nb.faces import mesh

    uv, _ = mesh.load_tables()
    x = (uv[:, 0].astype(np.float64) - 0.5) * 150
    y = (uv[:, 1].astype(np.float64) - 0.5) * 180
    z = -np.sqrt(np.clip(80.0**2 - x**2, 0, None)) - 25 * np.exp(-((x / 20) ** 2 + ((y - 10) / 30) ** 2))
    pts = np.stack([x, y, z], 1)
    R0 = P.head_frame(pts)
    return pts @ R0  # rows: R0^T p, so the frame becomes R0^T R0 = I


@pytest.mark.assets
@pytest.mark.parametrize("yaw,pitch,roll", ANGLES)
def test_head_pose_recovers_the_rotation_of_a_synthetic_mesh(yaw, pitch, roll):
    from protego_nb.faces import mesh

    base = _synthetic_head()
    np.testing.assert_allclose(P.head_frame(base), np.eye(3), atol=1e-9)
    rotated = base @ P.rotation(yaw, pitch, roll).T + [112.0, 112.0, 5.0]
    np.testing.assert_allclose(P.head_pose(rotated), [yaw, pitch, roll], atol=1e-6)
    if roll == 0:  # notebook 01's yaw is the same angle when there is no roll
        assert mesh.estimate_yaw(rotated) == pytest.approx(yaw, abs=1e-6)


@pytest.mark.assets
def test_head_pose_batches_and_keeps_nan_rows():
    base = _synthetic_head()
    batch = np.stack([base @ P.rotation(*a).T for a in ANGLES[:3]] + [np.full_like(base, np.nan)])
    out = P.head_pose(batch)
    assert out.shape == (4, 3)
    np.testing.assert_allclose(out[:3], np.array(ANGLES[:3], dtype=float), atol=1e-6)
    assert np.isnan(out[3]).all()
    df = P.pose_frame(["a", "b", "c", "d"], batch, user="u")
    assert list(df.columns) == ["id", "yaw", "pitch", "roll", "abs_yaw", "user"]
    assert df["abs_yaw"].iloc[2] == pytest.approx(45.0)
    with pytest.raises(ValueError, match="4 ids but 3 meshes"):
        P.pose_frame(["a", "b", "c", "d"], batch[:3])


@pytest.mark.assets
def test_mirrored_synthetic_mesh_flips_yaw_and_roll_not_pitch():
    base = _synthetic_head()
    v = base @ P.rotation(25, 10, 8).T
    from protego_nb.faces import mesh

    flipped = v[mesh.MIRROR468] * [-1.0, 1.0, 1.0]  # mirror the image: x -> -x, partners swap
    # the canonical UV layout is mirror-symmetric to about 1e-3 (mesh.uv_asymmetry), hence the tolerance
    np.testing.assert_allclose(P.head_pose(flipped), [-25, 10, -8], atol=1e-3)


# ------------------------------------------------------------------------------------------ bins
def test_bins_labels_assignment_and_counts():
    edges = [0, 10, 25, 90]
    assert P.bin_labels(edges) == ["0-10", "10-25", ">=25"]
    x = np.array([0.0, 9.99, 10.0, 24.9, 25.0, 89.0, 95.0, np.nan])
    np.testing.assert_array_equal(P.assign_bins(x, edges), [0, 0, 1, 1, 2, 2, 2, -1])
    assert P.bin_counts(x, edges) == {"0-10": 2, "10-25": 2, ">=25": 3, "no pose": 1}
    with pytest.raises(ValueError, match="strictly increasing"):
        P.assign_bins(x, [0, 10, 10, 90])


def test_merge_sparse_bins_merges_the_sparsest_into_its_sparser_neighbour():
    x = np.array([1, 2, 3, 4, 5, 12, 14, 16, 30])  # 5 | 3 | 1
    assert P.merge_sparse_bins(x, [0, 10, 25, 90], 2) == [0, 10, 90]
    assert P.merge_sparse_bins(x, [0, 10, 25, 90], 1) == [0, 10, 25, 90]
    assert P.merge_sparse_bins(x, [0, 10, 25, 90], 100) == [0, 90]
    counts = np.bincount(P.assign_bins(x, P.merge_sparse_bins(x, [0, 5, 10, 25, 90], 3)))
    assert counts.min() >= 3 and counts.sum() == len(x)


# ------------------------------------------------------------------------------------------ bootstrap
def test_user_bootstrap_pools_queries_and_resamples_users():
    users = ["a", "b", "c"]
    w = P.bootstrap_weights(3, 4000, seed=1)
    assert w.shape == (4000, 3) and (w.sum(1) == 3).all()
    vals = [1.0, 1.0, 1.0, 0.0, 0.5]
    us = ["a", "a", "a", "b", "c"]
    s = P.user_bootstrap(vals, us, w, users)
    assert s["mean"] == pytest.approx(3.5 / 5) and s["n"] == 5 and s["n_users"] == 3
    assert 0.0 <= s["lo"] < s["mean"] < s["hi"] <= 1.0
    # all users equal: no spread between users, so the interval collapses
    flat = P.user_bootstrap([0.4, 0.4, 0.4], users, w, users)
    assert flat["lo"] == pytest.approx(0.4) and flat["hi"] == pytest.approx(0.4)
    # a value held by one user only: resamples without that user are counted, not averaged
    one = P.user_bootstrap([1.0], ["b"], w, users)
    assert one["n_empty"] > 0 and one["lo"] == one["hi"] == 1.0
    with pytest.raises(KeyError, match="not in the bootstrap"):
        P.user_bootstrap([1.0], ["zz"], w, users)


def test_user_bootstrap_interval_covers_the_truth_about_95_percent():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(12)]
    hits = 0
    for rep in range(120):
        effects = rng.normal(0.5, 0.15, len(users))  # a user effect: queries of one user are correlated
        vals, us = [], []
        for u, e in zip(users, effects):
            vals += list(np.clip(e + rng.normal(0, 0.05, 6), 0, 1))
            us += [u] * 6
        s = P.user_bootstrap(vals, us, P.bootstrap_weights(len(users), 400, rep), users)
        hits += s["lo"] <= 0.5 <= s["hi"]
    assert 0.8 <= hits / 120 <= 1.0  # percentile interval with 12 clusters: slightly under 95%


def _rows(seed: int = 0) -> pd.DataFrame:
    """Per-query rows of two methods: ``good`` loses recall with |yaw|, ``flat`` does not."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(6):
        for q in range(10):
            ay = float(rng.uniform(0, 40))
            for m, r in (("good", max(0.0, 1 - ay / 40)), ("flat", 0.9)):
                rows.append({"model": "sface", "method": m, "scenario": "2a", "user": f"u{u}",
                             "query": f"u{u}/q{q}", "recall": r, "abs_yaw": ay, "yaw": ay, "pitch": 0.0,
                             "roll": 0.0})
    df = pd.DataFrame(rows)
    df["bin_index"] = P.assign_bins(df["abs_yaw"], [0, 10, 25, 90])
    return df


def test_recall_by_bin_one_row_per_method_scenario_bin_and_counts_add_up():
    df = _rows()
    t = P.recall_by_bin(df, [0, 10, 25, 90], n_boot=300)
    assert len(t) == 2 * 4  # 2 methods x (3 bins + all)
    for _, g in t.groupby("method"):
        bins = g[g["bin"] != "all"]
        assert bins["n_queries"].sum() == g[g["bin"] == "all"]["n_queries"].item() == 60
        assert (bins["ci_lo"] <= bins["recall"] + 1e-9).all() and (bins["recall"] <= bins["ci_hi"] + 1e-9).all()
    good = t[(t.method == "good") & (t.bin != "all")]["recall"].to_numpy()
    assert good[0] > good[1] > good[2]
    np.testing.assert_allclose(t[t.method == "flat"]["recall"], 90.0)


def test_paired_difference_and_yaw_slope():
    df = _rows()
    d = P.paired_difference(df, "flat", "good", [0, 10, 25, 90], n_boot=300)
    assert list(d["bin"]) == ["0-10", "10-25", ">=25", "all"]
    far = d[d["bin"] == ">=25"].iloc[0]
    assert far["diff"] > 30 and far["ci_lo"] > 0 and far["effect"] == "flat higher"
    few = P.paired_difference(df[df["user"].isin(["u0", "u1"])], "flat", "good", [0, 10, 25, 90], n_boot=100)
    assert few["effect"].str.startswith("too few users (").all()
    assert d["n_queries"].iloc[:3].sum() == 60
    s = P.yaw_slope(df, n_boot=300).set_index("method")
    assert s.loc["good", "slope_per_10deg"] == pytest.approx(-25.0, abs=1e-6)  # 100 points / 40 degrees x 10
    assert s.loc["good", "ci_hi"] < 0
    assert s.loc["flat", "slope_per_10deg"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="no rows for method"):
        P.paired_difference(df, "flat", "nope", [0, 10, 25, 90])


def test_attach_pose_joins_by_query_and_refuses_unknown_queries():
    poses = pd.DataFrame({"id": ["a", "b"], "yaw": [5.0, -30.0], "pitch": [1.0, 2.0], "roll": [0.0, 0.0]})
    poses["abs_yaw"] = poses["yaw"].abs()
    pq = pd.DataFrame({"query": ["b", "a", "a"], "recall": [0.1, 0.2, 0.3], "user": "u"})
    out = P.attach_pose(pq, poses, [0, 10, 90])
    assert list(out["bin"]) == [">=10", "0-10", "0-10"] and list(out["yaw"]) == [-30.0, 5.0, 5.0]
    with pytest.raises(KeyError, match="no pose row, first 'c'"):
        P.attach_pose(pd.DataFrame({"query": ["c"], "recall": [1.0]}), poses, [0, 10, 90])


def test_recall_vs_yaw_figure_has_a_panel_per_scenario_and_model():
    import matplotlib

    matplotlib.use("Agg")
    from protego_nb import plots_pose

    t = P.recall_by_bin(_rows(), [0, 10, 25, 90], n_boot=50)
    fig = plots_pose.fig_recall_vs_yaw(t, ["sface"], ["2a"], ["good", "flat"], intruder="sface")
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and "black-box" in ax.get_title()
    assert [tk.get_text().split("\n")[0] for tk in ax.get_xticklabels()] == ["0-10", "10-25", ">=25"]
    assert len(ax.get_legend().get_texts()) == 2


@pytest.mark.assets
def test_pose_sanity_figure_draws_every_picked_canvas():
    import matplotlib

    matplotlib.use("Agg")
    from protego_nb import plots_pose

    base = _synthetic_head() + [112.0, 112.0, 0.0]
    angles = [(-30, 0, 0), (-10, 5, 0), (0, 0, 0), (15, -5, 2), (40, 0, 0)]
    verts = np.stack([(base - 112) @ P.rotation(*a).T + 112 for a in angles])
    poses = P.pose_frame([f"i{k}" for k in range(5)], verts)
    poses["yaw_axis"] = poses["yaw"]
    canv = [np.zeros((224, 224, 3), np.uint8)] * 5
    fig = plots_pose.fig_pose_sanity(canv, verts, poses, n=4)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert titles[0].startswith("yaw -30") and titles[3].startswith("yaw +40")


def test_entry_found_rows_average_to_each_querys_recall_even_with_ties():
    from protego_nb.evaluate import retrieval as R

    rng = np.random.default_rng(4)
    for _ in range(20):
        sim = rng.integers(0, 6, size=(5, 30)).astype(float)  # many ties
        rel = np.zeros(30, bool)
        rel[rng.choice(30, size=7, replace=False)] = True
        f = P.entry_found(sim, rel)
        assert f.shape == (5, 7) and ((f >= 0) & (f <= 1)).all()
        ref = R.rank_metrics(sim, np.broadcast_to(rel, sim.shape))["recall"]
        np.testing.assert_allclose(f.mean(1), ref, atol=1e-12)
    sim = np.array([[0.9, 0.1, 0.8, 0.2]])
    np.testing.assert_array_equal(P.entry_found(sim, np.array([True, True, False, False])), [[1.0, 0.0]])
