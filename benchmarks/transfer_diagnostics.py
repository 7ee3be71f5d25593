"""Black-box transfer diagnostics: the 2x2 {shared UV texture, per-image perturbation} x {Protego loss, LowKey-style loss}.

Same surrogates, bound and SSIM floor in every cell; black-box intruder held out. For each cell and user:
black-box 1b/1a/2b/2a recall, white-box 2a of each surrogate, SSIM, seconds, and the common vs per-image shift
decomposition (``evaluate.transfer``) on the intruder and the surrogates; each cell scored as produced (``raw``)
and with the SSIM floor enforced per canvas (``floor``). Paired differences with 95% bootstrap intervals over
users (``evaluate.stats``): carrier within each loss, loss within each carrier, and floor vs raw per cell.

    python benchmarks/transfer_diagnostics.py --users 10 --refine 5 10 20 --out transfer_diagnostics_10u  # writes data/results/bench/transfer_diagnostics_10u.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from protego_nb import data, io, paths, runtime, study
from protego_nb.evaluate import stats
from protego_nb.protect import train as tr
from protego_nb.study import transfer as transfer_study


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="lfw_paper_10u", help="the default profile's split")
    ap.add_argument("--n-users-split", type=int, default=10)
    ap.add_argument("--max-images", type=int, default=30)
    ap.add_argument("--max-distractors", type=int, default=2000)
    ap.add_argument("--users", type=int, default=5, help="the split's first N users")
    ap.add_argument("--surrogates", nargs="+", default=["dlib_resnet", "mobilefacenet"])
    ap.add_argument("--intruder", default="sface")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--epochs", type=int, default=8, help="texture epochs (the default profile's 8)")
    ap.add_argument("--steps", type=int, default=30, help="per-image steps (the default profile's PER_IMAGE_STEPS)")
    ap.add_argument("--lr", type=float, default=0.0025, help="per-image signed step (LowKey's 0.0025)")
    ap.add_argument("--no-score", action="store_true", help="only compute (and cache) the protections")
    ap.add_argument("--white", nargs="*", default=None, help="white-box models scored (default: the surrogates)")
    ap.add_argument("--refine", nargs="*", type=int, default=[],
                    help="lever 8a: also score the PPT refined by k per-photo Protego steps (needs ppt_protego)")
    ap.add_argument("--cells", nargs="+", default=list(transfer_study.CELLS), choices=transfer_study.CELLS)
    ap.add_argument("--out", default="transfer_diagnostics")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    runtime.seed_everything(0)
    device = runtime.resolve_device("auto")
    ds = data.lfw()
    split = data.get_split(ds, args.split, protocol="paper", seed=0, n_users=args.n_users_split, min_images=15,
                           max_images=args.max_images, max_distractors=args.max_distractors or None)
    cfg = tr.TrainConfig.from_preset(args.preset, epochs=args.epochs)
    users = split.user_names[: args.users]
    faces, distractors = study.load_study_faces(ds, split, users=users)
    log(f"faces loaded: {sum(len(f) for f in faces.values())} user photos, {len(distractors)} distractors")
    sur = study.load_surrogates(args.surrogates, args.intruder, device)
    prots = transfer_study.run_cells(args.cells, split, faces, sur, cfg, args.intruder, device=device,
                                     steps=args.steps, lr=args.lr, log=log)
    if args.no_score:
        log("protections computed and cached (--no-score)")
        return 0
    for k in args.refine:  # lever 8a: PPT + k per-photo steps at protect time
        if "ppt_protego" not in prots:
            raise SystemExit("--refine needs the ppt_protego cell")
        for u, p in prots["ppt_protego"].items():
            x, sec = transfer_study.refine_ppt(p, faces[u], sur, cfg, k, args.lr, device=device)
            apply_s = p.train_seconds  # the PPT's training time; the refinement's own time is per photo below
            prots.setdefault(f"ppt_refine{k}", {})[u] = study.Protection(
                u, f"ppt_refine{k}", p.texture, x, list(p.ids), None, sec)
            log(f"ppt_refine{k} {u}: {sec:.1f} s for {len(p.ids)} photos (PPT trained in {apply_s:.1f} s)")
    floored, factors = transfer_study.floored(prots, faces, cfg.min_ssim)
    white = args.surrogates if args.white is None else args.white
    models = [args.intruder, *white]
    values = {"raw": transfer_study.score_cells(prots, split, faces, distractors, models, device=device)}
    log("scored raw")
    values["floor"] = transfer_study.score_cells(floored, split, faces, distractors, models, device=device)
    log("scored with the SSIM floor enforced")
    for cell, by_user in factors.items():
        values["floor"][cell]["floor_factor_mean"] = {u: float(a.mean()) for u, a in by_user.items()}
        values["floor"][cell]["floor_scaled_fraction"] = {u: float((a < 1).float().mean()) for u, a in by_user.items()}

    bb = args.intruder
    keys = [f"{bb}_{s}" for s in ("1a", "2b", "2a")] + [f"{m}_2a" for m in white] + [
        "ssim", "seconds", f"{bb}_common_fraction", f"{bb}_residual_rms", f"{bb}_within_cos_protected"]
    contrasts = dict(transfer_study.CONTRASTS)
    contrasts.update({f"refine{k}_vs_ppt": (f"ppt_refine{k}", "ppt_protego") for k in args.refine})
    paired = {v: transfer_study.paired_summary(values[v], keys, contrasts) for v in values}
    floor_vs_raw = {
        cell: {k: stats.paired_bootstrap(values["floor"][cell][k], values["raw"][cell][k]).to_dict()
               for k in keys if k != "seconds"}
        for cell in prots
    }
    summary = {v: {cell: {k: stats.mean_std(vals) for k, vals in cv.items()} for cell, cv in values[v].items()}
               for v in values}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    rec = {
        "what": "transfer diagnostics: the 2x2 carrier x loss, the shift decomposition, the SSIM floor per canvas",
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "args": vars(args), "config": cfg.to_dict(), "users": users, "device": str(device),
        "commit": commit, "dirty": dirty, "seconds": time.perf_counter() - t_start,
        "cells": {c: transfer_study.cell_methods(args.steps, args.lr)[c].title for c in args.cells}
        | {f"ppt_refine{k}": f"ppt_protego + {k} per-photo Protego steps of lr {args.lr} (seconds: the refinement)"
           for k in args.refine},
        "values": values, "summary_mean_std_n": summary, "paired": paired, "floor_vs_raw": floor_vs_raw,
    }
    out = paths.REPO_ROOT / "data" / "results" / "bench" / f"{args.out}.json"
    io.atomic_write_text(out, json.dumps(rec, indent=1, default=str))
    for v in values:
        print(f"== {v}")
        for cell in prots:
            row = summary[v][cell]
            print(f"{cell:14s} " + " ".join(f"{k}={row[k][0]:.3g}" for k in keys if k in row))
    for v, pv in paired.items():
        for cname, d in pv.items():
            print(v, cname, {k: stats.fmt_ci(x) for k, x in d.items()})
    for cell, d in floor_vs_raw.items():
        print("floor-raw", cell, {k: stats.fmt_ci(x) for k, x in d.items()})
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
