"""Embeddings: the one path from canvases to embeddings (:func:`extract`, :func:`embed_all`) and a disk cache
of *clean* embeddings (:func:`clean_features`).

Clean embeddings are deterministic functions of (model weights, canvas, landmarks), and the
retrieval study needs them for every distractor image, for every model, again and again. They are
computed once and kept under::

    <cache>/features/<model name>/<weights fingerprint>/chunk-<pid>-<random>.npz

Each chunk holds ``keys`` (fixed-width ASCII canvas hashes, see :func:`canvas_key`) and ``emb``
(float32 ``[n, D]``); it is written to a temporary file and renamed, so a reader never sees half a
chunk, and every writer writes its own new chunk, so processes can share a cache without locks
(two writers racing on the same images store the same values twice, which is harmless; the first
copy read wins). No pickle: chunks are read with ``allow_pickle=False``. Unreadable chunks are
skipped with a warning and their images recomputed. :meth:`FeatureCache.compact` merges chunks.

The fingerprint hashes the model's ``state_dict`` (names, shapes, dtypes, bytes), so new weights
never reuse stale embeddings. A change to a model's preprocessing *code* is not seen by it: pass
``tag=...`` or delete the model's folder then.

Protected embeddings are not cached here: they depend on the PPT, which changes with every run.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import paths

FEATURE_CACHE_VERSION = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# ============================================================================ keys
def canvas_key(canvas: np.ndarray, landmarks: np.ndarray) -> str:
    """sha256 of a uint8 canvas ``(H, W, 3)`` and its float32 landmarks ``(5, 2)`` (the model crops by them)."""
    c = np.ascontiguousarray(canvas)
    lm = np.ascontiguousarray(np.asarray(landmarks, dtype=np.float32))
    h = hashlib.sha256()
    h.update(f"feat-v{FEATURE_CACHE_VERSION}|{c.shape}|{c.dtype}|{lm.shape}|".encode())
    h.update(c.tobytes())
    h.update(lm.tobytes())
    return h.hexdigest()


def model_name_of(model: torch.nn.Module, model_name: str | None = None) -> str:
    """``model_name`` or ``model.spec.name``; checked to be a safe folder name."""
    name = model_name or getattr(getattr(model, "spec", None), "name", None)
    if not name:
        raise ValueError("the model has no spec.name; pass model_name=... to name its feature cache")
    if not _NAME_RE.match(str(name)):
        raise ValueError(f"model name {name!r} is not a safe folder name (letters, digits, . _ + - only)")
    return str(name)


def model_fingerprint(model: torch.nn.Module) -> str:
    """First 16 hex digits of the sha256 of the model's ``state_dict`` (names, shapes, dtypes, values)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ============================================================================ extraction
def _batch_to_tensor(canvases: Any, sl: slice, device: str | torch.device) -> torch.Tensor:
    """Rows ``sl`` of ``canvases`` as float32 ``[b, 3, H, W]`` in [0, 1] on ``device``."""
    if isinstance(canvases, torch.Tensor):
        x = canvases[sl]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"canvas tensor must be [N, 3, H, W], got {tuple(canvases.shape)}")
        if x.dtype == torch.uint8:
            return x.to(device).float().div_(255.0)
        return x.to(device=device, dtype=torch.float32)
    arrs = canvases[sl]
    x = np.stack([np.asarray(a) for a in arrs]) if not isinstance(arrs, np.ndarray) else arrs
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"canvas arrays must be [N, H, W, 3], got {x.shape}")
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
    if t.dtype == torch.uint8:
        return t.to(device).float().div_(255.0).contiguous()
    return t.to(device=device, dtype=torch.float32).contiguous()


