"""The study's tables, built from a notebook's run JSON (its per-user numbers), never from memory.

Notebooks 03-05 save per-user values (``per_user`` in their JSON); the same functions build the tables
the notebook shows and the ones ``scripts/make_results.py`` regenerates into ``data/results/<profile>/``
and the README, so a table always comes from the run it cites. Recall cells are ``mean ± std`` over users
(percent); comparisons are paired differences over the same users with a 95% bootstrap interval
(:mod:`.stats`), and ``effect`` is ``yes`` only when the interval excludes 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from . import stats

MAIN_SCENARIOS = ("1b", "1a", "2b", "2a", "1a-unseen", "2b-unseen", "2a-unseen")
BASE = ("1b", "1a", "2b", "2a")


def _ordered(present, preferred: Sequence[str] | None) -> list[str]:
    """The keys of ``present`` in the order of ``preferred`` (the run's configured order: JSON is written with
    sorted keys), then any others in their stored order."""
    preferred = [k for k in (preferred or []) if k in present]
    return preferred + [k for k in present if k not in preferred]


def _cell(values: Mapping[str, float] | None, digits: int = 1) -> str:
    if not values:
        return ""
    m, s, _ = stats.mean_std(values)
    return stats.fmt_mean_std(m, s, digits)


def _n_users(values: Mapping[str, float]) -> int:
    return stats.mean_std(values)[2]


#: Fewer users than this: no difference is called an effect (a percentile bootstrap over 2-4 users has
#: only a handful of distinct resamples and covers far below its nominal level).
MIN_USERS_FOR_EFFECT = 5


def _effect(p: stats.PairedDiff) -> str:
    if p.n < MIN_USERS_FOR_EFFECT:
        return f"n/a (< {MIN_USERS_FOR_EFFECT} users)"
    return "yes" if p.effect else "no"


def paired_row(a: Mapping[str, float], b: Mapping[str, float], digits: int = 1, seed: int = 0) -> dict:
    """``{"n", "a", "b", "difference [95% CI]", "effect"}`` for one paired comparison."""
    p = stats.paired_bootstrap(a, b, seed=seed)
    return {
        "n": p.n,
        "a": _cell({u: a[u] for u in a if u in b}, digits),
        "b": _cell({u: b[u] for u in b if u in a}, digits),
        "a - b [95% CI]": stats.fmt_ci(p, digits),
        "effect": _effect(p),
    }


def recall_table(per: Mapping[str, Mapping[str, Mapping[str, float]]], scenarios: Sequence[str],
                 rows: Sequence[str] | None = None, index_name: str = "method") -> pd.DataFrame:
    """``per[row][scenario][user]`` -> rows x scenarios of ``mean ± std`` (percent)."""
    rows = list(per) if rows is None else list(rows)
    df = pd.DataFrame(
        [[_cell(per[r].get(s)) for s in scenarios] for r in rows], index=pd.Index(rows, name=index_name),
        columns=list(scenarios),
    )
    return df


# ------------------------------------------------------------------------------------------- notebook 05
def main_table(r: Mapping) -> pd.DataFrame:
    """Black-box intruder, native similarity: methods x scenarios, SSIM and PSNR (mean ± std over users)."""
    p = r["params"]
    per = r["per_user"]["native"][p["intruder"]]
    t = recall_table(per, MAIN_SCENARIOS, p["methods"])
    q = r["per_user"]["quality"]
    t["SSIM"] = [_cell(q[m]["ssim"], 3) for m in p["methods"]]
    t["PSNR"] = [_cell(q[m]["psnr"], 1) for m in p["methods"]]
    t["users"] = [_n_users(per[m]["1b"]) for m in p["methods"]]
    return t


def models_table(r: Mapping, metric: str = "native", scenarios: Sequence[str] = MAIN_SCENARIOS) -> pd.DataFrame:
    """Every scored model (intruder and white-box surrogates) x method: recall mean ± std."""
    p = r["params"]
    per = r["per_user"][metric]
    rows, idx = [], []
    for model in p["eval_models"]:
        for m in p["methods"]:
            idx.append((model, m))
            rows.append([_cell(per[model][m].get(s)) for s in scenarios])
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(idx, names=["model", "method"]),
                        columns=list(scenarios))


def methods_paired(r: Mapping, ref: str = "protego", scenarios: Sequence[str] = ("1a", "2b", "2a", "2a-unseen"),
                   model: str | None = None, floored: bool = False) -> pd.DataFrame:
    """``ref`` against every other method on the same users (black-box by default): recall difference
    ``ref - other`` (negative: ``ref`` protects better) with a 95% paired bootstrap interval; ``floored``: the
    intruder's recall with every canvas under the SSIM floor (:func:`floored_table`)."""
    p = r["params"]
    model = model or p["intruder"]
    per = (r["per_user"].get("floored") or {}) if floored else r["per_user"]["native"][model]
    rows = []
    for other in p["methods"]:
        if other == ref or ref not in per or other not in per:
            continue
        for s in scenarios:
            if s not in per[ref] or s not in per[other]:
                continue
            row = {"comparison": f"{ref} - {other}", "model": model, "scenario": s}
            row.update(paired_row(per[ref][s], per[other][s]))
            rows.append(row)
    return _frame(rows, ["comparison", "scenario"])


