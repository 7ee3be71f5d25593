"""Every notebook, executed end to end by the runner with the ci profile; assertions on what it wrote.

One session-scoped run executes all notebooks (as `python -m protego_nb.run --profile ci` does) into a
fresh temporary output folder (PROTEGO_OUTPUT_DIR, which the papermill kernel inherits), so every file the
tests read was written by this run; each test then checks one notebook's numbers and figures, with
properties that a broken notebook would fail (the ci parameters arrived, the L-inf bound holds, the log-det
term lowers white-box 2a, one row per configured method), not merely that it ran.
"""

import json

import pytest

from protego_nb import data, paths, run

pytestmark = pytest.mark.slow
PROFILE = "ci"


@pytest.fixture(scope="session")
def ci_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ci_outputs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROTEGO_OUTPUT_DIR", str(out))
        runs = run.run(PROFILE, progress=False)
    return {"runs": {r.notebook: r for r in runs}, "out": out, "params": run.load_params(PROFILE)}


def _dirs(ci_run):
    root = ci_run["out"]
    return root / "papermill_runs" / PROFILE, root / "papermill_runs" / PROFILE / "results", root / "figures" / PROFILE


def _results(ci_run, name):
    r = json.loads((_dirs(ci_run)[1] / f"{name}.json").read_text())
    # written by this run, with the ci parameters the runner injected
    nb = next(p for p in run.list_notebooks() if p.stem == name)
    assert r["_format"] == 2 and r["_profile"] == PROFILE
    assert r["_run"]["parameters"] == run.parameters_for(nb, PROFILE) and r["_run"]["ok"]
    return r


def _fig(ci_run, name):
    f = _dirs(ci_run)[2] / f"{name}.png"
    assert f.exists() and f.stat().st_size > 5000, f"missing or empty figure {f}"
    assert (f.with_suffix(".pdf")).exists()


def _table(ci_run, name):
    f = _dirs(ci_run)[1] / f"{name}.md"
    assert f.exists(), f
    return f.read_text()


def _ok(ci_run, name):
    r = ci_run["runs"][name]
    assert r.ok, r.error[-2000:]


def test_all_notebooks_ran_into_the_temporary_folder(ci_run):
    failed = {k: r.error[-2000:] for k, r in ci_run["runs"].items() if not r.ok}
    assert not failed, failed
    assert set(ci_run["runs"]) == {nb.stem for nb in run.list_notebooks()}
    assert all(str(ci_run["out"]) in r.output for r in ci_run["runs"].values())


def test_00_data_and_models(ci_run, lfw):
    _ok(ci_run, "00_data_and_models")
    r = _results(ci_run, "00_data_and_models")
    p = ci_run["params"]
    assert r["dataset"]["n_images"] == 13233 and r["dataset"]["n_identities"] == 5749
    assert len(r["split"]["users"]) == p["common"]["N_USERS"] == 3
    assert r["split"]["n_distractors"] == p["common"]["MAX_DISTRACTORS"]
    assert not set(r["split"]["users"]) & {d.split("/")[0] for d in data.Split.load(
        paths.REPO_ROOT / r["split"]["manifest"]).distractors}
    det = r["detection"]
    assert det["n_images"] == p["00_data_and_models"]["DETECT_LIMIT"]
    assert det["n_canvases"] + sum(det["failures"].values()) == det["n_images"]
    assert det["failure_rate"] < 0.1  # LFW faces are easy; a broken detector fails most
    assert r["canvas_landmark_error_px"] < 5.0  # least-squares similarity residual (pose, expression)
    ver = {row["model"]: row for row in r["verification"]["per_model"]}
    assert r["verification"]["n_pairs"] == 10 * p["00_data_and_models"]["VERIFY_PER_FOLD"]
    for name in ("sface", "mobilefacenet", "dlib_resnet"):  # strong models: a preprocessing slip drops these to ~50-80%
        assert ver[name]["status"] == "ok" and ver[name]["accuracy"] >= 95.0, ver[name]
    assert ver["faceres"]["accuracy"] >= 85.0
    assert {t["model"] for t in r["throughput"]} >= {"sface", "dlib_resnet"}
    assert all(t["forward_per_s"] > 0 and t["forward_backward_per_s"] > 0 for t in r["throughput"])
    for name in ("00_images_per_identity", "00_detection_outcomes", "00_user_canvases", "00_verification_roc"):
        _fig(ci_run, name)
    _table(ci_run, "00_split_lfw_paper_ci")
    # provenance is printed by the last cell
    nb = json.loads((_dirs(ci_run)[0] / "00_data_and_models.ipynb").read_text())
    assert "versions" in json.dumps(nb["cells"][-1].get("outputs", []))


