"""protego_nb.evaluate.stats: mean +- std and the paired bootstrap."""

import math

import numpy as np
import pytest

from protego_nb.evaluate import stats


def test_mean_std_and_format():
    m, s, n = stats.mean_std({"a": 1.0, "b": 3.0, "c": None, "d": float("nan")})
    assert (m, n) == (2.0, 2) and s == pytest.approx(math.sqrt(2))
    assert stats.fmt_mean_std(93.333, 5.46) == "93.3 ± 5.5"
    assert stats.fmt_mean_std(1.0, float("nan")) == "1.0" and stats.fmt_mean_std(float("nan"), 1) == ""
    assert math.isnan(stats.mean_std([4.0])[1])


def test_known_zero_difference_contains_zero():
    rng = np.random.default_rng(1)
    base = rng.normal(80, 10, 12)
    a = {f"u{i}": v for i, v in enumerate(base)}
    b = {f"u{i}": v + rng.normal(0, 2) for i, v in enumerate(base)}
    b = {k: v - (np.mean(list(b.values())) - np.mean(list(a.values()))) for k, v in b.items()}  # mean diff exactly 0
    p = stats.paired_bootstrap(a, b)
    assert abs(p.diff) < 1e-9 and p.lo < 0 < p.hi and not p.effect


def test_clear_effect_excludes_zero_even_when_users_differ_a_lot():
    rng = np.random.default_rng(2)
    base = rng.normal(60, 25, 10)  # a large spread between users ...
    a = dict(enumerate(base))
    b = {i: v + 5 + rng.normal(0, 1) for i, v in enumerate(base)}  # ... but b is 5 points higher for everyone
    p = stats.paired_bootstrap(a, b)
    assert p.effect and p.hi < 0 and p.diff == pytest.approx(-5, abs=1)


def test_seeded_and_order_free():
    a = {"x": 1.0, "y": 4.0, "z": 2.0, "w": 8.0}
    b = {"w": 3.0, "z": 2.5, "y": 1.0, "x": 0.0}
    p1, p2 = stats.paired_bootstrap(a, b), stats.paired_bootstrap(dict(reversed(a.items())), b)
    assert p1 == p2


def test_same_users_required():
    with pytest.raises(ValueError, match="same users"):
        stats.paired_bootstrap({"a": 1, "b": 2}, {"a": 1, "c": 2})


def test_coverage_on_synthetic_data():
    """About 95% of intervals contain the true mean difference (percentile bootstrap, 20 users)."""
    rng = np.random.default_rng(0)
    hits, reps = 0, 300
    for r in range(reps):
        a = rng.normal(50, 10, 20)
        b = a + rng.normal(1.5, 3, 20)  # true mean difference a - b = -1.5
        p = stats.paired_bootstrap(a, b, n_boot=2000, seed=r)
        hits += p.lo <= -1.5 <= p.hi
    assert 0.88 <= hits / reps <= 0.98, hits / reps


def test_ratio_bootstrap():
    num = {i: 10.0 + i % 3 for i in range(12)}
    den = {i: 5.0 + (i % 2) for i in range(12)}
    r = stats.paired_ratio_bootstrap(num, den)
    assert r["ratio"] == pytest.approx(np.mean(list(num.values())) / np.mean(list(den.values())))
    assert r["lo"] <= r["ratio"] <= r["hi"] and r["n"] == 12


def test_fmt_ci():
    p = stats.PairedDiff(5, 1.0, 2.0, -1.0, -2.25, 0.5)
    assert stats.fmt_ci(p) == "-1.0 [-2.2, +0.5]" and not p.effect
    assert stats.PairedDiff(5, 1, 2, -1, -2, -0.1).effect


def test_ratio_with_a_zero_denominator_is_undefined_not_an_error():
    r = stats.paired_ratio_bootstrap({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.0, "b": 0.0, "c": 0.0})
    assert math.isnan(r["ratio"]) and r["hi"] == float("inf")


def test_ensemble_paired_compares_each_larger_ensemble_with_the_smallest_for_the_same_held_out_model():
    from protego_nb.evaluate import tables

    users = [f"u{i}" for i in range(10)]

    def rec(level, spread=1.0):
        return {s: {u: level + spread * (i % 3) for i, u in enumerate(users)} for s in ("1b", "1a", "2b", "2a")}

    r = {"params": {"intruder": "sface", "surrogates": ["a", "b"], "loo_intruders": ["sface", "x", "paper_like:x"],
                    "loo_surrogates": {"sface": ["a", "b", "c", "x"], "x": ["a", "b", "c", "sface"],
                                       "paper_like:x": ["a", "b", "y"]}},
         "per_user": {"native": {"sface": {"protego": rec(80), "chameleon": rec(90)}},
                      "leave_one_out": {"sface": {"protego": rec(60)}, "x": {"protego": rec(50)},
                                        "paper_like:x": {"protego": rec(50)}}}}
    df = tables.ensemble_paired(r).reset_index()
    assert list(df["held_out"].unique()) == ["sface", "x"] and len(df) == 6
    sf = df[df["held_out"] == "sface"]
    assert sf["comparison"].iloc[0] == "leave-one-out sface (4 surrogates) - main table (2 surrogates)"
    assert (sf["effect"] == "yes").all() and sf["a - b [95% CI]"].str.startswith("-20.0").all()
    x = df[df["held_out"] == "x"]
    assert x["comparison"].iloc[0] == "leave-one-out x (4 surrogates) - leave-one-out paper_like:x (3 surrogates)"
    assert (x["effect"] == "no").all()
    r["per_user"]["leave_one_out"] = {}
    assert tables.ensemble_paired(r).empty
