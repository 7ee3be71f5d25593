"""Face detection (MTCNN boxes + 5 points) and 224x224 face canvases.

Pipeline for one file: bytes -> sha256 -> :func:`~protego_nb.faces.images.decode_rgb`
-> MTCNN (Zhang et al., "Joint Face Detection and Alignment Using Multitask Cascaded
Convolutional Networks", IEEE SPL 2016; the ``facenet_pytorch`` implementation, whose
weights ship in its wheel) -> :func:`choose_face` -> :func:`make_canvas`, a similarity
warp that maps the 5 detected points onto :data:`protego_nb.faces.align.CANVAS_TEMPLATE`.

The Protego authors' online stage (``tools/protect_imgs.py``) also runs MTCNN (P/R/O
thresholds 0.6/0.7/0.8, minimum face 20 px) and keeps the largest box with confidence
>= 0.8; it then takes a loose square crop without landmark alignment. Here the canvas is
landmark-aligned (the convention of :mod:`protego_nb.faces.align`), and the face is
chosen by a documented policy (:func:`choose_face`).

Detections are cached by the sha256 of the file bytes under
``paths.cache_dir("detections", <settings-hash>)`` (one small JSON file per image,
sharded by the first two hex digits, written atomically); a hit skips MTCNN and only
re-warps the canvas from the decoded image. Image-level failures that depend only on
the bytes (``not_an_image``, ``corrupt``, ``too_large``) and images without faces are
cached too; ``missing`` / ``unreadable`` are not (they depend on the file system).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .. import paths
from ..io import atomic_write_text
from ..runtime import resolve_device
from . import align
from .images import MAX_PIXELS, ImageError, decode_rgb, read_bytes

#: Faces whose eye distance (pixels, in the original image) is below this are ``tiny_face``.
MIN_EYE_DISTANCE = 8.0
#: Faces whose box is narrower or lower than this (pixels) are ``tiny_face``. Upsampling a
#: face from fewer than ~24 px to the 224 canvas (whose eye distance is ~53 px) invents
#: almost all of its detail, so such canvases are not useful for recognition or protection.
MIN_BOX_SIZE = 24.0

#: Failure reasons from detection and face choice (image-level reasons are in ``images.FAILURE_REASONS``).
DETECTION_FAILURES = ("no_face", "low_confidence", "tiny_face", "several_faces", "detector_error")
POLICIES = ("central", "largest", "reject")

#: Version of the cache record format; part of the settings hash.
_CACHE_SCHEME = 1
_CACHEABLE_IMAGE_FAILURES = ("not_an_image", "corrupt", "too_large")


# --------------------------------------------------------------------------- detection


@dataclass(frozen=True, eq=False)
class Detection:
    """One MTCNN face in original-image pixel coordinates (OpenCV pixel-centre convention).

    ``box`` (4,) = x1, y1, x2, y2; ``prob`` = O-Net face probability; ``points`` (5, 2) in
    MTCNN order (image-left eye, image-right eye, nose, image-left / right mouth corner).
    """

    box: np.ndarray
    prob: float
    points: np.ndarray

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Geometric mean of box width and height (pixels)."""
        return math.sqrt(max(self.width, 0.0) * max(self.height, 0.0))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.points[1] - self.points[0]))

    def to_dict(self) -> dict:
        return {"box": [float(v) for v in self.box], "prob": float(self.prob),
                "points": [[float(x), float(y)] for x, y in self.points]}

    @classmethod
    def from_dict(cls, d: dict) -> Detection:
        return cls(np.asarray(d["box"], np.float32), float(d["prob"]), np.asarray(d["points"], np.float32))


