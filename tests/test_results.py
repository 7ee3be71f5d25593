"""`make results`: the README's results sections and data/results/<profile>/ are generated from the run JSON."""

import json
import shutil

import numpy as np
import pytest

from scripts import make_results as mr

SCEN = ["1b", "1a", "2b", "2a", "1a-unseen", "2b-unseen", "2a-unseen"]


def test_committed_results_and_readme_are_what_the_committed_json_generates():
    """Fails when a README results table (or a table in data/results/default/) differs from what the
    committed run JSON generates: run `make results` after a run, and never edit those tables by hand."""
    problems = mr.check("default")
    assert not problems, "\n".join(problems)


def _prov(nb, profile="default"):
    return {"notebook": nb, "ok": True, "profile": profile, "command": f"python -m protego_nb.run --profile {profile}",
            "git_commit": "0123456789abcdef", "git_dirty": False, "parameters": {"PROFILE": profile},
            "started_utc": "2026-12-01T10:00:00+00:00", "finished_utc": "2026-12-01T10:05:00+00:00",
            "wall_seconds": 300.0, "machine": {"cpu": "Test CPU", "cpu_count": 2, "device": "cpu",
                                               "platform": "Linux", "loadavg": [1.0, 1.0, 1.0]}}


def _users(values):
    return {f"user{i}": float(v) for i, v in enumerate(values)}


def _fake_runs(root, effect=True):
    rng = np.random.default_rng(0)
    n = 8
    base = rng.uniform(80, 100, n)
    per, cos = {}, {}
    for model in ("sface", "dlib_resnet"):
        per[model] = {}
        for m in ("protego", "chameleon"):
            shift = -15 if (m == "protego" and effect) else 0
            per[model][m] = {s: _users(np.clip(base + (0 if s == "1b" else shift - 10 + rng.normal(0, 1, n)), 0, 100))
                             for s in SCEN}
            per[model][m]["1b"] = _users(base)
        cos[model] = per[model]
    r05 = {
        "_format": 2, "_profile": "default", "_run": _prov("05_recall_tables"),
        "params": {"intruder": "sface", "methods": ["protego", "chameleon"], "eval_models": ["sface", "dlib_resnet"],
                   "n_users": n, "loo_surrogates": {"mobilefacenet": ["sface", "dlib_resnet", "faceres"]}},
        "faces": {"users": {}, "distractors": {"Marilyn_Monroe/Marilyn_Monroe_0001.jpg": "no_face: none"},
                  "n_user_images": 200, "n_user_images_scored": 200, "n_distractors": 2000,
                  "n_distractors_scored": 1999, "no_mesh": []},
        "per_user": {
            "native": per, "cosine": cos,
            "quality": {m: {"ssim": _users(rng.uniform(0.93, 0.95, n)), "psnr": _users(rng.uniform(34, 36, n))}
                        for m in ("protego", "chameleon")},
            "leave_one_out": {"mobilefacenet": {m: {s: per["sface"][m][s] for s in ("1b", "1a", "2b", "2a")}
                                                for m in ("protego", "chameleon")}},
            "robustness": {"jpeg75": {m: {s: per["sface"][m][s] for s in ("1a", "2b", "2a")}
                                      for m in ("protego", "chameleon")}},
            "coverage": {m: {s: per["sface"][m][s] for s in ("1b", "1a", "2b", "2a")} for m in ("protego", "chameleon")},
        },
    }
    r04 = {"_format": 2, "_profile": "default", "_run": _prov("04_gram_volume_ablations"),
           "params": {"users": list(_users(base)), "intruder": "sface", "white_box": "dlib_resnet"},
           "per_user": {"ablations": {
               name: {"what": name, "method": "protego",
                      **{c: _users(base - (20 if name == "lever" and effect else 0) + rng.normal(0, 1, n))
                         for c in ("bb_1b", "bb_1a", "bb_2b", "bb_2a", "wb_1b", "wb_2a")},
                      "ssim": _users(rng.uniform(0.93, 0.95, n)), "train_s": _users(rng.uniform(5, 9, n))}
               for name in ("base", "lever")}}}
    r03 = {"_format": 2, "_profile": "default", "_run": _prov("03_dense_cluster_umap"),
           "cohesion": {f"sface/{s}": {"within": 0.5, "between": 0.1} for s in ("clean", "protego", "chameleon")},
           "per_user": {"cohesion_within": {"sface": {s: _users(rng.uniform(0.4, 0.7, n))
                                                      for s in ("clean", "protego", "chameleon")}}}}
    r00 = {"_format": 2, "_profile": "default", "_run": _prov("00_data_and_models"),
           "verification": {"n_pairs": 1000, "per_model": [
               {"model": "sface", "status": "ok", "metric": "cosine", "role": "intruder", "dim": 128,
                "accuracy": 99.1, "accuracy_std": 1.04, "auc": 0.9994, "published": 99.4}]}}
    folder = root / "data" / "results" / "default"
    folder.mkdir(parents=True)
    for name, r in {"05_recall_tables": r05, "04_gram_volume_ablations": r04, "03_dense_cluster_umap": r03,
                    "00_data_and_models": r00}.items():
        (folder / f"{name}.json").write_text(json.dumps(r))
    readme = "# x\n\n" + "".join(f"<!-- results:{k} -->\nOLD-TEXT\n<!-- /results:{k} -->\n\ntext\n\n" for k in mr.SECTIONS)
    readme += "<!-- results:bench -->\n<!-- /results:bench -->\n"
    (root / "README.md").write_text(readme)
    (root / "data" / "results" / "bench").mkdir()
    shutil.copy(mr.REPO / "data" / "results" / "bench" / "zoo.json", root / "data" / "results" / "bench")
    return folder


