"""Notebook set-up and the small computations the notebooks share, so each notebook cell stays a few lines.

    from protego_nb import notebook
    ctx = notebook.setup(globals())   # in the cell after the papermill ``parameters`` cell

:func:`setup` reads the notebook's parameters (its upper-case globals, as papermill injected them) and
does, in this order, what every study notebook needs: registers the optional baseline methods (when the
notebook declares their parameters), seeds every generator, resolves the device, loads LFW and the split,
builds the training configuration, checks the methods, loads the users' faces and the distractors, and
loads the white-box surrogates. The order and arguments are fixed so that a notebook's numbers do not
depend on how it is set up. The returned :class:`Context` carries these objects and output helpers.

The other functions build the dictionaries and tables the notebooks store in their results JSON.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from . import data, paths, report, runtime, study

# ---------------------------------------------------------------------------------------------------------
# Optional baseline methods: the one place the notebooks register them (OPOM, Fawkes-, LowKey-style).
# A notebook opts in by declaring PER_IMAGE_STEPS and FAWKES_MODE among its parameters.
# ---------------------------------------------------------------------------------------------------------
BASELINE_PARAMETERS = ("PER_IMAGE_STEPS", "FAWKES_MODE")


def register_baselines(params: Mapping[str, Any], distractors=None) -> bool:
    """Register the optional baselines (:func:`protego_nb.protect.methods.register_baselines`) when the notebook
    declares their parameters; with ``distractors`` (a FaceSet), Fawkes too, its candidate target identities
    being the distractors (other people's photos)."""
    if not all(k in params for k in BASELINE_PARAMETERS):
        return False
    from .protect import methods

    pool = None if distractors is None else methods.TargetPool.from_faces(distractors)
    methods.register_baselines(pool, steps=params["PER_IMAGE_STEPS"] or None, fawkes_mode=params["FAWKES_MODE"])
    return True


def baselines_pending(params: Mapping[str, Any]) -> tuple[str, ...]:
    """Methods that :func:`setup` registers once the faces are loaded (Fawkes needs the distractors)."""
    return ("fawkes",) if all(k in params for k in BASELINE_PARAMETERS) else ()


# --------------------------------------------------------------------------------------------------------- end


def parameters(ns: Mapping[str, Any]) -> dict[str, Any]:
    """The notebook's parameters: its upper-case global names (``SEED``, ``SPLIT_NAME``, ...)."""
    return {k: v for k, v in ns.items() if k.isupper() and k.isidentifier() and not k.startswith("_")}


def max_distractors(params: Mapping[str, Any]) -> int | None:
    """``MAX_DISTRACTORS``: 0 (or below) means every other identity's images, i.e. no cap."""
    n = params.get("MAX_DISTRACTORS", 0)
    return None if n <= 0 else n


def load_split(ds: data.FaceDataset, params: Mapping[str, Any]) -> data.Split:
    """The split named ``SPLIT_NAME`` (written once, then checked to reproduce) from the split parameters."""
    p = params
    return data.get_split(ds, p["SPLIT_NAME"], protocol=p["PROTOCOL"], seed=p["SEED"], n_users=p["N_USERS"],
                          min_images=p["MIN_IMAGES"], max_images=p["MAX_IMAGES"], max_distractors=max_distractors(p))


def train_config(params: Mapping[str, Any]):
    """``TrainConfig`` of ``PRESET`` with the L-inf bound ``EPSILON_255`` and ``EPOCHS`` (0: the preset's)."""
    from .protect import train as tr

    epochs = params.get("EPOCHS", 0)
    return tr.TrainConfig.from_preset(params["PRESET"], eps=params["EPSILON_255"] / 255,
                                      **({"epochs": epochs} if epochs > 0 else {}))


def selected_users(split: data.Split, params: Mapping[str, Any]) -> list[str] | None:
    """Users whose faces a notebook loads: ``USER`` (empty: the first), the first ``ABLATION_USERS``, or all (None)."""
    if "USER" in params:
        return [params["USER"] or split.user_names[0]]
    if "ABLATION_USERS" in params:
        return split.user_names[: params["ABLATION_USERS"]]
    return None


@dataclass
class Context:
    """What :func:`setup` prepared for a notebook; attributes a notebook does not use stay None."""

    params: dict[str, Any]
    profile: str
    device: str
    eps: float | None = None
    ds: data.FaceDataset | None = None
    split: data.Split | None = None
    cfg: Any = None
    users: list[str] | None = None
    methods: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    faces: dict | None = None
    distractors: Any = None
    surrogates: dict | None = None

    @property
    def p(self) -> SimpleNamespace:
        """The parameters as attributes (``ctx.p.SEED``)."""
        return SimpleNamespace(**self.params)

    @property
    def out(self) -> Path:
        """The profile's results folder (tables, JSON, CSV rows)."""
        return paths.results_dir(self.profile)

    def load_split(self) -> data.Split:
        self.split = load_split(self.ds, self.params)
        return self.split

    def load_faces(self) -> tuple[dict, Any]:
        """``({user: FaceSet}, distractors)`` of the selected users (all users when none are selected)."""
        if self.users is None:
            self.faces, self.distractors = study.load_study_faces(self.ds, self.split)
        else:
            self.faces, self.distractors = study.load_study_faces(self.ds, self.split, users=self.users)
        return self.faces, self.distractors

    def load_surrogates(self) -> dict:
        """The white-box ``SURROGATES`` (never the black-box ``INTRUDER``)."""
        self.surrogates = study.load_surrogates(self.params["SURROGATES"], self.params["INTRUDER"], self.device)
        return self.surrogates

    def protect(self, methods: Sequence[str] | None = None, **kwargs) -> dict:
        """Every loaded user protected by each method (default: the checked ``METHODS``) against the surrogates."""
        return study.protect_users(list(self.methods if methods is None else methods), self.split, self.faces,
                                   self.surrogates, self.cfg, device=self.device, intruder=self.params["INTRUDER"],
                                   **kwargs)

    def savefig(self, fig, name: str):
        return report.savefig(fig, name, self.profile)

    def save_table(self, df, name: str, **kwargs):
        return report.save_table(df, name, self.profile, **kwargs)


def setup(ns: Mapping[str, Any], *, split: bool = True, faces: bool = True, surrogates: bool = True) -> Context:
    """Set a notebook up from its parameters (pass ``globals()``); see the module docstring for the steps.

    Each step runs only when the notebook declares the parameters it needs (``SPLIT_NAME`` for the
    dataset and split, ``PRESET`` for the configuration, ``SURROGATES`` for the surrogates); ``split``,
    ``faces`` and ``surrogates`` switch the later steps off for a notebook that does them itself.
    """
    params = parameters(ns)
    register_baselines(params)
    runtime.seed_everything(params["SEED"])
    ctx = Context(params=params, profile=params["PROFILE"], device=runtime.resolve_device(params["DEVICE"]))
    if "EPSILON_255" in params:
        ctx.eps = params["EPSILON_255"] / 255
    if "SPLIT_NAME" not in params:
        return ctx
    ctx.ds = data.lfw()
    if not split:
        return ctx
    ctx.load_split()
    ctx.users = selected_users(ctx.split, params)
    if "PRESET" in params:
        ctx.cfg = train_config(params)
    if "METHODS" in params:
        if "OPTIONAL_METHODS" in params:  # a missing method is an error unless optional
            ctx.methods, ctx.skipped = study.check_methods(params["METHODS"], params["OPTIONAL_METHODS"],
                                                           pending=baselines_pending(params))
        else:
            ctx.methods = list(params["METHODS"])
    if faces:
        ctx.load_faces()
        if "fawkes" in ctx.methods:
            register_baselines(params, ctx.distractors)
    if faces and surrogates and "SURROGATES" in params:
        ctx.load_surrogates()
    return ctx


# --- 00: data and models ----------------------------------------------------------------------------------


def detection_sample(ds: data.FaceDataset, limit: int, seed: int) -> list:
    """A seeded sample of ``limit`` LFW images (all of them when ``limit`` is 0 or covers the dataset)."""
    rng = np.random.default_rng(seed)
    all_images = ds.all_images()
    if limit and limit < len(all_images):
        return [all_images[i] for i in np.sort(rng.choice(len(all_images), limit, replace=False))]
    return all_images


def detection_summary(rep, n_images: int) -> dict:
    """Detection outcome counts of a ``build_canvases`` report over ``n_images`` images."""
    det = {"n_images": n_images, "n_canvases": len(rep.canvases), "failures": dict(rep.counts),
           "notes": dict(rep.notes), "seconds": rep.seconds}
    det["failure_rate"] = 1 - det["n_canvases"] / max(1, det["n_images"])
    return det


def zoo_table(models: Sequence[str]):
    """One row per zoo model in ``models``: format, input, dimension, metric, role, strength, licence."""
    import pandas as pd

    from .models import zoo

    return pd.DataFrame([{"model": n, "format": s.fmt, "input": f"{s.input_size} {s.template}", "dim": s.dim,
                          "metric": s.metric, "role": s.role, "strength": s.strength, "licence": s.licence,
                          "available": zoo.unavailable_reason(n) is None}
                         for n, s in zoo.MODELS.items() if n in models]).set_index("model")


# --- 01: UV exploration -----------------------------------------------------------------------------------


def sample_lfw_files(n: int, seed: int) -> tuple[list[Path], int]:
    """``(files, n_all)``: a seeded sample of ``n`` LFW image files (0: all), sorted, and the total count."""
    rng = np.random.default_rng(seed)
    all_images = sorted(paths.lfw_images_dir().glob("*/*.jpg"))
    n_sample = len(all_images) if n <= 0 else min(n, len(all_images))
    return [all_images[i] for i in sorted(rng.choice(len(all_images), n_sample, replace=False))], len(all_images)


def mesh_summary(rep, res, yaw: np.ndarray, visible: np.ndarray) -> dict:
    """Mesh and visibility numbers over the canvases of a detection report ``rep`` and their meshes ``res``."""
    from collections import Counter

    from .faces import mesh

    return {"n_canvases": len(rep.canvases), "detection_failures": len(rep.failures), "mesh_failures": res.n_failed,
            "mesh_failure_reasons": dict(Counter(r for r in res.reasons if r)),
            "mean_visible_fraction": float(visible[res.ok].mean()),
            "yaw_deg": {"min": float(np.nanmin(yaw)), "median_abs": float(np.nanmedian(np.abs(yaw))),
                        "max": float(np.nanmax(yaw))},
            "canonical_uv_asymmetry": mesh.uv_asymmetry()}


def yaw_fits(fits: Mapping[str, Any]) -> dict:
    """The numbers of :func:`plots_uv.visible_area_vs_yaw` fits, by name."""
    return {name: {"n": f.n, "pearson_abs_yaw": f.pearson_abs_yaw, "spearman_abs_yaw": f.spearman_abs_yaw,
                   "quadratic_coef": f.coef, "quadratic_r2": f.r2} for name, f in fits.items()}


# --- 02: one user's PPT -----------------------------------------------------------------------------------


def spread_poses(fs, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(pick, yaw)``: ``n`` images of a FaceSet spread evenly over head yaw, and every image's yaw."""
    from .faces import mesh

    yaw = mesh.estimate_yaw(mesh.mesh_canvases([fs.canvases[i].canvas for i in fs.ids]).vertices)
    order = np.argsort(np.nan_to_num(yaw))
    return order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)], yaw