def loo_table(r: Mapping) -> pd.DataFrame:
    """Leave-one-out: each held-out model as the intruder, the others train; mean ± std over users."""
    loo = r["per_user"].get("leave_one_out") or {}
    p = r["params"]
    rows, idx = [], []
    for held in _ordered(loo, p.get("loo_intruders")):
        for m in _ordered(loo[held], p.get("loo_methods")):
            per = loo[held][m]
            idx.append((held, m))
            ssim = ((r["per_user"].get("leave_one_out_quality") or {}).get(held) or {}).get(m, {}).get("ssim")
            rows.append([_cell(per.get(s)) for s in BASE] + [_cell(ssim, 3) if ssim else "",
                                                            "+".join(r["params"]["loo_surrogates"][held])])
    t = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(idx, names=["held_out", "method"]),
                     columns=[*BASE, "SSIM", "surrogates"])
    return t if r["per_user"].get("leave_one_out_quality") else t.drop(columns="SSIM")


#: Leave-one-out comparisons shown where both methods are in a row: the transfer preset against the paper's
#: method and against the Chameleon-style mask, and the paper's method against the mask.
LOO_PAIRS = (("protego_transfer", "protego"), ("protego_transfer", "chameleon"), ("protego", "chameleon"))


def loo_paired(r: Mapping, pairs: Sequence[tuple[str, str]] = LOO_PAIRS, scenarios: Sequence[str] = ("1a", "2b", "2a"),
               source: str = "leave_one_out") -> pd.DataFrame:
    """Each leave-one-out row: ``a - b`` for every pair of methods it holds, paired over users with a 95% interval
    (``source="leave_one_out_floored"``: the same protections under the per-canvas SSIM floor)."""
    loo = r["per_user"].get(source) or {}
    rows = []
    for held in _ordered(loo, r["params"].get("loo_intruders")):
        by_method = loo[held]
        for a, b in pairs:
            if a in by_method and b in by_method:
                for s in scenarios:
                    row = {"held_out": held, "comparison": f"{a} - {b}", "scenario": s}
                    row.update(paired_row(by_method[a][s], by_method[b][s]))
                    rows.append(row)
    return _frame(rows, ["held_out", "comparison", "scenario"])