class FaceDetector:
    """Batched MTCNN (``facenet_pytorch.MTCNN(keep_all=True)``) returning every face.

    ``thresholds`` are MTCNN's P/R/O-Net thresholds; every face passing them is returned,
    and ``min_prob`` is applied later by :func:`choose_face` (so the cache, keyed by the
    detection settings, does not depend on it). Images are grouped by size and run as
    batches of up to ``batch_size``. Images whose longer side exceeds ``max_side`` are
    detected on an INTER_AREA-downscaled copy (so faces smaller than about
    ``min_face_size * longer_side / max_side`` pixels are not found there) and the
    results are mapped back to the original pixel grid.
    """

    def __init__(
        self,
        device: str = "cpu",
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_prob: float = 0.90,
        max_side: int = 1600,
        factor: float = 0.709,
        batch_size: int = 32,
    ) -> None:
        self.device = resolve_device(device)
        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.min_prob = float(min_prob)
        self.max_side = int(max_side)
        self.factor = float(factor)
        self.batch_size = int(batch_size)
        self.mtcnn_calls = 0  # number of MTCNN forward passes (batches) run so far
        self._mtcnn = None

    def settings(self) -> dict:
        """Everything that changes detection output (the cache key); not device or batch size."""
        return {
            "scheme": _CACHE_SCHEME,
            "detector": "facenet_pytorch.MTCNN",
            "facenet_pytorch": importlib.metadata.version("facenet-pytorch"),
            "min_face_size": self.min_face_size,
            "thresholds": list(self.thresholds),
            "factor": self.factor,
            "max_side": self.max_side,
            "max_pixels": MAX_PIXELS,
        }

    @property
    def settings_hash(self) -> str:
        blob = json.dumps(self.settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def mtcnn(self):
        if self._mtcnn is None:
            from facenet_pytorch import MTCNN

            self._mtcnn = MTCNN(
                keep_all=True, select_largest=False, min_face_size=self.min_face_size,
                thresholds=list(self.thresholds), factor=self.factor, post_process=False,
                device=torch.device(self.device),
            ).eval()
        return self._mtcnn

    def _run_mtcnn(self, batch: np.ndarray) -> list[list[Detection]]:
        """One MTCNN pass over a same-size ``uint8 [B, H, W, 3]`` batch."""
        self.mtcnn_calls += 1
        boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
        out: list[list[Detection]] = []
        for b, p, pt in zip(boxes, probs, points):
            if b is None:
                out.append([])
                continue
            dets = [Detection(np.asarray(bb, np.float32), float(pp), np.asarray(pts, np.float32))
                    for bb, pp, pts in zip(b, p, pt)]
            out.append(sorted(dets, key=lambda d: -d.prob))
        return out

    def _prepare(self, img: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Downscale an image whose longer side exceeds ``max_side``; returns (image, sx, sy)."""
        h, w = img.shape[:2]
        if max(h, w) <= self.max_side:
            return img, 1.0, 1.0
        s = self.max_side / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        return cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA), nw / w, nh / h

    def detect_safe(self, images: Sequence[np.ndarray]) -> list[list[Detection] | Exception]:
        """Like :meth:`detect`, but an image whose detection raised gets the exception instead."""
        prepared = [self._prepare(_check_rgb(img)) for img in images]
        results: list[list[Detection] | Exception | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (im, _, _) in enumerate(prepared):
            if min(im.shape[:2]) < self.min_face_size:
                results[i] = []  # smaller than the smallest face MTCNN looks for (its pyramid would be empty)
                continue
            groups.setdefault(im.shape[:2], []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                try:
                    res: list = self._run_mtcnn(np.stack([prepared[i][0] for i in chunk]))
                except Exception:  # e.g. an MTCNN edge case in one image: retry one by one
                    res = []
                    for i in chunk:
                        try:
                            res.append(self._run_mtcnn(prepared[i][0][None])[0])
                        except Exception as exc:
                            res.append(exc)
                for i, r in zip(chunk, res):
                    _, sx, sy = prepared[i]
                    results[i] = r if isinstance(r, Exception) or (sx == 1 and sy == 1) else [
                        _rescale(d, sx, sy) for d in r]
        return results  # type: ignore[return-value]

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """All faces in each ``uint8 [H, W, 3]`` RGB image, highest probability first."""
        out = self.detect_safe(images)
        for r in out:
            if isinstance(r, Exception):
                raise r
        return out  # type: ignore[return-value]


def _check_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {img.dtype} {img.shape}")
    return img


def _rescale(d: Detection, sx: float, sy: float) -> Detection:
    """Map a detection from a resized image back (pixel-centre convention: x = (x' + .5) / s - .5)."""
    s = np.array([sx, sy], np.float64)
    box = (d.box.reshape(2, 2) + 0.5) / s - 0.5
    pts = (d.points + 0.5) / s - 0.5
    return Detection(box.reshape(4).astype(np.float32), d.prob, pts.astype(np.float32))


# --------------------------------------------------------------------------- choice


@dataclass(frozen=True)
class FaceChoice:
    """Result of :func:`choose_face`: the chosen face, or a failure ``reason`` and ``message``."""

    detection: Detection | None
    n_faces: int
    reason: str | None = None
    message: str = ""


def choose_face(
    dets: Sequence[Detection],
    image_size: tuple[int, int],
    policy: str = "central",
    min_prob: float = 0.90,
    min_eye_distance: float = MIN_EYE_DISTANCE,
    min_box_size: float = MIN_BOX_SIZE,
) -> FaceChoice:
    """Pick the subject's face among ``dets`` in an image of ``image_size = (w, h)``.

    Only faces with ``prob >= min_prob`` count; ``n_faces`` is their number. Policies:

    * ``central`` (default; for datasets such as LFW, whose images are centred on the
      subject, often with other people around): among faces whose size (geometric mean of
      box width and height) is at least half that of the largest face, the one whose box
      centre is nearest the image centre;
    * ``largest``: the face with the largest box area;
    * ``reject``: fails with ``several_faces`` when more than one face is found.

    Failures: ``no_face`` (MTCNN found nothing), ``low_confidence`` (faces found but none
    with ``prob >= min_prob``), ``several_faces`` (``reject`` only), ``tiny_face`` (the
    chosen face has eye distance < ``min_eye_distance`` or box width/height < ``min_box_size``).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown face policy {policy!r}; expected one of {POLICIES}")
    if not dets:
        return FaceChoice(None, 0, "no_face", "no face found by MTCNN")
    good = [d for d in dets if d.prob >= min_prob]
    n = len(good)
    if not good:
        best = max(d.prob for d in dets)
        return FaceChoice(None, 0, "low_confidence",
                          f"{len(dets)} candidate face(s), best probability {best:.3f} < {min_prob:.2f}")
    if policy == "reject" and n > 1:
        return FaceChoice(None, n, "several_faces", f"{n} faces with probability >= {min_prob:.2f}")
    if policy == "largest" or n == 1:
        chosen = max(good, key=lambda d: d.width * d.height)
    else:
        biggest = max(d.size for d in good)
        centre = np.array(image_size, np.float64) / 2 - 0.5
        cands = [d for d in good if d.size >= 0.5 * biggest]
        chosen = min(cands, key=lambda d: float(np.linalg.norm(d.center - centre)))
    if chosen.eye_distance < min_eye_distance or min(chosen.width, chosen.height) < min_box_size:
        return FaceChoice(None, n, "tiny_face",
                          f"face too small: eye distance {chosen.eye_distance:.1f} px (min {min_eye_distance:g}), "
                          f"box {chosen.width:.0f}x{chosen.height:.0f} px (min {min_box_size:g})")
    return FaceChoice(chosen, n)


# --------------------------------------------------------------------------- canvas


def make_canvas(
    img: np.ndarray, points: np.ndarray, size: int = align.CANVAS_SIZE, border: str = "constant"
) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``img`` so that ``points`` (5, 2) land on ``align.template(size)``.

    Returns ``(canvas uint8 [size, size, 3], M)`` where ``M`` (2x3, float64) maps original
    image pixels to canvas pixels exactly. Bilinear interpolation; when the warp shrinks
    the face by more than 2x, the region the canvas sees is first reduced with
    ``INTER_AREA`` (box filter, no aliasing) to the target scale and the warp is composed
    accordingly, so ``M`` stays exact. ``border="constant"`` fills canvas pixels outside
    the image with black (as InsightFace's ``norm_crop`` does); ``"replicate"`` repeats
    the edge pixels.
    """
    img = _check_rgb(img)
    flag = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}.get(border)
    if flag is None:
        raise ValueError(f"border must be 'constant' or 'replicate', got {border!r}")
    M = align.similarity_transform(np.asarray(points, np.float64), align.template(size))
    scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
    src, M_eff = img, M
    if scale < 0.5:
        h, w = img.shape[:2]
        corners = align.apply_affine(align.invert_affine(M), [[-1, -1], [size, -1], [size, size], [-1, size]])
        margin = math.ceil(2.0 / scale) + 2
        x0, y0 = (max(0, math.floor(corners[:, i].min()) - margin) for i in (0, 1))
        x1 = min(w, math.ceil(corners[:, 0].max()) + margin + 1)
        y1 = min(h, math.ceil(corners[:, 1].max()) + margin + 1)
        if x1 > x0 and y1 > y0:
            crop = img[y0:y1, x0:x1]
            ch, cw = crop.shape[:2]
            nw, nh = max(1, round(cw * scale)), max(1, round(ch * scale))
            sx, sy = nw / cw, nh / ch
            src = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA)
            # small pixel -> original pixel: x = (x' + .5) / sx - .5 + x0
            back = np.array([[1 / sx, 0, 0.5 / sx - 0.5 + x0], [0, 1 / sy, 0.5 / sy - 0.5 + y0], [0, 0, 1]])
            M_eff = (np.vstack([M, [0, 0, 1]]) @ back)[:2]
    canvas = cv2.warpAffine(src, M_eff, (size, size), flags=cv2.INTER_LINEAR, borderMode=flag, borderValue=0)
    return canvas, M


@dataclass(frozen=True, eq=False)
class FaceCanvas:
    """A face canvas and everything needed to map it back onto its source image."""

    path: str
    sha256: str
    canvas: np.ndarray  # uint8 (224, 224, 3)
    landmarks: np.ndarray  # float32 (5, 2), canvas pixels (= M applied to src_points)
    src_points: np.ndarray  # float32 (5, 2), original image pixels
    M: np.ndarray  # float64 (2, 3), original -> canvas
    box: np.ndarray  # float32 (4,), original image pixels
    prob: float
    n_faces: int
    image_size: tuple[int, int]  # (w, h) of the upright image
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CanvasFailure:
    """An input that gave no canvas: ``reason`` is an image or detection failure reason."""

    path: str
    reason: str
    message: str


def canvas_to_image_transform(fc: FaceCanvas) -> np.ndarray:
    """2x3 affine mapping canvas pixels back to original-image pixels (the inverse of ``fc.M``)."""
    return align.invert_affine(fc.M)


def canvas_points_to_image(fc: FaceCanvas, pts: np.ndarray) -> np.ndarray:
    """Map ``[N, 2]`` canvas pixel coordinates to original-image pixel coordinates."""
    return align.apply_affine(canvas_to_image_transform(fc), pts)


def canvases_to_tensor(
    canvases: Sequence[FaceCanvas], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack canvases as ``(x float32 [B, 3, H, W] in [0, 1], landmarks float32 [B, 5, 2])``."""
    if len(canvases) == 0:
        s = align.CANVAS_SIZE
        return torch.zeros(0, 3, s, s, device=device), torch.zeros(0, 5, 2, device=device)
    x = torch.from_numpy(np.stack([c.canvas for c in canvases])).permute(0, 3, 1, 2)
    x = x.to(device=device, dtype=torch.float32).div_(255.0).contiguous()
    lm = torch.from_numpy(np.stack([np.asarray(c.landmarks, np.float32) for c in canvases])).to(device)
    return x, lm


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
