"""The detector choice for full-resolution images (protego_nb.faces.blazeface), with stand-in detectors."""

from __future__ import annotations

import numpy as np
import pytest

from protego_nb.faces.blazeface import detect_faces, detect_mtcnn
from protego_nb.faces.detect import Detection


def det(x0: float, y0: float, size: float, prob: float) -> Detection:
    """A face box with eyes at 30 % / 70 % of the width (eye distance 0.4 size)."""
    box = np.array([x0, y0, x0 + size, y0 + size], np.float32)
    pts = np.array([[0.3, 0.4], [0.7, 0.4], [0.5, 0.6], [0.35, 0.8], [0.65, 0.8]], np.float32) * size + [x0, y0]
    return Detection(box, prob, pts.astype(np.float32))


class FakeDetector:
    """Answers the same faces for every image and records the image sizes it was given."""

    def __init__(self, faces: list[Detection]) -> None:
        self.faces, self.seen = faces, []

    def detect(self, images):
        if isinstance(images, np.ndarray):  # BlazeFaceDetector.detect takes one image
            self.seen.append(images.shape[:2])
            return list(self.faces)
        self.seen += [im.shape[:2] for im in images]
        return [list(self.faces) for _ in images]


def test_mtcnn_runs_on_a_reduced_copy_and_maps_back():
    img = np.zeros((720, 960, 3), np.uint8)
    mtcnn = FakeDetector([det(100, 50, 60, 0.99), det(300, 50, 60, 0.5)])
    got = detect_mtcnn(img, mtcnn, short_side=360, min_prob=0.9)
    assert mtcnn.seen == [(360, 480)] and len(got) == 1  # the 0.5 face is below min_prob
    ref = det(100, 50, 60, 0.99)
    assert np.allclose(got[0].box, (ref.box + 0.5) * 2 - 0.5)
    assert np.allclose(got[0].points, (ref.points + 0.5) * 2 - 0.5)
    small = np.zeros((200, 300, 3), np.uint8)  # never enlarged
    assert detect_mtcnn(small, mtcnn, short_side=360, min_prob=0.9)[0].box.tolist() == ref.box.tolist()
    assert mtcnn.seen[-1] == (200, 300)


@pytest.mark.parametrize(("kind", "fast_faces", "expect"), [
    ("auto", [det(10, 10, 80, 0.9)], "fast"),
    ("auto", [det(10, 10, 10, 0.9)], "mtcnn"),  # only a tiny face: fall back
    ("auto", [], "mtcnn"),
    ("blazeface", [], "fast"),
    ("mtcnn", [det(10, 10, 80, 0.9)], "mtcnn"),
])
def test_auto_falls_back_to_mtcnn_only_without_a_usable_fast_face(kind, fast_faces, expect):
    img = np.zeros((240, 320, 3), np.uint8)
    fast, mtcnn = FakeDetector(fast_faces), FakeDetector([det(100, 60, 90, 0.99)])
    got = detect_faces(img, kind, mtcnn, fast, short_side=360, min_prob=0.9)
    assert got == (fast.faces if expect == "fast" else mtcnn.faces)
    assert bool(mtcnn.seen) == (expect == "mtcnn") and bool(fast.seen) == (kind != "mtcnn")
    with pytest.raises(ValueError, match="detector_kind"):
        detect_faces(img, "haar", mtcnn, fast, short_side=360, min_prob=0.9)