def floored_table(r: Mapping, source: str = "main") -> pd.DataFrame:
    """Recall of the intruder when every protected canvas is scaled down to meet the SSIM floor (the guarantee),
    with the SSIM that remains (mean; the minimum over every user's canvases) and the mean scale kept.

    ``source="main"``: the main table's methods against the intruder; else a leave-one-out row's label."""
    pu = r["per_user"]
    if source == "main":
        per, q = pu.get("floored") or {}, pu.get("floored_quality") or {}
        order = r["params"].get("methods")
    else:
        per = (pu.get("leave_one_out_floored") or {}).get(source) or {}
        q = (pu.get("leave_one_out_floored_quality") or {}).get(source) or {}
        order = r["params"].get("loo_methods")
    rows, idx = [], []
    for m in _ordered(per, order):
        idx.append(m)
        qm = q.get(m, {})
        low = min(qm["ssim_min"].values()) if qm.get("ssim_min") else float("nan")
        rows.append([_cell(per[m].get(s)) for s in ("1a", "2b", "2a")]
                    + [_cell(qm.get("ssim"), 3), f"{low:.3f}", _cell(qm.get("scale"), 2)])
    return pd.DataFrame(rows, index=pd.Index(idx, name="method"),
                        columns=["1a", "2b", "2a", "SSIM", "min SSIM", "scale kept"])


def ensemble_paired(r: Mapping, ref: str = "protego", scenarios: Sequence[str] = ("1a", "2b", "2a")) -> pd.DataFrame:
    """The same held-out model against textures trained with different surrogate ensembles, paired over users.

    The configurations are the main table's (the profile's surrogates, ``ref`` scored by the intruder) and every
    leave-one-out row; where two or more hold out the same model, each larger ensemble is compared with the
    smallest (``a - b`` < 0: the larger ensemble protects better against that model)."""
    p = r["params"]
    configs = []  # (label, held-out model, surrogates, per-user recall by scenario)
    main = r["per_user"].get("native", {}).get(p.get("intruder"), {})
    if ref in main and p.get("surrogates"):
        configs.append((f"main table ({len(p['surrogates'])} surrogates)", p["intruder"], list(p["surrogates"]),
                        main[ref]))
    loo = r["per_user"].get("leave_one_out") or {}
    for label in _ordered(loo, p.get("loo_intruders")):
        if ref in loo[label]:
            held = label.split(":", 1)[1] if ":" in label else label
            sur = list(p.get("loo_surrogates", {}).get(label, []))
            configs.append((f"leave-one-out {label} ({len(sur)} surrogates)", held, sur, loo[label][ref]))
    rows = []
    for held in dict.fromkeys(c[1] for c in configs):
        group = sorted([c for c in configs if c[1] == held], key=lambda c: len(c[2]))
        for big in group[1:]:
            for sc in scenarios:
                row = {"held_out": held, "comparison": f"{big[0]} - {group[0][0]}", "scenario": sc}
                row.update(paired_row(big[3][sc], group[0][3][sc]))
                rows.append(row)
    return _frame(rows, ["held_out", "comparison", "scenario"])


def robustness_table(r: Mapping) -> pd.DataFrame:
    rob = r["per_user"].get("robustness") or {}
    rows, idx = [], []
    for kind in _ordered(rob, r["params"].get("transforms")):
        for m in _ordered(rob[kind], r["params"].get("methods")):
            per = rob[kind][m]
            idx.append((kind, m))
            rows.append([_cell(per.get(s)) for s in ("1a", "2b", "2a")])
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(idx, names=["transform", "method"]),
                        columns=["1a", "2b", "2a"])


def coverage_table(r: Mapping) -> pd.DataFrame:
    from .retrieval import Scenario

    cov = r["per_user"]["coverage"]
    methods = _ordered(cov, r["params"].get("methods"))
    fractions = r["params"].get("coverage")
    present = list(cov[methods[0]]) if methods else []
    scen = [Scenario(q == 2, float(c)).name for q in (1, 2) for c in fractions] if fractions else []
    return recall_table(cov, _ordered(present, scen), methods)


