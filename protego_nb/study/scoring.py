"""Scoring a study: embeddings of clean and protected faces, retrieval rows, image quality, per-user numbers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..data import Split
from ..evaluate import retrieval
from ..models import embed as embedding
from .faces import FaceSet
from .protections import Protection


def embed(
    model: torch.nn.Module, x: torch.Tensor, lm: torch.Tensor, device: str = "cpu", batch: int = 32
) -> np.ndarray:
    model = model.to(device)
    return embedding.extract(model, x, lm, batch_size=batch, device=device, progress=False).numpy()


def clean_embeddings(model, name: str, faces: FaceSet, device: str = "cpu") -> dict[str, np.ndarray]:
    """Clean embeddings (disk-cached by canvas content) ``id -> [D]``."""
    return embedding.clean_features(
        model.to(device), faces.canvases, batch_size=32, device=device, model_name=name, progress=False
    )


def features_for(
    model,
    name: str,
    users_faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    protections: Mapping[str, Protection],
    device: str = "cpu",
    method: str = "",
) -> retrieval.Features:
    """Features of one model under one method: clean (users + distractors, cached) and protected (users)."""
    clean: dict[str, np.ndarray] = {}
    for fs in list(users_faces.values()) + [distractors]:
        clean.update(clean_embeddings(model, name, fs, device))
    protected: dict[str, np.ndarray] = {}
    for user, p in protections.items():
        fs = users_faces[user]
        emb = embed(model, p.protected, fs.take(p.ids).lm, device)
        protected.update(dict(zip(p.ids, emb)))
    return retrieval.Features.from_model(model, clean, protected, method=method)



def per_user(df, keys: Sequence[str] = ("model", "method", "scenario"), value: str = "recall",
             scale: float = 100.0, metric: str = "native") -> dict:
    """Nested ``{key1: {key2: ... {user: value * scale}}}`` of ``evaluate`` rows (one metric): the per-user
    numbers a run JSON keeps so that tables and paired comparisons can be regenerated from it."""
    sub = df[df["native"]] if metric == "native" else df[df["metric"] == metric]
    out: dict = {}
    for _, row in sub.iterrows():
        node = out
        for k in keys:
            node = node.setdefault(str(row[k]), {})
        v = row[value]
        node[str(row["user"])] = None if v != v else float(v) * scale
    return out



def recall_table(df, metric: str = "native"):
    """Pivot ``evaluate_users`` output to mean recall (%) per (model, method) x scenario."""
    sub = df[df["native"]] if metric == "native" else df[df["metric"] == metric]
    return (sub.groupby(["model", "method", "scenario"])["recall"].mean() * 100).unstack("scenario")



def evaluate(
    model_names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    protections: Mapping[str, Mapping[str, Protection]],
    scenarios: Sequence[str] = retrieval.DEFAULT_SCENARIOS,
    metric=("native", "cosine"),
    device: str = "cpu",
    protect_others: bool = True,
    include_others: bool = True,
):
    """Retrieval rows for every (model, method, user, scenario, metric); see ``retrieval.evaluate_users``.

    ``include_others``: the other users' gallery entries are in each user's gallery (False: only the
    user's own entries and the distractors); ``protect_others``: those entries follow the gallery's
    protection state.
    """
    import pandas as pd

    from ..models import zoo

    users = list(faces)
    rows = []
    for name in model_names:
        model = zoo.load(name, device)
        for method, prots in protections.items():
            f = features_for(model, name, faces, distractors, prots, device=device, method=method)
            rows.append(
                retrieval.evaluate_users(
                    f,
                    split,
                    scenarios=scenarios,
                    metric=metric,
                    users=users,
                    protect_others=protect_others,
                    include_others=include_others,
                )
            )
    return pd.concat(rows, ignore_index=True)


def quality_table(
    faces: Mapping[str, FaceSet], protections: Mapping[str, Mapping[str, Protection]], eps: float
):
    """SSIM / PSNR / norms per canvas for every method and user (``evaluate.quality.canvas_quality``)."""
    import pandas as pd

    from ..evaluate import quality

    rows = []
    for method, prots in protections.items():
        for u, p in prots.items():
            clean = faces[u].take(p.ids).x
            q = quality.canvas_quality(clean, p.protected, eps=eps, names=p.ids)
            q["method"], q["user"] = method, u
            rows.append(q)
    return pd.concat(rows, ignore_index=True)


