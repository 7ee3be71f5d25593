"""Tests for protego_nb.protect.losses: exact tiny cases and hypothesis properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from protego_nb.protect import losses as L

C = L.GRAM_C
torch.set_num_threads(1)


def _unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


# ---------------------------------------------------------------- exact, hand-computed cases


def test_logdet_orthonormal_rows():
    z = torch.eye(2, 5, dtype=torch.float64)  # G = I
    assert L.logdet_term(z, "logdet").item() == pytest.approx(-2 * math.log(1 + C), abs=1e-12)
    assert L.logdet_term(z, "authors").item() == pytest.approx(-math.log((1 + C) ** 2 + C), abs=1e-12)


def test_logdet_two_rows_at_an_angle():
    theta = 0.3
    z = torch.tensor([[1.0, 0.0], [math.cos(theta), math.sin(theta)]], dtype=torch.float64)
    det = (1 + C) ** 2 - math.cos(theta) ** 2
    assert L.logdet_term(z, "logdet").item() == pytest.approx(-math.log(det), rel=1e-10)
    assert L.logdet_term(z, "authors").item() == pytest.approx(-math.log(det + C), rel=1e-10)


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_logdet_identical_rows(n):
    # G = 11^T: eigenvalues n + c (once) and c (n - 1 times)
    z = torch.ones(n, 7)
    expected = math.log(n + C) + (n - 1) * math.log(C)
    assert L.gram_logdet(z).item() == pytest.approx(expected, rel=1e-5)
    assert L.logdet_term(z, "logdet").item() == pytest.approx(-expected, rel=1e-5)
    assert L.logdet_term(z, "authors").item() == pytest.approx(-math.log(math.exp(expected) + C), rel=1e-5)


def test_authors_form_matches_torch_det_where_det_is_well_conditioned():
    z = _unit(4, 8, seed=3).requires_grad_(True)
    gram = z @ z.T + C * torch.eye(4, dtype=z.dtype)
    ref = -torch.log(torch.linalg.det(gram) + C)  # the authors' expression
    ours = L.logdet_term(z, "authors")
    assert ours.item() == pytest.approx(ref.item(), rel=1e-10)
    (g_ref,) = torch.autograd.grad(ref, z)
    (g_ours,) = torch.autograd.grad(ours, z)
    # ours normalises rows again, so only the tangential part of the gradient matches
    tangential = g_ref - (g_ref * z).sum(1, keepdim=True) * z
    torch.testing.assert_close(g_ours, tangential.detach(), rtol=1e-7, atol=1e-9)


def test_gradients_finite_for_degenerate_batches():
    for z in [torch.ones(16, 8), torch.ones(1, 8), torch.randn(40, 3), torch.zeros(4, 6)]:
        for form in L.LOGDET_FORMS:
            zz = z.clone().requires_grad_(True)
            out = L.logdet_term(zz, form)
            out.backward()
            assert torch.isfinite(out) and torch.isfinite(zz.grad).all(), (tuple(z.shape), form)


def test_authors_gradient_vanishes_for_tight_batches_but_plain_form_does_not():
    # the issue-5 observation: d(authors)/dz = det/(det + c) * d(plain)/dz
    base = torch.nn.functional.normalize(torch.randn(1, 32), dim=1)
    z = (base + 1e-3 * torch.randn(16, 32)).requires_grad_(True)
    (g_a,) = torch.autograd.grad(L.logdet_term(z, "authors"), z)
    (g_p,) = torch.autograd.grad(L.logdet_term(z, "logdet"), z)
    assert g_a.norm() < 1e-6 * g_p.norm()


def test_unknown_form_and_bad_shapes():
    with pytest.raises(ValueError, match="form"):
        L.logdet_term(torch.ones(2, 3), "det")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        L.logdet_term(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="c must be"):
        L.gram_logdet(torch.ones(2, 3), c=0.0)


def test_cosine_term_exact_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert L.cosine_term(a, a).item() == pytest.approx(1.0)
    assert L.cosine_term(-a, a).item() == pytest.approx(-1.0)
    assert L.cosine_term(a, a.flip(1)).item() == pytest.approx(0.0)
    assert L.cosine_term(a, torch.tensor([[1.0, 1.0], [0.0, 1.0]])).item() == pytest.approx((2**-0.5 + 1) / 2)


def test_cosine_term_does_not_backprop_into_clean_features():
    prot = torch.randn(3, 4, requires_grad=True)
    clean = torch.randn(3, 4, requires_grad=True)
    L.cosine_term(prot, clean).backward()
    assert prot.grad is not None and clean.grad is None
    with pytest.raises(ValueError, match="N, D"):
        L.cosine_term(torch.ones(2, 3), torch.ones(3, 3))


# ---------------------------------------------------------------- SSIM


def test_ssim_identical_and_degraded():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert L.ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)
    y1 = (x + 0.02 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    y2 = (x + 0.10 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert 1.0 > L.ssim(y1, x).item() > L.ssim(y2, x).item() > 0.0


def test_ssim_matches_pytorch_msssim_when_available():
    pm = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 48, 40, generator=g)
    y = (x + 0.06 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = pm.ssim(y, x, data_range=1.0, size_average=True)
    assert L.ssim(y, x).item() == pytest.approx(ref.item(), abs=1e-6)


def test_ssim_hinge_values_and_gradient():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 24, 24, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1).requires_grad_(True)
    hinge, s = L.ssim_hinge(y, x, floor=0.99)
    assert hinge.item() == pytest.approx(0.99 - s.item(), abs=1e-7) and hinge.item() > 0
    hinge.backward()
    assert y.grad.abs().sum() > 0
    hinge0, _ = L.ssim_hinge(x, x, floor=0.95)
    assert hinge0.item() == 0.0
    with pytest.raises(ValueError, match="11x11"):
        L.ssim(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


# ---------------------------------------------------------------- the dynamic SSIM weight


def test_dynamic_weight_halves_to_the_lower_bound_and_stays():
    w = L.DynamicSSIMWeight(0.95)
    seen = [w.update(0.99) for _ in range(12)]
    assert seen[:9] == [2.0**-k for k in range(1, 9)] + [2.0**-8]
    assert seen[-1] == 2.0**-8  # w = 1/256 is not > 1/129, and s is outside the band: unchanged


def test_dynamic_weight_doubles_to_the_upper_bound_and_stays():
    w = L.DynamicSSIMWeight(0.95)
    seen = [w.update(0.5) for _ in range(12)]
    assert seen[:8] == [2.0**k for k in range(1, 9)]  # 128 <= 129 still doubles, to 256
    assert seen[8:] == [256.0] * 4  # 256 > 129: unchanged


def test_dynamic_weight_band_resets_and_thresholds_are_inclusive():
    w = L.DynamicSSIMWeight(0.95)
    w.update(0.5)
    w.update(0.5)
    assert w.weight == 4.0
    assert w.update(0.95) == 1.0  # inside the +-1 % band: reset
    assert w.update(1.01 * 0.95) == 0.5  # s >= 1.01 floor: halve
    assert w.update(0.99 * 0.95) == 1.0  # s <= 0.99 floor: double
    state = w.state_dict()
    w2 = L.DynamicSSIMWeight()
    w2.load_state_dict(state)
    assert w2.weight == w.weight and w2.floor == 0.95


# ---------------------------------------------------------------- the ensemble loss


def test_protego_loss_equals_the_authors_formula():
    g = torch.Generator().manual_seed(4)
    feats = {m: torch.randn(4, 8, generator=g) for m in ("a", "b")}
    clean = {m: torch.randn(4, 8, generator=g) for m in ("a", "b")}
    x = torch.rand(4, 3, 16, 16, generator=g)
    xp = (x + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    total, parts = L.protego_loss(feats, clean, xp, x, ssim_weight=4.0)
    hinge = max(0.95 - L.ssim(xp, x).item(), 0.0)
    per_model = []
    for m in ("a", "b"):
        zn = torch.nn.functional.normalize(feats[m].double(), dim=1)
        ld = -math.log(torch.linalg.det(zn @ zn.T + C * torch.eye(4, dtype=torch.float64)).item() + C)
        cos = torch.nn.functional.cosine_similarity(feats[m], clean[m]).mean().item()
        per_model.append(ld + cos + 4.0 * hinge)
        assert parts[f"logdet/{m}"] == pytest.approx(ld, rel=1e-5)
        assert parts[f"cosine/{m}"] == pytest.approx(cos, rel=1e-6)
    assert total.item() == pytest.approx(float(np.mean(per_model)), rel=1e-5)
    assert parts["total"] == pytest.approx(total.item()) and parts["ssim_weight"] == 4.0


def test_protego_loss_options():
    g = torch.Generator().manual_seed(5)
    feats = {m: torch.randn(5, 6, generator=g) for m in ("a", "b")}
    clean = {m: torch.randn(5, 6, generator=g) for m in ("a", "b")}
    base, parts = L.protego_loss(feats, clean)
    cham, cparts = L.protego_loss(feats, clean, use_logdet=False)
    assert cham.item() == pytest.approx((parts["cosine/a"] + parts["cosine/b"]) / 2, rel=1e-6)
    assert cparts["logdet/a"] == pytest.approx(parts["logdet/a"])  # logged even when unused
    only_a, _ = L.protego_loss(feats, clean, model_weights={"a": 1.0, "b": 0.0})
    assert only_a.item() == pytest.approx(parts["logdet/a"] + parts["cosine/a"], rel=1e-6)
    weighted, _ = L.protego_loss(feats, clean, logdet_weight=0.5, cosine_weight=2.0)
    expect = np.mean([0.5 * parts[f"logdet/{m}"] + 2.0 * parts[f"cosine/{m}"] for m in "ab"])
    assert weighted.item() == pytest.approx(expect, rel=1e-6)
    lists, _ = L.protego_loss(list(feats.values()), list(clean.values()))
    assert lists.item() == pytest.approx(base.item())
    with pytest.raises(ValueError, match="different models"):
        L.protego_loss(feats, {"a": clean["a"]})
    with pytest.raises(ValueError, match="unknown models"):
        L.protego_loss(feats, clean, model_weights={"zz": 1.0})


# ---------------------------------------------------------------- hypothesis properties

_batches = st.integers(1, 8).flatmap(
    lambda n: st.integers(1, 10).flatmap(
        lambda d: arrays(np.float64, (n, d), elements=st.floats(-1e3, 1e3, allow_nan=False, width=64))
    )
)


@settings(max_examples=60, deadline=None)
@given(_batches, st.sampled_from(L.LOGDET_FORMS))
def test_prop_finite_and_bounded(z, form):
    t = torch.from_numpy(z)
    n = t.shape[0]
    val = L.logdet_term(t, form).item()
    assert math.isfinite(val)
    # Hadamard: det(G + cI) <= (1 + c)^n, so the loss is >= -n log(1 + c)
    lower = -n * math.log(1 + C) - (math.log(1 + C / (1 + C) ** n) if form == "authors" else 0.0)
    assert val >= lower - 1e-9
    if form == "authors":
        assert val <= -math.log(C) + 1e-9
    else:
        assert val <= -n * math.log(C) + 1e-9  # every eigenvalue of G + cI is >= c


@settings(max_examples=40, deadline=None)
@given(_batches, st.randoms(use_true_random=False))
def test_prop_permutation_invariant(z, rnd):
    t = torch.from_numpy(z)
    perm = list(range(t.shape[0]))
    rnd.shuffle(perm)
    for form in L.LOGDET_FORMS:
        assert L.logdet_term(t[perm], form).item() == pytest.approx(L.logdet_term(t, form).item(), rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.floats(0.0, 0.95), st.floats(0.01, 0.5), st.integers(0, 10_000))
def test_prop_spreading_rows_apart_decreases_the_loss(n, beta, dbeta, seed):
    # rows alpha * u + beta * v_i with orthonormal u, v_i: G = beta^2 I + alpha^2 11^T, whose log det grows with beta
    beta2 = min(beta + dbeta, 1.0)
    q, _ = torch.linalg.qr(torch.randn(n + 3, n + 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    u, v = q[:, 0], q[:, 1:].T

    def rows(b: float) -> torch.Tensor:
        return math.sqrt(1 - b * b) * u + b * v

    tight, spread = L.logdet_term(rows(beta), "logdet").item(), L.logdet_term(rows(beta2), "logdet").item()
    assert spread < tight
    # the authors' form is monotone too, but saturates at -log(c) (equal in float64) while det << c
    tight, spread = L.logdet_term(rows(beta), "authors").item(), L.logdet_term(rows(beta2), "authors").item()
    assert spread <= tight


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 8), st.integers(0, 10_000))
def test_prop_cosine_in_range(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, d, generator=g) * 10, torch.randn(n, d, generator=g)
    v = L.cosine_term(a, b).item()
    assert -1.0 - 1e-6 <= v <= 1.0 + 1e-6
    assert L.cosine_term(a, a).item() == pytest.approx(1.0, abs=1e-5)


def test_shift_diversity_term_is_the_mean_cosine_between_shifts_of_different_textures():
    clean = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    prot = torch.tensor([[1.0, 1.0, 0.0], [2.0, 2.0, 0.0], [1.0, -1.0, 0.0], [1.0, 0.0, 1.0]])
    ids = torch.tensor([0, 1, 2, 2])
    r = 2 ** -0.5
    shifts = np.array([[r - 1, r, 0], [r - 1, r, 0], [r - 1, -r, 0], [r - 1, 0, r]])
    shifts /= np.linalg.norm(shifts, axis=1, keepdims=True)
    cos = shifts @ shifts.T
    want = np.mean([cos[i, j] for i in range(4) for j in range(4) if ids[i] != ids[j]])
    got = L.shift_diversity_term(prot, clean, ids)
    assert float(got) == pytest.approx(want, abs=1e-6) and float(cos[0, 1]) == pytest.approx(1.0)
    assert L.shift_diversity_term(prot, clean, torch.zeros(4, dtype=torch.long)) is None
    terms, values = L.ensemble_terms({"m": prot}, {"m": clean}, texture_ids=ids, diversity_weight=2.0)
    div = [(w, v) for k, w, v in terms if k == "diversity/m"]
    assert len(div) == 1 and div[0][0] == 2.0 and torch.isclose(div[0][1], got)
    assert values["diversity/m"] == pytest.approx(float(got))
    assert not any(k.startswith("diversity") for k, _, _ in L.ensemble_terms({"m": prot}, {"m": clean})[0])
