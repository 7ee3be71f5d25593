import json
from collections import Counter

import pytest

from protego_nb import data, paths


def _toy(tmp_path, counts):
    root = tmp_path / "people"
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"{name}_{i + 1:04d}.jpg").write_bytes(b"x")
    (root / "Empty").mkdir()
    (root / "A" / "notes.txt").write_text("not an image")
    return data.FaceDataset.from_folder(root)


def test_from_folder_ignores_non_images_and_empty(tmp_path):
    ds = _toy(tmp_path, {"A": 3, "B": 1})
    assert sorted(ds.identities) == ["A", "B"]
    assert ds.identities["A"] == ["A/A_0001.jpg", "A/A_0002.jpg", "A/A_0003.jpg"]
    assert ds.n_images == 4


def test_missing_folder_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.FaceDataset.from_folder(tmp_path / "nope")


def test_missing_lfw_message(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEGO_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="PROTEGO_DATA_DIR"):
        paths.lfw_images_dir()


def test_lfw_stats(lfw):
    s = lfw.stats()
    # numbers from the dataset's own README (shared/data/README.md)
    assert (s["n_identities"], s["n_images"]) == (5749, 13233)
    assert (s["identities_with_1"], s["identities_with_ge2"], s["identities_with_ge15"]) == (4069, 1680, 96)
    assert s["largest"]["George_W_Bush"] == 530


@pytest.mark.parametrize("protocol", data.PROTOCOLS)
def test_split_deterministic_and_disjoint(lfw, protocol):
    a = data.make_split(lfw, protocol=protocol, seed=3, n_users=6, max_distractors=500)
    b = data.make_split(lfw, protocol=protocol, seed=3, n_users=6, max_distractors=500)
    assert a.to_dict() == b.to_dict()
    c = data.make_split(lfw, protocol=protocol, seed=4, n_users=6, max_distractors=500)
    assert c.user_names != a.user_names or c.to_dict() != a.to_dict()
    a.check_disjoint()
    users = set(a.users)
    assert all(r.split("/")[0] not in users for r in a.distractors)
    assert len(a.distractors) == 500
    for u in a.users.values():
        assert len(lfw.identities[u.identity]) >= 15
        assert not set(u.train) & set(u.queries)
        assert not set(u.train) & set(u.gallery_unseen)


def test_paper_proportions(lfw):
    s = data.make_split(lfw, protocol="paper", seed=0, n_users=20, max_images=60)
    for u in s.users.values():
        n = len(u.queries) + len(u.gallery_seen) + len(u.gallery_unseen)
        assert n == min(60, len(lfw.identities[u.identity]))
        assert abs(len(u.queries) / n - 0.2) <= 0.5 / n + 1e-9
        assert abs(len(u.gallery_unseen) / n - 0.2) <= 0.5 / n + 1e-9
        assert u.train == u.gallery_seen
    capped = [u for u in s.users.values() if u.excluded]
    for u in capped:
        assert len(u.all_used()) == 60
        assert len(u.all_used()) + len(u.excluded) == len(lfw.identities[u.identity])


def test_release_protocol_matches_reference(lfw):
    s = data.make_split(lfw, protocol="release", seed=0, n_users=5, max_images=None)
    for u in s.users.values():
        files = sorted(lfw.identities[u.identity])
        n_train = int(0.6 * len(files))
        assert u.train == files[:n_train]
        rest = files[n_train:]
        assert u.queries == rest[: int(0.5 * len(rest))]
        assert u.gallery_unseen == rest[int(0.5 * len(rest)) :]
        assert u.gallery_seen == []


def test_adding_users_keeps_others_split(lfw):
    a = data.make_split(lfw, users=["Colin_Powell", "Tony_Blair"], seed=1, max_distractors=10)
    b = data.make_split(lfw, users=["Colin_Powell", "Tony_Blair", "Hugo_Chavez"], seed=1, max_distractors=10)
    assert a.users["Tony_Blair"] == b.users["Tony_Blair"]


def test_manifest_roundtrip_and_mismatch(lfw, tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "manifests_dir", lambda: tmp_path)
    s = data.get_split(lfw, "t", seed=0, n_users=3, max_distractors=20)
    target = tmp_path / "splits" / "t.json"
    assert json.loads(target.read_text())["users"].keys() == s.users.keys()
    assert data.get_split(lfw, "t", seed=0, n_users=3, max_distractors=20).to_dict() == s.to_dict()
    with pytest.raises(ValueError, match="differs from the committed manifest"):
        data.get_split(lfw, "t", seed=1, n_users=3, max_distractors=20)


def test_committed_manifests_reproduce(lfw):
    """Every committed split manifest is reproduced exactly from its own stored parameters."""
    for target in sorted((paths.manifests_dir() / "splits").glob("*.json")):
        stored = data.Split.load(target)
        p = stored.params
        again = data.make_split(lfw, users=stored.user_names, protocol=stored.protocol, seed=stored.seed,
                                max_images=p["max_images"], max_distractors=p["max_distractors"])
        assert again.users == stored.users, target.name
        assert again.distractors == stored.distractors, target.name
        assert stored.dataset["fingerprint"] == lfw.fingerprint()


def test_too_few_images(tmp_path):
    ds = _toy(tmp_path, {"A": 4, "B": 2, "C": 1})
    with pytest.raises(ValueError, match="too few"):
        data.make_split(ds, users=["B"], protocol="release")
    with pytest.raises(ValueError, match="have >= 15"):
        data.select_users(ds, n=1)


def test_read_pairs(lfw):
    pairs = data.read_pairs()
    assert len(pairs) == 6000
    assert Counter(p.same for p in pairs) == {True: 3000, False: 3000}
    assert Counter(p.fold for p in pairs) == dict.fromkeys(range(10), 600)
    for p in pairs[:50] + pairs[-50:]:
        assert (lfw.root / p.a).exists() and (lfw.root / p.b).exists()
        assert (p.a.split("/")[0] == p.b.split("/")[0]) == p.same
