"""Face detection (MTCNN boxes + 5 points) and the choice of the face to keep.

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

The canvas geometry is in :mod:`.canvas`; detecting and canvassing a list of files, cached: :mod:`.pipeline`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..runtime import resolve_device
from .images import MAX_PIXELS, check_rgb

#: Faces whose eye distance (pixels, in the original image) is below this are ``tiny_face``.
MIN_EYE_DISTANCE = 8.0
#: Faces whose box is narrower or lower than this (pixels) are ``tiny_face``. Upsampling a
#: face from fewer than ~24 px to the 224 canvas (whose eye distance is ~53 px) invents
#: almost all of its detail, so such canvases are not useful for recognition or protection.
MIN_BOX_SIZE = 24.0

#: Version of the detection record format; part of the settings hash.
CACHE_SCHEME = 1

#: Failure reasons from detection and face choice (image-level reasons are in ``images.FAILURE_REASONS``).
DETECTION_FAILURES = ("no_face", "low_confidence", "tiny_face", "several_faces", "detector_error")
POLICIES = ("central", "largest", "reject")



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
            "scheme": CACHE_SCHEME,
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
        prepared = [self._prepare(check_rgb(img)) for img in images]
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
