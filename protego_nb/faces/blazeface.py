"""Face detection on full-resolution photos and video frames: BlazeFace, and the choice between it and MTCNN.

:class:`BlazeFaceDetector` is MediaPipe's full-range BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond
Neural Face Detection on Mobile GPUs", CVPR-W 2019; ``model_selection=1``, score >= :data:`BLAZEFACE_MIN_SCORE`).
It gives the eyes, nose tip and mouth centre; the two mouth corners are put at the mouth centre -+ 0.4283 x
(eye-to-eye vector), the ratio of the ArcFace template (mouth width / eye distance = 0.857), so that its
answers are the same :class:`~protego_nb.faces.detect.Detection` objects (5 points in MTCNN order) as MTCNN's.
On 8 LFW composites its points were within 0.3-18 px of MTCNN's (eye distance 53-67 px): good enough to place
a canvas, since the mesh decides where the texture lands. Median 5.5 ms vs 40.7 ms for MTCNN on the 24
composites below, every face found by both.

:func:`detect_faces` answers for one image with the detector ``kind``:

* ``"mtcnn"``: MTCNN (:class:`protego_nb.faces.detect.FaceDetector`) on an ``INTER_AREA`` copy whose shorter
  side is ``short_side`` px (360 in the protector; never enlarged), keeping ``prob >= min_prob``; boxes and
  landmarks are mapped back to full resolution. With the protector's ``min_face_size=30`` px there and P/R-Net
  thresholds 0.8/0.8 (O-Net 0.7, then ``min_prob`` 0.9), faces smaller than 1/12 of the shorter side (40 px at
  480p, 90 px at 1080p) are not searched, and the detector's cost no longer grows with the resolution (MTCNN's
  pyramid scales with image area / min face^2). Measured on 640x480 composites of 24 LFW faces (1 torch
  thread, shared 2-core CPU, load ~1.5-2): median 58.7 ms at full resolution with min face 40 and the package
  thresholds (0.6/0.7/0.7), 46.7 ms with 0.8/0.8/0.7, 40.7 ms on the 480x360 copy with min face 30 and
  0.8/0.8/0.7; every face was found in each setting. The landmarks only place the canvas (the mesh, not the 5
  points, decides where the texture lands), so the coarser detection costs no protection;
* ``"blazeface"``: BlazeFace only;
* ``"auto"``: BlazeFace, falling back to MTCNN when BlazeFace finds no usable face (eye distance and box size
  at least :data:`~protego_nb.faces.detect.MIN_EYE_DISTANCE` / :data:`~protego_nb.faces.detect.MIN_BOX_SIZE`),
  so the fast path never loses a photo that MTCNN would find (it can miss a second, harder face in a group
  photo; use ``"mtcnn"`` there).
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .detect import MIN_BOX_SIZE, MIN_EYE_DISTANCE, Detection, FaceDetector

__all__ = ["BLAZEFACE_MIN_SCORE", "DETECTOR_KINDS", "BlazeFaceDetector", "detect_faces", "detect_mtcnn"]

#: Smallest BlazeFace score taken as a face.
BLAZEFACE_MIN_SCORE = 0.6
#: The detector kinds :func:`detect_faces` knows.
DETECTOR_KINDS = ("auto", "mtcnn", "blazeface")
#: Half the mouth width over the eye distance in the ArcFace template: (71.7363 - 41.5493) / 2 / 35.2372.
_MOUTH_HALF = 0.4283


class BlazeFaceDetector:
    """MediaPipe's full-range BlazeFace, loaded on first use; :meth:`detect` gives 5-point detections."""

    def __init__(self, min_score: float = BLAZEFACE_MIN_SCORE) -> None:
        self.min_score = min_score
        self._model: Any = None

    def detect(self, img: np.ndarray) -> list[Detection]:
        """Faces of an RGB ``uint8 [H, W, 3]`` image in its own pixel coordinates, most confident first."""
        if self._model is None:
            from mediapipe.python.solutions import face_detection

            self._model = face_detection.FaceDetection(model_selection=1, min_detection_confidence=self.min_score)
        h, w = img.shape[:2]
        res = self._model.process(np.ascontiguousarray(img))
        out = []
        for d in res.detections or []:
            bb = d.location_data.relative_bounding_box
            k = np.array([[p.x * w - 0.5, p.y * h - 0.5] for p in d.location_data.relative_keypoints[:4]])
            half = _MOUTH_HALF * (k[1] - k[0])  # keypoints: image-left eye, image-right eye, nose tip, mouth
            pts = np.stack([k[0], k[1], k[2], k[3] - half, k[3] + half]).astype(np.float32)
            box = np.array([bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h], np.float32)
            out.append(Detection(box, float(d.score[0]), pts))
        return sorted(out, key=lambda d: -d.prob)


def detect_mtcnn(img: np.ndarray, detector: FaceDetector, short_side: int, min_prob: float) -> list[Detection]:
    """MTCNN's faces with ``prob >= min_prob``, found on a copy of shorter side ``short_side`` (never enlarged),
    in ``img``'s own pixel coordinates."""
    h, w = img.shape[:2]
    s = min(1.0, short_side / min(h, w))
    if s >= 1.0:
        return [d for d in detector.detect([img])[0] if d.prob >= min_prob]
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    k = np.array([w / nw, h / nh])
    out = []
    for d in detector.detect([small])[0]:  # pixel centres: x = (x' + 0.5) * w / nw - 0.5
        if d.prob < min_prob:
            continue
        box = ((d.box.reshape(2, 2) + 0.5) * k - 0.5).reshape(4)
        out.append(Detection(box.astype(np.float32), d.prob, ((d.points + 0.5) * k - 0.5).astype(np.float32)))
    return out


def detect_faces(img: np.ndarray, kind: str, mtcnn: FaceDetector, blazeface: BlazeFaceDetector,
                 short_side: int, min_prob: float) -> list[Detection]:
    """Confident faces of ``img`` with the detector ``kind`` (``"auto"``, ``"mtcnn"`` or ``"blazeface"``, see
    the module docstring), in its own pixel coordinates; ``min_prob`` and ``short_side`` apply to MTCNN."""
    if kind not in DETECTOR_KINDS:
        raise ValueError(f"detector_kind must be 'auto', 'mtcnn' or 'blazeface', got {kind!r}")
    if kind != "mtcnn":
        fast = blazeface.detect(img)
        usable = [d for d in fast if d.eye_distance >= MIN_EYE_DISTANCE and min(d.width, d.height) >= MIN_BOX_SIZE]
        if kind == "blazeface" or usable:
            return fast
    return detect_mtcnn(img, mtcnn, short_side, min_prob)
