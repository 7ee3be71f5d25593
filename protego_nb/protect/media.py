"""Protect photos and videos at full resolution with a user's Privacy Protection Texture (PPT).

The online stage (``reference/protego_method.md`` section 2), for one image or video frame:

1. decode (:func:`protego_nb.faces.images.decode_rgb`: EXIF orientation applied, so pixels are upright);
2. detect every face with MTCNN (:class:`protego_nb.faces.detect.FaceDetector`) on an ``INTER_AREA`` copy whose
   shorter side is ``detect_short_side=360`` px (never enlarged), with ``min_face_size=30`` px there and P/R-Net
   thresholds 0.8/0.8 (O-Net 0.7, then ``min_prob`` 0.9); landmarks are mapped back to full resolution. So
   faces smaller than 1/12 of the shorter side (40 px at 480p, 90 px at 1080p) are not searched, and the
   detector's cost no longer grows with the resolution (MTCNN's pyramid scales with image area / min face^2).
   MTCNN is the bottleneck stage. Measured on 640x480 composites of 24 LFW faces (1 torch thread, shared 2-core
   CPU, load ~1.5-2): median 58.7 ms at full resolution with min face 40 and the package thresholds
   (0.6/0.7/0.7), 46.7 ms with 0.8/0.8/0.7, 40.7 ms on the 480x360 copy with min face 30 and 0.8/0.8/0.7;
   every face was found in each setting. The landmarks only place the canvas (the mesh, not the 5 points,
   decides where the texture lands), so the coarser detection costs no protection. Torch should run
   single-threaded on a loaded machine (``protego-nb protect --threads 1``, the default): with 2 threads on
   the same loaded 2-core CPU MTCNN took 0.2-2.5 s per image;
   ``detector="blazeface"`` is the fast alternative: MediaPipe's full-range BlazeFace (Bazarevsky et al.,
   "BlazeFace: Sub-millisecond Neural Face Detection on Mobile GPUs", CVPR-W 2019; ``model_selection=1``,
   score >= 0.6) gives the eyes, nose tip and mouth centre; the two mouth corners are put at the mouth centre
   -+ 0.4283 x (eye-to-eye vector), the ratio of the ArcFace template (mouth width / eye distance = 0.857).
   On 8 LFW composites its points were within 0.3-18 px of MTCNN's (eye distance 53-67 px): good enough to
   place a canvas, since the mesh decides where the texture lands. Median 5.5 ms vs 40.7 ms for MTCNN on
   the 24 composites above, every face found by both. ``detector="auto"`` (the default) runs BlazeFace and
   falls back to MTCNN when BlazeFace finds no usable face, so the fast path never loses a photo that MTCNN
   would protect (it can miss a second, harder face in a group photo under ``faces="all"``; use
   ``detector="mtcnn"`` there);
3. choose the faces to protect (``faces="owner"``: the PPT owner's face, see below; ``"all"``: every face);
4. per face: the 224x224 canvas ``make_canvas(img, points) -> (canvas, M)`` (``M`` maps image pixels to canvas
   pixels), its 468-point mesh (MediaPipe), the UV raster, and the perturbation
   ``delta = UVWarp(uv).perturbation(ppt, eps)`` on the canvas (``|delta| <= eps``, zero off the face surface);
5. ``delta`` is mapped back onto the image through the inverse of ``M`` (``cv2.warpAffine`` with
   ``WARP_INVERSE_MAP``, bilinear, zero outside the canvas), only over the face's bounding rectangle; a bilinear
   mix of values in ``[-eps, eps]`` stays in ``[-eps, eps]``, and pixels off the face get exactly 0;
6. ``out = round(clip(img + 255 * delta, 0, 255))``: rounded to the nearest level, **not truncated** (the
   authors' ``.mul(255).to(uint8)`` truncates, a bias of -0.5 levels). Since ``img`` is integral,
   ``|out - img| <= round(255 eps)``; pixels outside every face are bit-identical;
7. saved in the input's format under the same file name, atomically (temporary file, ``fsync``, rename), with
   the input's permission bits limited by the umask (:mod:`protego_nb.protect.photo`); an image with
   transparency keeps its alpha channel unchanged (its colour channels, not composited, are protected).

Which faces (``faces="owner"``, the default): when an image holds one usable face, that face is protected.
With several, each face's canvas is embedded with the owner model (``owner_model`` in the PPT metadata, default
``mobilefacenet``) and compared (cosine) with the owner's reference embedding stored in the PPT metadata
(``owner_embedding``: the renormalised mean of the owner's L2-normalised training embeddings, written by
``protego-nb train``); every face whose similarity reaches the threshold (:data:`OWNER_THRESHOLDS`) is
protected (the owner twice in a collage: both), all others are skipped as ``not_owner``; if no face reaches it,
the image is skipped (``no_owner_match``). A PPT without ``owner_embedding`` falls back to the largest face, and
the result says so (note ``owner_unknown_largest_face``). ``faces="all"`` protects every usable face.

Metadata (``metadata=``): ``"strip"`` (default) writes no EXIF/XMP at all (no GPS, camera serials, dates), only
an RGB ICC colour profile when the input had one; ``"keep"`` keeps the EXIF block minus its GPS directory;
``"keep_all"`` keeps the EXIF block with GPS. In every case the EXIF orientation tag is reset to 1, because the
pixels are stored upright. JPEG: quality ``jpeg_quality`` (default 95) with 4:4:4 chroma (no chroma
subsampling, which would blur the colour part of the texture). PNG, TIFF, BMP and WebP are written lossless.
JPEG output re-encodes the whole picture, so its background carries JPEG noise; PNG output keeps it exact.

Images without a usable face are **skipped and not written** (an unprotected copy in the output folder
could be mistaken for a protected one); the result says why.

Videos (:meth:`Protector.protect_video`; the bundled ffmpeg of ``imageio-ffmpeg``): every frame is decoded
upright and written once, in order, with its own timestamp, at the input's size (variable frame rates are
kept exactly; :mod:`protego_nb.protect.video`); frames without a protected face pass through unchanged
(counted); the audio stream is copied from the input (re-encoded to AAC only if the container refuses a copy)
and stays in sync. Location tags are removed unless ``metadata="keep_all"``; a file cut short is protected up
to its last decodable frame with a warning. Temporal stability: MTCNN runs every ``detect_every`` frames (and
whenever a track is lost); faces are tracked by nearest landmark centre; the 5 landmarks that place the
canvas and the 468 mesh vertices (in image coordinates) are smoothed with a One-Euro filter (Casiez, Roussel
and Vogel, "1 Euro A Simple Speed-based Low-pass Filter for Noisy Input in Interactive Systems", CHI 2012; the time step is the
real gap between frames), so the texture does not flicker when the face is still and follows it without lag when it moves; MediaPipe's
face mesh runs in video (tracking) mode per track. Default ``smoothing=(min_cutoff 0.5 Hz, beta 0.2 s/px)``,
chosen on a synthetic track (25 FPS, i.i.d. 1-px noise per vertex, mean absolute error to the true position
after 2 s; raw error 0.80 px): (1.0, 0.02) gave 0.29 / 3.23 / 5.02 px at 0 / 90 / 300 px/s (lags when the
face moves), (1.0, 0.1) 0.37 / 1.18 / 1.44, (0.5, 0.2) 0.42 / 0.89 / 0.98, (0.3, 0.3) 0.46 / 0.82 / 0.88:
(0.5, 0.2) halves the jitter of a still face and is never more than 0.2 px worse than no filter when it moves.
``benchmarks/bench_protect.py`` measures the resulting flicker of the perturbation on a still face.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..faces import align
from ..faces.detect import MIN_BOX_SIZE, MIN_EYE_DISTANCE, Detection, FaceDetector, make_canvas
from ..faces.images import ImageError
from . import photo as _photo
from . import video as _video

__all__ = [
    "OWNER_THRESHOLDS",
    "PHOTO_FORMATS",
    "VIDEO_EXTENSIONS",
    "FaceOutcome",
    "FrameResult",
    "OneEuroFilter",
    "ProtectResult",
    "Protector",
    "InputFile",
    "InputSet",
    "collect_inputs",
    "expand_inputs",
    "face_embeddings",
    "unlike_the_rest",
    "media_kind",
    "owner_embedding",
    "paste_perturbation",
]

#: File extension -> Pillow format written for photos (the output keeps the input's actual format).
PHOTO_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")

#: Cosine threshold of the owner check per model (``benchmarks/bench_protect.py --owner-thresholds``). On 400 LFW pairs (``pairs.txt``, 40 per fold,
#: seed 0, face canvases of this package): mobilefacenet best-accuracy threshold 0.373 (99.75 %), 1 % FAR at
#: 0.389, 99th percentile of mismatched pairs 0.349, 5th percentile of matched pairs 0.580; dlib_resnet
#: (cosine) 0.907 / 0.905 / 0.902 / 0.928. The owner reference is a mean of several photos, which raises
#: matched similarities further.
OWNER_THRESHOLDS = {"mobilefacenet": 0.40, "dlib_resnet": 0.91}
DEFAULT_OWNER_MODEL = "mobilefacenet"
#: Smallest BlazeFace score taken as a face (``detector_kind="blazeface"``).
BLAZEFACE_MIN_SCORE = 0.6
#: Half the mouth width over the eye distance in the ArcFace template: (71.7363 - 41.5493) / 2 / 35.2372.
_MOUTH_HALF = 0.4283


# ----------------------------------------------------------------------------- results


@dataclass
class FaceOutcome:
    """One detected face: its box (image pixels), probability, ``status`` ``protected``/``skipped`` and why."""

    box: list[float]
    prob: float
    status: str
    reason: str = ""
    similarity: float | None = None


@dataclass
class FrameResult:
    """:meth:`Protector.protect_array`'s answer: the protected image, the faces and stage timings (seconds)."""

    image: np.ndarray
    faces: list[FaceOutcome]
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def n_protected(self) -> int:
        return sum(f.status == "protected" for f in self.faces)


