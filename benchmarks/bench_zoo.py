"""Throughput of every loadable zoo model: embeddings/s, forward and forward+backward.

For each model, a batch of random 224x224 canvases (with the canonical canvas landmarks)
goes through ``zoo.load(name)`` (alignment + normalisation + network):

* ``forward``: ``torch.no_grad()`` forward;
* ``forward_backward``: forward with ``requires_grad`` on the canvas and ``backward`` of
  the summed squared embedding (what PPT training does per surrogate).

Each is warmed up, then timed over ``--repeats`` runs (median reported). CPU uses
``--threads`` intra-op threads (default 2); CUDA is timed too when present (with
synchronisation). Output: JSON on stdout and, with ``--out``, written atomically.

``--verify-pairs N`` also runs a quick LFW verification sanity check per model on N pairs
sampled from ``pairs.txt`` (balanced over the 10 folds and matched/mismatched, seeded):
canvases from :func:`protego_nb.faces.pipeline.build_canvases`, embeddings in the model's
native metric, 10-fold accuracy and AUC (:mod:`protego_nb.evaluate.verification`). It is
meant to catch preprocessing mistakes, not to replace the full 6,000-pair protocol.

    python benchmarks/bench_zoo.py --batch 16 --repeats 3 --out bench_zoo.json
    python benchmarks/bench_zoo.py --repeats 0 --verify-pairs 300 --out lfw300.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protego_nb import paths  # noqa: E402
from protego_nb.evaluate import verification  # noqa: E402
from protego_nb.faces import align  # noqa: E402
from protego_nb.models import zoo  # noqa: E402


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_model(name: str, device: str, batch: int, repeats: int, warmup: int = 1) -> dict:
    emb = zoo.load(name, device)
    g = torch.Generator().manual_seed(0)
    canvas = torch.rand(batch, 3, align.CANVAS_SIZE, align.CANVAS_SIZE, generator=g).to(device)
    lm = torch.tensor(align.CANVAS_TEMPLATE, dtype=torch.float32).expand(batch, 5, 2).contiguous().to(device)

    def fwd() -> None:
        with torch.no_grad():
            emb(canvas, lm)

    def fwd_bwd() -> None:
        x = canvas.clone().requires_grad_(True)
        emb(x, lm).pow(2).sum().backward()

    out = {}
    for label, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
        for _ in range(warmup):
            fn()
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
        sec = statistics.median(times)
        out[label] = {"seconds_per_batch": sec, "embeddings_per_s": batch / sec, "runs": times}
    return out


def lfw_sanity(names: list[str], n_pairs: int, seed: int, device: str, batch: int) -> dict:
    """Verification accuracy/AUC of each model on ``n_pairs`` sampled LFW pairs."""
    from protego_nb.faces.pipeline import build_canvases

    pairs = verification.load_pairs().sample(n_pairs // 10, seed=seed)
    root = paths.lfw_images_dir()
    rels = pairs.images()
    t0 = time.perf_counter()
    rep = build_canvases([root / r for r in rels], progress=False)
    by_path = {str(c.path): c for c in rep.canvases}
    ok = [r for r in rels if str(root / r) in by_path]
    canvas = (
        torch.tensor(np.stack([by_path[str(root / r)].canvas for r in ok]), dtype=torch.float32).permute(
            0, 3, 1, 2
        )
        / 255.0
    )
    lm = torch.tensor(np.stack([by_path[str(root / r)].landmarks for r in ok]), dtype=torch.float32)
    out: dict = {
        "n_pairs": len(pairs),
        "seed": seed,
        "n_images": len(rels),
        "n_canvases": len(ok),
        "canvas_failures": dict(rep.counts),
        "canvas_seconds": time.perf_counter() - t0,
        "models": {},
    }
    for name in names:
        emb = zoo.load(name, device)
        t1 = time.perf_counter()
        with torch.no_grad():
            z = torch.cat([emb(canvas[i : i + batch].to(device), lm[i : i + batch].to(device)).cpu()
                           for i in range(0, len(ok), batch)])  # fmt: skip
        res = verification.verify(dict(zip(ok, z.numpy())), pairs, metric=emb.spec.metric, missing="drop")
        out["models"][name] = res.to_dict() | {"embed_seconds": time.perf_counter() - t1}
        print(f"{name:14s} LFW {len(pairs)} pairs: acc {res.accuracy:.4f} +- {res.accuracy_std:.4f}  "
              f"AUC {res.auc:.4f}  dropped {res.n_dropped}", file=sys.stderr)  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=None, help="default: every available model")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--devices", nargs="*", default=None, help="default: cpu, plus cuda when present")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--verify-pairs", type=int, default=0, help="also run the LFW sanity check on N pairs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    names = list(args.models or zoo.available())
    result: dict = {
        "batch": args.batch,
        "repeats": args.repeats,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
        "load_average_before": os.getloadavg(),
        "models": {},
        "skipped": {},
    }
    for name in list(names):
        reason = zoo.unavailable_reason(name)
        if reason:
            result["skipped"][name] = reason
            names.remove(name)
            continue
        if args.repeats <= 0:
            continue
        result["models"][name] = {dev: time_model(name, dev, args.batch, args.repeats) for dev in devices}
        print(
            f"{name:14s} "
            + "  ".join(
                f"{dev}: fwd {r['forward']['embeddings_per_s']:8.1f}/s  fwd+bwd {r['forward_backward']['embeddings_per_s']:8.1f}/s"
                for dev, r in result["models"][name].items()
            ),
            file=sys.stderr,
        )
    if args.verify_pairs:
        result["lfw_sanity"] = lfw_sanity(names, args.verify_pairs, args.seed, devices[-1], args.batch)
    result["load_average_after"] = os.getloadavg()
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=args.out.parent, suffix=".json")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
