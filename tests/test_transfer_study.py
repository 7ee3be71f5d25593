"""Tests for protego_nb.transfer_study's two new cells on toy models (tiny conv nets, 32x32 canvases)."""

import numpy as np
import torch
from fakes import TinyFR

from protego_nb import study
from protego_nb.protect import texture as X
from protego_nb.protect import train as T
from protego_nb.protect.ssim import per_image_ssim
from protego_nb.study import transfer as transfer_study

torch.set_num_threads(1)
S, EPS = 32, 16 / 255
MODELS = {"a": TinyFR(1, "a"), "b": TinyFR(2, "b")}


class _UV:
    """The bits of a UVMap that FaceSet.warp('uv') and FaceSet.take use."""

    def __init__(self, uv, vis):
        self.uv, self.vis = uv, vis

    def __getitem__(self, idx):
        return _UV(self.uv[idx], self.vis[idx])


def _faces(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.rand(1, 3, S, S, generator=g), 5, 1, 2)
    x = (base + 0.15 * torch.rand(n, 3, S, S, generator=g)).clamp(0, 1)
    lm = 8 + torch.rand(n, 5, 2, generator=g) * (S - 16)
    uv = torch.nn.functional.avg_pool2d((torch.rand(n, S, S, 2, generator=g) * 2 - 1).permute(0, 3, 1, 2), 5, 1, 2)
    vis = torch.ones(n, 1, S, S)
    ids = [f"U/U_{k + 1:04d}.jpg" for k in range(n)]
    fs = study.FaceSet(ids, x, lm, canvases=dict.fromkeys(ids))
    fs.uv = _UV(uv.permute(0, 2, 3, 1), vis)
    return fs


def _dist(prot, x, lm):
    with torch.no_grad():
        return float(sum(((m(prot, lm) - m(x, lm)) ** 2).sum(1).mean() for m in MODELS.values()))


def test_lowkey_texture_is_bounded_moves_features_and_differs_from_protego(monkeypatch):
    fs = _faces()
    monkeypatch.setattr(study.FaceSet, "warp", lambda self, mode: X.UVWarp(self.uv.uv, self.uv.vis))
    cfg = T.TrainConfig.from_preset("ci", epochs=4, texture_size=S, lr_rel=0.1)
    tex = transfer_study.lowkey_texture(fs, MODELS, cfg, generator=torch.Generator().manual_seed(0))
    assert tex.shape == (1, 3, S, S) and float(tex.abs().max()) <= EPS + 1e-7
    warp = fs.warp("uv")
    init = X.init_texture(cfg.eps, torch.Generator().manual_seed(0), S)
    trained = X.apply_texture(fs.x, warp, tex, cfg.eps)
    start = X.apply_texture(fs.x, warp, init, cfg.eps)
    assert _dist(trained, fs.x, fs.lm) > 1.5 * _dist(start, fs.x, fs.lm)  # the loss pushes features away
    ppt = T.train_ppt(fs.x, fs.lm, warp, MODELS, cfg, generator=torch.Generator().manual_seed(0), progress=False)
    assert not torch.equal(ppt.texture, tex)


def test_protego_per_image_is_bounded_meets_the_floor_and_scatters():
    fs = _faces(8)
    kw = dict(generator=torch.Generator().manual_seed(0), lr=0.01, batch_size=4)
    prot = transfer_study.protego_per_image(fs, MODELS, EPS, 0.95, steps=15, **kw)
    assert (prot - fs.x).abs().max() <= EPS + 1e-6 and prot.min() >= 0 and prot.max() <= 1
    assert (per_image_ssim(prot, fs.x) >= 0.95).all()
    with torch.no_grad():
        m = MODELS["a"]
        zc, zp = m(fs.x, fs.lm), m(prot, fs.lm)
        cos = torch.nn.functional.cosine_similarity(zc, zp, dim=1)
    assert (cos < 0.999).all()  # every photo moved
    # with the log-det the protected photos of a batch spread more than with the cosine push alone
    no_ld = transfer_study.protego_per_image(fs, MODELS, EPS, 0.95, steps=15, use_logdet=False, **kw)
    from protego_nb.protect.losses import gram_logdet

    ld_with = float(gram_logdet(m(prot[:4], fs.lm[:4]).detach()))
    ld_without = float(gram_logdet(m(no_ld[:4], fs.lm[:4]).detach()))
    assert ld_with > ld_without
    zero = transfer_study.protego_per_image(fs, MODELS, EPS, 0.95, steps=0, **kw)
    assert (per_image_ssim(zero, fs.x) >= 0.95).all()