def _target_rows(per: Mapping, ssim: Mapping | None, ref: str, other: str, milestone: bool = False) -> list[dict]:
    """The transfer targets for ``ref`` from ``per[method][scenario][user]`` (recall %) and ``ssim[user]``."""
    zero = {u: 0.0 for u in per[ref]["1b"]}
    rows = []
    ratio = stats.paired_ratio_bootstrap(per[ref]["2a"], per[ref]["1b"])
    rows.append({"target": "Protego black-box 2a <= 0.3 x 1b", "measured": _ratio_text(ratio, "x 1b"),
                 "met": _met(ratio["hi"] <= 0.3, ratio["lo"] > 0.3)})
    if milestone:
        rows.append({"target": "milestone: 2a <= 0.6 x 1b", "measured": _ratio_text(ratio, "x 1b"),
                     "met": _met(ratio["hi"] <= 0.6, ratio["lo"] > 0.6)})
    for s in ("1a", "2b"):
        d = stats.paired_bootstrap(per[ref][s], zero)
        rows.append({"target": f"Protego black-box {s} <= 5%",
                     "measured": f"{d.diff:.1f}% [{d.lo:.1f}, {d.hi:.1f}]",
                     "met": _met(d.hi <= 5, d.lo > 5)})
    if other in per:
        if milestone:
            d = stats.paired_bootstrap(per[ref]["2a"], per[other]["2a"])
            met = _met(d.hi < 0, d.lo >= 0) if d.n >= MIN_USERS_FOR_EFFECT else _effect(d)
            rows.append({"target": "milestone: 2a below Chameleon-style's (interval excludes 0)",
                         "measured": f"{stats.fmt_ci(d, 1)} points", "met": met})
        red_p = {u: per[ref]["1b"][u] - per[ref]["2a"][u] for u in zero}
        red_o = {u: per[other]["1b"][u] - per[other]["2a"][u] for u in zero}
        ratio = stats.paired_ratio_bootstrap(red_p, red_o)
        m_p, m_o = stats.mean_std(red_p)[0], stats.mean_std(red_o)[0]
        defined = ratio["ratio"] == ratio["ratio"]
        rows.append({"target": "Protego 2a reduction (1b - 2a) >= 2.5 x Chameleon-style's",
                     "measured": f"{m_p:.1f} vs {m_o:.1f} points: " + _ratio_text(ratio, "x"),
                     "met": _met(ratio["lo"] >= 2.5, ratio["hi"] < 2.5) if defined else "undefined"})
    if ssim:
        d = stats.paired_bootstrap(ssim, {u: 0.0 for u in ssim})
        rows.append({"target": "mean SSIM >= 0.95", "measured": f"{d.diff:.3f} [{d.lo:.3f}, {d.hi:.3f}]",
                     "met": _met(d.lo >= 0.95, d.hi < 0.95)})
    return rows


def targets_table(r: Mapping, ref: str = "protego", other: str = "chameleon") -> pd.DataFrame:
    """The black-box transfer targets, each with the measured value and its 95% bootstrap interval over users."""
    p = r["params"]
    per = r["per_user"]["native"][p["intruder"]]
    return pd.DataFrame(_target_rows(per, r["per_user"]["quality"][ref]["ssim"], ref, other)).set_index("target")


def _with_1b(floored: Mapping, clean: Mapping) -> dict:
    """Floored recall with the unprotected 1b of the same run (the floor does not touch clean photos)."""
    return {m: {**floored[m], "1b": clean[m]["1b"]} for m in floored if m in clean}


def target_configurations(r: Mapping, refs: Sequence[str] = ("protego", "protego_transfer"),
                          other: str = "chameleon") -> list[tuple[str, str, dict, Mapping | None]]:
    """``(label, method, per[method][scenario][user], ssim_min[user] or None)`` for every configuration the run
    holds: the main table (the profile's surrogates) and the leave-one-out row of the intruder (the larger
    ensemble the CLI ships), each as trained and under the per-canvas SSIM floor."""
    p, pu = r["params"], r["per_user"]
    intruder = p["intruder"]
    n_main = len(p.get("surrogates") or [])
    sources = [(f"{n_main} surrogates (main table)", pu["native"][intruder], pu.get("floored"), pu.get("floored_quality"))]
    loo = (pu.get("leave_one_out") or {}).get(intruder)
    if loo:
        n = len(p.get("loo_surrogates", {}).get(intruder, []))
        sources.append((f"{n} surrogates (leave-one-out {intruder})", loo,
                        (pu.get("leave_one_out_floored") or {}).get(intruder),
                        (pu.get("leave_one_out_floored_quality") or {}).get(intruder)))
    out = []
    for label, per, floored, fq in sources:
        for ref in refs:
            if ref not in per:
                continue
            out.append((f"{ref}, {label}", ref, per, None))
            if floored and ref in floored:
                out.append((f"{ref}, {label}, SSIM floor", ref, _with_1b(floored, per), (fq or {}).get(ref, {}).get("ssim_min")))
    return out


