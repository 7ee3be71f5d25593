"""Owner matching: whose face in a photo is the PPT owner's.

A PPT protects one person. ``protego-nb train`` embeds the owner's training canvases with the owner model
(``owner_model`` in the PPT metadata, default :data:`DEFAULT_OWNER_MODEL`), leaves out faces that do not look
like the rest (:func:`unlike_the_rest`) and stores the reference (``owner_embedding``: the renormalised mean of
the owner's L2-normalised embeddings, :func:`reference_embedding`). At protect time each face of a photo with
several faces is embedded with the same model and compared (cosine, :func:`owner_similarities`) with that
reference; a face whose similarity reaches the model's threshold (:data:`OWNER_THRESHOLDS`) is the owner's.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

__all__ = [
    "DEFAULT_OWNER_MODEL",
    "OWNER_THRESHOLDS",
    "face_embeddings",
    "owner_embedding",
    "owner_similarities",
    "parse_owner_embedding",
    "reference_embedding",
    "unlike_the_rest",
]

#: Cosine threshold of the owner check per model (``benchmarks/bench_protect.py --owner-thresholds``). On 400 LFW pairs (``pairs.txt``, 40 per fold,
#: seed 0, face canvases of this package): mobilefacenet best-accuracy threshold 0.373 (99.75 %), 1 % FAR at
#: 0.389, 99th percentile of mismatched pairs 0.349, 5th percentile of matched pairs 0.580; dlib_resnet
#: (cosine) 0.907 / 0.905 / 0.902 / 0.928. The owner reference is a mean of several photos, which raises
#: matched similarities further.
OWNER_THRESHOLDS = {"mobilefacenet": 0.40, "dlib_resnet": 0.91}
DEFAULT_OWNER_MODEL = "mobilefacenet"


@torch.no_grad()
def face_embeddings(model: torch.nn.Module, canvases: torch.Tensor, landmarks: torch.Tensor,
                    batch_size: int = 16) -> np.ndarray:
    """L2-normalised embeddings ``float32 [n, d]`` of the canvases with ``model``."""
    chunks = []
    for i in range(0, canvases.shape[0], batch_size):
        e = model(canvases[i : i + batch_size], landmarks[i : i + batch_size]).float()
        chunks.append(torch.nn.functional.normalize(e, dim=1))
    return torch.cat(chunks).cpu().numpy()


def unlike_the_rest(embeddings: np.ndarray, threshold: float) -> np.ndarray:
    """``bool [n]``: faces whose median cosine similarity to the other faces is below ``threshold``, i.e. that
    do not look like the same person as the rest (all of them when the faces are of several people)."""
    e = np.asarray(embeddings, np.float64)
    n = e.shape[0]
    if n < 2:
        return np.zeros(n, bool)
    sim = e @ e.T
    med = np.array([np.median(np.delete(sim[i], i)) for i in range(n)])
    return med < threshold


@torch.no_grad()
def owner_embedding(model: torch.nn.Module, canvases: torch.Tensor, landmarks: torch.Tensor,
                    batch_size: int = 16) -> np.ndarray:
    """The owner's reference embedding: the renormalised mean of the L2-normalised embeddings of the canvases."""
    return reference_embedding(face_embeddings(model, canvases, landmarks, batch_size))


def reference_embedding(embeddings: np.ndarray) -> np.ndarray:
    """``float32 [d]``: the renormalised mean of L2-normalised embeddings ``[n, d]`` (the owner reference)."""
    mean = np.asarray(embeddings, np.float64).mean(0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def parse_owner_embedding(value: Any, owner_model: str) -> np.ndarray | None:
    """The PPT metadata's ``owner_embedding`` (a list of numbers or its JSON text) as ``float32 [d]``, or
    ``None`` when absent; raises ``ValueError`` unless it holds the owner model's ``d`` finite numbers."""
    emb = value
    try:
        if isinstance(emb, str):
            emb = json.loads(emb)
        ref = None if emb is None else np.asarray(emb, np.float32)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"owner_embedding is not a JSON list of numbers ({type(exc).__name__}: {exc})") from exc
    if ref is not None:
        from ..models import zoo

        spec = zoo.MODELS.get(owner_model)
        if spec is None:
            raise ValueError(f"unknown owner model {owner_model!r}")
        if ref.shape != (spec.dim,) or not np.isfinite(ref).all():
            raise ValueError(f"owner_embedding must be {spec.dim} finite numbers for {owner_model}, "
                             f"got shape {ref.shape}")
    return ref


def owner_similarities(net: torch.nn.Module, canvases: list[np.ndarray], landmarks: list[np.ndarray],
                       reference: np.ndarray | None, owner_model: str, device: str) -> np.ndarray:
    """Cosine similarity ``[n]`` of each face canvas (``uint8 [S, S, 3]``, its 5 points in canvas pixels)
    to the owner ``reference``, embedded with ``net`` (the ``owner_model``) on ``device``."""
    x = torch.from_numpy(np.stack(canvases)).permute(0, 3, 1, 2).float().div(255).to(device)
    lm = torch.from_numpy(np.stack(landmarks).astype(np.float32)).to(device)
    with torch.no_grad():
        e = torch.nn.functional.normalize(net(x, lm).float(), dim=1).cpu().numpy()
    if reference is None or reference.shape[0] != e.shape[1]:
        raise ValueError(f"the PPT's owner_embedding has {None if reference is None else reference.shape}"
                         f" values but {owner_model} gives {e.shape[1]}")
    return e @ reference