def test_01_uv_exploration(ci_run):
    _ok(ci_run, "01_uv_exploration")
    r = _results(ci_run, "01_uv_exploration")
    assert r["params"]["n_coverage_images"] == ci_run["params"]["01_uv_exploration"]["N_COVERAGE_IMAGES"]
    assert r["mesh_failures"] == 0
    assert r["coverage"]["fraction_face_texels"] > 0.95  # every face texel is read by some LFW photo
    assert 0.15 < r["mean_visible_fraction"] < 0.4
    assert r["visible_vs_yaw"]["texture_seen"]["pearson_abs_yaw"] < 0  # turned faces show less of the texture
    figs = sorted(p.stem for p in _dirs(ci_run)[2].glob("01_*.png"))
    assert len(figs) >= 7, figs


def test_02_ppt_training(ci_run):
    _ok(ci_run, "02_ppt_training")
    r = _results(ci_run, "02_ppt_training")
    p = ci_run["params"]["common"]
    user = r["params"]["user"]
    assert r["params"]["config"]["epochs"] == p["EPOCHS"] and r["params"]["surrogates"] == p["SURROGATES"]
    assert r["faces"]["n_images"] == p["MAX_IMAGES"] and not r["faces"]["no_mesh"]
    assert r["faces"]["n_distractors"] == p["MAX_DISTRACTORS"] and "distractors" in r["faces"]
    assert all(v > 0 for v in r["train_steps"].values())
    for method, q in r["quality"].items():
        assert q["linf_255_max"] <= 16.0 + 1e-3, method  # the L-inf budget holds on every canvas
        assert 0.8 < q["ssim_mean"] <= 1.0 and q["psnr_mean"] > 30
    rec = r["recall"]
    assert rec["sface/protego"]["1b"] >= 90  # the clean baseline: the intruder finds this user
    # even a tiny white-box run moves the trained-on surrogate's 2a below its clean 1b
    assert rec["dlib_resnet/protego"]["2a"] < rec["dlib_resnet/protego"]["1b"]
    from protego_nb.protect.texture import load_ppt

    texture, meta = load_ppt(_dirs(ci_run)[0] / "02_ppts" / f"{user}.protego.ppt")
    assert float(meta["epsilon"]) == pytest.approx(p["EPSILON_255"] / 255)
    assert texture.abs().max() <= float(meta["epsilon"]) + 1e-6  # Protego's texture respects its L-inf bound
    for name in ("02_loss_curves", "02_texture", "02_before_after", "02_recall_blackbox"):
        _fig(ci_run, name)


def test_03_dense_cluster_umap(ci_run):
    _ok(ci_run, "03_dense_cluster_umap")
    r = _results(ci_run, "03_dense_cluster_umap")
    nbp = ci_run["params"]["03_dense_cluster_umap"]
    assert r["params"]["methods"] == nbp["METHODS"] and r["params"]["models"] == nbp["MODELS"]
    coh, per = r["cohesion"], r["per_user"]["cohesion_within"]
    for model in nbp["MODELS"]:
        clean = coh[f"{model}/clean"]
        assert clean["within"] > clean["between"]  # clean embeddings cluster by identity
        assert set(per[model]) == {"clean", *nbp["METHODS"]}
        assert all(len(v) == ci_run["params"]["common"]["N_USERS"] for v in per[model].values())
        _fig(ci_run, f"03_umap_{model}")
    # white-box, Protego's log-det term scatters the user's protected photos more than the Chameleon-style mask
    assert coh["dlib_resnet/protego"]["within"] < coh["dlib_resnet/chameleon"]["within"]
    _fig(ci_run, "03_cohesion")
    assert "protego - chameleon" in _table(ci_run, "03_cohesion_paired")


