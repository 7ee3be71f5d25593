"""Protect photos and videos at full resolution with a user's Privacy Protection Texture (PPT).

:class:`Protector` runs the online stage (``reference/protego_method.md`` section 2) for one image or video
frame (:meth:`Protector.protect_array`):

1. decode (:func:`protego_nb.faces.images.decode_rgb`: EXIF orientation applied, so pixels are upright);
2. detect every face (:func:`protego_nb.faces.blazeface.detect_faces`): ``detector="auto"`` (the default)
   runs BlazeFace and falls back to MTCNN on a copy whose shorter side is ``detect_short_side=360`` px;
   ``"mtcnn"`` and ``"blazeface"`` use one of them (the choice, thresholds and timings are documented there).
   MTCNN is the bottleneck stage; torch should run single-threaded on a loaded machine (``protego-nb protect
   --threads 1``, the default): with 2 threads on a loaded 2-core CPU MTCNN took 0.2-2.5 s per image;
3. choose the faces to protect (``faces="owner"``: the PPT owner's face, see below; ``"all"``: every face);
4. per face: the 224x224 canvas ``make_canvas(img, points) -> (canvas, M)`` (``M`` maps image pixels to canvas
   pixels), its 468-point mesh (MediaPipe), the UV raster, and the perturbation
   ``delta = UVWarp(uv).perturbation(ppt, eps)`` on the canvas (``|delta| <= eps``, zero off the face surface),
   scaled down per face to meet ``ssim_floor`` when one is set;
5. ``delta`` is pasted back onto the image (:func:`protego_nb.protect.paste.paste_perturbation`): only over
   the face, ``out = round(clip(img + 255 * delta, 0, 255))``, so ``|out - img| <= round(255 eps)`` and pixels
   outside every face are bit-identical;
6. saved in the input's format under the same file name, atomically (:mod:`protego_nb.protect.photo_file`).

Which faces (``faces="owner"``, the default): when an image holds one usable face, that face is protected.
With several, each face's canvas is embedded with the owner model (``owner_model`` in the PPT metadata, default
``mobilefacenet``) and compared (cosine) with the owner's reference embedding stored in the PPT metadata
(``owner_embedding``, written by ``protego-nb train``; :mod:`protego_nb.protect.owner`); every face whose
similarity reaches the threshold (:data:`~protego_nb.protect.owner.OWNER_THRESHOLDS`) is protected (the owner
twice in a collage: both), all others are skipped as ``not_owner``; if no face reaches it, the image is
skipped (``no_owner_match``). A PPT without ``owner_embedding`` falls back to the largest face, and the result
says so (note ``owner_unknown_largest_face``). ``faces="all"`` protects every usable face.

Metadata (``metadata=``): ``"strip"`` (default) writes no EXIF/XMP at all (no GPS, camera serials, dates), only
an RGB ICC colour profile when the input had one; ``"keep"`` keeps the EXIF block minus its GPS directory;
``"keep_all"`` keeps the EXIF block with GPS. In every case the EXIF orientation tag is reset to 1, because the
pixels are stored upright. JPEG: quality ``jpeg_quality`` (default 95) with 4:4:4 chroma (no chroma
subsampling, which would blur the colour part of the texture). PNG, TIFF, BMP and WebP are written lossless.
JPEG output re-encodes the whole picture, so its background carries JPEG noise; PNG output keeps it exact.

Images without a usable face are **skipped and not written** (an unprotected copy in the output folder
could be mistaken for a protected one); the result says why.

Videos (:meth:`Protector.protect_video`, :mod:`protego_nb.protect.video_file`): every frame once, with its
timestamp, audio kept; detection every ``detect_every`` frames, faces tracked and their landmarks and meshes
smoothed with a One-Euro filter (``smoothing``; :mod:`protego_nb.protect.tracking`).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from ..faces import align
from ..faces.blazeface import DETECTOR_KINDS, BlazeFaceDetector, detect_faces
from ..faces.canvas import make_canvas
from ..faces.detect import MIN_BOX_SIZE, MIN_EYE_DISTANCE, Detection, FaceDetector
from .inputs import media_kind
from .owner import DEFAULT_OWNER_MODEL, OWNER_THRESHOLDS, owner_similarities, parse_owner_embedding
from .paste import paste_perturbation
from .photo_file import protect_photo
from .results import FaceOutcome, FrameResult, ProtectResult
from .video_file import protect_video

__all__ = ["Protector"]


# ----------------------------------------------------------------------------- the protector


class Protector:
    """Protect photos and videos with one PPT (see the module docstring for every step and option).

    ``texture`` ``[1, 3, T, T]`` and ``meta`` as returned by :func:`protego_nb.protect.texture.load_ppt`
    (or use :meth:`from_file`). ``eps`` defaults to the PPT's ``epsilon`` and may only be lowered. A PPT of
    several textures (``[K, 3, T, T]``) protects each photo with the one :func:`~protego_nb.protect.texture.
    texture_choice` picks from its decoded pixels, and every frame of a video with the one its first frame picks.
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
        if detector_kind not in DETECTOR_KINDS:
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
        self.min_prob = min_prob  # MTCNN's floor; BlazeFace detections use blazeface.BLAZEFACE_MIN_SCORE
        self._blazeface = BlazeFaceDetector()
        self.owner_model = owner_model or str(meta.get("owner_model") or DEFAULT_OWNER_MODEL)
        self.owner_threshold = owner_threshold if owner_threshold is not None else OWNER_THRESHOLDS.get(
            self.owner_model, 0.4)
        self.owner_ref = parse_owner_embedding(meta.get("owner_embedding"), self.owner_model)
        self.jpeg_quality = int(jpeg_quality)
        self.metadata = metadata
        self.video_codec = video_codec
        self.video_crf = int(video_crf)
        self.detect_every = int(detect_every)
        self.smoothing = smoothing
        #: SSIM floor per face: each face's perturbation is scaled down until its canvas meets it
        #: (:mod:`.ssim_floor`); None adds the PPT's perturbation at full strength.
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
        return owner_similarities(self._owner_net, canvases, landmarks, self.owner_ref, self.owner_model,
                                  self.device)

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
        BlazeFace keeps scores ``>= BLAZEFACE_MIN_SCORE`` (:func:`protego_nb.faces.blazeface.detect_faces`)."""
        return detect_faces(img, self.detector_kind, self.detector, self._blazeface, self.detect_short_side,
                            self.min_prob)

    def texture_for(self, key: bytes) -> torch.Tensor:
        """The texture ``[1, 3, T, T]`` that protects the photo or video identified by ``key`` (its decoded pixels):
        the PPT's only texture, or the one :func:`~protego_nb.protect.texture.texture_choice` picks."""
        from .texture import texture_choice, texture_count

        k = texture_count(self.texture)
        if k == 1:
            return self.texture
        i = int(texture_choice([key], k)[0])
        return self.texture[i : i + 1]

    def perturbations(self, vertices: np.ndarray, texture: torch.Tensor | None = None) -> np.ndarray:
        """Canvas-space perturbations ``float32 [n, S, S, 3]`` for meshes ``[n, 468, 3]`` (canvas pixels), with
        ``texture`` (one ``[1, 3, T, T]``; default the PPT's, which must then hold a single texture)."""
        from ..faces.uv import rasterize_uv
        from .texture import UVWarp, select_textures

        uv468, tri = self._uv_tables()
        uvm = rasterize_uv(vertices, tri, uv468, size=align.CANVAS_SIZE, canvas_size=align.CANVAS_SIZE,
                           device=self.device)
        tex = select_textures(self.texture, None) if texture is None else texture
        with torch.no_grad():
            delta = UVWarp.from_uvmap(uvm).perturbation(tex, self.eps)
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
        deltas = self.perturbations(res.vertices[res.ok], self.texture_for(np.ascontiguousarray(img).tobytes()))
        timings["uv_raster"] = time.perf_counter() - t
        deltas = self.apply_floor([canv[k][0] for k in keep], deltas, timings)
        t = time.perf_counter()
        out = paste_perturbation(img, list(deltas), [canv[k][1] for k in keep], self.eps)
        timings["paste"] = time.perf_counter() - t
        for k in keep:
            outcomes[k].status, outcomes[k].reason = "protected", ""
        return FrameResult(out, outcomes, timings, notes)

    # ------------------------------------------------------------------ files

    def protect_photo(self, src: str | os.PathLike, dst: str | os.PathLike) -> ProtectResult:
        """Protect one photo file into ``dst`` (same format); never raises for a bad input (see ``status``).

        See :func:`protego_nb.protect.photo_file.protect_photo`."""
        return protect_photo(self, src, dst)

    def protect_video(self, src: str | os.PathLike, dst: str | os.PathLike, progress: bool = False) -> ProtectResult:
        """Protect every frame of a video into ``dst`` (container by extension), timestamps and audio kept.

        See :func:`protego_nb.protect.video_file.protect_video`."""
        return protect_video(self, src, dst, progress)

    def protect_path(self, src: str | os.PathLike, dst: str | os.PathLike) -> ProtectResult:
        """Photo or video by extension (anything else is tried as a photo and fails cleanly if it is none)."""
        return self.protect_video(src, dst) if media_kind(src) == "video" else self.protect_photo(src, dst)
