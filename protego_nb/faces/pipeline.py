"""Detect and canvas a list of image files, with a disk cache of detections (:func:`build_canvases`).

Detections are cached by the sha256 of the file bytes under
``paths.cache_dir("detections", <settings-hash>)`` (one small JSON file per image,
sharded by the first two hex digits, written atomically); a hit skips MTCNN and only
re-warps the canvas from the decoded image. Image-level failures that depend only on
the bytes (``not_an_image``, ``corrupt``, ``too_large``) and images without faces are
cached too; ``missing`` / ``unreadable`` are not (they depend on the file system).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import paths
from ..io import atomic_write_text
from . import align
from .canvas import CanvasFailure, FaceCanvas, make_canvas
from .detect import POLICIES, Detection, FaceDetector, choose_face
from .images import ImageError, decode_rgb, read_bytes

_CACHEABLE_IMAGE_FAILURES = ("not_an_image", "corrupt", "too_large")


# --------------------------------------------------------------------------- cache


class DetectionCache:
    """One JSON record per image sha256 under ``root/<sha[:2]>/<sha>.json``, written atomically.

    Records: ``{"status": "ok", "image_size": [w, h], "notes": [...], "faces": [...]}`` or
    ``{"status": "image_error", "reason": ..., "detail": ...}``. Concurrent writers of the
    same key write identical content and ``os.replace`` is atomic, so two processes may
    share a cache; unreadable records count as misses.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @classmethod
    def for_detector(cls, detector: FaceDetector) -> DetectionCache:
        root = paths.cache_dir("detections", detector.settings_hash)
        settings = root / "settings.json"
        if not settings.exists():
            atomic_write_text(settings, json.dumps(detector.settings(), indent=1, sort_keys=True))
        return cls(root)

    def _file(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha}.json"

    def get(self, sha: str) -> dict | None:
        try:
            rec = json.loads(self._file(sha).read_text())
            if rec.get("status") not in ("ok", "image_error"):
                raise ValueError("bad record")
        except (OSError, ValueError):
            self.misses += 1
            return None
        self.hits += 1
        return rec

    def put(self, sha: str, rec: dict) -> None:
        atomic_write_text(self._file(sha), json.dumps(rec, separators=(",", ":")))


# --------------------------------------------------------------------------- batch builder


@dataclass
class CanvasReport:
    """What :func:`build_canvases` produced: canvases, failures, counts, notes, time."""

    canvases: list[FaceCanvas] = field(default_factory=list)
    failures: list[CanvasFailure] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # failure reason -> n
    notes: Counter = field(default_factory=Counter)  # note -> n (over produced canvases)
    seconds: float = 0.0
    n_images: int = 0
    n_ok: int = 0
    cache_hits: int = 0
    mtcnn_calls: int = 0

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """A small plain-text table: outcome counts, then notes."""
        rows = [("ok", self.n_ok)] + sorted(self.counts.items(), key=lambda kv: -kv[1])
        width = max([len(k) for k, _ in rows] + [len(k) for k in self.notes] + [12])
        lines = [f"{'outcome':<{width}}  {'n':>6}", f"{'-' * width}  {'-' * 6}"]
        lines += [f"{k:<{width}}  {v:>6}" for k, v in rows]
        lines.append(f"{'total':<{width}}  {self.n_images:>6}")
        if self.notes:
            lines += ["", f"{'note':<{width}}  {'n':>6}", f"{'-' * width}  {'-' * 6}"]
            lines += [f"{k:<{width}}  {v:>6}" for k, v in sorted(self.notes.items(), key=lambda kv: -kv[1])]
        lines.append("")
        lines.append(f"{self.seconds:.1f} s, {self.images_per_second:.1f} images/s, "
                     f"{self.cache_hits} cache hits, {self.mtcnn_calls} MTCNN batches")
        return "\n".join(lines)

    def _fail(self, path: str, reason: str, message: str) -> None:
        self.failures.append(CanvasFailure(path, reason, message))
        self.counts[reason] += 1


@dataclass
class _Item:
    path: str
    sha: str
    img: np.ndarray
    notes: tuple[str, ...]
    rec: dict | None
    error: str = ""


def _record(img: np.ndarray, notes: tuple[str, ...], dets: list[Detection], downscaled: bool) -> dict:
    h, w = img.shape[:2]
    return {"status": "ok", "image_size": [w, h], "notes": list(notes), "downscaled": downscaled,
            "faces": [d.to_dict() for d in dets]}