def test_04_gram_volume_ablations(ci_run):
    _ok(ci_run, "04_gram_volume_ablations")
    r = _results(ci_run, "04_gram_volume_ablations")
    nbp = ci_run["params"]["04_gram_volume_ablations"]
    abl, per = r["ablations"], r["per_user"]["ablations"]
    assert set(abl) == set(per) == set(nbp["ABLATIONS"]) and r["params"]["ablations"] == nbp["ABLATIONS"]
    n_users = nbp["ABLATION_USERS"]
    for name, a in per.items():
        assert all(len(a[c]) == n_users for c in ("bb_2a", "wb_2a", "ssim")), name
    assert len({round(v["bb_1b"], 6) for v in abl.values()}) == 1  # same users, same clean baseline
    assert abl["base"]["method"] == "protego" and abl["no_logdet"]["method"] == "protego_nologdet"
    # the log-det term is what cuts white-box 2a: without it 2a is higher than the base run's
    assert abl["no_logdet"]["wb_2a"] > abl["base"]["wb_2a"]
    # one table row per configured ablation, and a paired row per lever and column
    table = _table(ci_run, "04_ablations")
    assert [ln.split("|")[1].strip() for ln in table.splitlines()[2:]] == nbp["ABLATIONS"]
    paired = _table(ci_run, "04_ablations_paired")
    assert len(paired.splitlines()) == 2 + 3 * (len(nbp["ABLATIONS"]) - 1)
    _fig(ci_run, "04_ablations")
    # the transfer section: every diagnostic cell scored raw and under the SSIM floor, its contrasts paired
    diag = r["transfer_diagnostics"]
    assert diag["cells"] == nbp["TRANSFER_CELLS"] and set(diag["values"]) == {"raw", "floor"}
    for cell in nbp["TRANSFER_CELLS"]:
        v = diag["values"]["raw"][cell]
        bb = r["params"]["intruder"]
        assert len(v[f"{bb}_2a"]) == n_users and all(0 <= x <= 1 for x in v[f"{bb}_common_fraction"].values())
        assert min(diag["values"]["floor"][cell]["ssim_min"].values()) >= 0.95  # the floor holds on every canvas
    assert "image_vs_ppt|protego" in diag["paired"]["raw"]
    assert [ln.split("|")[1].strip() for ln in _table(ci_run, "04_transfer_cells").splitlines()[2:]] == nbp["TRANSFER_CELLS"]
    # the levers: the base's values are the ablation section's (same cached textures), each lever paired with it
    lev = r["per_user"]["transfer_levers"]
    assert set(lev) == {"base", *nbp["TRANSFER_LEVERS"]} and lev["base"]["bb_2a"] == per["base"]["bb_2a"]
    assert len(_table(ci_run, "04_transfer_levers_paired").splitlines()) == 2 + 4 * len(nbp["TRANSFER_LEVERS"])


