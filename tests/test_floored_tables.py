"""Notebook 05's transfer-preset tables: the SSIM-floor table, the leave-one-out pairs and the targets overview."""

import numpy as np

from protego_nb.evaluate import tables

N = 8


def _users(values):
    return {f"user{i}": float(v) for i, v in enumerate(values)}


def _recall(rng, b1, level):
    return {"1b": _users(b1), **{s: _users(np.clip(level + rng.normal(0, 1, N), 0, 100)) for s in ("1a", "2b", "2a")}}


def _run(with_floor=True):
    rng = np.random.default_rng(1)
    b1 = rng.uniform(95, 100, N)
    main = {"protego": _recall(rng, b1, 90), "protego_transfer": _recall(rng, b1, 70), "chameleon": _recall(rng, b1, 89)}
    loo = {"protego": _recall(rng, b1, 80), "protego_transfer": _recall(rng, b1, 40), "chameleon": _recall(rng, b1, 85)}
    r = {"params": {"intruder": "sface", "methods": ["protego", "protego_transfer", "chameleon"],
                    "surrogates": ["dlib_resnet", "mobilefacenet"], "loo_intruders": ["sface"],
                    "loo_methods": ["protego", "protego_transfer"],
                    "loo_surrogates": {"sface": ["a", "b", "c", "d", "e"]}, "ssim_floor": 0.95},
         "per_user": {"native": {"sface": main},
                      "quality": {m: {"ssim": _users(rng.uniform(0.93, 0.94, N))} for m in main},
                      "leave_one_out": {"sface": loo},
                      "leave_one_out_quality": {"sface": {m: {"ssim": _users(rng.uniform(0.93, 0.94, N))} for m in loo}}}}
    if with_floor:
        q = {m: {"ssim": _users(rng.uniform(0.95, 0.96, N)), "ssim_min": _users(rng.uniform(0.950, 0.951, N)),
                 "scale": _users(rng.uniform(0.7, 0.9, N))} for m in main}
        r["per_user"]["floored"] = {m: {s: _users(np.array(list(v[s].values())) + 3) for s in ("1a", "2b", "2a")}
                                    for m, v in main.items()}
        r["per_user"]["floored_quality"] = q
        r["per_user"]["leave_one_out_floored"] = {"sface": {m: {s: v[s] for s in ("1a", "2b", "2a")} for m, v in loo.items()}}
        r["per_user"]["leave_one_out_floored_quality"] = {"sface": q}
    return r


def test_floored_table_reports_recall_the_lowest_ssim_and_the_scale():
    t = tables.floored_table(_run())
    assert list(t.index) == ["protego", "protego_transfer", "chameleon"]
    assert list(t.columns) == ["1a", "2b", "2a", "SSIM", "min SSIM", "scale kept"]
    assert all(float(v) >= 0.95 for v in t["min SSIM"])
    r = _run()
    main_2a = np.mean(list(r["per_user"]["native"]["sface"]["protego"]["2a"].values()))
    assert t.loc["protego", "2a"].startswith(f"{main_2a + 3:.1f} ±")  # the synthetic floor adds 3 points
    assert tables.floored_table(_run(with_floor=False)).empty
    assert not tables.floored_table(_run(), source="sface").empty


def test_floored_paired_skips_scenarios_the_floor_does_not_score():
    p = tables.methods_paired(_run(), ref="protego_transfer", floored=True)
    assert set(p.index.get_level_values("scenario")) == {"1a", "2b", "2a"}  # no -unseen under the floor
    row = p.loc[("protego_transfer - protego", "2a")]
    assert row["effect"] == "yes" and row["a - b [95% CI]"].startswith("-")


def test_loo_paired_compares_every_pair_present_in_a_row():
    p = tables.loo_paired(_run())
    comps = set(p.index.get_level_values("comparison"))
    assert comps == {"protego_transfer - protego", "protego_transfer - chameleon", "protego - chameleon"}
    assert p.loc[("sface", "protego_transfer - chameleon", "2a"), "effect"] == "yes"
    assert tables.loo_paired(_run(), pairs=[("protego", "fawkes")]).empty  # absent methods: no row
    assert not tables.loo_paired(_run(), source="leave_one_out_floored").empty


def test_loo_table_has_an_ssim_column_only_when_the_run_recorded_it():
    r = _run()
    assert "SSIM" in tables.loo_table(r).columns
    del r["per_user"]["leave_one_out_quality"]
    assert "SSIM" not in tables.loo_table(r).columns


def test_targets_overview_covers_both_presets_both_ensembles_and_the_floor():
    t = tables.targets_overview(_run())
    configs = list(dict.fromkeys(t.index.get_level_values("configuration")))
    assert configs == ["protego, 2 surrogates (main table)", "protego, 2 surrogates (main table), SSIM floor",
                       "protego_transfer, 2 surrogates (main table)",
                       "protego_transfer, 2 surrogates (main table), SSIM floor",
                       "protego, 5 surrogates (leave-one-out sface)", "protego, 5 surrogates (leave-one-out sface), SSIM floor",
                       "protego_transfer, 5 surrogates (leave-one-out sface)",
                       "protego_transfer, 5 surrogates (leave-one-out sface), SSIM floor"]
    # the synthetic transfer preset at 40% against 1b ~97%: the milestone (<= 0.6 x 1b) is met, the target is not
    c = "protego_transfer, 5 surrogates (leave-one-out sface)"
    assert t.loc[(c, "milestone: 2a <= 0.6 x 1b"), "met"] == "yes"
    assert t.loc[(c, "Protego black-box 2a <= 0.3 x 1b"), "met"] == "no"
    assert t.loc[(c, "milestone: 2a below Chameleon-style's (interval excludes 0)"), "met"] == "yes"
    assert t.loc[("protego, 2 surrogates (main table)", "milestone: 2a <= 0.6 x 1b"), "met"] == "no"
    assert t.loc[(c + ", SSIM floor", "every canvas SSIM >= 0.95"), "met"] == "yes"
    # a floored canvas below the floor is reported, not hidden
    r = _run()
    r["per_user"]["leave_one_out_floored_quality"]["sface"]["protego_transfer"]["ssim_min"]["user0"] = 0.949
    t = tables.targets_overview(r)
    assert t.loc[(c + ", SSIM floor", "every canvas SSIM >= 0.95"), "met"] == "no"


