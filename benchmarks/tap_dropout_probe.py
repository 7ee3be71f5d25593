"""How much dropout at a model's tap points (protego_nb.models.taps) changes its embedding of real faces.

For each zoo model and dropout probability: the cosine similarity between the clean embedding and the embedding
through the perturbed network (one mask draw per face), over the first photo of each of N LFW identities with at
least 15 photos (``data.select_users``, seed 0). Decides which ``feature_dropout`` keeps a face's identity (README "Transfer levers: model
augmentation and mid-layer features"). Writes ``data/results/bench/<out>.json``.

    python benchmarks/tap_dropout_probe.py --faces 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from protego_nb import data, io, paths, runtime  # noqa: E402
from protego_nb.faces.canvas import canvases_to_tensor  # noqa: E402
from protego_nb.faces.pipeline import build_canvases  # noqa: E402
from protego_nb.models import taps, zoo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=int, default=20)
    ap.add_argument("--models", nargs="+", default=["dlib_resnet", "mobilefacenet", "mobilefacenet512",
                                                     "facenet_casia", "facenet_msceleb", "sface"])
    ap.add_argument("--p", nargs="+", type=float, default=[0.02, 0.05, 0.1])
    ap.add_argument("--out", default="tap_dropout_probe")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    ds = data.lfw()
    people = data.select_users(ds, n=args.faces, min_images=15, seed=0)
    rep = build_canvases([ds.paths_of(p)[0] for p in people], progress=False)
    x, lm = canvases_to_tensor(rep.canvases)
    rows = {}
    for name in args.models:
        model = zoo.load(name)
        kind, count = taps.prepare(model, x, lm)
        with torch.no_grad():
            clean = model(x, lm)
            for p in args.p:
                tap = taps.JoinTap(kind, dropout=p, generator=torch.Generator().manual_seed(0))
                with taps.tapped(tap):
                    dropped = model(x, lm)
                cos = torch.nn.functional.cosine_similarity(clean, dropped).tolist()
                rows.setdefault(name, {"kind": kind, "points": count, "cosine": {}})["cosine"][str(p)] = {
                    "mean": statistics.mean(cos), "min": min(cos), "per_face": cos}
                print(f"{name:18s} {kind} x{count:2d} p={p}: cos mean {statistics.mean(cos):.3f} min {min(cos):.3f}")
    rec = {"what": __doc__.splitlines()[0], "command": "python " + " ".join(sys.argv), "git": runtime.git_info(),
           "faces": [str(c.path) for c in rep.canvases], "machine": runtime.machine(),
           "seconds": time.perf_counter() - t0, "models": rows}
    out = paths.REPO_ROOT / "data" / "results" / "bench" / f"{args.out}.json"
    io.atomic_write_text(out, json.dumps(rec, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
