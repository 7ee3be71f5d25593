"""Which crop suits the FaceNets? LFW verification on a seeded subset of the official pairs per crop choice.

    python benchmarks/facenet_crop_check.py [--per-fold 40] [--out data/results/bench/facenet_crop_check.json]

Sandberg's FaceNets were trained on face-detector boxes grown by a margin and squeezed to 160x160; the zoo
emulates that box from the canvas's 5 points (``embedder.mtcnn_box_template``). This compares that crop at two
margins with an ArcFace-style alignment scaled to 160 (``arcface160``), each model's cosine similarity,
10-fold accuracy on ``per_fold`` pairs per fold (a quick check, not the 6,000-pair protocol of notebook 00).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protego_nb import data  # noqa: E402
from protego_nb.evaluate import lfw_benchmark, verification  # noqa: E402
from protego_nb.models import embedder, zoo  # noqa: E402

PLAN = {"facenet_casia": ["box m0.30", "box m0.41", "arcface160"], "facenet_msceleb": ["box m0.30", "arcface160"]}


def variants() -> dict:
    return {"arcface160": (embedder.TEMPLATES["arcface160"], None), "box m0.30": embedder.mtcnn_box_template(160, 0.30),
            "box m0.41": embedder.mtcnn_box_template(160, 0.41)}


def score(name: str, variant: str, canv: dict, pairs) -> dict:
    ids = list(dict.fromkeys(pairs.images()))
    x = torch.tensor(np.stack([canv[i].canvas for i in ids])).permute(0, 3, 1, 2)
    lm = torch.tensor(np.stack([canv[i].landmarks for i in ids]), dtype=torch.float32)
    emb = zoo.load(name)
    template, aspect = variants()[variant]
    emb.template.data = torch.tensor(template, dtype=torch.float32)
    emb.aspect = aspect
    if aspect is not None:
        emb.crop_aspect.data = torch.tensor(aspect, dtype=torch.float32)
    t0 = time.perf_counter()
    with torch.no_grad():
        z = torch.cat([emb(x[s:s + 32].float() / 255, lm[s:s + 32]) for s in range(0, len(ids), 32)])
    r = verification.verify(dict(zip(ids, z.numpy())), pairs, metric="cosine")
    return {"model": name, "crop": variant, "n_pairs": len(pairs), "accuracy": 100 * r.accuracy,
            "accuracy_std": 100 * r.accuracy_std, "auc": r.auc, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-fold", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("data/results/bench/facenet_crop_check.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    pairs = verification.load_pairs().sample(args.per_fold, seed=args.seed)
    canv, fallbacks, _ = lfw_benchmark.pair_canvases(data.lfw(), pairs.images())
    rows = []
    for name, crops in PLAN.items():
        for v in crops:
            rows.append(score(name, v, canv, pairs))
            r = rows[-1]
            print(f"{name:16s} {v:11s} acc {r['accuracy']:.2f} ± {r['accuracy_std']:.2f}  auc {r['auc']:.4f}", flush=True)
    out = {"command": "python benchmarks/facenet_crop_check.py " + " ".join(argv or sys.argv[1:]),
           "per_fold": args.per_fold, "seed": args.seed, "n_fallback_canvases": len(fallbacks), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