@dataclass
class ProtectResult:
    """What happened to one input file.

    ``status``: ``protected`` (output written), ``skipped`` (nothing to protect; no output, ``reason`` says
    why) or ``failed`` (``reason`` and ``message`` name the problem). ``warnings``: sentences for the user
    (several faces and which were protected, a truncated video, ...). Videos also count frames.
    """

    input: str
    kind: str
    status: str
    output: str | None = None
    reason: str = ""
    message: str = ""
    faces: list[FaceOutcome] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    frames: int = 0
    frames_protected: int = 0
    frames_without_face: int = 0
    audio: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- helpers


class OneEuroFilter:
    """Vectorised One-Euro low-pass filter (Casiez et al., CHI 2012) for arrays of coordinates.

    ``x_hat = a x + (1 - a) x_hat_prev`` with ``a = 1 / (1 + tau / dt)``, ``tau = 1 / (2 pi f_c)`` and the
    cutoff ``f_c = min_cutoff + beta |dx_hat|`` adapted per element to the (filtered) speed ``dx_hat`` in
    units per second: still points are smoothed hard (jitter removed), fast ones follow with little lag.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.02, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff, np.float64))
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._x = self._dx = None

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._x.shape != x.shape or not np.isfinite(self._x).all():
            self._x, self._dx = x.copy(), np.zeros_like(x)
            return x.copy()
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self._dx), dt)
        self._x = a * x + (1 - a) * self._x
        return self._x.copy()


def paste_perturbation(
    image: np.ndarray, deltas: Sequence[np.ndarray], transforms: Sequence[np.ndarray], eps: float
) -> np.ndarray:
    """Add canvas-space perturbations to a full-resolution image; returns a new ``uint8`` image.

    ``deltas[k]`` ``float32 [S, S, 3]`` in ``[-eps, eps]`` (units of 1 = 255 levels), zero off the face;
    ``transforms[k]`` the 2x3 map image pixel -> canvas pixel of that face. Each delta is resampled onto the
    image grid (bilinear, through the inverse of the map) over the rectangle its non-zero pixels cover, the
    sum is clipped to ``+-255 eps`` (faces that overlap cannot exceed the bound), and the result is
    ``round(clip(image + delta, 0, 255))``. Pixels outside every rectangle are copied unchanged.
    """
    h, w = image.shape[:2]
    out = image.copy()
    rois = []
    for delta, M in zip(deltas, transforms):
        nz = np.abs(delta).max(-1) > 0
        if not nz.any():
            continue
        ys, xs = np.nonzero(nz)
        c = np.array([[xs.min() - 1, ys.min() - 1], [xs.max() + 1, ys.min() - 1],
                      [xs.max() + 1, ys.max() + 1], [xs.min() - 1, ys.max() + 1]], np.float64)
        p = align.apply_affine(align.invert_affine(M), c)
        x0, y0 = max(0, math.floor(p[:, 0].min()) - 1), max(0, math.floor(p[:, 1].min()) - 1)
        x1, y1 = min(w, math.ceil(p[:, 0].max()) + 2), min(h, math.ceil(p[:, 1].max()) + 2)
        if x1 > x0 and y1 > y0:
            rois.append((delta, np.asarray(M, np.float64), (x0, y0, x1, y1)))
    if not rois:
        return out
    X0, Y0 = min(r[2][0] for r in rois), min(r[2][1] for r in rois)
    X1, Y1 = max(r[2][2] for r in rois), max(r[2][3] for r in rois)
    acc = np.zeros((Y1 - Y0, X1 - X0, 3), np.float32)
    for delta, M, (x0, y0, x1, y1) in rois:
        # image pixel (x0 + u, y0 + v) -> canvas pixel M @ (x0 + u, y0 + v, 1)
        Mr = M.copy()
        Mr[:, 2] = M[:, 2] + M[:, :2] @ np.array([x0, y0], np.float64)
        d = cv2.warpAffine(np.ascontiguousarray(delta, np.float32) * np.float32(255.0), Mr, (x1 - x0, y1 - y0),
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0)
        acc[y0 - Y0 : y1 - Y0, x0 - X0 : x1 - X0] += d.reshape(y1 - y0, x1 - x0, 3)
    bound = np.float32(255.0 * eps)
    np.clip(acc, -bound, bound, out=acc)
    region = out[Y0:Y1, X0:X1].astype(np.float32) + acc
    out[Y0:Y1, X0:X1] = np.rint(np.clip(region, 0, 255)).astype(np.uint8)
    return out


def media_kind(path: str | os.PathLike) -> str:
    """``"video"`` for a video extension, else ``"photo"`` (photos are recognised by content when decoded)."""
    return "video" if Path(path).suffix.lower() in VIDEO_EXTENSIONS else "photo"


@dataclass
class InputFile:
    """One input: its ``path``, its path ``rel`` below the folder it was found in (just the name for a file
    named directly) and that folder ``base`` (the file's own folder for a file named directly)."""

    path: Path
    rel: Path
    base: Path


@dataclass
class InputSet:
    """:func:`collect_inputs`' answer: the files, the folder entries ignored (no media extension), the
    broken links found in folders, and per folder argument that yielded nothing the number of sub-folders
    that were not searched."""

    files: list[InputFile] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    broken_links: list[Path] = field(default_factory=list)
    empty_folders: dict[str, int] = field(default_factory=dict)


def _is_within(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def collect_inputs(inputs: Iterable[str | os.PathLike], recursive: bool = False,
                   exclude: str | os.PathLike | None = None) -> InputSet:
    """Expand the command line's inputs.

    Files named directly are kept as given (even without a media extension: they fail cleanly if they are
    no photo); the same file named twice is kept once. Folders expand to their photo and video files
    (sorted; hidden files and folders left out; sub-folders only with ``recursive``, never following
    symlinked folders, never entering ``exclude``, the output folder). A symlink in a folder that points
    nowhere (dangling or a loop) is listed as a file, so that it is reported instead of silently dropped."""
    out = InputSet()
    known = set(PHOTO_FORMATS) | set(VIDEO_EXTENSIONS)
    seen: set[str] = set()
    excl = Path(exclude) if exclude is not None else None

    def add(path: Path, rel: Path, base: Path) -> None:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            out.files.append(InputFile(path, rel, base))

    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            add(p, Path(p.name), p.parent)
            continue
        found, subdirs = 0, 0
        stack = [p]
        while stack:
            folder = stack.pop(0)
            try:
                children = sorted(folder.iterdir())
            except OSError:
                continue
            for child in children:
                if child.name.startswith("."):
                    continue
                if child.is_dir():
                    if child.is_symlink() or (excl is not None and _is_within(child, excl)):
                        continue
                    subdirs += 1
                    if recursive:
                        stack.append(child)
                    continue
                if not child.is_file():
                    if child.is_symlink():
                        out.broken_links.append(child)
                        if child.suffix.lower() in known:
                            add(child, child.relative_to(p), p)
                            found += 1
                    continue
                if child.suffix.lower() in known:
                    add(child, child.relative_to(p), p)
                    found += 1
                else:
                    out.ignored.append(child)
        if not found:
            out.empty_folders[str(p)] = 0 if recursive else subdirs
    return out


def expand_inputs(inputs: Iterable[str | os.PathLike], recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """Files named directly are kept; folders expand to their photo and video files (sorted, not recursive
    unless ``recursive``, hidden files left out). Returns ``(files, ignored)``, ``ignored`` the folder entries
    without a media extension (see :func:`collect_inputs` for the details)."""
    got = collect_inputs(inputs, recursive=recursive)
    return [f.path for f in got.files], got.ignored


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


# ----------------------------------------------------------------------------- the protector


class Protector:
    """Protect photos and videos with one PPT (see the module docstring for every step and option).

    ``texture`` ``[1, 3, T, T]`` and ``meta`` as returned by :func:`protego_nb.protect.texture.load_ppt`
    (or use :meth:`from_file`). ``eps`` defaults to the PPT's ``epsilon`` and may only be lowered.
    """

    def __init__(
        self,
        texture: torch.Tensor,
        meta: dict[str, Any],
        *,
        faces: str = "owner",
        eps: float | None = None,
        device: str = "cpu",
        detector: FaceDetector | None = None,
        detector_kind: str = "auto",
        detect_short_side: int = 360,
        min_face_size: int = 30,
        min_prob: float = 0.90,
        owner_model: str | None = None,
        owner_threshold: float | None = None,
        jpeg_quality: int = 95,
        metadata: str = "strip",
        video_codec: str = "h264",
        video_crf: int = 17,
        detect_every: int = 10,
        smoothing: tuple[float, float] = (0.5, 0.2),
        ssim_floor: float | None = None,
    ) -> None:
        if faces not in ("owner", "all"):
            raise ValueError(f"faces must be 'owner' or 'all', got {faces!r}")
        if metadata not in ("strip", "keep", "keep_all"):
            raise ValueError(f"metadata must be 'strip', 'keep' or 'keep_all', got {metadata!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if video_codec not in ("h264", "lossless"):
            raise ValueError(f"video_codec must be 'h264' or 'lossless', got {video_codec!r}")
        if detector_kind not in ("auto", "mtcnn", "blazeface"):
            raise ValueError(f"detector_kind must be 'auto', 'mtcnn' or 'blazeface', got {detector_kind!r}")
        if int(detect_every) < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if ssim_floor is not None and not 0 < float(ssim_floor) <= 1:
            raise ValueError(f"ssim_floor must be in (0, 1] or None, got {ssim_floor}")
        if str(meta.get("mode", "uv")) != "uv":
            raise ValueError("only UV-mode PPTs can protect new photos (a flat PPT is an ablation baseline)")
        ppt_eps = float(meta["epsilon"])
        self.eps = ppt_eps if eps is None else float(eps)
        if not 0 < self.eps <= ppt_eps + 1e-9:
            raise ValueError(f"eps {self.eps} must be in (0, {ppt_eps:.6g}] (the PPT's own bound)")
        self.device = device
        self.texture = texture.to(device=device, dtype=torch.float32)
        self.meta = meta
        self.faces = faces
        self.detector = detector or FaceDetector(device=device, max_side=100_000, min_prob=min_prob,
                                                 min_face_size=min_face_size, thresholds=(0.8, 0.8, 0.7))
        self.detect_short_side = int(detect_short_side)
        self.detector_kind = detector_kind
        self.min_prob = min_prob  # MTCNN's floor; BlazeFace detections use BLAZEFACE_MIN_SCORE
        self._blazeface = None
        self.owner_model = owner_model or str(meta.get("owner_model") or DEFAULT_OWNER_MODEL)
        self.owner_threshold = owner_threshold if owner_threshold is not None else OWNER_THRESHOLDS.get(
            self.owner_model, 0.4)
        emb = meta.get("owner_embedding")
        try:
            if isinstance(emb, str):
                emb = json.loads(emb)
            self.owner_ref = None if emb is None else np.asarray(emb, np.float32)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"owner_embedding is not a JSON list of numbers ({type(exc).__name__}: {exc})") from exc
        if self.owner_ref is not None:
            from ..models import zoo

            spec = zoo.MODELS.get(self.owner_model)
            if spec is None:
                raise ValueError(f"unknown owner model {self.owner_model!r}")
            if self.owner_ref.shape != (spec.dim,) or not np.isfinite(self.owner_ref).all():
                raise ValueError(f"owner_embedding must be {spec.dim} finite numbers for {self.owner_model}, "
                                 f"got shape {self.owner_ref.shape}")
        self.jpeg_quality = int(jpeg_quality)
        self.metadata = metadata
        self.video_codec = video_codec
        self.video_crf = int(video_crf)
        self.detect_every = int(detect_every)
        self.smoothing = smoothing
        #: SSIM floor per face (issue 13): each face's perturbation is scaled down until its canvas meets it
        #: (:mod:`.ssim_floor`); None adds the PPT's perturbation at full strength (the earlier behaviour).
        self.ssim_floor = None if ssim_floor is None else float(ssim_floor)
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        self._owner_net: torch.nn.Module | None = None

    @classmethod
    def from_file(cls, ppt: str | os.PathLike, **kwargs: Any) -> Protector:
        """Load and validate a ``.ppt`` file (raises :class:`~protego_nb.protect.texture.PPTFileError`)."""
        from .texture import load_ppt

        texture, meta = load_ppt(ppt)
        return cls(texture, meta, **kwargs)

    # ------------------------------------------------------------------ per image

    def _uv_tables(self) -> tuple[np.ndarray, np.ndarray]:
        if self._tables is None:
            from ..faces import mesh

            self._tables = mesh.load_tables()
        return self._tables

    def _owner_scores(self, canvases: list[np.ndarray], landmarks: list[np.ndarray]) -> np.ndarray:
        from ..models import zoo

        if self._owner_net is None:
            self._owner_net = zoo.load(self.owner_model, self.device)
        x = torch.from_numpy(np.stack(canvases)).permute(0, 3, 1, 2).float().div(255).to(self.device)
        lm = torch.from_numpy(np.stack(landmarks).astype(np.float32)).to(self.device)
        with torch.no_grad():
            e = torch.nn.functional.normalize(self._owner_net(x, lm).float(), dim=1).cpu().numpy()
        if self.owner_ref is None or self.owner_ref.shape[0] != e.shape[1]:
            raise ValueError(f"the PPT's owner_embedding has {None if self.owner_ref is None else self.owner_ref.shape}"
                             f" values but {self.owner_model} gives {e.shape[1]}")
        return e @ self.owner_ref

    def _select(self, dets: list[Detection], img: np.ndarray, timings: dict[str, float],
                notes: list[str]) -> tuple[list[int], list[FaceOutcome], list[tuple[np.ndarray, np.ndarray]]]:
        """Usable faces, the indices chosen for protection, outcomes and (canvas, M) per usable face.

        ``dets`` are confident faces (:meth:`detect`); outcome ``k`` describes ``dets[k]``."""
        outcomes: list[FaceOutcome] = []
        usable: list[int] = []
        for d in dets:
            o = FaceOutcome([round(float(v), 1) for v in d.box], round(float(d.prob), 4), "skipped")
            if d.eye_distance < MIN_EYE_DISTANCE or min(d.width, d.height) < MIN_BOX_SIZE:
                o.reason = "tiny_face"
            else:
                usable.append(len(outcomes))
            outcomes.append(o)
        good = dets
        t = time.perf_counter()
        canv = {k: make_canvas(img, good[k].points) for k in usable}
        timings["canvas"] = timings.get("canvas", 0.0) + time.perf_counter() - t
        chosen = list(usable)
        if self.faces == "owner" and len(usable) > 1:
            if self.owner_ref is None:
                big = max(usable, key=lambda k: good[k].width * good[k].height)
                chosen = [big]
                notes.append("owner_unknown_largest_face")
                for k in usable:
                    if k != big:
                        outcomes[k].reason = "not_largest"
            else:
                t = time.perf_counter()
                lms = [align.apply_affine(canv[k][1], good[k].points) for k in usable]
                sims = self._owner_scores([canv[k][0] for k in usable], lms)
                timings["owner_check"] = time.perf_counter() - t
                for k, s in zip(usable, sims):
                    outcomes[k].similarity = round(float(s), 4)
                chosen = [k for k, s in zip(usable, sims) if s >= self.owner_threshold]
                for k in usable:
                    if k not in chosen:
                        outcomes[k].reason = "not_owner" if chosen else "no_owner_match"
        return chosen, outcomes, [canv.get(k) for k in range(len(outcomes))]  # type: ignore[misc]

    def detect(self, img: np.ndarray) -> list[Detection]:
        """Confident faces of ``img`` in its own pixel coordinates, most confident first (module docstring, step 2).

        MTCNN runs on a copy of shorter side ``detect_short_side`` and keeps faces with ``prob >= min_prob``;
        BlazeFace keeps scores ``>= BLAZEFACE_MIN_SCORE``."""
        h, w = img.shape[:2]
        if self.detector_kind != "mtcnn":
            fast = self._detect_blazeface(img)
            usable = [d for d in fast if d.eye_distance >= MIN_EYE_DISTANCE and min(d.width, d.height) >= MIN_BOX_SIZE]
            if self.detector_kind == "blazeface" or usable:
                return fast
        s = min(1.0, self.detect_short_side / min(h, w))
        if s >= 1.0:
            return [d for d in self.detector.detect([img])[0] if d.prob >= self.min_prob]
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        k = np.array([w / nw, h / nh])
        out = []
        for d in self.detector.detect([small])[0]:  # pixel centres: x = (x' + 0.5) * w / nw - 0.5
            if d.prob < self.min_prob:
                continue
            box = ((d.box.reshape(2, 2) + 0.5) * k - 0.5).reshape(4)
            out.append(Detection(box.astype(np.float32), d.prob, ((d.points + 0.5) * k - 0.5).astype(np.float32)))
        return out

    def _detect_blazeface(self, img: np.ndarray) -> list[Detection]:
        if self._blazeface is None:
            from mediapipe.python.solutions import face_detection

            self._blazeface = face_detection.FaceDetection(model_selection=1,
                                                           min_detection_confidence=BLAZEFACE_MIN_SCORE)
        h, w = img.shape[:2]
        res = self._blazeface.process(np.ascontiguousarray(img))
        out = []
        for d in res.detections or []:
            bb = d.location_data.relative_bounding_box
            k = np.array([[p.x * w - 0.5, p.y * h - 0.5] for p in d.location_data.relative_keypoints[:4]])
            half = _MOUTH_HALF * (k[1] - k[0])  # keypoints: image-left eye, image-right eye, nose tip, mouth
            pts = np.stack([k[0], k[1], k[2], k[3] - half, k[3] + half]).astype(np.float32)
            box = np.array([bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h], np.float32)
            out.append(Detection(box, float(d.score[0]), pts))
        return sorted(out, key=lambda d: -d.prob)

    def perturbations(self, vertices: np.ndarray) -> np.ndarray:
        """Canvas-space perturbations ``float32 [n, S, S, 3]`` for meshes ``[n, 468, 3]`` (canvas pixels)."""
        from ..faces.uv import rasterize_uv
        from .texture import UVWarp

        uv468, tri = self._uv_tables()
        uvm = rasterize_uv(vertices, tri, uv468, size=align.CANVAS_SIZE, canvas_size=align.CANVAS_SIZE,
                           device=self.device)
        with torch.no_grad():
            delta = UVWarp.from_uvmap(uvm).perturbation(self.texture, self.eps)
        return delta.permute(0, 2, 3, 1).cpu().numpy()

    def apply_floor(self, canvases: list[np.ndarray], deltas: np.ndarray,
                    timings: dict[str, float] | None = None) -> np.ndarray:
        """The faces' perturbations scaled to meet :attr:`ssim_floor` on their canvases (unchanged without one)."""
        if self.ssim_floor is None:
            return deltas
        from .ssim_floor import floor_perturbations

        t = time.perf_counter()
        out, _ = floor_perturbations(canvases, deltas, self.ssim_floor)
        if timings is not None:
            timings["ssim_floor"] = timings.get("ssim_floor", 0.0) + time.perf_counter() - t
        return out

    def protect_array(self, img: np.ndarray) -> FrameResult:
        """Protect one upright ``uint8 [H, W, 3]`` RGB image in memory (no file I/O)."""
        from ..faces import mesh

        timings: dict[str, float] = {}
        notes: list[str] = []
        t = time.perf_counter()
        dets = self.detect(img)
        timings["detect"] = time.perf_counter() - t
        chosen, outcomes, canv = self._select(dets, img, timings, notes)
        if not chosen:
            return FrameResult(img, outcomes, timings, notes)
        t = time.perf_counter()
        res = mesh.mesh_canvases([canv[k][0] for k in chosen], cache=False)
        timings["mesh"] = time.perf_counter() - t
        keep = [k for k, ok in zip(chosen, res.ok) if ok]
        for k, ok in zip(chosen, res.ok):
            if not ok:
                outcomes[k].reason = "no_mesh"
        if not keep:
            return FrameResult(img, outcomes, timings, notes)
        t = time.perf_counter()
        deltas = self.perturbations(res.vertices[res.ok])
        timings["uv_raster"] = time.perf_counter() - t
        deltas = self.apply_floor([canv[k][0] for k in keep], deltas, timings)
        t = time.perf_counter()
        out = paste_perturbation(img, list(deltas), [canv[k][1] for k in keep], self.eps)
        timings["paste"] = time.perf_counter() - t
        for k in keep:
            outcomes[k].status, outcomes[k].reason = "protected", ""
        return FrameResult(out, outcomes, timings, notes)

    # ------------------------------------------------------------------ photos

    def _encode(self, arr: np.ndarray, fmt: str, info: dict[str, Any], exif: Any,
                alpha: np.ndarray | None = None, notes: list[str] | None = None) -> bytes:
        return _photo.encode_photo(arr, alpha, fmt, info, exif, self.metadata, self.jpeg_quality, notes)

    @staticmethod
    def _face_warning(r: ProtectResult, faces: str, notes: list[str]) -> None:
        """A sentence for photos with several faces: which were protected, which left and why."""
        if len(r.faces) < 2:
            return
        order = sorted(range(len(r.faces)), key=lambda k: r.faces[k].box[0])

        def desc(k: int) -> str:
            f = r.faces[k]
            x0, y0, x1, y1 = (round(v) for v in f.box)
            sim = "" if f.similarity is None else f", owner similarity {f.similarity:.2f}"
            why = "" if f.status == "protected" else f", {f.reason or 'not protected'}"
            return f"#{order.index(k) + 1} at x {x0}..{x1}, y {y0}..{y1}{sim}{why}"

        prot = [desc(k) for k in order if r.faces[k].status == "protected"]
        left = [desc(k) for k in order if r.faces[k].status != "protected"]
        msg = f"{len(r.faces)} faces (numbered left to right): protected {'; '.join(prot) or 'none'}"
        if left:
            msg += f"; left {'; '.join(left)}"
        if "owner_unknown_largest_face" in notes:
            msg += " (the PPT holds no owner embedding: only the largest face was protected)"
        r.warnings.append(msg)

    def protect_photo(self, src: str | os.PathLike, dst: str | os.PathLike) -> ProtectResult:
        """Protect one photo file into ``dst`` (same format); never raises for a bad input (see ``status``)."""
        src, dst = Path(src), Path(dst)
        r = ProtectResult(str(src), "photo", "failed")
        t0 = time.perf_counter()
        if _same_file(src, dst):
            r.reason = "same_path"
            r.message = f"{src}: the output would replace the input; choose another output folder (-o)"
            return r
        try:
            ph = _photo.read_photo(src)
        except ImageError as exc:
            r.reason, r.message = exc.reason, exc.message
            return r
        except Exception as exc:  # anything else a decoder may throw stays with this file
            r.reason, r.message = "corrupt", f"{src}: {type(exc).__name__}: {exc}"
            return r
        r.timings["decode"] = time.perf_counter() - t0
        r.notes = list(ph.notes)
        if not _photo.writable(ph.format):
            r.reason = "unsupported_format"
            r.message = f"{src}: {ph.format or 'this'} images cannot be written back in the same format " \
                        f"(supported: JPEG, PNG, WebP, TIFF, BMP)"
            return r
        try:
            fr = self.protect_array(ph.rgb)
        except Exception as exc:  # a detector/mesh error on one image must not stop a batch
            r.reason, r.message = "protect_error", f"{src}: {type(exc).__name__}: {exc}"
            return r
        r.timings.update(fr.timings)
        r.faces, r.notes = fr.faces, r.notes + fr.notes
        self._face_warning(r, self.faces, fr.notes)
        if fr.n_protected == 0:
            r.status = "skipped"
            reasons = sorted({f.reason for f in fr.faces if f.reason})
            r.reason = "no_face" if not fr.faces else (reasons[0] if len(reasons) == 1 else "+".join(reasons))
            r.message = f"{src}: nothing protected ({r.reason}); no output written"
            r.timings["total"] = time.perf_counter() - t0
            return r
        t = time.perf_counter()
        try:
            payload = self._encode(fr.image, ph.format, ph.info, ph.exif, ph.alpha, r.notes)
        except Exception as exc:
            self._unprotect(r, "not_written")
            r.reason, r.message = "encode_error", f"{dst}: cannot encode the output ({type(exc).__name__}: {exc})"
            return r
        r.timings["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            _photo.write_file(dst, payload, _photo.output_mode(src))
        except OSError as exc:
            self._unprotect(r, "not_written")
            r.reason, r.message = "write_error", f"{dst}: cannot write the output ({exc.strerror or exc})"
            return r
        r.timings["write"] = time.perf_counter() - t
        r.status, r.output = "protected", str(dst)
        if self.metadata == "strip":
            r.notes.append("metadata_stripped")
        r.timings["total"] = time.perf_counter() - t0
        return r

    @staticmethod
    def _unprotect(r: ProtectResult, reason: str) -> None:
        """The output was not written: no face of it counts as protected."""
        for f in r.faces:
            if f.status == "protected":
                f.status, f.reason = "skipped", reason

    def protect_path(self, src: str | os.PathLike, dst: str | os.PathLike) -> ProtectResult:
        """Photo or video by extension (anything else is tried as a photo and fails cleanly if it is none)."""
        return self.protect_video(src, dst) if media_kind(src) == "video" else self.protect_photo(src, dst)

    # ------------------------------------------------------------------ videos

    def protect_video(self, src: str | os.PathLike, dst: str | os.PathLike, progress: bool = False) -> ProtectResult:
        """Protect every frame of a video into ``dst`` (container by extension), timestamps and audio kept."""
        src, dst = Path(src), Path(dst)
        r = ProtectResult(str(src), "video", "failed")
        t0 = time.perf_counter()
        if _same_file(src, dst):
            r.reason = "same_path"
            r.message = f"{src}: the output would replace the input; choose another output folder (-o)"
            return r
        try:
            info = _video.probe(src)
        except _video.VideoError as exc:
            r.reason, r.message = exc.reason, exc.message
            return r
        r.audio = info.has_audio
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
        except OSError as exc:
            r.reason, r.message = "write_error", f"{dst}: cannot write the output ({exc.strerror or exc})"
            return r
        encoded, muxed = tmp_dir / "video.mp4", tmp_dir / f"muxed{dst.suffix}"
        stage: dict[str, float] = {}
        tracker = _VideoTracker(self)
        reader = writer = None
        times = [float(p * info.time_base) for p in info.pts]
        try:
            reader = _video.FrameReader(src, info.width, info.height, tmp_dir / "decode.log")
            writer = _video.FrameWriter(encoded, info.width, info.height, info.mean_fps, codec=self.video_codec,
                                        crf=self.video_crf, log=tmp_dir / "encode.log")
            from tqdm.auto import tqdm

            for k, frame in enumerate(tqdm(reader, total=info.n_frames, desc=src.name, unit="frame",
                                           disable=not progress, leave=False)):
                dt = times[k] - times[k - 1] if 0 < k < len(times) else 1.0 / info.mean_fps
                out, n_prot = tracker.step(frame, stage, max(dt, 1e-3))
                r.frames += 1
                if n_prot:
                    r.frames_protected += 1
                else:
                    r.frames_without_face += 1
                t = time.perf_counter()
                try:
                    writer.write(out)
                except BrokenPipeError:
                    break
                stage["encode"] = stage.get("encode", 0.0) + time.perf_counter() - t
            reader.close()
            if writer.close() != 0:
                raise RuntimeError(f"the encoder failed: {_video._last_line(_read_text(tmp_dir / 'encode.log'))}")
            if r.frames != info.n_frames:
                raise RuntimeError(f"decoded {r.frames} frames, but the first pass found {info.n_frames}")
            t = time.perf_counter()
            tb = info.time_base
            _video.set_mp4_durations(encoded, [d * tb.numerator for d in info.durations], tb.denominator)
            r.notes += _video.mux(encoded, src, muxed, info, self.metadata)
            n_out = _video.count_packets(muxed)
            if n_out != info.n_frames:
                raise RuntimeError(f"the output holds {n_out} frames instead of {info.n_frames}")
            stage["mux"] = time.perf_counter() - t
            os.chmod(muxed, _photo.output_mode(src))
            os.replace(muxed, dst)
        except Exception as exc:
            r.reason = "video_error"
            r.message = f"{src}: {type(exc).__name__}: {_video._last_line(str(exc))}"
            r.frames_protected = 0
            return r
        finally:
            for c in (reader, writer):
                if c is not None:
                    try:
                        c.kill() if isinstance(c, _video.FrameWriter) else c.close()
                    except Exception:
                        pass
            tracker.close()
            shutil.rmtree(tmp_dir, ignore_errors=True)
        r.status, r.output = "protected", str(dst)
        r.timings = dict(stage)
        r.timings["total"] = time.perf_counter() - t0
        r.notes.append(f"fps={info.mean_fps:.4g}")
        if len(set(info.durations[:-1])) > 1:
            r.notes.append("variable_frame_rate")
        r.notes.append(f"detections={tracker.detections}")
        if self.metadata == "strip":
            r.notes.append("metadata_stripped")
        if "truncated" in info.warnings:
            r.notes.append("truncated")
            r.warnings.append(f"the file is cut short: protected its {info.n_frames} decodable frames "
                              f"({info.duration:.2f} s); the rest could not be read")
        elif "decode_errors" in info.warnings:
            r.notes.append("decode_errors")
            r.warnings.append(f"ffmpeg reported damaged data; protected the {info.n_frames} frames it could decode")
        if r.frames_protected == 0:
            r.notes.append("no_face_in_any_frame")
        return r


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _same_file(src: Path, dst: Path) -> bool:
    """Whether writing ``dst`` would replace ``src`` (symlink loops and missing files never raise)."""
    try:
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            return True
    except OSError:
        pass
    return os.path.realpath(src) == os.path.realpath(dst)


@dataclass
class _Track:
    points: np.ndarray
    point_filter: OneEuroFilter
    vertex_filter: OneEuroFilter
    mesh: Any
    lost: bool = False


class _VideoTracker:
    """Per-video state: tracks (smoothed landmarks, smoothed mesh, MediaPipe in video mode)."""

    def __init__(self, prot: Protector) -> None:
        self.p = prot
        self.dt = 0.04
        self.tracks: list[_Track] = []
        self.frame_index = 0
        self.detections = 0

    def _new_mesh(self):
        from mediapipe.python.solutions import face_mesh

        return face_mesh.FaceMesh(static_image_mode=False, refine_landmarks=False, max_num_faces=1,
                                  min_detection_confidence=0.5, min_tracking_confidence=0.5)

    def close(self) -> None:
        for tr in self.tracks:
            tr.mesh.close()
        self.tracks = []

    def _detect(self, frame: np.ndarray, stage: dict[str, float]) -> None:
        t = time.perf_counter()
        dets = self.p.detect(frame)
        stage["detect"] = stage.get("detect", 0.0) + time.perf_counter() - t
        self.detections += 1
        chosen, _, canv = self.p._select(dets, frame, stage, [])
        new_points = [dets[k].points.astype(np.float64) for k in chosen]
        old = self.tracks
        used: set[int] = set()
        tracks = []
        for pts in new_points:
            scale = float(np.linalg.norm(pts[1] - pts[0]))
            best, bd = None, math.inf
            for j, tr in enumerate(old):
                d = float(np.linalg.norm(tr.points.mean(0) - pts.mean(0)))
                if j not in used and d < bd and d < 1.5 * scale:
                    best, bd = j, d
            if best is None:
                f = self.p.smoothing
                tracks.append(_Track(pts, OneEuroFilter(*f), OneEuroFilter(*f), self._new_mesh()))
            else:
                used.add(best)
                tr = old[best]
                tr.points, tr.lost = pts, False
                tracks.append(tr)
        for j, tr in enumerate(old):
            if j not in used:
                tr.mesh.close()
        self.tracks = tracks

    def step(self, frame: np.ndarray, stage: dict[str, float], dt: float | None = None) -> tuple[np.ndarray, int]:
        """Protect one frame shown ``dt`` seconds after the previous one; returns ``(frame out, faces protected)``."""
        if dt is not None:
            self.dt = float(dt)
        if (self.frame_index % self.p.detect_every == 0 or not self.tracks
                or any(tr.lost for tr in self.tracks)):
            self._detect(frame, stage)
        self.frame_index += 1
        if not self.tracks:
            return frame, 0
        verts, Ms, canvases = [], [], []
        for tr in self.tracks:
            pts = tr.point_filter(tr.points, self.dt)
            t = time.perf_counter()
            canvas, M = make_canvas(frame, pts)
            stage["canvas"] = stage.get("canvas", 0.0) + time.perf_counter() - t
            t = time.perf_counter()
            res = tr.mesh.process(canvas)
            stage["mesh"] = stage.get("mesh", 0.0) + time.perf_counter() - t
            if not res.multi_face_landmarks:
                tr.lost = True
                tr.vertex_filter.reset()
                continue
            s = align.CANVAS_SIZE
            a = np.array([(q.x, q.y, q.z) for q in res.multi_face_landmarks[0].landmark[:468]], np.float64)
            v = np.stack([a[:, 0] * s - 0.5, a[:, 1] * s - 0.5, a[:, 2] * s], 1)
            # smooth in image coordinates (the canvas frame itself moves), then back to this canvas
            Minv = align.invert_affine(M)
            scale = math.sqrt(abs(np.linalg.det(M[:, :2])))
            vi = np.concatenate([align.apply_affine(Minv, v[:, :2]), v[:, 2:] / scale], 1)
            vi = tr.vertex_filter(vi, self.dt)
            vc = np.concatenate([align.apply_affine(M, vi[:, :2]), vi[:, 2:] * scale], 1)
            verts.append(vc.astype(np.float32))
            Ms.append(M)
            canvases.append(canvas)
        if not verts:
            return frame, 0
        t = time.perf_counter()
        deltas = self.p.perturbations(np.stack(verts))
        stage["uv_raster"] = stage.get("uv_raster", 0.0) + time.perf_counter() - t
        deltas = self.p.apply_floor(canvases, deltas, stage)
        t = time.perf_counter()
        out = paste_perturbation(frame, list(deltas), Ms, self.p.eps)
        stage["paste"] = stage.get("paste", 0.0) + time.perf_counter() - t
        return out, len(verts)