def ppt_timing(prots: Mapping, user: str, steps: Mapping[str, int], fs, texture, eps: float, device: str,
               repeats: int = 20) -> dict:
    """Training seconds per step of each method, and ms to apply ``texture`` to one canvas (mean of ``repeats``)."""
    import torch

    from .protect.texture import apply_texture

    x1, warp1 = fs.x[:1], fs.warp("uv").select([0])
    t0 = time.perf_counter()
    for _ in range(repeats):
        apply_texture(x1, warp1, texture, eps)
    apply_ms = (time.perf_counter() - t0) / repeats * 1000
    return {"train_s_per_step": {m: prots[m][user].train_seconds / max(1, steps[m]) for m in steps},
            "apply_ms_per_canvas": apply_ms, "device": device, "threads": torch.get_num_threads()}


# --- 03: dense cluster ------------------------------------------------------------------------------------


def embeddings_by_state(models: Sequence[str], faces: Mapping, prots: Mapping, methods: Sequence[str],
                        device: str) -> dict:
    """``{(model, state): {user: [n, D]}}``; state ``"clean"`` or a method (its protected images)."""
    from .models import zoo

    emb = {}
    for name in models:
        model = zoo.load(name, device)
        for u, fs in faces.items():
            clean = study.clean_embeddings(model, name, fs, device)
            emb.setdefault((name, "clean"), {})[u] = np.stack([clean[i] for i in fs.ids])
            for m in methods:
                p = prots[m][u]
                emb.setdefault((name, m), {})[u] = study.embed(model, p.protected, fs.take(p.ids).lm, device)
    return emb