def test_05_recall_tables(ci_run):
    _ok(ci_run, "05_recall_tables")
    r = _results(ci_run, "05_recall_tables")
    nbp, common = ci_run["params"]["05_recall_tables"], ci_run["params"]["common"]
    methods = r["params"]["methods"]
    assert methods == nbp["METHODS"] and r["params"]["skipped_optional_methods"] == []
    assert r["params"]["n_users"] == common["N_USERS"] and r["params"]["intruder"] == common["INTRUDER"]
    per = r["per_user"]["native"]
    assert set(per) == set(nbp["EVAL_MODELS"])
    for m in methods:
        assert r["main"][m]["1b"] >= 90, (m, r["main"][m])  # the black-box intruder finds unprotected users
        assert len(per[common["INTRUDER"]][m]["2a"]) == common["N_USERS"]  # per-user values are kept
        assert 0.8 < r["main"][m]["ssim"] <= 1
    # every method is protected and scored the same way: identical clean baseline, user by user
    assert len({json.dumps(per[common["INTRUDER"]][m]["1b"], sort_keys=True) for m in methods}) == 1
    # white-box, the trained-on surrogate sees Protego's 2a fall below its clean 1b
    wb = {s: sum(per["dlib_resnet"]["protego"][s].values()) for s in ("1b", "2a")}
    assert wb["2a"] < wb["1b"]
    # one table row per configured method; paired rows for every other method
    main = _table(ci_run, "05_main_table")
    assert [ln.split("|")[1].strip() for ln in main.splitlines()[2:]] == methods
    assert "±" in main
    paired = _table(ci_run, "05_paired")
    assert len(paired.splitlines()) == 2 + 4 * (len(methods) - 1)
    assert set(r["robustness"]) == {f"{t}/{m}" for t in nbp["TRANSFORMS"] for m in methods}
    for m in methods:  # coverage 0 and 1 are the b and a scenarios
        assert r["coverage"][m]["1b"] == r["main"][m]["1b"] and r["coverage"][m]["2a"] == r["main"][m]["2a"]
    loo = r["leave_one_out"]  # ci: the intruder held out, Protego trained on the rest of LOO_POOL
    intruder = common["INTRUDER"]
    extra = {f"{intruder}/{m}" for m in nbp["LOO_INTRUDER_METHODS"]}  # only in the intruder's row
    assert set(loo) == {f"{h}/{m}" for h in nbp["LOO_INTRUDERS"] for m in nbp["LOO_METHODS"]} | extra
    assert r["params"]["loo_surrogates"][intruder] == [m for m in nbp["LOO_POOL"] if m != intruder]
    assert loo[f"{intruder}/protego"]["1b"] >= 90
    # under the SSIM floor every canvas meets it: main table and leave-one-out rows
    fq = r["per_user"]["floored_quality"]
    assert set(fq) == set(methods) and set(r["per_user"]["floored"]) == set(methods)
    assert min(v for m in methods for v in fq[m]["ssim_min"].values()) >= r["params"]["ssim_floor"]
    lfq = r["per_user"]["leave_one_out_floored_quality"][intruder]
    assert set(lfq) == set(nbp["LOO_METHODS"]) | set(nbp["LOO_INTRUDER_METHODS"])
    assert min(v for m in lfq for v in lfq[m]["ssim_min"].values()) >= r["params"]["ssim_floor"]
    assert all(0 < v <= 1 for m in methods for v in fq[m]["scale"].values())
    f = r["faces"]
    assert f["n_distractors"] == common["MAX_DISTRACTORS"]
    assert f["n_distractors_scored"] + len(f["distractors"]) == f["n_distractors"]
    assert set(r["targets"]["met"]) == set(_table_rows(_table(ci_run, "05_targets")))
    for name in ("05_main_table", "05_coverage"):
        _fig(ci_run, name)
    for table in ("05_all_models", "05_all_models_cosine", "05_robustness", "05_coverage", "05_leave_one_out",
                  "05_leave_one_out_paired", "05_faces", "05_floored", "05_floored_paired",
                  "05_leave_one_out_floored_paired", "05_targets_overview"):
        _table(ci_run, table)


def _table_rows(md):
    return [ln.split("|")[1].strip() for ln in md.splitlines()[2:]]


def test_06_pose_study(ci_run):
    _ok(ci_run, "06_pose_study")
    check_06_outputs(ci_run)


