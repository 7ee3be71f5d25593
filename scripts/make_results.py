"""Regenerate the committed results tables and the README's results sections from the committed run JSON.

    python scripts/make_results.py [--profile default] [--from papermill_runs/default/results] [--check]

``--from DIR`` first copies a finished run's notebook JSON (``NN_*.json`` with provenance) into
``data/results/<profile>/``, replacing the notebooks it holds. Then every table (Markdown + CSV) under
``data/results/<profile>/`` and every README section between ``<!-- results:NAME -->`` and
``<!-- /results:NAME -->`` is rebuilt from those JSON files alone (``protego_nb.evaluate.tables``: mean ±
std over users, paired bootstrap intervals). Each section names the run it comes from (date, commit,
profile, command) from the JSON's ``_run`` provenance. The output is deterministic: a second run
changes no byte. ``--check`` writes nothing and exits 1 listing every file or section that differs
(``tests/test_results.py`` runs it).

A notebook whose committed JSON predates provenance and per-user values (``_format`` < 2) is not
tabulated; its section says so. Earlier tables of that kind are kept under ``data/results/<profile>/legacy/``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # pragma: no cover - run as a script
    sys.path.insert(0, str(REPO))

from protego_nb.evaluate import tables  # noqa: E402
from protego_nb.report import to_markdown  # noqa: E402

README_PROFILE = "default"
NOTEBOOKS = {
    "00": "00_data_and_models",
    "03": "03_dense_cluster_umap",
    "04": "04_gram_volume_ablations",
    "05": "05_recall_tables",
}
NB_TITLES = {
    "00_data_and_models": "00",
    "01_uv_exploration": "01",
    "02_ppt_training": "02",
    "03_dense_cluster_umap": "03",
    "04_gram_volume_ablations": "04",
    "05_recall_tables": "05",
    "06_pose_study": "06",
}


# ------------------------------------------------------------------------------------------- loading
def results_dir(profile: str, root: Path = REPO) -> Path:
    return root / "data" / "results" / profile


def load_runs(profile: str, root: Path = REPO) -> dict[str, dict]:
    """``{notebook: run JSON}`` of the committed, current-format (``_format`` >= 2, with ``_run``) files."""
    out = {}
    folder = results_dir(profile, root)
    for f in sorted(folder.glob("[0-9][0-9]_*.json")):
        r = json.loads(f.read_text())
        if r.get("_format", 1) >= 2 and "_run" in r:
            out[f.stem] = r
    return out


def import_run(src: Path, profile: str, root: Path = REPO) -> list[str]:
    """Copy a run's notebook JSON (with provenance, of ``profile``, finished ok) into ``data/results/<profile>/``."""
    copied = []
    dest = results_dir(profile, root)
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(Path(src).glob("[0-9][0-9]_*.json")):
        r = json.loads(f.read_text())
        run = r.get("_run")
        if r.get("_format", 1) < 2 or not run:
            raise SystemExit(f"{f}: no provenance (_run); was it written by `python -m protego_nb.run`?")
        if run["profile"] != profile or not run["ok"]:
            raise SystemExit(f"{f}: profile {run['profile']!r}, ok={run['ok']}; expected a finished {profile!r} run")
        shutil.copyfile(f, dest / f.name)
        copied.append(f.name)
    return copied


# ------------------------------------------------------------------------------------------- formatting
def md(df: pd.DataFrame) -> str:
    if df is None or df.empty:
        return "_(empty)_"
    named = isinstance(df.index, pd.MultiIndex) or df.index.name is not None
    return to_markdown(df.reset_index() if named else df, index=False)


def csv(df: pd.DataFrame) -> str:
    named = isinstance(df.index, pd.MultiIndex) or df.index.name is not None
    return (df.reset_index() if named else df).to_csv(index=False)


