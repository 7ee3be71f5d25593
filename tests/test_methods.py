"""Tests for the peer methods in protego_nb.protect.methods (OPOM, Fawkes-style, LowKey-style) on tiny stand-in models."""


import numpy as np
import pytest
import torch
from fakes import TinyFR
from scipy.optimize import minimize

from protego_nb import study
from protego_nb.protect import methods as M
from protego_nb.protect import train as T
from protego_nb.protect.methods import fawkes, lowkey, opom
from protego_nb.protect.ssim import per_image_ssim

torch.set_num_threads(1)
S = 32  # canvas side
EPS = 16 / 255


MODELS = {"a": TinyFR(1, "a"), "b": TinyFR(2, "b")}


def _faces(n=6, seed=0, name="User_A"):
    """A FaceSet of smooth random canvases of one identity (ids ``Name/Name_000k.jpg``)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(1, 3, S, S, generator=g), 5, 1, 2)
    x = (base + 0.15 * torch.rand(n, 3, S, S, generator=g)).clamp(0, 1)
    lm = 8 + torch.rand(n, 5, 2, generator=g) * (S - 16)
    return study.FaceSet([f"{name}/{name}_{k + 1:04d}.jpg" for k in range(n)], x, lm)


def _pool():
    parts = [_faces(3, seed=10 + k, name=f"Other_{k}") for k in range(3)]
    return M.TargetPool(
        [i.split("/")[0] for p in parts for i in p.ids],
        torch.cat([p.x for p in parts]),
        torch.cat([p.lm for p in parts]),
    )


def _cfg(**kw):
    base = dict(epochs=6, batch_size=4, texture_size=S, lr_rel=0.1, seed=3)
    base.update(kw)
    return T.TrainConfig.from_preset("ci", **base)


def _assert_bounded(prot, clean, eps=EPS):
    assert prot.shape == clean.shape and prot.dtype == torch.float32
    assert float((prot - clean).abs().max()) <= eps + 1e-6
    assert float(prot.min()) >= 0 and float(prot.max()) <= 1


# ---------------------------------------------------------------------------------------- hull solvers
def _simplex_reference(v: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by bisection on the threshold theta: sum(max(v - theta, 0)) = 1."""
    lo, hi = v.min() - 1, v.max()
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.maximum(v - mid, 0).sum() > 1 else (lo, mid)
    return np.maximum(v - (lo + hi) / 2, 0)


def test_simplex_projection_is_correct():
    assert torch.allclose(opom.project_simplex(torch.tensor([2.0, 0.0])), torch.tensor([1.0, 0.0]))
    assert torch.allclose(opom.project_simplex(torch.tensor([0.3, 0.7])), torch.tensor([0.3, 0.7]))
    assert torch.allclose(opom.project_simplex(torch.tensor([0.5, 0.5, 0.5])), torch.full((3,), 1 / 3))
    g = torch.Generator().manual_seed(0)
    v = torch.randn(50, 7, generator=g, dtype=torch.float64) * 2
    p = opom.project_simplex(v)
    assert (p >= 0).all() and torch.allclose(p.sum(1), torch.ones(50, dtype=torch.float64))
    ref = np.stack([_simplex_reference(r) for r in v.numpy()])
    np.testing.assert_allclose(p.numpy(), ref, atol=1e-9)
    # no other simplex point is closer
    q = opom.project_simplex(torch.rand(50, 200, 7, generator=g, dtype=torch.float64) * 3)
    assert ((q - v[:, None]).norm(dim=-1) >= (p - v).norm(dim=-1)[:, None] - 1e-12).all()


def test_affine_hull_matches_numpy_least_squares():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(5, 12, generator=g, dtype=torch.float64)  # 5 affinely independent points in R^12
    z = torch.randn(8, 12, generator=g, dtype=torch.float64)
    a = opom.affine_hull_coefficients(X, z)
    # reference: substitute a_n = 1 - sum(a_1..a_{n-1}) and solve the unconstrained least squares
    Xn = X.numpy()
    A = (Xn[:-1] - Xn[-1]).T  # [D, n-1]
    for i in range(z.shape[0]):
        c, *_ = np.linalg.lstsq(A, z[i].numpy() - Xn[-1], rcond=None)
        ref = np.append(c, 1 - c.sum())
        np.testing.assert_allclose(a[i].numpy(), ref, atol=1e-9)
    assert torch.allclose(a.sum(1), torch.ones(8, dtype=torch.float64))
    # points of the hull project onto themselves (distance 0); rank-deficient hulls (n > D) still work
    inside = torch.tensor([[0.2, 0.3, -0.5, 0.6, 0.4]], dtype=torch.float64) @ X
    assert float(opom.FeatureHull(X).distance2(inside, "affine")) < 1e-18
    many = torch.randn(9, 3, generator=g, dtype=torch.float64)
    assert (
        float(
            opom.FeatureHull(many).distance2(torch.randn(4, 3, generator=g, dtype=torch.float64), "affine").max()
        )
        < 1e-18
    )