def targets_overview(r: Mapping, refs: Sequence[str] = ("protego", "protego_transfer"),
                     other: str = "chameleon") -> pd.DataFrame:
    """Every target (and the intermediate milestone) for each configuration the run holds, as trained and under
    the SSIM floor (where every canvas meets it: the floor's rows report the lowest SSIM instead of the mean)."""
    rows = []
    for label, ref, per, ssim_min in target_configurations(r, refs, other):
        for row in _target_rows(per, None, ref, other, milestone=True):
            rows.append({"configuration": label, **row})
        if ssim_min:
            low = min(ssim_min.values())
            rows.append({"configuration": label, "target": "every canvas SSIM >= 0.95",
                         "measured": f"lowest {low:.3f}", "met": "yes" if low >= 0.95 else "no"})
    if not rows:
        return pd.DataFrame(columns=["configuration", "target", "measured", "met"]).set_index(["configuration", "target"])
    return pd.DataFrame(rows).set_index(["configuration", "target"])


def loo_targets(r: Mapping, refs: Sequence[str] = ("protego", "protego_transfer")) -> pd.DataFrame:
    """The transfer targets (:func:`_target_rows`) in every leave-one-out row (each strong model held out in turn,
    the others train), as trained and under the per-canvas SSIM floor, one line per row, method and canvases:
    2a as a multiple of 1b against the target (0.3) and the milestone (0.6), and 1a, 2b against 5%, each with its
    95% bootstrap interval over users; ``met`` is decided only when the whole interval is on one side."""
    pu, p = r["per_user"], r["params"]
    clean, floored = pu.get("leave_one_out") or {}, pu.get("leave_one_out_floored") or {}
    rows = []
    for held in _ordered(clean, p.get("loo_intruders")):
        sources = [("as trained", clean[held])]
        if held in floored:
            sources.append(("SSIM floor", _with_1b(floored[held], clean[held])))
        for ref in refs:
            for label, per in sources:
                if ref not in per:
                    continue
                t = {row["target"]: row for row in _target_rows(per, None, ref, other="", milestone=True)}
                ratio, e1a, e2b = (t["Protego black-box 2a <= 0.3 x 1b"], t["Protego black-box 1a <= 5%"],
                                   t["Protego black-box 2b <= 5%"])
                easy = {e1a["met"], e2b["met"]}
                rows.append({
                    "held_out": held, "method": ref, "canvases": label,
                    "1b": f"{stats.mean_std(per[ref]['1b'])[0]:.1f}", "2a / 1b [95% CI]": ratio["measured"],
                    "2a <= 0.3 x 1b": ratio["met"], "milestone 2a <= 0.6 x 1b": t["milestone: 2a <= 0.6 x 1b"]["met"],
                    "1a % [95% CI]": e1a["measured"], "2b % [95% CI]": e2b["measured"],
                    "1a, 2b <= 5%": "yes" if easy == {"yes"} else "no" if "no" in easy else _met(False, False),
                })
    return _frame(rows, ["held_out", "method", "canvases"])


def _ratio_text(ratio: Mapping, unit: str) -> str:
    if not ratio["ratio"] == ratio["ratio"]:  # NaN: the denominator's mean is <= 0
        return "undefined (the denominator is <= 0)"
    return f"{ratio['ratio']:.2f} {unit} [{_num(ratio['lo'])}, {_num(ratio['hi'])}]"


def _num(v: float) -> str:
    return "inf" if v == float("inf") else f"{v:.2f}"


def _met(yes: bool, no: bool) -> str:
    """``yes`` when the whole interval meets the target, ``no`` when none of it does, else ``undecided``."""
    return "yes" if yes else "no" if no else "undecided (the interval straddles the target)"