@torch.no_grad()
def extract(
    model: torch.nn.Module,
    canvases: torch.Tensor | np.ndarray | Sequence[np.ndarray],
    landmarks: torch.Tensor | np.ndarray | Sequence[np.ndarray],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Embeddings ``[N, D]`` (float32, on the CPU) of ``N`` canvases, in batches, without gradients.

    ``canvases``: a float tensor ``[N, 3, H, W]`` in [0, 1], or uint8 arrays ``[N, H, W, 3]`` (converted
    per batch, so a large uint8 stack never becomes one big float tensor). ``landmarks``: ``[N, 5, 2]``
    canvas pixels. The model must already be on ``device``; it is put in eval mode and its mode restored.
    """
    n = len(canvases)
    lms = landmarks if isinstance(landmarks, torch.Tensor) else torch.as_tensor(
        np.asarray(landmarks, dtype=np.float32))
    if lms.shape[0] != n or tuple(lms.shape[1:]) != (5, 2):
        raise ValueError(f"landmarks must be [{n}, 5, 2] for {n} canvases, got {tuple(lms.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    out = []
    try:
        starts = range(0, n, batch_size)
        for s in tqdm(starts, desc="features", unit="batch", disable=not progress or n <= batch_size,
                      leave=False):
            sl = slice(s, min(s + batch_size, n))
            x = _batch_to_tensor(canvases, sl, device)
            emb = model(x, lms[sl].to(device=device, dtype=torch.float32))
            if emb.ndim != 2 or emb.shape[0] != x.shape[0]:
                raise ValueError(f"model returned shape {tuple(emb.shape)} for a batch of {x.shape[0]}")
            out.append(emb.detach().float().to("cpu"))
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def embed_all(
    models: Mapping[str, torch.nn.Module],
    canvases: torch.Tensor,
    landmarks: torch.Tensor,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, torch.Tensor]:
    """:func:`extract` for several models: ``{name: [N, D]}`` float32 on ``device``, without gradients (the clean
    references a training or attack step compares against)."""
    return {
        name: extract(model, canvases, landmarks, batch_size, device, progress=False).to(device)
        for name, model in models.items()
    }


# ============================================================================ cache
class FeatureCache:
    """Clean embeddings of one model (one weights fingerprint) on disk; see the module docstring."""

    def __init__(self, model_name: str, fingerprint: str = "default", root: str | os.PathLike | None = None,
                 tag: str | None = None) -> None:
        if not _NAME_RE.match(model_name):
            raise ValueError(f"model name {model_name!r} is not a safe folder name")
        sub = fingerprint if tag is None else f"{fingerprint}-{tag}"
        if not _NAME_RE.match(sub):
            raise ValueError(f"cache tag {sub!r} is not a safe folder name")
        self.root = Path(root) if root is not None else paths.cache_dir("features", model_name, sub)
        self.root.mkdir(parents=True, exist_ok=True)
        self.model_name = model_name
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, model_name: str | None = None, tag: str | None = None
                  ) -> FeatureCache:
        return cls(model_name_of(model, model_name), model_fingerprint(model), tag=tag)

    def chunks(self) -> list[Path]:
        return sorted(self.root.glob("chunk-*.npz"))

    def load(self) -> dict[str, np.ndarray]:
        """Every cached embedding: canvas key -> float32 ``[D]``."""
        table: dict[str, np.ndarray] = {}
        dim = None
        for f in self.chunks():
            try:
                with np.load(f, allow_pickle=False) as z:
                    keys, emb = z["keys"], z["emb"]
                if emb.ndim != 2 or len(keys) != len(emb):
                    raise ValueError(f"{len(keys)} keys for embeddings of shape {emb.shape}")
            except FileNotFoundError:  # removed by a concurrent compact(); its rows are in the merged chunk
                continue
            except Exception as e:  # noqa: BLE001 - a damaged chunk must not stop the study
                warnings.warn(f"feature cache: skipping unreadable chunk {f} ({e})", stacklevel=2)
                continue
            if dim is not None and emb.shape[1] != dim:
                warnings.warn(f"feature cache: skipping chunk {f}: dimension {emb.shape[1]} != {dim}",
                              stacklevel=2)
                continue
            dim = emb.shape[1]
            emb = emb.astype(np.float32, copy=False)
            for k, row in zip(keys.tolist(), emb):
                table.setdefault(k.decode("ascii") if isinstance(k, bytes) else str(k), row)
        return table

    def get(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached subset of ``keys`` (counts hits and misses)."""
        table = self.load()
        found = {k: table[k] for k in keys if k in table}
        self.hits += len(found)
        self.misses += len(set(keys)) - len(found)
        return found

    def put(self, keys: Sequence[str], emb: np.ndarray | torch.Tensor) -> Path | None:
        """Write one new chunk atomically; returns its path (None when ``keys`` is empty)."""
        arr = emb.detach().to("cpu").numpy() if isinstance(emb, torch.Tensor) else np.asarray(emb)
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim != 2 or arr.shape[0] != len(keys):
            raise ValueError(f"{len(keys)} keys for embeddings of shape {arr.shape}")
        if len(keys) == 0:
            return None
        target = self.root / f"chunk-{os.getpid()}-{uuid.uuid4().hex[:12]}.npz"
        _atomic_savez(target, keys=np.array(list(keys), dtype="S64"), emb=arr)
        return target

    def compact(self) -> Path | None:
        """Merge all chunks into one (atomic write, then the merged chunks are removed)."""
        old = self.chunks()
        if len(old) <= 1:
            return old[0] if old else None
        table = self.load()
        keys = sorted(table)
        new = self.put(keys, np.stack([table[k] for k in keys])) if keys else None
        for f in old:
            f.unlink(missing_ok=True)
        return new


def _atomic_savez(target: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".npz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ============================================================================ clean features
def _canvas_items(canvas_list: Any, ids: Sequence[str] | None) -> tuple[list[str], list[Any]]:
    if isinstance(canvas_list, Mapping):
        if ids is not None:
            raise ValueError("pass ids only with a list of canvases, not with a dict id -> canvas")
        return [str(k) for k in canvas_list], list(canvas_list.values())
    items = list(canvas_list)
    if ids is None:
        try:
            ids = [str(c.path) for c in items]
        except AttributeError:
            raise TypeError("canvases without a .path need ids=[...]") from None
    if len(ids) != len(items):
        raise ValueError(f"{len(ids)} ids for {len(items)} canvases")
    return [str(i) for i in ids], items


def clean_features(
    model: torch.nn.Module,
    canvas_list: Sequence[Any] | Mapping[str, Any],
    ids: Sequence[str] | None = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    cache: bool | FeatureCache = True,
    model_name: str | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Clean embeddings ``image id -> float32 [D]`` of face canvases, computing only those not cached.

    ``canvas_list``: objects with ``.canvas`` (uint8 ``(224, 224, 3)``) and ``.landmarks`` (``(5, 2)``),
    e.g. :class:`protego_nb.faces.canvas.FaceCanvas`; ids are their ``.path`` unless ``ids`` is given, or
    the keys when a dict ``id -> canvas`` is passed. Identical canvases are computed once. ``cache``:
    ``True`` (the model's folder under ``paths.cache_dir("features", ...)``), ``False``, or a
    :class:`FeatureCache`. Images whose embedding is not finite are left out with a warning.
    """
    id_list, items = _canvas_items(canvas_list, ids)
    if len(set(id_list)) != len(id_list):
        raise ValueError("duplicate image ids in canvas_list")
    keys = [canvas_key(c.canvas, c.landmarks) for c in items]
    store: FeatureCache | None
    if cache is True:
        store = FeatureCache.for_model(model, model_name)
    elif isinstance(cache, FeatureCache):
        store = cache
    else:
        store = None
    have = store.get(keys) if store is not None else {}

    todo: dict[str, Any] = {}
    for k, c in zip(keys, items):
        if k not in have and k not in todo:
            todo[k] = c
    if todo:
        tkeys = list(todo)
        canv = [np.asarray(todo[k].canvas) for k in tkeys]
        lms = np.stack([np.asarray(todo[k].landmarks, dtype=np.float32) for k in tkeys])
        emb = extract(model, canv, lms, batch_size=batch_size, device=device, progress=progress).numpy()
        finite = np.isfinite(emb).all(axis=1)
        if not finite.all():
            bad_keys = {k for k, ok in zip(tkeys, finite) if not ok}
            bad = [i for i, k in zip(id_list, keys) if k in bad_keys]
            warnings.warn(f"{model_name_of(model, model_name)}: non-finite embeddings for {len(bad)} "
                          f"image(s), left out (first {bad[0]!r})", stacklevel=2)
        good = [k for k, ok in zip(tkeys, finite) if ok]
        if store is not None:
            store.put(good, emb[finite])
        have.update({k: e for k, e, ok in zip(tkeys, emb, finite) if ok})
    return {i: have[k] for i, k in zip(id_list, keys) if k in have}