def cohesion_results(emb: Mapping) -> tuple[Any, dict, dict]:
    """``(table, cohesion, per_user)``: within/between cosine per (model, state), and per user within cosine."""
    import pandas as pd

    coh = pd.DataFrame([{"model": name, "state": st, **study.cohesion(e)} for (name, st), e in emb.items()])
    coh = coh.set_index(["model", "state"])
    per_user = {}
    for (name, st), e in emb.items():
        per_user.setdefault(name, {})[st] = study.within_cosine(e)
    return coh, {f"{k[0]}/{k[1]}": v.to_dict() for k, v in coh.iterrows()}, per_user


# --- 05: recall tables ------------------------------------------------------------------------------------


def user_means(per_user: Mapping, prefixed: bool = True) -> dict:
    """Means over users of nested per-user numbers.

    ``prefixed``: ``{a: {m: {s: {user: v}}}}`` -> ``{"a/m": {s: mean}}``; else ``{m: {s: {user: v}}}`` ->
    ``{m: {s: mean}}``.
    """
    from .evaluate import stats

    if not prefixed:
        return {m: {s: stats.mean_std(v)[0] for s, v in by_s.items()} for m, by_s in per_user.items()}
    return {f"{a}/{m}": {s: stats.mean_std(v)[0] for s, v in by_s.items()}
            for a, by_m in per_user.items() for m, by_s in by_m.items()}


