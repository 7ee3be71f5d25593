"""Tests for protego_nb.models.taps: tap points inside the zoo's nets, and the levers that use them in training."""

import math

import pytest
import torch
from fakes import TinyFR

from protego_nb import assets
from protego_nb.models import taps, zoo
from protego_nb.protect import losses
from protego_nb.protect import texture as X
from protego_nb.protect import train as T

torch.set_num_threads(1)


class Block35(torch.nn.Module):  # named like facenet-pytorch's block: gets a forward hook
    def forward(self, x):
        return torch.relu(x + 0.5 * x)


class Joins(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.b1, self.b2 = Block35(), Block35()

    def forward(self, x, lm):
        return self.b2(self.b1(x)).flatten(1)


class Plain(torch.nn.Module):
    def forward(self, x, lm):
        return x.flatten(1)


X1, LM1 = torch.rand(2, 3, 8, 8), torch.zeros(2, 5, 2)


def test_a_point_is_the_identity_outside_a_tap():
    y = torch.rand(2, 3, 4, 4)
    assert taps.point(y, "join") is y
    seen = []
    with taps.tapped(lambda t, kind: seen.append(kind) or t * 2):
        assert torch.equal(taps.point(y, "act"), y * 2)
    assert seen == ["act"] and taps.point(y, "act") is y  # popped after the block


def test_hooks_make_facenet_blocks_join_points_and_prepare_prefers_joins():
    net = Joins()
    assert taps.count_points(net, X1, LM1) == {"join": 2, "act": 0}
    assert taps.prepare(net, X1, LM1) == ("join", 2)
    assert taps.install_hooks(net) == 2 and len(net.b1._forward_hooks) == 1  # hooked once
    assert taps.prepare(TinyFR(0), torch.rand(2, 3, 32, 32), LM1) == ("act", 1)
    with pytest.raises(ValueError, match="no tap points"):
        taps.prepare(Plain(), X1, LM1)


def test_the_tap_replays_its_dropout_masks_and_records_the_chosen_point():
    net = Joins()
    taps.install_hooks(net)  # (prepare installs them in training)
    plain = net(X1, LM1)
    tap = taps.JoinTap("join", dropout=0.3, record=1, generator=torch.Generator().manual_seed(0))
    with taps.tapped(tap):
        a = net(X1, LM1)
    rec_a = tap.recorded
    assert len(tap.masks) == 2 and not torch.allclose(a, plain)
    zeros = sum(int((m == 0).sum()) for m in tap.masks) / sum(m.numel() for m in tap.masks)
    assert 0.1 < zeros < 0.5 and torch.allclose(tap.masks[0].max(), torch.tensor(1 / 0.7))
    tap.rewind()
    with taps.tapped(tap):
        b = net(X1, LM1)
    assert torch.equal(a, b) and torch.equal(tap.recorded, rec_a)  # the same perturbed network
    tap.rewind()
    with taps.tapped(tap), pytest.raises(RuntimeError, match="differs"):
        net(torch.rand(3, 3, 8, 8), LM1)
    quiet = taps.JoinTap("join", record=0)
    with taps.tapped(quiet):
        assert torch.equal(net(X1, LM1), plain)  # recording alone changes nothing
    assert torch.equal(quiet.recorded, net.b1(X1))
    assert [taps.mid_index(21, d) for d in (0, 0.5, 0.75, 1)] == [0, 10, 15, 20]


def _loaded(name):
    spec = zoo.MODELS[name]
    if zoo.unavailable_reason(name) is not None or (spec.asset_key and not assets.is_fetched(spec.asset_key)):
        pytest.skip(f"{name} not loadable here")
    return zoo.load(name)


@pytest.mark.parametrize("name, kind, count", [("sface", "act", 27), ("mobilefacenet", "join", 12),
                                               ("dlib_resnet", "join", 14), ("facenet_casia", "join", 21),
                                               ("facenet_msceleb", "join", 21), ("mobileface", "join", 17),
                                               ("faceres", "act", 27), ("mobilefacenet512", "join", 12)])
def test_every_reader_exposes_the_real_nets_joins_or_activations(name, kind, count):
    model = _loaded(name)
    x = torch.rand(1, 3, 160, 160)
    lm = torch.tensor([[[55.0, 70.0], [105.0, 70.0], [80.0, 95.0], [60.0, 120.0], [100.0, 120.0]]])
    assert taps.count_points(model, x, lm)[kind] == count
    assert taps.prepare(model, x, lm) == (kind, count)
    with torch.no_grad():
        plain = model(x, lm)
        tap = taps.JoinTap(kind, dropout=0.05, record=count // 2, generator=torch.Generator().manual_seed(1))
        with taps.tapped(tap):
            dropped = model(x, lm)
    assert tap.recorded is not None and tap.recorded.dim() == 4 and len(tap.masks) == count
    cos = float(torch.nn.functional.cosine_similarity(plain, dropped).item())
    assert cos < 0.9999 and bool(torch.isfinite(dropped).all())  # the network is perturbed


# ----------------------------------------------------------------------------------------- the levers in training
S = 32


def _data(n=8):
    g = torch.Generator().manual_seed(0)
    canvases = (torch.rand(1, 3, S, S, generator=g) + 0.1 * torch.rand(n, 3, S, S, generator=g)).clamp(0, 1)
    landmarks = 8 + torch.rand(n, 5, 2, generator=g) * (S - 16)
    uv = torch.nn.functional.avg_pool2d(torch.rand(n, 2, S, S, generator=g) * 2 - 1, 5, 1, 2).permute(0, 2, 3, 1)
    vis = torch.zeros(n, 1, S, S)
    vis[:, :, 4:28, 6:26] = 1
    return canvases, landmarks, X.UVWarp(uv.contiguous(), vis)


MODELS = [TinyFR(1, "a"), TinyFR(2, "b")]


def _train(**kw):
    cfg = T.TrainConfig.from_preset("ci", epochs=6, texture_size=S, lr_rel=0.05, batch_size=4, **kw)
    return T.train_ppt(*_data(), MODELS, cfg, progress=False)


@pytest.mark.parametrize("lever", [{"feature_dropout": 0.1}, {"mid_weight": 1.0},
                                   {"feature_dropout": 0.1, "mid_weight": 1.0, "blur_view": 1.0, "n_textures": 2}])
def test_the_tap_levers_train_within_the_bound_and_change_the_texture(lever):
    res = _train(**lever)
    h = res.history["total"]
    assert all(math.isfinite(v) for v in h) and sum(h[-2:]) / 2 < sum(h[:2]) / 2
    assert res.texture.abs().max() <= torch.tensor(16 / 255, dtype=torch.float32)
    plain = _train(n_textures=lever.get("n_textures", 1), blur_view=lever.get("blur_view", 0.0))
    assert not torch.equal(res.texture, plain.texture)
    assert ("mid/a" in res.history) == ("mid_weight" in lever)
    if "mid_weight" in lever:  # the mid-layer maps are pushed apart: their similarity falls
        assert res.history["mid/a"][-1] < res.history["mid/a"][0]


def test_the_step_clean_reference_goes_through_the_same_perturbed_network(monkeypatch):
    seen = {}
    real = losses.protego_loss

    def spy(prot, clean, *a, **kw):
        seen.setdefault("pairs", []).append((prot["a"].detach(), clean["a"]))
        return real(prot, clean, *a, **kw)

    monkeypatch.setattr(losses, "protego_loss", spy)
    canvases, landmarks, warps = _data()
    cfg = T.TrainConfig.from_preset("ci", epochs=1, texture_size=S, batch_size=4, feature_dropout=0.2, eps=1e-6)
    T.train_ppt(canvases, landmarks, warps, MODELS, cfg, progress=False)
    prot, clean = seen["pairs"][0]
    # eps ~ 0: protected = clean canvases, so under one shared perturbed network their embeddings agree
    assert torch.allclose(prot, clean, atol=1e-4)
    assert not torch.allclose(clean, MODELS[0](canvases[:4], landmarks[:4]), atol=1e-3)  # not the plain net's


def test_tap_options_are_validated_and_keyed_only_when_on():
    cfg = T.TrainConfig.from_preset("paper")
    assert not cfg.uses_taps and not {"feature_dropout", "mid_weight", "mid_depth"} & set(cfg.key_dict())
    assert cfg.replace(feature_dropout=0.05).key_dict()["feature_dropout"] == 0.05
    assert cfg.replace(mid_weight=1.0, mid_depth=0.75).key_dict()["mid_depth"] == 0.75
    for bad in ({"feature_dropout": 0.5}, {"feature_dropout": -0.1}, {"mid_weight": -1.0}, {"mid_depth": 1.5}):
        with pytest.raises(ValueError, match="invalid TrainConfig"):
            cfg.replace(**bad).validate()


def test_mid_feature_terms_weigh_each_model_by_its_share():
    a = torch.rand(3, 4, 5, 5)
    terms = losses.mid_feature_terms({"a": a, "b": -a}, {"a": a, "b": a}, 2.0, {"a": 3.0, "b": 1.0})
    assert [(k, w) for k, w, _ in terms] == [("mid/a", 1.5), ("mid/b", 0.5)]
    assert torch.allclose(terms[0][2], torch.tensor(1.0)) and torch.allclose(terms[1][2], torch.tensor(-1.0))
    with pytest.raises(ValueError, match="share a shape"):
        losses.mid_feature_term(a, a[:2])