def source_line(r: dict, notebook: str, profile: str) -> str:
    """Which run a section comes from: date, commit, profile, command, wall time, machine."""
    run = r["_run"]
    commit = (run.get("git_commit") or "unknown")[:10]
    dirty = "uncommitted changes in tracked files" if run.get("git_dirty") else "clean tree"
    m = run.get("machine", {})
    machine = f"{m.get('cpu_count')} x {m.get('cpu')}, {m.get('device')}"
    return (f"Source: `data/results/{profile}/{notebook}.json`, written by `{run['command']}` "
            f"(profile `{run['profile']}`) finishing {run['finished_utc'].replace('T', ' ').replace('+00:00', ' UTC')}, "
            f"commit `{commit}` ({dirty}); notebook {notebook[:2]} took {run['wall_seconds']:.0f} s on {machine}.")


def missing_line(notebook: str, profile: str) -> str:
    return (f"_No run of notebook {notebook[:2]} with provenance and per-user values is committed for the "
            f"`{profile}` profile yet, so nothing is tabulated here; the earlier tables (means only, no "
            f"provenance) are kept in `data/results/{profile}/legacy/`. Regenerate with `make reproduce` "
            f"then `make results`._")


def effects_sentence(df: pd.DataFrame, what: str) -> str:
    """A generated sentence listing which paired differences have an interval that excludes 0."""
    if df is None or df.empty:
        return ""
    d = df.reset_index()
    diff_col = next(c for c in d.columns if "[95% CI]" in c)
    yes = d[d["effect"] == "yes"]
    keys = [c for c in d.columns if c not in ("n", "a", "b", "lever", "base", diff_col, "effect", "model")]
    items = "; ".join(f"{' '.join(str(row[k]) for k in keys)}: {row[diff_col]}" for _, row in yes.iterrows())
    n = int(d["n"].max())
    if n < tables.MIN_USERS_FOR_EFFECT:
        return (f"With {n} user(s) no {what} difference is called an effect (at least "
                f"{tables.MIN_USERS_FOR_EFFECT} are needed).")
    if yes.empty:
        return (f"No {what} difference in this table has a 95% interval that excludes 0: none is called an "
                f"effect ({len(d)} comparisons, {n} users).")
    return (f"{what.capitalize()} differences whose 95% interval excludes 0 (effects; {len(yes)} of {len(d)} "
            f"comparisons, {int(d['n'].max())} users): {items}. All others are not distinguishable from 0 "
            "at this number of users.")