def per_user_numbers(df, faces: Mapping, prots: Mapping, eps: float, methods: Sequence[str]) -> dict:
    """Per-user recall (native and cosine) from evaluation rows ``df``, and per-user SSIM (mean and lowest) and
    PSNR (:func:`quality_numbers`)."""
    return dict(native=study.per_user(df), cosine=study.per_user(df, metric="cosine"),
                quality=quality_numbers(faces, {m: prots[m] for m in methods}, eps))


def main_numbers(results: Mapping, intruder: str, methods: Sequence[str], scenarios: Sequence[str]) -> dict:
    """Per method: the intruder's mean recall (and std over users) per scenario, mean SSIM and PSNR."""
    from .evaluate import stats

    per, quality = results["per_user"]["native"][intruder], results["per_user"]["quality"]
    return {m: {**{s: stats.mean_std(per[m][s])[0] for s in scenarios},
                **{f"{s}_std": stats.mean_std(per[m][s])[1] for s in scenarios},
                "ssim": stats.mean_std(quality[m]["ssim"])[0],
                "psnr": stats.mean_std(quality[m]["psnr"])[0]} for m in methods}


def leave_one_out(ctx: Context, plan: Sequence, methods: Sequence[str],
                  scenarios: Sequence[str] = ("1b", "1a", "2b", "2a"), extra: Mapping[str, Sequence[str]] | None = None,
                  floor: float | None = None) -> tuple[dict, dict]:
    """Each held-out model scores users protected against the rest, by plan label.

    ``extra[label]``: methods trained and scored in that row only (e.g. a baseline beside the shipped ensemble
    against the main intruder). Returns ``(surrogates, per_user)``: ``per_user`` holds ``leave_one_out``
    (recall) and ``leave_one_out_quality`` by label and, with ``floor``, the same protections under the
    per-canvas SSIM floor: ``leave_one_out_floored`` (recall, ``1a 2b 2a``) and ``leave_one_out_floored_quality``
    (SSIM mean and minimum per user, mean scale factor)."""
    surrogates: dict = {}
    out: dict = {"leave_one_out": {}, "leave_one_out_quality": {}}
    if floor is not None:
        out["leave_one_out_floored"], out["leave_one_out_floored_quality"] = {}, {}
    for label, held, sur_names in plan:
        row_methods = list(dict.fromkeys([*methods, *((extra or {}).get(label) or [])]))
        sur = study.load_surrogates(sur_names, held, ctx.device)
        p_loo = study.protect_users(row_methods, ctx.split, ctx.faces, sur, ctx.cfg, device=ctx.device, intruder=held)
        d = study.evaluate([held], ctx.split, ctx.faces, ctx.distractors, p_loo, scenarios=list(scenarios),
                           metric=("native",), device=ctx.device)
        surrogates[label] = sur_names
        out["leave_one_out"][label] = study.per_user(d, keys=("method", "scenario"))
        out["leave_one_out_quality"][label] = quality_numbers(ctx.faces, p_loo, ctx.eps)
        if floor is not None:
            out["leave_one_out_floored"][label], out["leave_one_out_floored_quality"][label] = floored_numbers(
                ctx, p_loo, held, floor)
    return surrogates, out


