"""The study harness on real LFW images with a real (fast) zoo surrogate."""

import time

import pytest
import torch

from protego_nb import data, study
from protego_nb.protect import train as tr
from protego_nb.study import protections


@pytest.fixture(scope="module")
def setup(lfw):
    split = data.make_split(lfw, users=["Colin_Powell", "Tony_Blair"], seed=0, max_images=12, max_distractors=40)
    faces, dis = study.load_study_faces(lfw, split)
    sur = study.load_surrogates(["dlib_resnet"], "sface")
    return split, faces, dis, sur


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(protections, "_cache_path", lambda key, ext: tmp_path / f"{key}.{ext}")
    return tmp_path


def test_faces_have_uv(setup):
    split, faces, dis, _ = setup
    for fs in faces.values():
        assert len(fs) == 12 and not fs.missing and not fs.no_mesh
        assert fs.uv is not None and fs.uv.vis.flatten(1).mean(1).min() > 0.1
    assert len(dis) == 40 and dis.uv is None


def test_intruder_never_a_surrogate():
    with pytest.raises(ValueError, match="intruder"):
        study.load_surrogates(["sface", "dlib_resnet"], "sface")


def test_run_method_caches_and_bounds(setup, tmp_cache):
    split, faces, _, sur = setup
    u = "Tony_Blair"
    cfg = tr.TrainConfig.from_preset("ci", epochs=1)
    a = study.run_method("protego", u, faces[u].take(split.users[u].train), faces[u], sur, cfg)
    assert len(list(tmp_cache.glob("*.ppt"))) == 1
    b = study.run_method("protego", u, faces[u].take(split.users[u].train), faces[u], sur, cfg)
    assert torch.equal(a.texture, b.texture) and b.seconds < a.seconds
    c = study.run_method("chameleon", u, faces[u].take(split.users[u].train), faces[u], sur, cfg)
    assert len(list(tmp_cache.glob("*.ppt"))) == 2 and not torch.equal(a.texture, c.texture)
    for p in (a, c):
        d = p.protected - faces[u].x
        assert d.abs().max() <= cfg.eps + 1e-6 and p.protected.min() >= 0 and p.protected.max() <= 1
    # the UV texture leaves everything outside the face mesh untouched; the flat mask does not
    outside = faces[u].uv.vis == 0
    assert (a.protected - faces[u].x).abs().masked_select(outside.expand_as(a.protected)).max() == 0
    assert (c.protected - faces[u].x).abs().masked_select(outside.expand_as(c.protected)).max() > 0


def test_several_textures_protect_each_image_with_the_texture_its_id_chooses(setup, tmp_cache):
    from protego_nb.protect import texture as X

    split, faces, _, sur = setup
    u = "Colin_Powell"
    cfg = tr.TrainConfig.from_preset("ci", epochs=1, n_textures=3)
    p = study.run_method("protego", u, faces[u].take(split.users[u].train), faces[u], sur, cfg)
    assert p.texture.shape[0] == 3
    choice = X.texture_choice(faces[u].ids, 3)
    assert len(set(choice.tolist())) > 1
    warp = faces[u].warp("uv")
    for i in range(len(faces[u])):
        k = int(choice[i])
        one = X.apply_texture(faces[u].x[i : i + 1], warp.select([i]), p.texture[k : k + 1], cfg.eps)
        assert torch.equal(p.protected[i : i + 1], one)


def test_evaluate_rows(setup, tmp_cache):
    split, faces, dis, sur = setup
    cfg = tr.TrainConfig.from_preset("ci", epochs=1)
    prots = study.protect_users(["protego"], split, faces, sur, cfg, progress=False)
    df = study.evaluate(["dlib_resnet"], split, faces, dis, prots, scenarios=["1b", "2a"], metric=("native",))
    assert set(df["user"]) == set(split.user_names) and set(df["scenario"]) == {"1b", "2a"}
    assert (df["n_missing"] == 0).all()
    t = study.recall_table(df)
    assert t.loc[("dlib_resnet", "protego"), "1b"] > 80  # clean retrieval works for these users
    q = study.quality_table(faces, prots, cfg.eps)
    assert len(q) == 24 and (q["linf_255"] <= 16.0 + 1e-3).all()


