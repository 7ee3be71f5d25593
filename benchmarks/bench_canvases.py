"""Benchmark: LFW images -> 224x224 face canvases through the cache-aware path.

Usage::

    python benchmarks/bench_canvases.py --limit 500 --fresh-cache --out /tmp/bench_500.json
    nice -n 10 python benchmarks/bench_canvases.py --out bench_canvases_full.json   # all 13,233

Reports images/s, total time, failures by reason, notes and example failures, and writes
them as JSON (atomically). The rate is *cold* only when no selected image was already in
the detection cache: ``--fresh-cache`` guarantees that by pointing ``PROTEGO_CACHE_DIR``
at a new empty temporary folder (deleted afterwards); without it the run uses, and fills,
the real cache ``paths.cache_dir("detections", <settings-hash>)`` that the notebooks use,
and the JSON records ``cache_hits`` and ``cold`` (= no hits) so a warm run is never
mistaken for a cold one.

``--limit N`` takes a seeded random sample (``--seed``) of N images from the sorted list
of all LFW images, so a small run is representative of the whole set.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from protego_nb import paths  # noqa: E402
from protego_nb.faces.detect import FaceDetector, build_canvases  # noqa: E402
from protego_nb.io import atomic_write_text  # noqa: E402
from protego_nb.runtime import provenance  # noqa: E402


def lfw_images(limit: int | None, seed: int) -> list[Path]:
    files = sorted(paths.lfw_images_dir().glob("*/*.jpg"))
    if limit is not None and limit < len(files):
        idx = np.random.default_rng(seed).choice(len(files), size=limit, replace=False)
        files = [files[i] for i in sorted(idx)]
    return files


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="seeded random sample of N images (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    ap.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    ap.add_argument("--fresh-cache", action="store_true", help="use a new empty temporary cache (cold, not kept)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (the dev machine is shared)")
    ap.add_argument("--policy", default="central", choices=["central", "largest", "reject"])
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    files = lfw_images(args.limit, args.seed)
    tmp = tempfile.mkdtemp(prefix="protego_bench_cache_") if args.fresh_cache else None
    old_env = os.environ.get("PROTEGO_CACHE_DIR")
    try:
        if tmp:
            os.environ["PROTEGO_CACHE_DIR"] = tmp
        det = FaceDetector(device=args.device, batch_size=args.batch_size)
        cache_root = paths.cache_dir("detections", det.settings_hash)
        rep = build_canvases(files, detector=det, policy=args.policy, cache=True, batch_size=args.batch_size,
                             progress=not args.no_progress, keep_canvases=False)
    finally:
        if tmp:
            if old_env is None:
                os.environ.pop("PROTEGO_CACHE_DIR", None)
            else:
                os.environ["PROTEGO_CACHE_DIR"] = old_env
            shutil.rmtree(tmp, ignore_errors=True)

    lfw_root = paths.lfw_images_dir()
    result = {
        "benchmark": "bench_canvases",
        "n_images": rep.n_images,
        "limit": args.limit,
        "seed": args.seed,
        "policy": args.policy,
        "batch_size": args.batch_size,
        "seconds": round(rep.seconds, 2),
        "images_per_second": round(rep.images_per_second, 2),
        "cache_hits": rep.cache_hits,
        "cold": rep.cache_hits == 0,
        "fresh_cache": bool(args.fresh_cache),
        "cache_dir": None if tmp else str(cache_root),
        "mtcnn_batches": rep.mtcnn_calls,
        "n_ok": rep.n_ok,
        "failures_by_reason": dict(sorted(rep.counts.items())),
        "notes": dict(sorted(rep.notes.items())),
        "failures": [
            {"path": os.path.relpath(f.path, lfw_root), "reason": f.reason, "message": f.message}
            for f in rep.failures
        ],
        "detector_settings": det.settings(),
        "settings_hash": det.settings_hash,
        "provenance": provenance(),
    }
    print(rep.summary())
    if rep.failures:
        print("\nexample failures:")
        for f in rep.failures[:10]:
            print(f"  {f.reason:<15} {os.path.relpath(f.path, lfw_root)}")
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=1))
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