def check_06_outputs(ci_run):
    """Assertions on notebook 06's files."""
    import numpy as np
    import pandas as pd

    res = _dirs(ci_run)[1]
    r = _results(ci_run, "06_pose_study")
    p = r["params"]
    split = data.Split.load(data.split_manifest_path(p["split"]))
    poses = pd.read_csv(res / "06_poses.csv")
    assert len(poses) == len(set(poses["id"])) == sum(len(u.all_used()) for u in split.users.values())
    assert r["pose"]["n_no_mesh"] == 0 and r["pose"]["max_abs_roll"] < 10  # canvases are aligned on the eyes
    assert r["pose"]["max_abs_yaw_minus_yaw01"] < 2  # the head-frame yaw is notebook 01's yaw at small roll
    # bins: counts add up to the queries, each bin holds enough of them
    n_q = sum(len(u.queries) for u in split.users.values())
    b = r["bins"]
    assert b["n_queries"] == n_q == sum(b["query_counts"].values())
    assert len(b["labels"]) == 1 or min(b["query_counts"].values()) >= 3
    # one row per model x method x scenario x (bin + all); counts and intervals consistent
    t = pd.DataFrame(r["by_bin"])
    keys = ["model", "method", "scenario", "bin"]
    assert not t.duplicated(keys).any()
    assert set(map(tuple, t[keys].values)) == {(m, me, s, lab) for m in p["models"] for me in p["methods"]
                                                 for s in p["scenarios"] for lab in [*b["labels"], "all"]}
    for _, g in t.groupby(["model", "method", "scenario"]):
        assert g[g.bin != "all"]["n_queries"].sum() == g[g.bin == "all"]["n_queries"].item() == n_q
        assert [int(g[g.bin == lab]["n_queries"].item()) for lab in b["labels"]] == list(b["query_counts"].values())
    ok = t["ci_lo"].notna()
    assert (t.loc[ok, "ci_lo"] <= t.loc[ok, "recall"] + 1e-9).all() and (t.loc[ok, "recall"] <= t.loc[ok, "ci_hi"] + 1e-9).all()
    assert t["recall"].between(0, 100).all()
    # per-query rows: one per model x method x scenario x query; their per-user means are notebook 05's rows
    q = pd.read_csv(res / "06_query_rows.csv")
    assert len(q) == len(p["models"]) * len(p["methods"]) * len(p["scenarios"]) * n_q
    rows05 = res / "05_recall_rows.csv"
    if rows05.exists():  # same split, config, surrogates and cached textures: the same numbers
        d5 = pd.read_csv(rows05)
        d5 = d5[d5["native"]].set_index(["model", "method", "user", "scenario"])["recall"]
        m6 = q.groupby(["model", "method", "user", "scenario"])["recall"].mean()
        common = m6.index.intersection(d5.index)
        assert len(common) >= len(split.users) * len(p["scenarios"])  # at least protego on the intruder
        np.testing.assert_allclose(m6[common].values, d5[common].values, atol=1e-9)
    # per protected gallery photo: one row per model x method x gallery-protected scenario x photo
    e = r["entries"]
    n_g = sum(len(u.gallery) for u in split.users.values())
    assert sum(e["photo_counts"].values()) == n_g
    et = pd.DataFrame(e["by_bin"])
    gal_scen = [s for s in p["scenarios"] if s.endswith("a")]
    assert len(et) == len(p["models"]) * len(p["methods"]) * len(gal_scen) * (len(e["labels"]) + 1)
    assert (et[et.bin == "all"]["n_queries"] == n_g).all()
    # frontal-only PPT: trained only on the user's training photos with |yaw| below the threshold
    f = r["frontal"]
    ay = poses.set_index("id")["abs_yaw"]
    assert f["users"] and set(f["users"]) | set(f["skipped"]) == set(split.users)
    for u in f["users"]:
        front, sized, full = (f["train_ids"][k][u] for k in ("protego_frontal", "protego_sized", "protego"))
        assert set(full) == set(split.users[u].train)
        assert set(front) < set(full) and all(ay[i] < f["max_abs_yaw"] for i in front)
        assert {i for i in full if ay[i] < f["max_abs_yaw"]} == set(front)
        assert len(sized) == len(front) and set(sized) <= set(full)
    d = pd.DataFrame(f["diffs"])
    assert len(d) == len(p["models"]) * len(p["scenarios"]) * 3 * 3  # 3 pairs x (frontal, turned, all)
    assert set(d["bin"]) == {f"0-{f['max_abs_yaw']:g}", f">={f['max_abs_yaw']:g}", "all"}
    h = r["headline"]
    assert {"uv_minus_flat_2d", "frontal_minus_all_turned"} <= set(h)
    assert h["uv_minus_flat_2d"]["bin"] == b["labels"][-1] and h["frontal_minus_all_turned"]["bin"].startswith(">=")
    for name in ("06_pose_sanity", "06_recall_vs_yaw", "06_entry_recall_vs_yaw", "06_frontal_only"):
        _fig(ci_run, name)
    for table in ("06_recall_by_yaw", "06_uv_vs_flat", "06_yaw_slope", "06_entry_recall_by_yaw", "06_frontal_only",
                  "06_frontal_training_sets"):
        assert (res / f"{table}.md").exists() and (res / f"{table}.csv").exists()