def build_canvases(
    paths_: Iterable[str | os.PathLike],
    detector: FaceDetector | None = None,
    policy: str = "central",
    cache: bool = True,
    batch_size: int = 32,
    progress: bool = True,
    keep_canvases: bool = True,
    border: str = "constant",
) -> CanvasReport:
    """Detect, choose and warp one face canvas per image file; never stops on a bad file.

    ``cache=True`` uses :class:`DetectionCache` for this detector's settings. With
    ``keep_canvases=False`` the canvases are made and counted but not kept (for
    benchmarks and cache filling over a whole dataset). Failures are listed in
    ``.failures`` and counted by reason in ``.counts``; notes (image conversions,
    ``several_faces`` when more than one confident face was seen, ``downscaled_for_detection``)
    are counted over the produced canvases in ``.notes``.
    """
    from tqdm.auto import tqdm

    if policy not in POLICIES:
        raise ValueError(f"unknown face policy {policy!r}; expected one of {POLICIES}")
    t0 = time.perf_counter()
    det = detector if detector is not None else FaceDetector()
    calls0 = det.mtcnn_calls
    store = DetectionCache.for_detector(det) if cache else None
    report = CanvasReport()
    plist = [str(p) for p in paths_]
    report.n_images = len(plist)
    with tqdm(total=len(plist), disable=not progress, desc="face canvases", unit="img") as bar:
        for start in range(0, len(plist), batch_size):
            items: list[_Item] = []
            for p in plist[start : start + batch_size]:
                try:
                    data = read_bytes(p)
                except ImageError as exc:
                    report._fail(p, exc.reason, exc.message)
                    continue
                sha = hashlib.sha256(data).hexdigest()
                rec = store.get(sha) if store is not None else None
                if rec is not None and rec["status"] == "image_error":
                    err = ImageError(p, rec["reason"], rec.get("detail", ""))
                    report._fail(p, err.reason, err.message)
                    continue
                try:
                    img, notes = decode_rgb(data, p)
                except ImageError as exc:
                    if store is not None and exc.reason in _CACHEABLE_IMAGE_FAILURES:
                        store.put(sha, {"status": "image_error", "reason": exc.reason, "detail": exc.detail})
                    report._fail(p, exc.reason, exc.message)
                    continue
                if rec is not None and tuple(rec.get("image_size", ())) != (img.shape[1], img.shape[0]):
                    # decoded differently than when cached (e.g. another Pillow): a miss, detect again
                    rec = None
                    store.hits, store.misses = store.hits - 1, store.misses + 1  # type: ignore[union-attr]
                items.append(_Item(p, sha, img, notes, rec))
            todo = [it for it in items if it.rec is None]
            if todo:
                results = det.detect_safe([it.img for it in todo])
                for it, res in zip(todo, results):
                    if isinstance(res, Exception):
                        it.error = f"{type(res).__name__}: {res}"
                        continue
                    it.rec = _record(it.img, it.notes, res, max(it.img.shape[:2]) > det.max_side)
                    if store is not None:
                        store.put(it.sha, it.rec)
            for it in items:
                _finish(it, det, policy, border, report, keep_canvases)
            bar.update(min(batch_size, len(plist) - start))
    report.seconds = time.perf_counter() - t0
    report.cache_hits = store.hits if store is not None else 0
    report.mtcnn_calls = det.mtcnn_calls - calls0
    return report


def _finish(it: _Item, det: FaceDetector, policy: str, border: str, report: CanvasReport, keep: bool) -> None:
    if it.rec is None:
        report._fail(it.path, "detector_error", f"{it.path}: MTCNN failed [detector_error]: {it.error}")
        return
    h, w = it.img.shape[:2]
    dets = [Detection.from_dict(d) for d in it.rec["faces"]]
    choice = choose_face(dets, (w, h), policy=policy, min_prob=det.min_prob)
    if choice.detection is None:
        report._fail(it.path, choice.reason or "no_face", f"{it.path}: {choice.message} [{choice.reason}]")
        return
    d = choice.detection
    canvas, M = make_canvas(it.img, d.points, border=border)
    notes = list(it.notes)
    if choice.n_faces > 1:
        notes.append("several_faces")
    if it.rec.get("downscaled"):
        notes.append("downscaled_for_detection")
    report.n_ok += 1
    report.notes.update(notes)
    if keep:
        report.canvases.append(FaceCanvas(
            path=it.path, sha256=it.sha, canvas=canvas,
            landmarks=align.apply_affine(M, d.points).astype(np.float32),
            src_points=d.points.astype(np.float32), M=M, box=d.box.astype(np.float32), prob=d.prob,
            n_faces=choice.n_faces, image_size=(w, h), notes=tuple(notes)))