def test_every_ablation_resolves_to_a_valid_config():
    cfg = tr.TrainConfig.from_preset("paper", epochs=8)
    surs = ["dlib_resnet", "mobilefacenet"]
    for name, (method, _, what) in study.ABLATIONS.items():
        m, c, names = study.ablation_setup(name, cfg, surs)
        assert m == method and m in study.METHODS and what
        assert names and set(names) >= {surs[0]} and len(set(names)) == len(names)
    assert study.ablation_setup("one_surrogate", cfg, surs)[2] == ["dlib_resnet"]
    assert study.ablation_setup("plus_faceres", cfg, surs)[2] == [*surs, "faceres"]
    assert study.ablation_setup("plus_faceres", cfg, [*surs, "faceres"])[2] == [*surs, "faceres"]
    assert study.ablation_setup("epochs_x4", cfg, surs)[1].epochs == 32
    _, c, _ = study.ablation_setup("transfer_max", cfg, surs)
    assert (c.blur_view, c.input_diversity, c.epochs) == (1.5, 0.5, 32) and cfg.blur_view == 0
    assert study.ablation_setup("base", cfg, surs)[1] == cfg
    with pytest.raises(ValueError, match="unknown ablation"):
        study.ablation_setup("nope", cfg, surs)


def test_per_image_cache_hit_reports_the_recorded_time(setup, tmp_cache):
    split, faces, _, sur = setup
    u = "Tony_Blair"
    calls = []

    def fake(fs, surrogates, eps, min_ssim, device, generator):
        calls.append(len(fs))
        time.sleep(0.05)
        return (fs.x + eps / 2).clamp(0, 1)

    before = dict(study.METHODS)
    try:
        study.register_method(study.Method("fake_cloak", kind="per_image", mode="flat", fn=fake, title="test"))
        cfg = tr.TrainConfig.from_preset("ci", epochs=1)
        a = study.run_method("fake_cloak", u, faces[u], faces[u], sur, cfg)
        b = study.run_method("fake_cloak", u, faces[u], faces[u], sur, cfg)
    finally:
        study.METHODS.clear()
        study.METHODS.update(before)
    assert calls == [len(faces[u])]  # the second call is a cache hit
    assert a.seconds >= 0.05 and b.seconds == pytest.approx(a.seconds, abs=1e-3)
    assert torch.equal(a.protected, b.protected)  # rounded to float16 on the first run too
    assert a.protected.dtype == torch.float32


def test_include_others_reaches_the_gallery(setup, tmp_cache):
    """study.evaluate(include_others=False) leaves the other users' entries out of each gallery (it used to
    be ignored): the galleries shrink by the other user's gallery entries and the recall may change."""
    split, faces, dis, sur = setup
    cfg = tr.TrainConfig.from_preset("ci", epochs=1)
    prots = study.protect_users(["protego"], split, faces, sur, cfg, progress=False)
    kw = dict(scenarios=["1b", "2a"], metric=("native",))
    with_o = study.evaluate(["dlib_resnet"], split, faces, dis, prots, include_others=True, **kw)
    without = study.evaluate(["dlib_resnet"], split, faces, dis, prots, include_others=False, **kw)
    assert (with_o["n_other_user_entries"] > 0).all() and (without["n_other_user_entries"] == 0).all()
    other = {u: len(split.users[v].gallery) for u in split.user_names for v in split.user_names if v != u}
    for (_, a), (_, b) in zip(with_o.iterrows(), without.iterrows()):
        assert a["gallery_size"] - b["gallery_size"] == other[a["user"]]
    # per-user values, as the run JSON keeps them
    per = study.per_user(without)
    assert set(per["dlib_resnet"]["protego"]["1b"]) == set(split.user_names)
    assert all(0 <= v <= 100 for v in per["dlib_resnet"]["protego"]["2a"].values())


def test_missing_faces_count_users_and_distractors(lfw):
    """Marilyn_Monroe_0001 has no detectable face: as a distractor it is counted and named, not silently dropped."""
    split = data.make_split(lfw, users=["Tony_Blair"], seed=0, max_images=4, max_distractors=3)
    split.distractors = sorted(split.distractors[:2] + ["Marilyn_Monroe/Marilyn_Monroe_0001.jpg"])
    faces, dis = study.load_study_faces(lfw, split)
    m = study.missing_faces(faces, dis)
    assert list(m["distractors"]) == ["Marilyn_Monroe/Marilyn_Monroe_0001.jpg"]
    assert m["n_distractors"] == 3 and m["n_distractors_scored"] == 2
    assert m["users"] == {} and m["n_user_images"] == m["n_user_images_scored"] == 4


def test_a_missing_method_is_an_error_unless_optional():
    assert study.check_methods(["protego", "chameleon"]) == (["protego", "chameleon"], [])
    with pytest.raises(KeyError, match="not_a_method"):
        study.check_methods(["protego", "not_a_method"])
    assert study.check_methods(["protego", "not_a_method"], optional=["not_a_method"]) == (["protego"], ["not_a_method"])


def test_within_cosine_per_user_matches_cohesion():
    import numpy as np

    rng = np.random.default_rng(0)
    emb = {"a": rng.normal(size=(4, 8)), "b": rng.normal(size=(3, 8)) + 2}
    w = study.within_cosine(emb)
    assert np.mean(list(w.values())) == pytest.approx(study.cohesion(emb)["within"])