def quality_numbers(faces: Mapping, prots: Mapping, eps: float, factors: Mapping | None = None) -> dict:
    """``{method: {"ssim", "ssim_min", "psnr"[, "scale"]: {user: value}}}``: per-user mean and minimum SSIM over
    the user's protected canvases, mean PSNR and (with ``factors``) the mean perturbation scale kept."""
    q = study.quality_table(faces, prots, eps)
    g = q.groupby(["method", "user"])
    mean, low = g[["ssim", "psnr"]].mean(), g["ssim"].min()
    out = {m: {"ssim": {u: float(mean.loc[(m, u), "ssim"]) for u in prots[m]},
               "ssim_min": {u: float(low.loc[(m, u)]) for u in prots[m]},
               "psnr": {u: float(mean.loc[(m, u), "psnr"]) for u in prots[m]}} for m in prots}
    for m, by_user in (factors or {}).items():
        out[m]["scale"] = {u: float(a.float().mean()) for u, a in by_user.items()}
    return out


def floored_numbers(ctx: Context, prots: Mapping, model: str, floor: float,
                    scenarios: Sequence[str] = ("1a", "2b", "2a")) -> tuple[dict, dict]:
    """Recall of ``model`` (per user) and quality when every canvas is scaled down to meet the SSIM ``floor``
    (:func:`protego_nb.study.with_ssim_floor`): each method's strength under the guarantee."""
    floored, factors = study.with_ssim_floor(prots, ctx.faces, floor)
    d = study.evaluate([model], ctx.split, ctx.faces, ctx.distractors, floored, scenarios=list(scenarios),
                       metric=("native",), device=ctx.device)
    return study.per_user(d, keys=("method", "scenario")), quality_numbers(ctx.faces, floored, ctx.eps, factors)


def coverage_scenarios(coverage: Sequence[float]) -> list[str]:
    """Scenario names for clean (1) then protected (2) queries at each gallery coverage (0, 1: b, a)."""
    from .evaluate.retrieval import Scenario

    return [Scenario(q == 2, float(c)).name for q in (1, 2) for c in coverage]


def target_numbers(results: Mapping, targets, ref: str = "protego", other: str = "chameleon") -> dict:
    """Protego's headline numbers next to the targets table (and its 2a reduction against ``other``)."""
    pr = results["main"][ref]
    t = {"protego_2a_over_1b": pr["2a"] / max(pr["1b"], 1e-9), "protego_1a": pr["1a"], "protego_2b": pr["2b"],
         "protego_ssim": pr["ssim"]}
    if other in results["main"]:
        ch = results["main"][other]
        t["reduction_2a_protego"], t["reduction_2a_chameleon"] = pr["1b"] - pr["2a"], ch["1b"] - ch["2a"]
        t["reduction_ratio"] = (t["reduction_2a_protego"] / t["reduction_2a_chameleon"]
                                if t["reduction_2a_chameleon"] > 0 else None)
    t["met"] = targets["met"].to_dict()
    return t


# --- 04: transfer section --------------------------------------------------------------------------------


def bench_record(name: str) -> dict:
    """A committed benchmark record ``data/results/bench/<name>.json`` (a transfer diagnostic or lever run)."""
    import json

    path = paths.REPO_ROOT / "data" / "results" / "bench" / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such committed benchmark record (TRANSFER_RECORDS names a file stem)")
    return json.loads(path.read_text())


def bench_tables(name: str) -> tuple[str, list]:
    """``(source line, tables)`` of a committed transfer record: a diagnostic (``values``: the cells and their
    contrasts) or a lever run (``per_user.ablations``: the levers, each lever minus the base and, when the record
    names ``pairs``, one lever against another)."""
    from .evaluate import tables

    rec = bench_record(name)
    git = rec.get("git") or {}
    commit = (rec.get("commit") or git.get("commit") or "unknown")[:10]
    users = rec.get("users") or []
    source = f"{name}: `{rec.get('command', '?')}` at commit {commit}, {len(users)} users"
    if "values" in rec:
        return source, [tables.transfer_cells_table(rec), tables.transfer_contrasts_table(rec)]
    out = [tables.ablation_table(rec), tables.ablation_paired(rec, columns=tables.TRANSFER_COLUMNS)]
    if rec.get("pairs"):  # one lever against another (benchmarks/transfer_levers.py --pairs)
        out.append(tables.lever_pairs(rec, rec["pairs"]))
    return source, out


# --- 06: pose study ---------------------------------------------------------------------------------------


def pose_summary(poses) -> dict:
    """Counts, median pose angles and the sanity maxima (roll, yaw against notebook 01's yaw) of the images."""
    from .evaluate import pose

    return {"n_images": len(poses), "n_no_mesh": int(poses["yaw"].isna().sum()),
            **{f"median_{c}": float(poses[c].median()) for c in pose.POSE_COLUMNS},
            "max_abs_roll": float(poses["roll"].abs().max()),
            "max_abs_yaw_minus_yaw01": float((poses["yaw"] - poses["yaw_axis"]).abs().max())}