def test_transfer_diagnostic_tables_render_the_committed_record():
    """The committed 10-user diagnostic: the numbers the README quotes come out of the table functions."""
    from protego_nb import notebook

    rec = notebook.bench_record("transfer_diagnostics_10u")
    cells = tables.transfer_cells_table(rec)
    assert list(cells.index[:4]) == ["ppt_protego", "ppt_lowkey", "image_protego", "image_lowkey"]
    assert cells.loc["ppt_protego", "sface 2a"].startswith("90.9") and cells.loc["image_protego", "sface 2a"].startswith("53.9")
    c = tables.transfer_contrasts_table(rec)
    assert c.loc[("image_vs_ppt (protego)", "sface_2a"), "a - b [95% CI]"] == "-37.1 [-43.7, -30.8]"
    assert c.loc[("image_vs_ppt (protego)", "sface_2a"), "effect"] == "yes"
    floor = tables.transfer_contrasts_table(rec, version="floor")
    assert floor.loc[("image_vs_ppt (protego)", "sface_2a"), "a - b [95% CI]"].startswith("-39.4")


def test_every_transfer_record_a_profile_names_is_committed_and_renders():
    import yaml

    from protego_nb import notebook, paths

    names = set()
    for profile in ("ci", "default", "full"):
        p = yaml.safe_load((paths.REPO_ROOT / "notebooks" / "params" / f"{profile}.yaml").read_text())
        names |= set(p["04_gram_volume_ablations"].get("TRANSFER_RECORDS") or [])
    assert "transfer_levers_votes_textures" in names
    for name in sorted(names):
        source, tabs = notebook.bench_tables(name)
        assert name in source and "commit" in source and all(not t.empty for t in tabs), name
    rec = notebook.bench_record("transfer_levers_votes_textures")
    p = tables.ablation_paired(rec, columns=tables.TRANSFER_COLUMNS)
    assert p.loc[("textures4", "bb_2a"), "lever - base [95% CI]"] == "-23.0 [-30.0, -16.1]"  # README's number
    _, tabs = notebook.bench_tables("transfer_levers_spectrum")  # a record with pairs: one lever against another
    assert len(tabs) == 3 and tabs[2].loc[("textures4_spectrum5", "textures4", "bb_2a"), "a - b [95% CI]"] == (
        "-11.1 [-15.8, -7.2]")  # README's number
    import pytest

    with pytest.raises(FileNotFoundError, match="no such committed benchmark record"):
        notebook.bench_record("no_such_record")


def test_the_readme_section_of_notebook_04s_transfer_section():
    from protego_nb import notebook
    from scripts import make_results as mr

    assert "predates its transfer section" in mr._transfer04_section({"params": {"intruder": "sface"}, "per_user": {}})
    diag = notebook.bench_record("transfer_diagnostics_10u")
    levers = notebook.bench_record("transfer_levers_votes_textures")["per_user"]["ablations"]
    r = {"params": {"intruder": "sface"},
         "transfer_diagnostics": {"users": diag["users"], "intruder": "sface", "white": ["dlib_resnet", "mobilefacenet"],
                                  "values": diag["values"], "paired": diag["paired"]},
         "per_user": {"transfer_levers": levers}}
    text = mr._transfer04_section(r)
    assert "on 10 users" in text and "-37.1 [-43.7, -30.8]" in text and "-23.0 [-30.0, -16.1]" in text
    assert "image_vs_ppt (protego) sface_2a: -37.1" in text  # the effects sentence names it


def test_loo_targets_every_row_both_presets_as_trained_and_floored():
    r = _run()
    t = tables.loo_targets(r)
    assert list(t.index) == [("sface", m, c) for m in ("protego", "protego_transfer")
                             for c in ("as trained", "SSIM floor")]
    loo = r["per_user"]["leave_one_out"]["sface"]["protego_transfer"]
    ratio = np.mean(list(loo["2a"].values())) / np.mean(list(loo["1b"].values()))  # about 40 / 97.5
    row = t.loc[("sface", "protego_transfer", "as trained")]
    assert row["2a / 1b [95% CI]"].startswith(f"{ratio:.2f} x")
    assert row["2a <= 0.3 x 1b"] == "no" and row["milestone 2a <= 0.6 x 1b"] == "yes"
    assert row["1a, 2b <= 5%"] == "no"
    # a held-out row whose recall is near 0 meets every target
    low = {s: {u: 1.0 for u in loo["1b"]} for s in ("1a", "2b", "2a")}
    r["per_user"]["leave_one_out"]["sface"]["protego"].update(low)
    row = tables.loo_targets(r).loc[("sface", "protego", "as trained")]
    assert (row["2a <= 0.3 x 1b"], row["1a, 2b <= 5%"]) == ("yes", "yes")
    del r["per_user"]["leave_one_out_floored"]
    assert set(tables.loo_targets(r).index.get_level_values("canvases")) == {"as trained"}
    assert tables.loo_targets({"params": {}, "per_user": {}}).empty
