"""LFW verification of the FR zoo (notebook 00): canvases for the pair images, cached embeddings,
10-fold accuracy per model with its native similarity and with cosine, and throughput.

Images where MTCNN finds no usable face (a few per thousand on LFW) are not dropped, which would
change the protocol: they get a *fallback canvas* aligned with the mean detected 5 points of the
other images of the same run (deep-funneled LFW images are centred and scaled alike, so this is
close to what a detector would give). Their number is reported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data import FaceDataset
from ..faces.canvas import make_canvas
from ..faces.images import ImageError, load_rgb
from ..faces.pipeline import CanvasReport, build_canvases
from ..models import embed as features
from ..models import zoo
from . import verification

#: Published LFW accuracies (%) of the same weights, where one exists: dlib ResNet (dlib's model
#: card, "99.38% on the LFW benchmark"), SFace int8 (OpenCV Zoo model card, 99.40%).
PUBLISHED = {"dlib_resnet": 99.38, "sface": 99.40}


@dataclass(frozen=True, eq=False)
class SimpleCanvas:
    path: str
    canvas: np.ndarray
    landmarks: np.ndarray


def pair_canvases(
    ds: FaceDataset, images: Sequence[str], progress: bool = False
) -> tuple[dict, list, CanvasReport]:
    """Canvases ``rel path -> canvas`` for ``images``; failures get a fallback canvas (module docstring)."""
    rep = build_canvases([ds.path(r) for r in images], progress=progress)
    by_path = {c.path: c for c in rep.canvases}
    out: dict = {}
    fallbacks = []
    if rep.canvases:
        mean_points = np.mean([c.src_points for c in rep.canvases], axis=0)
    for rel in images:
        key = str(ds.path(rel))
        if key in by_path:
            out[rel] = by_path[key]
            continue
        try:
            img = load_rgb(ds.path(rel))
        except ImageError as exc:
            fallbacks.append((rel, f"unreadable: {exc}"))
            continue
        canvas, M = make_canvas(img, mean_points)
        lm = (mean_points @ M[:, :2].T + M[:, 2]).astype(np.float32)
        out[rel] = SimpleCanvas(rel, canvas, lm)
        fallbacks.append((rel, "fallback canvas (no usable face detected)"))
    return out, fallbacks, rep


def verify_models(
    names: Sequence[str],
    canvases: dict,
    pairs: verification.PairSet,
    device: str = "cpu",
    batch_size: int = 32,
    progress: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Accuracy (10-fold, native metric and cosine) per model; returns the table and ROC curves."""
    rows, rocs = [], {}
    ids = list(canvases)
    for name in names:
        reason = zoo.unavailable_reason(name)
        if reason is not None:
            rows.append({"model": name, "status": "unavailable", "note": reason})
            continue
        model = zoo.load(name, device)
        t0 = time.perf_counter()
        emb = features.clean_features(
            model,
            [canvases[i] for i in ids],
            ids=ids,
            batch_size=batch_size,
            device=device,
            model_name=name,
            progress=progress,
        )
        seconds = time.perf_counter() - t0
        native = verification.verify(emb, pairs, metric=model.spec.metric)
        cos = verification.verify(emb, pairs, metric="cosine") if model.spec.metric != "cosine" else native
        rocs[name] = (native.fpr, native.tpr, native.auc)
        pub = PUBLISHED.get(name, model.spec.published_lfw)
        rows.append(
            {
                "model": name,
                "status": "ok",
                "metric": model.spec.metric,
                "strength": model.spec.strength,
                "role": model.spec.role,
                "dim": model.spec.dim,
                "accuracy": 100 * native.accuracy,
                "accuracy_std": 100 * native.accuracy_std,
                "auc": native.auc,
                "accuracy_cosine": 100 * cos.accuracy,
                "published": pub,
                "delta_vs_published": None if pub is None else 100 * native.accuracy - pub,
                "n_pairs": native.n_pairs,
                "feature_seconds": seconds,
            }
        )
    return pd.DataFrame(rows).set_index("model"), rocs


def throughput(
    names: Sequence[str], batch: int = 16, repeats: int = 3, device: str = "cpu", seed: int = 0
) -> pd.DataFrame:
    """Embeddings/s at ``batch`` for forward (no_grad) and forward+backward (gradient to the canvas)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, 224, 224, generator=g).to(device)
    from ..faces import align

    lm = torch.as_tensor(align.CANVAS_TEMPLATE, dtype=torch.float32).expand(batch, 5, 2).to(device)
    rows = []
    for name in names:
        if zoo.unavailable_reason(name) is not None:
            continue
        model = zoo.load(name, device)

        def fwd(model=model):
            with torch.no_grad():
                model(x, lm)

        def fwd_bwd(model=model):
            xi = x.clone().requires_grad_(True)
            model(xi, lm).square().sum().backward()

        res = {"model": name, "batch": batch, "device": device, "threads": torch.get_num_threads()}
        for label, fn in (("forward", fwd), ("forward_backward", fwd_bwd)):
            fn()  # warm-up
            if device != "cpu":
                torch.cuda.synchronize()
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                if device != "cpu":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            res[f"{label}_per_s"] = batch / float(np.median(times))
        rows.append(res)
    return pd.DataFrame(rows).set_index("model")