def faces_table(r: Mapping) -> pd.DataFrame:
    """Images of the split without a usable face: not scored, listed by name."""
    f = r["faces"]
    rows = [
        {"images": "users' images", "in split": f["n_user_images"], "scored": f["n_user_images_scored"],
         "without a face": "; ".join(f"{k} ({v.split(':')[0]})" for k, v in f["users"].items()) or "none"},
        {"images": "distractors", "in split": f["n_distractors"], "scored": f["n_distractors_scored"],
         "without a face": "; ".join(f"{k} ({v.split(':')[0]})" for k, v in f["distractors"].items()) or "none"},
    ]
    return pd.DataFrame(rows).set_index("images")


# ------------------------------------------------------------------------------------------- notebook 04
ABLATION_COLUMNS = ("bb_1b", "bb_1a", "bb_2b", "bb_2a", "wb_1b", "wb_2a")


def ablation_table(r: Mapping) -> pd.DataFrame:
    """Every ablation: recall mean ± std over the ablation users (``bb_*`` black-box, ``wb_*`` white-box)."""
    per = r["per_user"]["ablations"]
    rows = []
    for name in _ordered(per, r["params"].get("ablations")):
        a = per[name]
        row = {"ablation": name, "what": a["what"], "method": a["method"]}
        for c in ABLATION_COLUMNS:
            row[c] = _cell(a[c])
        row["ssim"] = _cell(a["ssim"], 3)
        row["train s/user"] = f"{stats.mean_std(a['train_s'])[0]:.1f}"
        rows.append(row)
    return pd.DataFrame(rows).set_index("ablation")


#: The transfer lever tables' paired columns: black-box 2a, 1a, 2b and white-box 2a.
TRANSFER_COLUMNS = ("bb_2a", "bb_1a", "bb_2b", "wb_2a")


def ablation_paired(r: Mapping, base: str = "base", columns: Sequence[str] = ("bb_2a", "bb_1a", "wb_2a")) -> pd.DataFrame:
    """Each lever against ``base`` on the same users: ``lever - base`` with a 95% paired bootstrap interval."""
    per = r["per_user"]["ablations"]
    if base not in per:
        return pd.DataFrame()
    rows = []
    for name in _ordered(per, r["params"].get("ablations")):
        a = per[name]
        if name == base:
            continue
        for c in columns:
            p = paired_row(a[c], per[base][c])
            rows.append({"ablation": name, "column": c, "n": p["n"], "lever": p["a"], "base": p["b"],
                         "lever - base [95% CI]": p["a - b [95% CI]"], "effect": p["effect"]})
    return _frame(rows, ["ablation", "column"])


def lever_pairs(r: Mapping, pairs: Sequence[str], columns: Sequence[str] = (*TRANSFER_COLUMNS, "ssim")) -> pd.DataFrame:
    """One lever against another: ``a - b`` for each ``"a:b"`` in ``pairs`` (two ablations of the record ``r``),
    on each column, with its 95% paired bootstrap interval over the same users."""
    per = r["per_user"]["ablations"]
    rows = []
    for pair in pairs:
        a, _, b = pair.partition(":")
        if a not in per or b not in per:
            raise ValueError(f"pair {pair!r}: both sides must be ablations of this record ({sorted(per)})")
        for c in columns:
            p = paired_row(per[a][c], per[b][c], digits=3 if c == "ssim" else 1)
            rows.append({"lever": a, "against": b, "column": c, "n": p["n"], "a": p["a"], "b": p["b"],
                         "a - b [95% CI]": p["a - b [95% CI]"], "effect": p["effect"]})
    return _frame(rows, ["lever", "against", "column"])


