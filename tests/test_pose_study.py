"""protego_nb.pose_study on real LFW images with a real (fast) zoo surrogate."""

import numpy as np
import pytest

from protego_nb import data, study
from protego_nb.evaluate import pose as P
from protego_nb.protect import train as tr
from protego_nb.study import pose as pose_study
from protego_nb.study import protections


@pytest.fixture(scope="module")
def setup(lfw):
    split = data.make_split(lfw, users=["Colin_Powell", "Tony_Blair"], seed=0, max_images=12, max_distractors=40)
    faces, dis = study.load_study_faces(lfw, split)
    poses = pose_study.image_poses(split, faces)
    return split, faces, dis, poses


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(protections, "_cache_path", lambda key, ext: tmp_path / f"{key}.{ext}")
    return tmp_path


def test_image_poses_one_row_per_image_with_roles(setup):
    split, faces, _, poses = setup
    assert len(poses) == sum(len(f) for f in faces.values()) == 24
    assert set(poses.columns) >= {"id", "user", "role", "yaw", "pitch", "roll", "abs_yaw", "yaw_axis"}
    for u, us in split.users.items():
        p = poses[poses.user == u].set_index("id")
        assert set(p.index[p.role == "queries"]) == set(us.queries)
        assert set(p.index[p.role == "train"]) == set(us.train)
    assert np.isfinite(poses[["yaw", "pitch", "roll"]].to_numpy()).all()
    # canvases are aligned on the eyes, so roll is small; yaw agrees with notebook 01's yaw where roll is small
    assert poses["roll"].abs().max() < 10
    np.testing.assert_allclose(poses["yaw"], poses["yaw_axis"], atol=1.0)


def test_frontal_and_size_matched_training_ids(setup):
    split, _, _, poses = setup
    u = "Tony_Blair"
    train = split.users[u].train
    ay = poses.set_index("id")["abs_yaw"]
    front = pose_study.frontal_train_ids(split, poses, u, 10.0)
    assert set(front) <= set(train) and all(ay[i] < 10.0 for i in front)
    assert set(train) - set(front) == {i for i in train if ay[i] >= 10.0}
    a = pose_study.size_matched_ids(train, 4, 0, u)
    assert a == pose_study.size_matched_ids(train, 4, 0, u) and len(a) == 4 and set(a) <= set(train)
    assert a != pose_study.size_matched_ids(train, 4, 1, u) or a != pose_study.size_matched_ids(train, 4, 2, u)
    with pytest.raises(ValueError, match="cannot draw"):
        pose_study.size_matched_ids(train, len(train) + 1, 0, u)


def test_pose_variants_train_on_the_right_images_and_evaluate_per_query(setup, tmp_cache):
    split, faces, dis, poses = setup
    sur = study.load_surrogates(["dlib_resnet"], "sface")
    cfg = tr.TrainConfig.from_preset("ci", epochs=1)
    ay = poses.set_index("id")["abs_yaw"]
    thr = float(np.median([ay[i] for u in split.users.values() for i in u.train]))  # half the images are frontal
    v = pose_study.protect_pose_variants(split, faces, poses, sur, cfg, thr, min_train=2, progress=False)
    assert v.users and not v.skipped
    for u in v.users:
        front, sized, full = (v.train_ids[k][u] for k in (pose_study.FRONTAL, pose_study.SIZED, "protego"))
        assert max(ay[i] for i in front) < thr and len(sized) == len(front) < len(full)
        assert v.protections[pose_study.FRONTAL][u].method == pose_study.FRONTAL
        assert not np.allclose(v.protections[pose_study.FRONTAL][u].texture, v.protections["protego"][u].texture)
    s = pose_study.frontal_summary(v, poses)
    assert (s[s.variant == pose_study.FRONTAL]["max_abs_yaw"] < thr).all()
    # a threshold no image passes, and one every image passes: every user is left out, with the reason
    none = pose_study.protect_pose_variants(split, faces, poses, sur, cfg, 0.0, progress=False)
    assert set(none.skipped) == set(split.users) and not none.users
    every = pose_study.protect_pose_variants(split, faces, poses, sur, cfg, 90.0, progress=False)
    assert all("all" in r for r in every.skipped.values())

    edges = pose_study.query_edges(poses, [0, 10, 25, 90], min_count=2)
    rows = pose_study.query_rows(["dlib_resnet"], split, faces, dis, v.protections, poses, edges,
                                 scenarios=["2a"])
    n_q = sum(len(u.queries) for u in split.users.values())
    assert len(rows) == 3 * n_q  # 3 variants x every query, one row each
    assert (rows["bin_index"] >= 0).all() and rows["yaw"].notna().all()
    t = P.recall_by_bin(rows, edges, n_boot=100)
    per_bin = t[(t.bin != "all") & (t.method == "protego")]
    assert per_bin["n_queries"].sum() == n_q and per_bin["n_queries"].min() >= 2


def test_entry_table_per_protected_gallery_photo(setup, tmp_cache):
    split, faces, dis, poses = setup
    sur = study.load_surrogates(["dlib_resnet"], "sface")
    cfg = tr.TrainConfig.from_preset("ci", epochs=1)
    prots = study.protect_users(["protego"], split, faces, sur, cfg, progress=False)
    edges = pose_study.entry_edges(poses, [0, 10, 25, 90], min_count=3)
    e = pose_study.entry_table(["dlib_resnet"], split, faces, dis, prots, poses, edges, scenarios=["1a"])
    assert len(e) == sum(len(u.gallery) for u in split.users.values())
    assert e["entry_protected"].all() and (e["bin_index"] >= 0).all()
    q = pose_study.query_rows(["dlib_resnet"], split, faces, dis, prots, poses, edges, scenarios=["1a"])
    # an entry's rate is its share of recall@K: per user, the mean over entries is the mean over queries
    np.testing.assert_allclose(e.groupby("user")["recall"].mean(), q.groupby("user")["recall"].mean(), atol=1e-12)
