"""MTCNN detection, face choice, canvas geometry, cache and the batch builder.

Every odd file is generated in ``tmp_path`` from real LFW images or synthetic data."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from protego_nb import paths
from protego_nb.faces import align
from protego_nb.faces.canvas import (
    canvas_points_to_image,
    canvas_to_image_transform,
    canvases_to_tensor,
    make_canvas,
)
from protego_nb.faces.detect import Detection, FaceDetector, choose_face
from protego_nb.faces.images import load_rgb
from protego_nb.faces.pipeline import CanvasReport, DetectionCache, build_canvases

NAMES = ["Aaron_Eckhart_0001", "Aaron_Guiel_0001", "Aaron_Patterson_0001", "Aaron_Peirsol_0002",
         "Abba_Eban_0001", "Abdullah_Gul_0003"]


def _lfw(name: str):
    root = paths.lfw_images_dir(check=False)
    p = root / name.rsplit("_", 1)[0] / f"{name}.jpg"
    if not p.is_file():
        pytest.skip(f"LFW image {p} not available (set PROTEGO_DATA_DIR)")
    return p


@pytest.fixture(scope="module")
def detector():
    torch.set_num_threads(1)
    return FaceDetector()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEGO_CACHE_DIR", str(tmp_path / "cache"))


def _first_people(n: int = 32) -> list:
    """The first image of each of the first ``n`` LFW people (alphabetical): a fixed sample."""
    root = paths.lfw_images_dir(check=False)
    if not root.is_dir():
        pytest.skip("LFW not available (set PROTEGO_DATA_DIR)")
    return [sorted(d.glob("*.jpg"))[0] for d in sorted(root.iterdir())[:n]]


@pytest.fixture(scope="module")
def base(detector):
    """Clean LFW canvases built without cache: the reference for the other tests."""
    files = list(dict.fromkeys(_first_people() + [_lfw(n) for n in NAMES]))
    rep = build_canvases(files, detector=detector, cache=False, progress=False)
    assert rep.n_ok == len(files), rep.summary()
    return {c.path: c for c in rep.canvases}


def _fc(base, name):
    return base[str(_lfw(name))]


def test_canvas_geometry_on_lfw(base):
    cs = [base[str(p)] for p in _first_people()]
    lms = np.stack([c.landmarks for c in cs])
    # The least-squares similarity puts the landmarks on the template up to how MTCNN's
    # 5 points differ from the ArcFace template's: on average within 2 px (measured on
    # 300 random LFW images: eyes 1.1, nose 1.7, mouth corners 2.4 px; these 32: 1.9 px).
    offset = np.linalg.norm(lms.mean(0) - align.CANVAS_TEMPLATE, axis=1)
    assert offset.mean() < 2.0 and offset[:2].max() < 2.0 and offset.max() < 3.0, offset
    # every face is close to it (residuals come from pose / expression only)
    assert np.linalg.norm(lms - align.CANVAS_TEMPLATE, axis=2).mean(1).max() < 12.0
    for c in cs:
        assert c.canvas.shape == (224, 224, 3) and c.canvas.dtype == np.uint8
        assert c.landmarks.dtype == np.float32 and c.landmarks.shape == (5, 2)
        np.testing.assert_allclose(c.landmarks, align.apply_affine(c.M, c.src_points), atol=1e-3)
        # inverse transform maps canvas landmarks back onto the detected points
        np.testing.assert_allclose(canvas_points_to_image(c, c.landmarks), c.src_points, atol=1e-3)
        Minv = canvas_to_image_transform(c)
        np.testing.assert_allclose(align.apply_affine(c.M, align.apply_affine(Minv, [[3.0, 7.0]])), [[3, 7]], atol=1e-9)
        assert c.n_faces >= 1 and 0.9 <= c.prob <= 1
        assert len(c.sha256) == 64 and set(c.notes) <= {"several_faces", "grayscale"}
        # the canvas really samples the image through M: compare pixels around the landmarks
        img = load_rgb(c.path).astype(np.float64)
        w, h = c.image_size
        back = cv2.warpAffine(c.canvas, Minv, (w, h), flags=cv2.INTER_LINEAR).astype(np.float64)
        x0, y0 = np.floor(c.src_points.min(0)).astype(int)
        x1, y1 = np.ceil(c.src_points.max(0)).astype(int)
        assert np.abs(back[y0:y1, x0:x1] - img[y0:y1, x0:x1]).mean() < 8


def test_canvases_to_tensor(base):
    cs = list(base.values())[:3]
    x, lm = canvases_to_tensor(cs)
    assert x.shape == (3, 3, 224, 224) and x.dtype == torch.float32
    assert lm.shape == (3, 5, 2) and lm.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[1].permute(1, 2, 0).numpy() * 255, cs[1].canvas, atol=1e-3)
    x0, lm0 = canvases_to_tensor([])
    assert x0.shape == (0, 3, 224, 224) and lm0.shape == (0, 5, 2)


def test_batched_equals_single(detector):
    imgs = [load_rgb(_lfw(n)) for n in NAMES[:4]]
    calls = detector.mtcnn_calls
    batched = detector.detect(imgs)
    assert detector.mtcnn_calls == calls + 1  # one same-size batch
    for img, dets in zip(imgs, batched):
        single = detector.detect([img])[0]
        assert len(single) == len(dets)
        np.testing.assert_allclose(single[0].points, dets[0].points, atol=1e-2)


@pytest.mark.parametrize("orientation,stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)])
def test_exif_rotated_photo_matches_upright(tmp_path, detector, base, orientation, stored):
    src = _lfw(NAMES[0])
    upright = Image.open(src)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"rot{orientation}.jpg"
    upright.transpose(stored).save(p, quality=97, exif=exif.tobytes())
    assert Image.open(p).size == (upright.height, upright.width)
    rep = build_canvases([p], detector=detector, cache=False, progress=False)
    assert rep.n_ok == 1, rep.summary()
    c, ref = rep.canvases[0], _fc(base, NAMES[0])
    assert "exif_rotated" in c.notes and c.image_size == (250, 250)
    # MTCNN is not exactly rotation-equivariant (pyramid grid, JPEG re-encoding): ~2 px
    assert np.abs(c.src_points - ref.src_points).mean() < 1.0
    assert np.abs(c.src_points - ref.src_points).max() < 2.5
    assert np.abs(c.landmarks - ref.landmarks).max() < 2.5
    assert np.abs(c.canvas.astype(int) - ref.canvas.astype(int)).mean() < 6


def test_tiny_face(tmp_path, detector):
    img = load_rgb(_lfw(NAMES[0]))
    small = cv2.resize(img, None, fx=0.2, fy=0.2, interpolation=cv2.INTER_AREA)  # face box ~22 px
    big = np.full((200, 200, 3), 128, np.uint8)
    big[75 : 75 + small.shape[0], 75 : 75 + small.shape[1]] = small
    Image.fromarray(big).save(tmp_path / "tiny.png")
    rep = build_canvases([tmp_path / "tiny.png"], detector=detector, cache=False, progress=False)
    assert rep.counts == {"tiny_face": 1}, rep.summary()
    assert "tiny.png" in rep.failures[0].message and "too small" in rep.failures[0].message


def test_very_large_image(tmp_path, detector, base):
    img = load_rgb(_lfw(NAMES[0]))
    up = cv2.resize(img, (2000, 2000), interpolation=cv2.INTER_CUBIC)
    big = np.full((4000, 6000, 3), 90, np.uint8)
    big[1000:3000, 2000:4000] = up
    p = tmp_path / "big.jpg"
    Image.fromarray(big).save(p, quality=90)
    rep = build_canvases([p], detector=detector, cache=False, progress=False)
    assert rep.n_ok == 1, rep.summary()
    c, ref = rep.canvases[0], _fc(base, NAMES[0])
    assert c.image_size == (6000, 4000) and "downscaled_for_detection" in c.notes
    # points in original 6000x4000 pixels: the LFW points scaled by 8 and shifted
    expected = (ref.src_points + 0.5) * 8 - 0.5 + [2000, 1000]
    assert np.abs(c.src_points - expected).max() < 8 * 2.5
    assert np.abs(c.landmarks - ref.landmarks).max() < 3.0
    assert np.abs(c.canvas.astype(int) - ref.canvas.astype(int)).mean() < 8


def test_make_canvas_strong_downscale_is_exact_and_antialiased():
    rng = np.random.default_rng(0)
    pts = align.CANVAS_TEMPLATE * 10 + [300.0, 200.0]  # face 10x larger than the canvas
    stripes = np.zeros((3000, 3000, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-px stripes: aliasing shows up as a strong pattern
    canvas, M = make_canvas(stripes, pts + rng.normal(0, 0.5, pts.shape))
    assert abs(np.sqrt(np.linalg.det(M[:, :2])) - 0.1) < 0.01
    assert abs(canvas.mean() - 127.5) < 3 and canvas.std() < 6  # box-filtered to grey
    # M is the exact original -> canvas map even though a shrunken copy was warped
    img = np.zeros((3000, 3000, 3), np.uint8)
    cv2.circle(img, (1000, 900), 40, (255, 255, 255), -1)
    canvas, M = make_canvas(img, pts)
    cx, cy = align.apply_affine(M, [[1000, 900]])[0]
    ys, xs = np.nonzero(canvas[..., 0] > 127)
    assert abs(xs.mean() - cx) < 0.5 and abs(ys.mean() - cy) < 0.5


def test_make_canvas_border_modes():
    img = np.full((60, 60, 3), 200, np.uint8)
    pts = align.CANVAS_TEMPLATE * 0.25 - 20  # face at the top-left corner: the canvas sees outside the image
    c0, M = make_canvas(img, pts)
    c1, M1 = make_canvas(img, pts, border="replicate")
    np.testing.assert_array_equal(M, M1)
    assert c0[0, 0].tolist() == [0, 0, 0] and c1[0, 0].tolist() == [200, 200, 200]
    assert c0[-1, -1].tolist() == c1[-1, -1].tolist() == [200, 200, 200]
    with pytest.raises(ValueError, match="border"):
        make_canvas(img, pts, border="wrap")


def _det(x, y, s, prob=0.99):
    box = np.array([x - s / 2, y - s / 2, x + s / 2, y + s / 2], np.float32)
    pts = np.array([[x - s * 0.2, y - s * 0.1], [x + s * 0.2, y - s * 0.1], [x, y + s * 0.05],
                    [x - s * 0.15, y + s * 0.25], [x + s * 0.15, y + s * 0.25]], np.float32)
    return Detection(box, prob, pts)


def test_choose_face_policies():
    centre, big_edge, small_centre = _det(200, 150, 80), _det(60, 60, 110), _det(205, 150, 40)
    size = (400, 300)
    assert choose_face([big_edge, centre], size).detection is centre  # central: nearest the centre
    assert choose_face([big_edge, centre], size, policy="largest").detection is big_edge
    # a face less than half the size of the largest is never the "central" subject
    ch = choose_face([big_edge, small_centre], size)
    assert ch.detection is big_edge and ch.n_faces == 2
    r = choose_face([big_edge, centre], size, policy="reject")
    assert r.detection is None and r.reason == "several_faces" and r.n_faces == 2
    assert choose_face([centre], size, policy="reject").detection is centre
    assert choose_face([], size).reason == "no_face"
    low = choose_face([_det(200, 150, 80, prob=0.8)], size)
    assert low.reason == "low_confidence" and "0.800" in low.message
    # low-probability faces do not count
    assert choose_face([centre, _det(300, 150, 80, prob=0.5)], size, policy="reject").n_faces == 1
    tiny = choose_face([_det(200, 150, 20)], size)
    assert tiny.reason == "tiny_face" and "eye distance" in tiny.message
    with pytest.raises(ValueError, match="policy"):
        choose_face([centre], size, policy="random")


def test_several_faces_side_by_side(tmp_path, detector, base):
    a, b = load_rgb(_lfw(NAMES[0])), load_rgb(_lfw(NAMES[1]))
    img = np.full((250, 750, 3), 100, np.uint8)
    img[:, 250:500] = a  # subject in the middle
    img[:, 500:750] = b  # bystander on the right
    p = tmp_path / "two.png"
    Image.fromarray(img).save(p)
    rep = build_canvases([p], detector=detector, cache=False, progress=False)
    assert rep.n_ok == 1
    c = rep.canvases[0]
    assert c.n_faces == 2 and "several_faces" in c.notes and rep.notes["several_faces"] == 1
    np.testing.assert_allclose(c.src_points - [250, 0], _fc(base, NAMES[0]).src_points, atol=1.5)
    # "largest" may pick either, "reject" must fail
    rej = build_canvases([p], detector=detector, policy="reject", cache=False, progress=False)
    assert rej.counts == {"several_faces": 1} and "two.png" in rej.failures[0].message


def test_mixed_batch_keeps_going(tmp_path, detector):
    good = _lfw(NAMES[2])
    (tmp_path / "text.jpg").write_text("hello")
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (250, 250, 3), dtype=np.uint8)).save(
        tmp_path / "noise.png")
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    Image.fromarray(np.full((250, 250), 90, np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(np.full((10, 14, 3), 90, np.uint8)).save(tmp_path / "speck.png")  # below MTCNN's window
    files = [good, tmp_path / "missing.jpg", tmp_path / "text.jpg", tmp_path / "cut.jpg",
             tmp_path / "noise.png", tmp_path / "flat.png", good, tmp_path / "gray.png", tmp_path / "speck.png"]
    rep = build_canvases(files, detector=detector, cache=False, batch_size=3, progress=False)
    assert isinstance(rep, CanvasReport)
    assert rep.n_images == 9 and rep.n_ok == 2
    assert rep.counts == {"missing": 1, "not_an_image": 1, "corrupt": 1, "no_face": 4}, rep.summary()
    by_path = {f.path: f for f in rep.failures}
    for name, reason in [("missing.jpg", "missing"), ("text.jpg", "not_an_image"), ("cut.jpg", "corrupt"),
                         ("flat.png", "no_face")]:
        f = by_path[str(tmp_path / name)]
        assert f.reason == reason and name in f.message
    s = rep.summary()
    assert "no_face" in s and "images/s" in s and "total" in s


def test_detector_error_is_isolated(tmp_path, detector, monkeypatch):
    a = load_rgb(_lfw(NAMES[0]))
    Image.fromarray(a).save(tmp_path / "a.png")
    marked = a.copy()
    marked[0, 0] = (1, 2, 3)
    Image.fromarray(marked).save(tmp_path / "boom.png")
    real = FaceDetector._run_mtcnn

    def flaky(self, batch):
        if any((im[0, 0] == (1, 2, 3)).all() for im in batch):
            raise RuntimeError("simulated MTCNN failure")
        return real(self, batch)

    monkeypatch.setattr(FaceDetector, "_run_mtcnn", flaky)
    rep = build_canvases([tmp_path / "a.png", tmp_path / "boom.png"], detector=detector, progress=False)
    assert rep.n_ok == 1 and rep.counts == {"detector_error": 1}
    assert "boom.png" in rep.failures[0].message and "simulated" in rep.failures[0].message
    with pytest.raises(RuntimeError, match="simulated"):
        detector.detect([marked])
    # errors are not cached: the next run tries again
    monkeypatch.setattr(FaceDetector, "_run_mtcnn", real)
    again = build_canvases([tmp_path / "boom.png"], detector=detector, progress=False)
    assert again.n_ok == 1 and again.cache_hits == 0


def test_cache_hit_skips_mtcnn_and_is_identical(tmp_path, detector, monkeypatch):
    (tmp_path / "text.jpg").write_text("not an image")
    Image.fromarray(np.full((250, 250, 3), 128, np.uint8)).save(tmp_path / "flat.png")
    files = [_lfw(n) for n in NAMES[:3]] + [tmp_path / "text.jpg", tmp_path / "flat.png"]
    calls = detector.mtcnn_calls
    first = build_canvases(files, detector=detector, progress=False)
    assert first.mtcnn_calls >= 1 and detector.mtcnn_calls > calls and first.cache_hits == 0
    root = paths.cache_dir("detections", detector.settings_hash)
    assert root.is_relative_to(tmp_path / "cache")
    recs = sorted(p for p in root.rglob("*.json") if p.name != "settings.json")
    assert len(recs) == 5  # 3 faces + 1 bad file + 1 no-face image, all cached
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]  # no temp files left
    assert json.loads((root / "settings.json").read_text())["min_face_size"] == 20

    def boom(self, batch):
        raise AssertionError("MTCNN must not run on a cache hit")

    real = FaceDetector._run_mtcnn

    monkeypatch.setattr(FaceDetector, "_run_mtcnn", boom)
    second = build_canvases(files, detector=FaceDetector(), progress=False)
    assert second.mtcnn_calls == 0 and second.cache_hits == 5  # the text file is a hit too
    assert second.counts == first.counts == {"not_an_image": 1, "no_face": 1}
    for c1, c2 in zip(first.canvases, second.canvases):
        assert c1.path == c2.path and c1.sha256 == c2.sha256
        np.testing.assert_array_equal(c1.canvas, c2.canvas)
        np.testing.assert_array_equal(c1.landmarks, c2.landmarks)
        np.testing.assert_array_equal(c1.M, c2.M)
        assert c1.prob == c2.prob and c1.notes == c2.notes
    # same bytes under another name: still a hit; a damaged record is a miss, not a crash
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(files[0].read_bytes())
    assert build_canvases([copy], detector=FaceDetector(), progress=False).cache_hits == 1
    sha0 = hashlib.sha256(files[0].read_bytes()).hexdigest()
    (root / sha0[:2] / f"{sha0}.json").write_text("{trunc")
    sha1 = hashlib.sha256(files[1].read_bytes()).hexdigest()
    rec1 = root / sha1[:2] / f"{sha1}.json"
    rec1.write_text(json.dumps({**json.loads(rec1.read_text()), "image_size": [1, 1]}))  # stale record
    monkeypatch.setattr(FaceDetector, "_run_mtcnn", real)
    third = build_canvases(files, detector=FaceDetector(), progress=False)
    assert third.cache_hits == 3 and third.mtcnn_calls == 1 and third.n_ok == 3
    np.testing.assert_array_equal(third.canvases[1].landmarks, first.canvases[1].landmarks)
    assert json.loads(rec1.read_text())["image_size"] == [250, 250]  # repaired


def test_settings_change_cache_key():
    a, b = FaceDetector(), FaceDetector(min_face_size=40)
    assert a.settings_hash != b.settings_hash
    assert a.settings_hash == FaceDetector(min_prob=0.5, batch_size=4).settings_hash  # choice-only settings
    assert isinstance(DetectionCache.for_detector(a).root.name, str)