# ------------------------------------------------------------------------------------------- notebook 03
def transfer_cells_table(rec: Mapping, version: str = "raw") -> pd.DataFrame:
    """The transfer diagnostic's cells (a live :func:`protego_nb.study.transfer.diagnose` record or the committed
    ``transfer_diagnostics`` JSON): the intruder's recall, white-box 2a, SSIM and the share of each user's
    black-box shift common to all their photos (mean ± std over users)."""
    bb, white = _diag_roles(rec)
    vals = rec["values"][version]
    cols = {f"{bb} 1a": f"{bb}_1a", f"{bb} 2b": f"{bb}_2b", f"{bb} 2a": f"{bb}_2a",
            **{f"{m} 2a": f"{m}_2a" for m in white}}
    rows, idx = [], []
    for cell, v in vals.items():
        idx.append(cell)
        rows.append([_cell(v.get(k)) for k in cols.values()]
                    + [_cell(v.get("ssim"), 3), _cell(v.get(f"{bb}_common_fraction"), 2),
                       _cell(v.get(f"{bb}_within_cos_protected"), 2)])
    return pd.DataFrame(rows, index=pd.Index(idx, name="cell"),
                        columns=[*cols, "SSIM", "common share of the shift", "within-user cos (protected)"])


def transfer_contrasts_table(rec: Mapping, version: str = "raw") -> pd.DataFrame:
    """Each contrast of the diagnostic (``a - b``: carrier within a loss, loss within a carrier, refinement)
    on the intruder's recall and the shift's common share, with the 95% paired interval."""
    bb, white = _diag_roles(rec)
    keys = [f"{bb}_1a", f"{bb}_2b", f"{bb}_2a", *[f"{m}_2a" for m in white], f"{bb}_common_fraction", "ssim"]
    rows = []
    for cname, by_key in (rec.get("paired") or {}).get(version, {}).items():
        for k in keys:
            d = by_key.get(k)
            if d is None:
                continue
            digits = 3 if k == "ssim" else 2 if k.endswith("_fraction") else 1
            rows.append({"contrast": _contrast_name(cname), "value": k, "n": d["n"], "a - b [95% CI]": stats.fmt_ci(d, digits),
                         "effect": _effect(stats.PairedDiff(**{f: d[f] for f in ("n", "mean_a", "mean_b", "diff",
                                                                                   "lo", "hi")}))})
    return _frame(rows, ["contrast", "value"])


def _contrast_name(name: str) -> str:
    """``image_vs_ppt|protego`` -> ``image_vs_ppt (protego)``: no ``|`` inside a Markdown table cell."""
    a, _, b = name.partition("|")
    return f"{a} ({b})" if b else a


def _diag_roles(rec: Mapping) -> tuple[str, list[str]]:
    """(intruder, white-box models) of a diagnostic record (live, or the benchmark's ``args``)."""
    if "intruder" in rec:
        return rec["intruder"], list(rec.get("white") or [])
    a = rec["args"]
    return a["intruder"], list(a.get("white") or a["surrogates"])


def cohesion_table(r: Mapping) -> pd.DataFrame:
    """Within-user cosine (mean ± std over users) and between-user cosine, per model and state."""
    per = r["per_user"]["cohesion_within"]
    p = r.get("params", {})
    rows, idx = [], []
    for model in _ordered(per, p.get("models")):
        for state in _ordered(per[model], ["clean", *p.get("methods", [])]):
            values = per[model][state]
            idx.append((model, state))
            rows.append([_cell(values, 3), f"{r['cohesion'][f'{model}/{state}']['between']:.3f}"])
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(idx, names=["model", "state"]),
                        columns=["within", "between"])


def cohesion_paired(r: Mapping, ref: str = "protego") -> pd.DataFrame:
    """Within-user cosine of ``ref`` minus every other state's (clean, other methods), same users."""
    per = r["per_user"]["cohesion_within"]
    p = r.get("params", {})
    rows = []
    for model in _ordered(per, p.get("models")):
        by_state = per[model]
        if ref not in by_state:
            continue
        for state in _ordered(by_state, ["clean", *p.get("methods", [])]):
            values = by_state[state]
            if state == ref:
                continue
            row = {"model": model, "comparison": f"{ref} - {state}"}
            row.update(paired_row(by_state[ref], values, digits=3))
            rows.append(row)
    return _frame(rows, ["model", "comparison"])


def _frame(rows: list[dict], index: list[str]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).set_index(index)
