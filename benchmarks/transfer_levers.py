"""Transfer levers on the default profile's users: each lever trained and scored against the base, paired per user.

Every lever is a named ablation (:data:`protego_nb.study.ABLATIONS`: a ``TrainConfig`` change over the base
configuration). Same split, users, surrogates, held-out intruder and scoring as notebook 04
(:func:`protego_nb.study.ablation_rows`: each user's gallery is their own entries plus the distractors), so the
base's textures are the study's cached ``protego`` textures. Writes ``data/results/bench/<out>.json`` with the
per-user values (the notebook-04 layout, so :func:`protego_nb.evaluate.tables.ablation_table` and
``ablation_paired`` read it) and the two tables as Markdown.

    python benchmarks/transfer_levers.py --levers push_centre logdet_relative centre_both
    python benchmarks/transfer_levers.py --render data/results/bench/transfer_levers.json   # tables only
    python benchmarks/transfer_levers.py --render data/results/bench/transfer_levers_spectrum.json \
        --pairs textures4_spectrum5:textures4        # + one lever against another, paired over the same users
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from protego_nb import data, io, paths, runtime, study  # noqa: E402
from protego_nb.evaluate import tables  # noqa: E402
from protego_nb.protect import train as tr  # noqa: E402
from protego_nb.report import to_markdown  # noqa: E402


def render(rec: dict) -> str:
    """The lever table (mean ± std over users), each lever minus the base with its 95% paired interval, and the
    record's ``pairs`` (one lever against another; a rendering choice, so it may be added after the run by
    ``--render --pairs``, which leaves the run's own fields as they were)."""
    paired = tables.ablation_paired(rec, columns=tables.TRANSFER_COLUMNS)
    per = rec["per_user"]["ablations"]
    rows = []
    for name in rec["params"]["ablations"]:
        if name == "base":
            continue
        p = tables.paired_row(per[name]["ssim"], per["base"]["ssim"], digits=3)
        rows.append({"ablation": name, "lever": p["a"], "base": p["b"], "lever - base [95% CI]": p["a - b [95% CI]"],
                     "effect": p["effect"]})
    ssim = pd.DataFrame(rows).set_index("ablation") if rows else None
    text = to_markdown(tables.ablation_table(rec)) + "\n\n" + to_markdown(paired) + "\n"
    if ssim is not None:
        text += "\nMean SSIM, lever - base:\n\n" + to_markdown(ssim) + "\n"
    if rec.get("pairs"):
        text += "\nOne lever against another, paired over the same users:\n\n"
        text += to_markdown(tables.lever_pairs(rec, rec["pairs"])) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levers", nargs="+", choices=sorted(study.ABLATIONS))
    ap.add_argument("--render", type=Path, help="only rewrite the Markdown tables of this JSON")
    ap.add_argument("--users", type=int, default=10, help="the split's first N users")
    ap.add_argument("--split", default="lfw_paper_10u")
    ap.add_argument("--surrogates", nargs="+", default=["dlib_resnet", "mobilefacenet"])
    ap.add_argument("--intruder", default="sface")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--out", default="transfer_levers")
    ap.add_argument("--pairs", nargs="+", default=[], metavar="A:B",
                    help="also A - B for these pairs of levers (with --render: recorded into the JSON too)")
    args = ap.parse_args(argv)
    for pair in args.pairs:
        if pair.count(":") != 1:
            ap.error(f"--pairs takes A:B, got {pair!r}")
    if args.render:
        rec = json.loads(args.render.read_text())
        if args.pairs:
            rec["pairs"] = args.pairs
            io.atomic_write_text(args.render, json.dumps(rec, indent=1))
        text = render(rec)
        io.atomic_write_text(args.render.with_suffix(".md"), text)
        print(text)
        return 0
    if not args.levers:
        ap.error("--levers or --render is needed")
    t0 = time.perf_counter()
    runtime.seed_everything(0)
    device = runtime.resolve_device("auto")
    ds = data.lfw()
    split = data.get_split(ds, args.split, protocol="paper", seed=0, n_users=10, min_images=15, max_images=30,
                           max_distractors=2000)
    users = split.user_names[: args.users]
    faces, distractors = study.load_study_faces(ds, split, users=users)
    cfg = tr.TrainConfig.from_preset("paper", eps=16 / 255, epochs=args.epochs)
    names = ["base", *[n for n in args.levers if n != "base"]]
    rows = study.ablation_rows(names, split, faces, distractors, args.surrogates, args.intruder, cfg, device)
    rec = {
        "what": "transfer levers, each against the base on the same users (notebook 04's scoring)",
        "command": " ".join(["python", *sys.argv]), "git": runtime.git_info(), "machine": runtime.machine(),
        "seconds": time.perf_counter() - t0, "users": users,
        "params": {"ablations": names, "surrogates": args.surrogates, "intruder": args.intruder,
                   "config": cfg.to_dict(), "split": args.split},
        "pairs": args.pairs,
        "per_user": {"ablations": study.ablation_per_user(rows)},
    }
    text = render(rec)
    out = paths.REPO_ROOT / "data" / "results" / "bench" / f"{args.out}.json"
    io.atomic_write_text(out, json.dumps(rec, indent=1))
    io.atomic_write_text(out.with_suffix(".md"), text)
    print(text)
    print(f"wrote {out} in {rec['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
