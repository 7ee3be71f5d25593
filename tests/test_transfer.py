"""Tests for protego_nb.evaluate.transfer (common vs per-image shift) on synthetic embeddings."""

import numpy as np
import pytest

from protego_nb.evaluate import transfer as T


def _sphere(n, d, seed):
    z = np.random.default_rng(seed).normal(size=(n, d))
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_pure_common_shift_has_no_residual():
    # on the sphere a move is exactly common only when the photos coincide: identical photos, one move
    base = np.repeat(_sphere(1, 32, 0), 12, axis=0)
    v = _sphere(1, 32, 1)[0] * 0.5
    d = T.shift_decomposition(base, base + v)
    assert d["residual_rms"] == pytest.approx(0.0, abs=1e-12)
    assert d["common_fraction"] == pytest.approx(1.0)
    assert d["common_norm"] == pytest.approx(d["shift_rms"]) and d["common_norm"] > 0.3
    assert d["within_cos_protected"] == pytest.approx(1.0)


def test_zero_mean_scatter_has_no_common_part_and_the_parts_add_up():
    clean = _sphere(10, 16, 2)
    protected = -clean  # every photo flipped: delta_i = -2 z_i; remove the mean of delta by symmetry
    both_c = np.concatenate([clean, -clean])
    both_p = np.concatenate([protected, -protected])
    d = T.shift_decomposition(both_c, both_p)
    assert d["common_norm"] == pytest.approx(0.0, abs=1e-12) and d["common_fraction"] == pytest.approx(0.0, abs=1e-12)
    assert d["residual_rms"] == pytest.approx(2.0) and d["cos_to_clean"] == pytest.approx(-1.0)
    # in general: mean |delta|^2 = |m|^2 + mean |r|^2, and normalisation makes raw scale irrelevant
    rng = np.random.default_rng(3)
    c, p = rng.normal(size=(7, 8)), rng.normal(size=(7, 8))
    g = T.shift_decomposition(c, p)
    assert g["shift_rms"] ** 2 == pytest.approx(g["common_norm"] ** 2 + g["residual_rms"] ** 2)
    assert 0 <= g["common_fraction"] <= 1
    assert T.shift_decomposition(5 * c, 0.1 * p) == pytest.approx(g)


def test_unchanged_photos_and_within_cosine():
    clean = _sphere(6, 8, 4)
    d = T.shift_decomposition(clean, clean)
    assert d["shift_rms"] == 0 and np.isnan(d["common_fraction"]) and d["cos_to_clean"] == pytest.approx(1.0)
    g = clean @ clean.T
    assert d["within_cos_clean"] == pytest.approx((g.sum() - 6) / 30) == d["within_cos_protected"]
    assert np.isnan(T.shift_decomposition(clean[:1], clean[:1])["within_cos_clean"])


def test_a_common_move_keeps_photos_together_a_scatter_separates_them():
    rng = np.random.default_rng(5)
    centre = _sphere(1, 64, 6)[0]
    clean = centre + 0.3 * rng.normal(size=(15, 64)) / 8  # a tight cluster
    away = _sphere(1, 64, 7)[0]
    common = T.shift_decomposition(clean, clean + 1.5 * away)
    scatter = T.shift_decomposition(clean, clean + 1.5 * _sphere(15, 64, 8))
    # (the scatter's delta keeps a common part: leaving the cluster removes the shared centre direction)
    assert common["common_fraction"] > 0.9 and scatter["common_fraction"] < 0.4
    assert common["within_cos_protected"] > 0.9 > 0.5 > scatter["within_cos_protected"]
    assert common["cos_to_clean"] < 0.6  # moved far from the clean photos all the same


def test_by_user_and_errors():
    rng = np.random.default_rng(9)
    clean = {f"u/{i}": rng.normal(size=4) for i in range(5)}
    prot = {k: v + 1.0 for k, v in clean.items() if k != "u/4"}
    out = T.shift_by_user(clean, prot, {"u": list(clean)})
    assert out["u"]["n"] == 4 and set(T.SHIFT_KEYS) <= set(out["u"])
    with pytest.raises(ValueError, match="none of their images"):
        T.shift_by_user(clean, prot, {"v": ["v/0"]})
    with pytest.raises(ValueError, match="pair up"):
        T.shift_decomposition(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        T.shift_decomposition(np.full((2, 4), np.nan), np.ones((2, 4)))
