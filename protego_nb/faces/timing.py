"""Online cost of the face pipeline per canvas (mesh + UV raster), as notebook 01 reports it.

``benchmarks/bench_uv.py`` times the same stages in more detail (batch sizes, texture warp, CPU time).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from . import mesh as _mesh
from . import uv as _uv


def time_mesh_uv(canvases: np.ndarray, device: str = "cpu", size: int = 224, threads: int = 1) -> dict[str, float]:
    """Online cost per canvas, one canvas at a time with the mesh cache off: ms for mesh, raster, total.

    Wall-clock milliseconds (median over the canvases, after one warm-up canvas), as a user protecting
    one new photo sees them. ``threads``: torch CPU threads during the timing (restored afterwards;
    MediaPipe runs its own threads, and on a 2-core machine torch's intra-op parallelism only adds
    contention for these small tensors).
    """
    uv468, tri = _mesh.load_tables()
    faces, uvs = torch.from_numpy(tri.copy()).to(device), torch.from_numpy(uv468.copy()).to(device)
    t_mesh, t_raster = [], []
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        r = _mesh.mesh_canvases(canvases[:1], cache=False)  # warm-up
        _uv.rasterize_uv(torch.from_numpy(r.vertices).to(device), faces, uvs, size=size)
        for i in range(len(canvases)):
            t0 = time.perf_counter()
            r = _mesh.mesh_canvases(canvases[i : i + 1], cache=False)
            t1 = time.perf_counter()
            _uv.rasterize_uv(torch.from_numpy(r.vertices).to(device), faces, uvs, size=size)
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            t_mesh.append(t1 - t0)
            t_raster.append(t2 - t1)
    finally:
        torch.set_num_threads(before)
    tm, tr = np.asarray(t_mesh) * 1e3, np.asarray(t_raster) * 1e3
    return {
        "n": len(canvases),
        "torch_threads": threads,
        "mesh_ms": float(np.median(tm)),
        "raster_ms": float(np.median(tr)),
        "total_ms": float(np.median(tm + tr)),
        "total_ms_mean": float(np.mean(tm + tr)),
    }