def test_convex_hull_matches_a_constrained_solver():
    g = torch.Generator().manual_seed(2)
    X = torch.nn.functional.normalize(torch.randn(6, 10, generator=g, dtype=torch.float64), dim=1)
    z = torch.nn.functional.normalize(torch.randn(5, 10, generator=g, dtype=torch.float64), dim=1)
    hull = opom.FeatureHull(X)
    a = hull.convex(z, iters=300)
    assert (a >= 0).all() and torch.allclose(a.sum(1), torch.ones(5, dtype=torch.float64))
    Xn = X.numpy()
    for i in range(5):
        zi = z[i].numpy()
        res = minimize(
            lambda w, zi=zi: ((w @ Xn - zi) ** 2).sum(),
            np.full(6, 1 / 6),
            jac=lambda w, zi=zi: 2 * Xn @ (w @ Xn - zi),
            bounds=[(0, 1)] * 6,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        ours = float(((a[i] @ X - z[i]) ** 2).sum())
        assert ours <= res.fun + 1e-7
        assert abs(ours - res.fun) < 1e-6
    # the convex hull is farther than the affine hull, and the centre farther than both
    d_aff, d_cvx, d_cen = (hull.distance2(z, k) for k in ("affine", "convex", "centre"))
    assert (d_aff <= d_cvx + 1e-12).all() and (d_cvx <= d_cen + 1e-12).all()
    # a vertex projects onto itself with a one-hot weight
    assert torch.allclose(hull.convex(X[2:3], iters=300), torch.eye(6, dtype=torch.float64)[2:3], atol=1e-6)


# ---------------------------------------------------------------------------------------- OPOM
def _hull_distance(x_prot, faces, kind):
    """Ensemble-mean squared distance of protected (normalised) embeddings to the user's clean hull."""
    out = []
    for m in MODELS.values():
        with torch.no_grad():
            clean = torch.nn.functional.normalize(m(faces.x, faces.lm), dim=1)
            z = torch.nn.functional.normalize(m(x_prot, faces.lm), dim=1)
        out.append(opom.FeatureHull(clean).distance2(z, kind).mean())
    return float(torch.stack(out).mean())


@pytest.mark.parametrize("hull", ["convex", "affine"])
def test_opom_pushes_protected_features_away_from_the_hull(hull):
    faces = _faces(8)
    cfg = _cfg(epochs=8, lr_rel=0.05)
    res = opom.opom_train(
        faces.x, faces.lm, MODELS, cfg, generator=torch.Generator().manual_seed(0), hull=hull, n_init=2
    )
    assert res.texture.shape == (1, 3, S, S) and float(res.texture.abs().max()) <= cfg.eps + 1e-7
    assert res.steps == 16
    # the first n_init epochs use the class centre, then the hull
    assert res.history["hull"][:4] == [opom.HULLS.index("centre")] * 4
    assert set(res.history["hull"][4:]) == {opom.HULLS.index(hull)}
    prot = study.protect_faces(faces, res.texture, "flat", cfg.eps)
    _assert_bounded(prot, faces.x, cfg.eps)
    rand = (torch.rand(1, 3, S, S, generator=torch.Generator().manual_seed(5)) * 2 - 1) * cfg.eps
    d_opom = _hull_distance(prot, faces, hull)
    d_rand = _hull_distance(study.protect_faces(faces, rand, "flat", cfg.eps), faces, hull)
    assert d_opom > 3 * d_rand and d_opom > 0.05
    # the SSIM hinge acts: once a batch falls below the floor its weight rises and SSIM climbs back
    ssim = res.history["ssim"]
    assert min(ssim) < cfg.min_ssim and max(res.history["ssim_weight"]) > 1
    assert ssim[-1] > min(ssim) + 0.015


def test_opom_feature_variant_and_input_errors():
    faces = _faces(4)
    res = opom.opom_train(faces.x, faces.lm, MODELS, _cfg(epochs=3), hull="feature")
    assert set(res.history["hull"]) == {opom.HULLS.index("feature")}
    assert res.history["distance"][-1] > res.history["distance"][0]
    with pytest.raises(ValueError, match="unknown OPOM hull"):
        opom.opom_train(faces.x, faces.lm, MODELS, _cfg(), hull="sphere")
    with pytest.raises(ValueError, match="landmarks"):
        opom.opom_train(faces.x, faces.lm[:2], MODELS, _cfg())
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        opom.opom_train(faces.x * 2, faces.lm, MODELS, _cfg())


# ---------------------------------------------------------------------------------------- Fawkes
def test_select_target_label_picks_the_farthest_identity_and_never_the_user():
    user = {"m": torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0]])}
    pool = {
        "m": torch.tensor(
            [[0.9, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [-1.0, 0.1, 0.0]]
        )
    }
    labels = ["near", "side", "side2", "far", "far"]
    assert fawkes.select_target_label(user, pool, labels) == "far"
    assert fawkes.select_target_label(user, pool, labels, exclude=["far"]) in {"side", "side2"}
    picks = {
        fawkes.select_target_label(user, pool, labels, top_k=3, generator=torch.Generator().manual_seed(s))
        for s in range(20)
    }
    assert picks <= {"far", "side", "side2"} and len(picks) > 1
    with pytest.raises(ValueError, match="no candidate"):
        fawkes.select_target_label(user, pool, labels, exclude=labels)
    with pytest.raises(ValueError, match="same models"):
        fawkes.select_target_label(user, {"other": pool["m"]}, labels)


def test_fawkes_moves_features_toward_the_target_within_the_budget():
    faces = _faces(5)
    pool = _pool()
    prot, info = fawkes.fawkes_protect(
        faces,
        MODELS,
        EPS,
        0.95,
        generator=torch.Generator().manual_seed(0),
        pool=pool,
        mode="high",
        steps=25,
        batch_size=3,
        return_info=True,
    )
    _assert_bounded(prot, faces.x)
    assert info["target"].startswith("Other_") and {pool.labels[i] for i in info["target_index"]} == {
        info["target"]
    }
    assert (info["ssim"] >= 0.95 - 1e-6).all()
    ssim = per_image_ssim(prot, faces.x)
    assert torch.allclose(ssim, info["ssim"], atol=1e-5)
    # every image closer to its target image's embedding, clearly on average
    assert (info["dist"] < info["dist_clean"]).all()
    assert float(info["dist"].mean()) < 0.9 * float(info["dist_clean"].mean())
    assert set(pool.features) == set(MODELS)  # pool embeddings computed once per surrogate and kept


def test_fawkes_needs_a_pool_and_excludes_the_user():
    faces = _faces(3)
    with pytest.raises(TypeError, match="TargetPool"):
        fawkes.fawkes_protect(faces, MODELS, pool=None, steps=1)
    own = M.TargetPool.from_faces(_faces(3, seed=4))  # same identity folder "User_A"
    with pytest.raises(ValueError, match="no candidate"):
        fawkes.fawkes_protect(faces, MODELS, pool=own, steps=1)
    with pytest.raises(ValueError, match="unknown Fawkes mode"):
        fawkes.fawkes_protect(faces, MODELS, pool=own, mode="extreme")


# ---------------------------------------------------------------------------------------- LowKey
def test_lowkey_moves_features_away_from_clean_within_the_budget():
    faces = _faces(5)
    prot, info = lowkey.lowkey_protect(
        faces,
        MODELS,
        EPS,
        0.95,
        generator=torch.Generator().manual_seed(0),
        steps=12,
        lr=0.01,
        batch_size=2,
        return_info=True,
    )
    _assert_bounded(prot, faces.x)
    assert (per_image_ssim(prot, faces.x) >= 0.95 - 1e-6).all()
    with torch.no_grad():
        for m in MODELS.values():
            moved = (m(prot, faces.lm) - m(faces.x, faces.lm)).norm(dim=1) / m(faces.x, faces.lm).norm(dim=1)
            assert (moved > 0.05).all()
    assert (info["dist"] > 0).all()
    # more steps move further (same seed)
    _, short = lowkey.lowkey_protect(
        faces,
        MODELS,
        EPS,
        0.95,
        generator=torch.Generator().manual_seed(0),
        steps=2,
        lr=0.01,
        return_info=True,
    )
    assert float(info["dist"].mean()) > float(short["dist"].mean())


def test_lowkey_zero_steps_and_bad_input():
    faces = _faces(3)
    prot = lowkey.lowkey_protect(faces, MODELS, steps=0, init_noise=0.0)
    assert torch.equal(prot, faces.x)  # only the clean image is feasible and it is not beaten (distance 0)
    with pytest.raises(ValueError, match="eps"):
        lowkey.lowkey_protect(faces, MODELS, eps=0)
    bad = study.FaceSet(faces.ids, faces.x[:, :, :8, :8], faces.lm)
    with pytest.raises(ValueError, match="11x11"):
        lowkey.lowkey_protect(bad, MODELS)


# ---------------------------------------------------------------------------------------- registration
def test_register_all_and_run_method():
    before = dict(study.METHODS)
    try:
        pool = _pool()
        names = M.register_baselines(pool, steps=3)
        assert set(M.BASELINES) <= set(names) <= set(study.METHODS)
        assert study.METHODS["fawkes"].context == ("target_pool", *sorted(pool.labels))  # part of the cache key
        snapshot = {k: (m.kind, m.mode, m.config) for k, m in study.METHODS.items()}
        M.register_baselines(pool, steps=3)  # idempotent
        assert {k: (m.kind, m.mode, m.config) for k, m in study.METHODS.items()} == snapshot
        assert study.METHODS["opom"].kind == "texture_fn" and study.METHODS["opom"].mode == "flat"
        assert study.METHODS["fawkes"].kind == "per_image" and study.METHODS["lowkey"].kind == "per_image"
        assert study.METHODS["fawkes"].config["steps"] == 3
        faces = _faces(6)
        train = study.FaceSet(faces.ids[:4], faces.x[:4], faces.lm[:4])  # (FaceSet.take needs .canvases)
        cfg = _cfg(epochs=2)
        for name in ("opom", "opom_affine", "fawkes", "lowkey"):
            p = study.run_method(name, "User_A", train, faces, MODELS, cfg, cache=False)
            assert p.method == name and p.ids == faces.ids
            _assert_bounded(p.protected, faces.x, cfg.eps)
            assert float((p.protected - faces.x).abs().max()) > 0
            if name.startswith("opom"):
                assert p.texture.shape == (1, 3, S, S)
        with pytest.raises(ValueError, match="unknown Fawkes mode"):
            M.register_baselines(fawkes_mode="extreme")
        assert "fawkes" not in M.register_baselines(steps=3) and "fawkes" not in study.METHODS  # no pool, no Fawkes
        with pytest.raises(KeyError, match="not registered"):
            study.run_method("fawkes", "u", train, faces, MODELS, T.TrainConfig.from_preset("ci"))
    finally:
        study.METHODS.clear()
        study.METHODS.update(before)


# ---------------------------------------------------------------------------------------- real LFW, zoo surrogate
@pytest.mark.slow
def test_baselines_on_lfw_with_a_zoo_surrogate(lfw):
    """All three baselines through ``study.run_method`` on real canvases with ``dlib_resnet`` (a few steps)."""
    from protego_nb import data

    split = data.make_split(lfw, users=["Tony_Blair"], seed=0, max_images=8, max_distractors=12)
    user = "Tony_Blair"
    faces = study.load_faces(lfw, study.user_images(split, user), with_uv=False)
    train = study.load_faces(lfw, split.users[user].train, with_uv=False)
    pool = M.TargetPool.from_faces(study.load_faces(lfw, split.distractors, with_uv=False))
    sur = study.load_surrogates(["dlib_resnet"], "sface")
    model = sur["dlib_resnet"]
    before = dict(study.METHODS)
    try:
        M.register_baselines(pool, steps=4)
        cfg = T.TrainConfig.from_preset("ci", epochs=3)
        with torch.no_grad():
            clean = model(faces.x, faces.lm)
        for name in M.BASELINES:
            p = study.run_method(name, user, train, faces, sur, cfg, cache=False)
            _assert_bounded(p.protected, faces.x, cfg.eps)
            with torch.no_grad():
                moved = (model(p.protected, faces.lm) - clean).norm(dim=1) / clean.norm(dim=1)
            assert float(moved.mean()) > 0.02, name
            if name != "opom":  # per-image methods keep every image at or above the SSIM floor
                assert (per_image_ssim(p.protected, faces.x) >= cfg.min_ssim - 1e-6).all(), name
    finally:
        study.METHODS.clear()
        study.METHODS.update(before)


def test_protego_transfer_is_the_transfer_presets_change_over_paper():
    from protego_nb.protect.methods import get
    from protego_nb.protect.train_config import PRESETS

    m = get("protego_transfer")
    over = {k: v for k, v in PRESETS["transfer"].to_dict().items() if v != PRESETS["paper"].to_dict()[k]}
    assert m.kind == "texture" and m.mode == "uv" and over == {"preset": "transfer", "n_textures": m.config["n_textures"]}