# ------------------------------------------------------------------------------------------- the tables
def verification_table(r: dict) -> pd.DataFrame:
    cols = ["model", "status", "metric", "role", "dim", "accuracy", "accuracy_std", "auc", "published"]
    rows = []
    for rec in r["verification"]["per_model"]:
        row = {c: rec.get(c) for c in cols}
        for c in ("accuracy", "accuracy_std"):
            row[c] = "" if row[c] is None else f"{row[c]:.2f}"
        row["auc"] = "" if row["auc"] is None else f"{row['auc']:.4f}"
        row["published"] = "" if row["published"] is None else f"{row['published']:.2f}"
        row["dim"] = "" if row["dim"] is None else str(int(row["dim"]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def _machine(m: dict) -> str:
    return f"{m.get('cpu_count')} x {m.get('cpu')}, {m.get('device')}"


def runs_table(runs: dict[str, dict]) -> pd.DataFrame:
    rows = []
    for nb, r in runs.items():
        run = r["_run"]
        rows.append({"notebook": nb, "finished (UTC)": run["finished_utc"][:16].replace("T", " "),
                     "commit": (run.get("git_commit") or "unknown")[:10],
                     "dirty": "yes" if run.get("git_dirty") else "no",
                     "wall s": f"{run['wall_seconds']:.0f}", "command": f"`{run['command']}`",
                     "machine": _machine(run["machine"]),
                     "load avg (1/5/15 min, at the end)": " / ".join(f"{x:.1f}" for x in run["machine"].get("loadavg") or [])})
    return pd.DataFrame(rows).set_index("notebook") if rows else pd.DataFrame()


#: file stem -> (notebook, builder)
TABLES: dict[str, tuple[str, Callable[[dict], pd.DataFrame]]] = {
    "00_verification": ("00_data_and_models", verification_table),
    "03_cohesion": ("03_dense_cluster_umap", tables.cohesion_table),
    "03_cohesion_paired": ("03_dense_cluster_umap", tables.cohesion_paired),
    "04_ablations": ("04_gram_volume_ablations", tables.ablation_table),
    "04_ablations_paired": ("04_gram_volume_ablations", tables.ablation_paired),
    "04_transfer_cells": ("04_gram_volume_ablations", lambda r: _transfer04(r)[0]),
    "04_transfer_contrasts": ("04_gram_volume_ablations", lambda r: _transfer04(r)[1]),
    "04_transfer_levers": ("04_gram_volume_ablations", lambda r: _transfer04(r)[2]),
    "04_transfer_levers_paired": ("04_gram_volume_ablations", lambda r: _transfer04(r)[3]),
    "05_faces": ("05_recall_tables", tables.faces_table),
    "05_main_table": ("05_recall_tables", tables.main_table),
    "05_paired": ("05_recall_tables", tables.methods_paired),
    "05_all_models": ("05_recall_tables", tables.models_table),
    "05_all_models_cosine": ("05_recall_tables", lambda r: tables.models_table(r, "cosine")),
    "05_leave_one_out": ("05_recall_tables", tables.loo_table),
    "05_leave_one_out_paired": ("05_recall_tables", tables.loo_paired),
    "05_ensembles_paired": ("05_recall_tables", tables.ensemble_paired),
    "05_robustness": ("05_recall_tables", tables.robustness_table),
    "05_coverage": ("05_recall_tables", tables.coverage_table),
    "05_targets": ("05_recall_tables", tables.targets_table),
    "05_paired_transfer": ("05_recall_tables", lambda r: tables.methods_paired(r, ref="protego_transfer")),
    "05_floored": ("05_recall_tables", tables.floored_table),
    "05_floored_paired": ("05_recall_tables", lambda r: _floored_paired(r)),
    "05_leave_one_out_floored_paired": ("05_recall_tables",
                                        lambda r: tables.loo_paired(r, source="leave_one_out_floored")),
    "05_targets_overview": ("05_recall_tables", tables.targets_overview),
    "05_leave_one_out_targets": ("05_recall_tables", tables.loo_targets),
}


def _floored_paired(r: dict) -> pd.DataFrame:
    parts = [tables.methods_paired(r, ref=ref, floored=True) for ref in ("protego", "protego_transfer")]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts) if parts else pd.DataFrame()


def _transfer04(r: dict) -> list[pd.DataFrame]:
    """Notebook 04's transfer section: the diagnostic's cells and contrasts, the levers and each lever minus the
    base (empty frames for a run before the section existed)."""
    out = [pd.DataFrame()] * 4
    if "transfer_diagnostics" in r:
        d = r["transfer_diagnostics"]
        out[0], out[1] = tables.transfer_cells_table(d), tables.transfer_contrasts_table(d)
    lev = (r.get("per_user") or {}).get("transfer_levers")
    if lev:
        rec = {"params": {"ablations": list(lev)}, "per_user": {"ablations": lev}}
        out[2], out[3] = tables.ablation_table(rec), tables.ablation_paired(rec, columns=tables.TRANSFER_COLUMNS)
    return out


def _transfer04_section(r: dict) -> str:
    cells, contrasts, levers, paired = _transfer04(r)
    if cells.empty and levers.empty:
        return ("This notebook-04 run predates its transfer section; the 10-user transfer measurements are the "
                "benchmark records in the sections below.")
    p = r["params"]
    text = ""
    if not cells.empty:
        text += (f"The diagnostic's cells on {len(r['transfer_diagnostics']['users'])} users (black-box "
                 f"`{p['intruder']}`; recall %, mean ± std over users):\n\n" + md(cells) + "\n\nContrasts, paired "
                 "over users (`a - b`, 95% interval):\n\n" + md(contrasts) + "\n\n"
                 + effects_sentence(contrasts, "diagnostic"))
    if not levers.empty:
        text += ("\n\nTransfer levers against the base (`lever - base` < 0: the lever protects better):\n\n"
                 + md(levers) + "\n\n" + md(paired) + "\n\n" + effects_sentence(paired, "transfer lever"))
    return text.strip()


def generate_tables(profile: str, root: Path = REPO) -> dict[Path, str]:
    """Every generated file (path -> content) of ``data/results/<profile>/``."""
    runs = load_runs(profile, root)
    folder = results_dir(profile, root)
    out: dict[Path, str] = {}
    for stem, (nb, build) in TABLES.items():
        if nb in runs:
            df = build(runs[nb])
            out[folder / f"{stem}.md"] = md(df) + "\n"
            out[folder / f"{stem}.csv"] = csv(df) if not df.empty else ""
    if runs:
        out[folder / "runs.md"] = md(runs_table(runs)) + "\n"
    return out


# ------------------------------------------------------------------------------------------- README sections
def _section(runs: dict, profile: str, nb: str, body: Callable[[dict], str]) -> str:
    if nb not in runs:
        return missing_line(nb, profile)
    return source_line(runs[nb], nb, profile) + "\n\n" + body(runs[nb])


def _main(r: dict) -> str:
    p = r["params"]
    paired = tables.methods_paired(r)
    return (f"Black-box intruder `{p['intruder']}`, recall@K (%), mean ± std over {p['n_users']} users "
            f"(lower is better except 1b); SSIM and PSNR mean ± std over users.\n\n"
            + md(tables.main_table(r)) + "\n\n"
            "Protego against each method on the same users (`a` Protego, `b` the other method; `a - b` < 0: "
            "Protego protects better), 95% paired bootstrap interval over users:\n\n"
            + md(paired) + "\n\n" + effects_sentence(paired, "Protego-vs-method") + _transfer_paired(r))


def _transfer_paired(r: dict) -> str:
    paired = tables.methods_paired(r, ref="protego_transfer")
    if paired.empty:
        return ""
    return ("\n\nThe `transfer` preset (`protego_transfer`: the paper's Protego with 4 textures per user, same "
            "surrogates) against each method, same users (`a - b` < 0: `protego_transfer` protects better):\n\n"
            + md(paired) + "\n\n" + effects_sentence(paired, "transfer-vs-method"))


def _floored(r: dict) -> str:
    t = tables.floored_table(r)
    if t.empty:
        return "This run did not score the protections under the SSIM floor (notebook 05 before it did)."
    paired = _floored_paired(r)
    return (f"Every protected canvas scaled down until it meets SSIM >= {r['params'].get('ssim_floor', 0.95)} "
            "(its perturbation times the largest factor in [0, 1] that meets the floor, as the CLI does), then "
            f"scored again by `{r['params']['intruder']}`; recall@K %, mean ± std over users; `min SSIM` is the "
            "lowest over every canvas, `scale kept` the mean factor:\n\n" + md(t)
            + "\n\nPaired over the same users under the floor (`a - b` < 0: `a` protects better):\n\n" + md(paired)
            + "\n\n" + effects_sentence(paired, "floored"))


def _models(r: dict) -> str:
    return ("Every scored model: the black-box intruder and the white-box surrogates the textures were "
            "trained against (native similarity, recall@K %, mean ± std over users).\n\n"
            + md(tables.models_table(r)))


def _loo(r: dict) -> str:
    paired = tables.loo_paired(r)
    text = md(tables.loo_table(r))
    if not paired.empty:
        text += ("\n\nWithin each row, the methods against each other (`protego_transfer` the transfer preset, "
                 "`chameleon` only in the row of the main intruder), same users, 95% paired "
                 "bootstrap interval:\n\n" + md(paired) + "\n\n" + effects_sentence(paired, "leave-one-out"))
    fl = tables.loo_paired(r, source="leave_one_out_floored")
    if not fl.empty:
        text += ("\n\nThe same comparisons with every canvas under the SSIM floor:\n\n" + md(fl) + "\n\n"
                 + effects_sentence(fl, "leave-one-out floored"))
    ens = tables.ensemble_paired(r)
    if not ens.empty:
        text += ("\n\nThe same held-out model against Protego textures trained with a larger surrogate ensemble "
                 "(`a`) and the smallest one that holds it out (`b`; the main table's profile surrogates for "
                 "the intruder; each row's surrogates are in the table above), same users, 95% paired bootstrap interval (`a - b` < 0: the larger ensemble "
                 "protects better):\n\n" + md(ens) + "\n\n" + effects_sentence(ens, "ensemble"))
    return text


def _targets_overview(r: dict) -> str:
    t = tables.targets_overview(r)
    if len(tables.target_configurations(r)) < 2:
        return ""
    return ("\n\nEvery configuration the run holds (the paper preset `protego` and the transfer preset "
            "`protego_transfer`; the main table's surrogates and the larger leave-one-out ensemble that holds the "
            "intruder out), as trained and under the per-canvas SSIM floor, with the intermediate milestone "
            "(2a <= 0.6 x 1b, and 2a below the Chameleon-style mask's of the same configuration):\n\n" + md(t))


def _loo_targets(r: dict) -> str:
    t = tables.loo_targets(r)
    if t.empty:
        return ""
    return ("\n\nThe same targets in every leave-one-out row (each strong model held out as the intruder in turn, "
            "the others train; surrogates in the leave-one-out table), as trained and under the per-canvas SSIM "
            "floor; `2a / 1b` is the ratio of the mean recalls with its 95% bootstrap interval over users:\n\n"
            + md(t))


def _ablations(r: dict) -> str:
    p = r["params"]
    paired = tables.ablation_paired(r)
    n = len(p["users"])
    return (f"{n} user{'s' if n != 1 else ''}, each gallery = the user's own entries + the distractors; `bb_*` black-box "
            f"`{p['intruder']}`, `wb_*` white-box `{p['white_box']}`; recall@K %, mean ± std over users.\n\n"
            + md(tables.ablation_table(r)) + "\n\nEach lever against `base` on the same users "
            "(`lever - base` < 0: the lever lowers recall, i.e. protects better), 95% paired bootstrap interval:\n\n"
            + md(paired) + "\n\n" + effects_sentence(paired, "lever-vs-base"))


def _cohesion(r: dict) -> str:
    paired = tables.cohesion_paired(r)
    return ("Mean cosine between two images of the same user (`within`, mean ± std over users) and of "
            "different users (`between`):\n\n" + md(tables.cohesion_table(r)) + "\n\n"
            "Protego's within-user cosine minus each other state's, same users, 95% paired bootstrap interval:\n\n"
            + md(paired) + "\n\n" + effects_sentence(paired, "within-user cosine"))


def _runs_section(runs: dict, profile: str) -> str:
    if not runs:
        return (f"_No run with provenance and per-user values is committed for the `{profile}` profile yet; "
                f"the earlier tables (means only, no provenance) are kept in `data/results/{profile}/legacy/`._")
    return (f"The committed `{profile}` results, one run JSON per notebook in `data/results/{profile}/` (the "
            "machine each ran on is in the table; its platform string is in the JSON).\n\n" + md(runs_table(runs)))


def bench_section(root: Path = REPO) -> str:
    """The Measured table, every number read from ``data/results/bench/*.json`` (``make bench``)."""
    b = root / "data" / "results" / "bench"

    def load(name):
        f = b / name
        return json.loads(f.read_text()) if f.exists() else None

    rows = []
    c = load("canvases_500_cold.json")
    if c:
        rows.append(("canvases (MTCNN detection + alignment), cold cache",
                     f"{c['n_images']} LFW images in {c['seconds']:.1f} s = {c['images_per_second']:.1f} images/s; "
                     f"{len(c['failures'])} failures, {c['notes'].get('several_faces', 0)} with several faces",
                     "canvases_500_cold.json", "`benchmarks/bench_canvases.py --limit 500 --fresh-cache`"))
    u = load("uv.json")
    if u:
        st = u["stages"]
        rows.append(("mesh + UV map per canvas (1 thread)",
                     f"{st['mesh+uv@1']['wall_ms']:.1f} ms (mesh {st['mesh']['wall_ms']:.1f} + raster "
                     f"{st['raster@1']['wall_ms']:.1f} + warp {st['warp@1']['wall_ms']:.1f}); raster "
                     f"{st['raster@32']['wall_ms']:.1f} ms/canvas in batches of 32", "uv.json", "`benchmarks/bench_uv.py`"))
    t = load("train.json")
    if t:
        z = t["runs"]["zoo:dlib_resnet+mobilefacenet+faceres"]
        rows.append(("PPT training step, dlib_resnet + mobilefacenet + faceres",
                     f"batch 16: {z['timing']['16']['s_per_step']:.2f} s, batch 4: {z['timing']['4']['s_per_step']:.2f} s; "
                     f"projected per user ({t['train_images_per_user']} photos): `release` "
                     f"{z['projected_per_user']['release']['minutes']:.1f} min, `paper` "
                     f"{z['projected_per_user']['paper']['minutes']:.1f} min", "train.json", "`benchmarks/bench_train.py`"))
    p = load("protect.json")
    if p:
        for res in ("640x480", "1920x1080"):
            a, m = p["photos_auto"][res], p["photos_mtcnn"][res]
            rows.append((f"protect a {res} photo, decode -> save",
                         f"{a['median_ms']:.0f} ms median (p90 {a['p90_ms']:.0f}) with the `auto` detector; "
                         f"{m['median_ms']:.0f} ms with MTCNN alone", "protect.json", "`benchmarks/bench_protect.py`"))
        va, vm = p["video_480p_auto"], p["video_480p_mtcnn"]
        rows.append(("protect 480p video",
                     f"{va['detect_every_1']['fps']:.1f} FPS detecting every frame, {va['detect_every_10']['fps']:.1f} "
                     f"FPS every 10th (`auto`); MTCNN {vm['detect_every_1']['fps']:.1f} / {vm['detect_every_10']['fps']:.1f} FPS",
                     "protect.json", "same"))
    z = load("zoo.json")
    if z:
        rates = ", ".join(f"{m} {v['cpu']['forward']['embeddings_per_s']:.0f} / {v['cpu']['forward_backward']['embeddings_per_s']:.0f}"
                          for m, v in z["models"].items())
        rows.append((f"FR model embeddings/s, batch {z['batch']}, {z['threads']} threads (forward / forward+backward)",
                     rates, "zoo.json", "`benchmarks/bench_zoo.py`"))
    e = load("estimate_full.json")
    if e:
        fixed = ", ".join(f"{k} = {v:.0f} s" for k, v in (e.get("fixed_seconds") or {}).items())
        rows.append(("`make full` on this CPU, **estimated** (not run)",
                     f"{e['total_hours']:.1f} h for notebooks 00 + 03-05 ({e['users']} users, {e['epochs']} epochs) "
                     f"+ {e['cold_detection_hours']:.1f} h cold detection; unit costs timed here, times the profile's "
                     f"counts" + (f"; entered by hand (`--fixed`), not timed by the estimator and recorded in no other file: {fixed}" if fixed else ""),
                     "estimate_full.json", "`benchmarks/estimate_profile.py --profile full`"))
    df = pd.DataFrame(rows, columns=["what", "number", "JSON (data/results/bench/)", "command"]).set_index("what")
    return md(df)


def fidelity_section(root: Path = REPO) -> str:
    """The fidelity table: each torch port's largest relative error against its reference runtime, as measured by
    the last ``make fidelity`` run (``data/results/bench/fidelity.json``)."""
    f = root / "data" / "results" / "bench" / "fidelity.json"
    if not f.exists():
        return "_No `make fidelity` run is committed (`data/results/bench/fidelity.json`)._\n"
    rec = json.loads(f.read_text())
    rows = [(c["model"], c["what"] or "embedding", c["reference"], c["n_inputs"], f"{c['max_rel_l2']:.1e}")
            for c in rec["checks"]]
    df = pd.DataFrame(rows, columns=["model", "output", "reference runtime", "inputs", "max relative L2 error"])
    commit = (rec["git"]["commit"] or "unknown")[:7] + ("+dirty" if rec["git"]["dirty"] else "")
    return (f"Measured by `{rec['command']}` at commit {commit} (exit status {rec['exit_status']}); every check "
            "asserts <= 1e-4.\n\n" + md(df.set_index("model")))


def _ci(rec: dict, value: str = "diff") -> str:
    return f"{rec[value]:+.1f} [{rec['ci_lo']:.1f}, {rec['ci_hi']:.1f}]" if value == "diff" else (
        f"{rec[value]:.1f} [{rec['ci_lo']:.1f}, {rec['ci_hi']:.1f}]")


def pose_tables(r: dict) -> dict[str, pd.DataFrame]:
    """Notebook 06's headline tables from its JSON records (black-box intruder): recall per |yaw| bin of the query,
    the paired UV-vs-other differences per bin (queries, and protected gallery photos), frontal-only training."""
    intr = r["params"]["intruder"]
    by_bin = pd.DataFrame(r["by_bin"])
    by_bin = by_bin[by_bin["model"] == intr]
    recall = by_bin.assign(cell=[_ci(x, "recall") for x in by_bin.to_dict("records")]).pivot_table(
        index=["scenario", "method"], columns="bin", values="cell", aggfunc="first", sort=False)
    recall.columns.name = None

    def diffs(records: list) -> pd.DataFrame:
        d = pd.DataFrame(records)
        if d.empty:
            return d
        d = d[d["model"] == intr]
        cells = d.assign(comparison=d["a"] + " - " + d["b"], cell=[_ci(x) for x in d.to_dict("records")])
        out = cells.pivot_table(index=["scenario", "comparison"], columns="bin", values="cell", aggfunc="first",
                                sort=False)
        out.columns.name = None
        return out

    return {"recall": recall, "queries": diffs(r["uv_vs_flat"]), "photos": diffs(r["entries"]["uv_vs_flat"]),
            "frontal": diffs(r["frontal"]["diffs"])}


def _pose(r: dict) -> str:
    t, b = pose_tables(r), r["bins"]
    counts = ", ".join(f"{k}: {v}" for k, v in b["query_counts"].items())
    return (f"Black-box `{r['params']['intruder']}`, {len(r['params']['users'])} users, {b['n_queries']} queries "
            f"by |yaw| (degrees; {counts}). Recall@K % per bin of the query's |yaw|, with a 95% bootstrap interval "
            "that resamples users:\n\n" + md(t["recall"]) + "\n\nPaired differences on the same queries (`a - b` "
            "< 0: `a` protects better), per bin of the query's |yaw|, 95% user-bootstrap interval:\n\n"
            + md(t["queries"]) + "\n\nThe same, binned by the |yaw| of the *protected gallery photo* (scenarios "
            "with a protected gallery):\n\n" + md(t["photos"]) + "\n\nTraining only on near-frontal photos "
            f"(|yaw| < {r['frontal']['max_abs_yaw']:g}, `protego_frontal`) against all poses (`protego`) and a random "
            "subset of the same size (`protego_sized`), queries split at that threshold:\n\n" + md(t["frontal"]))


SECTIONS: dict[str, tuple[str | None, Callable]] = {
    "runs": (None, None),
    "faces": ("05_recall_tables", lambda r: md(tables.faces_table(r))),
    "main": ("05_recall_tables", _main),
    "models": ("05_recall_tables", _models),
    "loo": ("05_recall_tables", _loo),
    "targets": ("05_recall_tables", lambda r: "Each target with the measured value and its 95% bootstrap "
                "interval over users; `met` is decided only when the whole interval is on one side.\n\n"
                + md(tables.targets_table(r)) + _targets_overview(r) + _loo_targets(r)),
    "floored": ("05_recall_tables", _floored),
    "ablations": ("04_gram_volume_ablations", _ablations),
    "notebook_transfer": ("04_gram_volume_ablations", _transfer04_section),
    "robustness": ("05_recall_tables", lambda r: "Protected images re-encoded before the black-box intruder "
                   "sees them; recall@K %, mean ± std over users.\n\n" + md(tables.robustness_table(r))),
    "coverage": ("05_recall_tables", lambda r: "Only a fraction of the user's gallery protected (`1-cov*` clean "
                 "queries, `2-cov*` protected queries); recall@K %, mean ± std over users.\n\n"
                 + md(tables.coverage_table(r))),
    "cohesion": ("03_dense_cluster_umap", _cohesion),
    "pose": ("06_pose_study", _pose),
    "verification": ("00_data_and_models", lambda r: f"{r['verification']['n_pairs']} of the official LFW "
                     "pairs, 10-fold, each model's native similarity.\n\n" + md(verification_table(r))),
}


def readme_sections(profile: str = README_PROFILE, root: Path = REPO) -> dict[str, str]:
    runs = load_runs(profile, root)
    out = {}
    for name, (nb, body) in SECTIONS.items():
        out[name] = _runs_section(runs, profile) if nb is None else _section(runs, profile, nb, body)
    out["bench"] = bench_section(root)
    out["fidelity"] = fidelity_section(root)
    return out


MARK = re.compile(r"(<!-- results:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def apply_sections(text: str, sections: dict[str, str]) -> str:
    """``text`` with the body of every ``<!-- results:NAME -->`` section replaced (unknown names: an error)."""
    seen = set()

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in sections:
            raise KeyError(f"README section results:{name} has no generator (known: {sorted(sections)})")
        seen.add(name)
        return m.group(1) + sections[name].rstrip("\n") + "\n" + m.group(4)

    return MARK.sub(sub, text)


# ------------------------------------------------------------------------------------------- write / check
def expected(profile: str, root: Path = REPO, readme: Path | None = None) -> dict[Path, str]:
    files = generate_tables(profile, root)
    readme = readme or root / "README.md"
    if profile == README_PROFILE and readme.exists():
        files[readme] = apply_sections(readme.read_text(), readme_sections(profile, root))
    return files


def stale(profile: str, root: Path = REPO) -> list[Path]:
    """Table files in ``data/results/<profile>/`` that the committed JSON does not generate."""
    folder = results_dir(profile, root)
    gen = generate_tables(profile, root)
    return sorted(p for p in folder.glob("*") if p.is_file() and p.suffix in (".md", ".csv") and p not in gen)


def check(profile: str = README_PROFILE, root: Path = REPO, readme: Path | None = None) -> list[str]:
    problems = []
    for path, content in expected(profile, root, readme).items():
        if not path.exists():
            problems.append(f"missing: {path.relative_to(root) if path.is_relative_to(root) else path}")
        elif path.read_text() != content:
            problems.append(f"differs from what the committed results generate: {path}")
    problems += [f"not generated by the committed results (stale): {p}" for p in stale(profile, root)]
    return problems


def write(profile: str = README_PROFILE, root: Path = REPO, readme: Path | None = None) -> list[Path]:
    for p in stale(profile, root):
        p.unlink()
    changed = []
    for path, content in expected(profile, root, readme).items():
        if not path.exists() or path.read_text() != content:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default=README_PROFILE)
    ap.add_argument("--from", dest="src", type=Path, help="a run's results folder to import first")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when anything differs")
    args = ap.parse_args(argv)
    if args.check:
        problems = check(args.profile)
        for p in problems:
            print(p)
        print("results up to date" if not problems else f"{len(problems)} problem(s); run `make results`")
        return 1 if problems else 0
    if args.src:
        print("imported:", ", ".join(import_run(args.src, args.profile)))
    changed = write(args.profile)
    print(f"{len(changed)} file(s) written" + "".join(f"\n  {p.relative_to(REPO)}" for p in changed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
