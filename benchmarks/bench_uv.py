"""Benchmark: face mesh + UV rasterisation + texture warp per 224x224 canvas.

Usage::

    .venv/bin/python benchmarks/bench_uv.py [--n 64] [--batches 1 8 32] [--device auto] [--threads 1]
                                            [--json out.json]

Canvases come from the first ``--n`` LFW images (sorted paths, one per identity) through
:func:`protego_nb.faces.pipeline.build_canvases` (cached MTCNN; not timed). Then, timed:

* ``mesh``: MediaPipe FaceMesh per canvas, cache off (``mesh_canvases(..., cache=False)``);
* ``raster@B``: :func:`rasterize_uv` over batches of ``B`` canvases (per-canvas time);
* ``warp@B``: :func:`warp_texture` forward + backward of a 256^2 texture (per canvas);
* ``mesh+uv``: mesh + raster at batch 1, the online cost of protecting one new photo.

Every stage reports the median wall-clock time and the median CPU time of the whole process
(``time.process_time``: all threads, MediaPipe runs its own; less sensitive than wall time to
other processes on a shared machine) over ``--repeats`` runs, in milliseconds per canvas. Target: mesh + UV <= 15 ms per canvas on CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protego_nb import io, paths, runtime  # noqa: E402
from protego_nb.faces import mesh, uv  # noqa: E402


def lfw_canvases(n: int) -> np.ndarray:
    from protego_nb.faces.pipeline import build_canvases

    people = sorted(p for p in paths.lfw_images_dir().iterdir() if p.is_dir())
    files = [sorted(p.glob("*.jpg"))[0] for p in people[: 2 * n]]
    rep = build_canvases(files, progress=False)
    if len(rep.canvases) < n:
        raise SystemExit(f"only {len(rep.canvases)} canvases from {len(files)} LFW images; need {n}")
    return np.stack([c.canvas for c in rep.canvases[:n]])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: str) -> tuple[float, float]:
    """Median (wall, process-CPU) seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    _sync(device)
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def run(n: int, batches: list[int], device: str, repeats: int, texture_size: int = 256) -> dict:
    cans = lfw_canvases(n)
    uv468, tri = mesh.load_tables()
    out: dict = {"n_canvases": n, "device": device, "threads": torch.get_num_threads(), "stages": {}}

    res = mesh.mesh_canvases(cans, cache=False)  # also warms MediaPipe up
    out["mesh_failures"] = res.n_failed
    w, c = timed(lambda: mesh.mesh_canvases(cans, cache=False), repeats, "cpu")
    out["stages"]["mesh"] = {"wall_ms": 1e3 * w / n, "cpu_ms": 1e3 * c / n}

    V = torch.from_numpy(res.vertices).to(device)
    faces, uvs = torch.from_numpy(tri.copy()).to(device), torch.from_numpy(uv468.copy()).to(device)
    tex = torch.rand(1, 3, texture_size, texture_size, device=device, requires_grad=True)
    for b in batches:
        chunks = [V[i : i + b] for i in range(0, n - b + 1, b)] or [V]
        k = sum(len(ch) for ch in chunks)
        w, c = timed(lambda chunks=chunks: [uv.rasterize_uv(ch, faces, uvs) for ch in chunks], repeats, device)
        out["stages"][f"raster@{b}"] = {"wall_ms": 1e3 * w / k, "cpu_ms": 1e3 * c / k}
        maps = [uv.rasterize_uv(ch, faces, uvs) for ch in chunks]

        def warp(maps=maps):
            for m in maps:
                uv.warp_texture(tex, m).sum().backward()

        w, c = timed(warp, repeats, device)
        out["stages"][f"warp@{b}"] = {"wall_ms": 1e3 * w / k, "cpu_ms": 1e3 * c / k}

    def online():
        for i in range(n):
            r = mesh.mesh_canvases(cans[i : i + 1], cache=False)
            uv.rasterize_uv(torch.from_numpy(r.vertices).to(device), faces, uvs)

    w, c = timed(online, max(1, repeats // 2), device)
    out["stages"]["mesh+uv@1"] = {"wall_ms": 1e3 * w / n, "cpu_ms": 1e3 * c / n}
    out["visible_fraction_mean"] = float(uv.rasterize_uv(V, faces, uvs).visible_fraction().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="number of canvases")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here (atomic)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = runtime.resolve_device(args.device)
    res = run(args.n, args.batches, device, args.repeats)
    res["machine"] = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    if device.startswith("cuda"):
        res["machine"]["gpu"] = torch.cuda.get_device_name()
    print(f"{res['n_canvases']} canvases, device {device}, {res['threads']} torch thread(s), "
          f"{res['mesh_failures']} mesh failures, mean visible fraction {res['visible_fraction_mean']:.3f}")
    print(f"{'stage':<12} {'wall ms/canvas':>15} {'cpu ms/canvas':>14}")
    for k, v in res["stages"].items():
        print(f"{k:<12} {v['wall_ms']:>15.2f} {v['cpu_ms']:>14.2f}")
    if args.json is not None:
        io.atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