def test_generation_is_byte_identical_and_the_check_catches_edits(tmp_path):
    folder = _fake_runs(tmp_path)
    assert mr.check("default", tmp_path)  # nothing generated yet
    mr.write("default", tmp_path)
    assert mr.check("default", tmp_path) == []
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert mr.write("default", tmp_path) == []  # a second run changes no byte
    assert snapshot == {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    readme = (tmp_path / "README.md").read_text()
    assert "OLD-TEXT" not in readme and "commit `0123456789`" in readme and "python -m protego_nb.run --profile default" in readme
    assert "±" in readme and "Marilyn_Monroe_0001" in readme and "sface 57 / 21" in readme
    # a README number edited by hand is caught
    (tmp_path / "README.md").write_text(readme.replace("±", "+-", 1))
    assert any("README.md" in p for p in mr.check("default", tmp_path))
    mr.write("default", tmp_path)
    # an edited table and a stale table are caught
    (folder / "05_main_table.md").write_text("| x |\n")
    (folder / "05_old_table.md").write_text("| x |\n")
    problems = mr.check("default", tmp_path)
    assert any("05_main_table.md" in p for p in problems) and any("05_old_table.md" in p for p in problems)
    mr.write("default", tmp_path)
    assert mr.check("default", tmp_path) == [] and not (folder / "05_old_table.md").exists()


def test_effects_only_where_the_interval_excludes_zero(tmp_path):
    folder = _fake_runs(tmp_path, effect=True)
    mr.write("default", tmp_path)
    paired = (folder / "05_paired.md").read_text()
    assert "| yes |" in paired  # Protego is 15 points lower for every user
    ablations = (folder / "04_ablations_paired.md").read_text()
    assert "| yes |" in ablations
    shutil.rmtree(tmp_path / "data")
    (tmp_path / "README.md").unlink()
    folder = _fake_runs(tmp_path, effect=False)
    mr.write("default", tmp_path)
    assert "| yes |" not in (folder / "04_ablations_paired.md").read_text()  # noise only: no effect claimed
    assert "No lever-vs-base difference" in (tmp_path / "README.md").read_text()


def test_legacy_json_is_not_tabulated(tmp_path):
    folder = _fake_runs(tmp_path)
    r = json.loads((folder / "05_recall_tables.json").read_text())
    del r["_run"]
    r["_format"] = 1
    (folder / "05_recall_tables.json").write_text(json.dumps(r))
    mr.write("default", tmp_path)
    readme = (tmp_path / "README.md").read_text()
    assert "No run of notebook 05 with provenance and per-user values is committed" in readme
    assert not (folder / "05_main_table.md").exists() and (folder / "04_ablations.md").exists()


def test_import_refuses_runs_without_provenance(tmp_path):
    src = tmp_path / "run"
    src.mkdir()
    (src / "05_recall_tables.json").write_text(json.dumps({"_format": 1}))
    with pytest.raises(SystemExit, match="provenance"):
        mr.import_run(src, "default", tmp_path)
    (src / "05_recall_tables.json").write_text(json.dumps({"_format": 2, "_run": _prov("05_recall_tables", "ci")}))
    with pytest.raises(SystemExit, match="profile"):
        mr.import_run(src, "default", tmp_path)
    (src / "05_recall_tables.json").write_text(json.dumps({"_format": 2, "_run": _prov("05_recall_tables")}))
    assert mr.import_run(src, "default", tmp_path) == ["05_recall_tables.json"]


def test_pose_tables_come_from_the_notebook_06_records():
    r = json.loads((mr.REPO / "data" / "results" / "default" / "pose_5u" / "06_pose_study.json").read_text())
    t = mr.pose_tables(r)
    labels = r["bins"]["labels"]
    assert list(t["recall"].columns) == [*labels, "all"] and len(t["recall"]) == 3 * len(r["params"]["methods"])
    rec = next(x for x in r["by_bin"] if (x["model"], x["method"], x["scenario"], x["bin"]) == ("sface", "protego", "2a", ">=15"))
    assert t["recall"].loc[("2a", "protego"), ">=15"] == f"{rec['recall']:.1f} [{rec['ci_lo']:.1f}, {rec['ci_hi']:.1f}]"
    d = next(x for x in r["uv_vs_flat"] if (x["model"], x["b"], x["scenario"], x["bin"]) == ("sface", "protego_2d", "2a", "all"))
    assert t["queries"].loc[("2a", "protego - protego_2d"), "all"].startswith(f"{d['diff']:+.1f} [")
    assert set(t["photos"].index.get_level_values("scenario")) == {"1a", "2a"}  # protected-gallery scenarios only
    assert "protego_frontal - protego_sized" in t["frontal"].index.get_level_values("comparison")
    assert "intruder" not in mr._pose(r) and "Black-box `sface`, 5 users, 26 queries" in mr._pose(r)