def test_paired_summary_and_cells():
    vals = {"image_protego": {"k": {"u1": 10.0, "u2": 20.0, "u3": 30.0}},
            "ppt_protego": {"k": {"u1": 15.0, "u2": 26.0, "u3": 33.0}}}
    out = transfer_study.paired_summary(vals, ["k", "missing"], transfer_study.CONTRASTS)
    d = out["image_vs_ppt|protego"]["k"]
    assert d["n"] == 3 and np.isclose(d["diff"], -14 / 3) and d["hi"] < 0 and d["effect"]
    assert list(out) == ["image_vs_ppt|protego"]
    methods = transfer_study.cell_methods(steps=7)
    assert set(methods) == set(transfer_study.CELLS)
    assert methods["ppt_protego"] is study.METHODS["protego"] and methods["image_lowkey"].config["steps"] == 7


def test_study_with_ssim_floor_makes_every_canvas_meet_it():
    fs = _faces(6)
    g = torch.Generator().manual_seed(1)
    noisy = torch.clamp(fs.x + (torch.rand(fs.x.shape, generator=g) * 2 - 1) * EPS, 0, 1)
    prots = {"m": {"U": study.Protection("U", "m", None, noisy, list(fs.ids), None, 1.0)},
             "same": {"U": study.Protection("U", "same", None, fs.x.clone(), list(fs.ids), None, 1.0)}}
    before = per_image_ssim(noisy, fs.x)
    floor = float(before.median())
    out, factors = study.with_ssim_floor(prots, {"U": fs}, floor)
    after = per_image_ssim(out["m"]["U"].protected, fs.x)
    assert (after >= floor).all() and ((factors["m"]["U"] < 1) == (before < floor)).all()
    assert torch.equal(out["same"]["U"].protected, fs.x) and (factors["same"]["U"] == 1).all()
    assert out["m"]["U"].seconds == 1.0 and prots["m"]["U"].protected is noisy  # the input is left alone


def test_refining_a_ppt_starts_from_it_and_keeps_the_budget():
    fs = _faces(8)
    g = torch.Generator().manual_seed(2)
    start = torch.clamp(fs.x + (torch.rand(fs.x.shape, generator=g) * 2 - 1) * EPS * 0.3, 0, 1)
    ppt = study.Protection("U", "protego", None, start, list(fs.ids), None, 0.0)
    cfg = T.TrainConfig.from_preset("ci", eps=EPS, batch_size=4)
    same, _ = transfer_study.refine_ppt(ppt, fs, MODELS, cfg, k=0, lr=0.01)
    assert torch.equal(same, start)  # k = 0: the PPT's canvases (they meet the floor)
    ref, sec = transfer_study.refine_ppt(ppt, fs, MODELS, cfg, k=6, lr=0.01)
    assert sec > 0 and (ref - fs.x).abs().max() <= EPS + 1e-6 and (per_image_ssim(ref, fs.x) >= 0.95).all()
    m = MODELS["a"]
    with torch.no_grad():
        cos = [torch.nn.functional.cosine_similarity(m(v, fs.lm), m(fs.x, fs.lm), dim=1).mean() for v in (start, ref)]
    assert cos[1] < cos[0]  # the refinement pushes further from the clean photos


def test_refining_a_ppt_below_the_floor_starts_from_it_scaled_to_the_floor():
    """A PPT whose canvases miss the SSIM floor is scaled down to it first, so no photo falls back to clean."""
    fs = _faces(8)
    g = torch.Generator().manual_seed(5)
    strong = torch.clamp(fs.x + torch.sign(torch.rand(fs.x.shape, generator=g) - 0.5) * EPS, 0, 1)
    assert (per_image_ssim(strong, fs.x) < 0.95).all()
    ppt = study.Protection("U", "protego", None, strong, list(fs.ids), None, 0.0)
    cfg = T.TrainConfig.from_preset("ci", eps=EPS, batch_size=4)
    for k in (0, 1):
        out, _ = transfer_study.refine_ppt(ppt, fs, MODELS, cfg, k=k, lr=0.01)
        s = per_image_ssim(out, fs.x)
        assert (s >= 0.95).all() and (s < 0.999).all(), (k, s)  # at the floor, not the clean photo
