"""Black-box transfer sweep: named ablations (``study.ABLATIONS``) on the first N users of a split.

Writes ``papermill_runs/bench/transfer_sweep.json`` (and prints a table): black-box recall (1b/1a/2b/2a) on the
intruder, white-box 2a on the first surrogate, SSIM and training time per user, for each row.

    python benchmarks/transfer_sweep.py --users 5 base blur_view texture64 ...
"""

from __future__ import annotations

import argparse
import json
import time

from protego_nb import data, io, paths, runtime, study
from protego_nb.protect import train as tr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ablations", nargs="+", choices=sorted(study.ABLATIONS))
    ap.add_argument("--split", default="lfw_paper_5u")
    ap.add_argument("--n-users-split", type=int, default=5)
    ap.add_argument("--max-images", type=int, default=40)
    ap.add_argument("--max-distractors", type=int, default=2000)
    ap.add_argument("--users", type=int, default=5, help="the split's first N users are trained")
    ap.add_argument("--surrogates", nargs="+", default=["dlib_resnet", "mobilefacenet"])
    ap.add_argument("--intruder", default="sface")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="transfer_sweep")
    args = ap.parse_args(argv)

    runtime.seed_everything(0)
    device = runtime.resolve_device("auto")
    ds = data.lfw()
    split = data.get_split(ds, args.split, protocol="paper", seed=0, n_users=args.n_users_split, min_images=15,
                           max_images=args.max_images, max_distractors=args.max_distractors or None)
    cfg = tr.TrainConfig.from_preset(args.preset, epochs=args.epochs)
    users = split.user_names[: args.users]
    faces, distractors = study.load_study_faces(ds, split, users=users)
    t0 = time.perf_counter()
    abl = study.run_ablation(args.ablations, split, faces, distractors, args.surrogates, args.intruder, cfg,
                             device=device)
    print(abl.drop(columns=["what"]).to_string(float_format=lambda v: f"{v:.3g}"))
    out = paths.output_root() / "papermill_runs" / "bench" / f"{args.out}.json"
    rec = {"args": vars(args), "users": users, "seconds": time.perf_counter() - t0, "device": str(device),
           "rows": {k: v.to_dict() for k, v in abl.iterrows()}}
    io.atomic_write_text(out, json.dumps(rec, indent=1, default=str))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
