"""Full-resolution protection of photos and videos (protego_nb.protect.media and the modules it uses: owner
matching, paste-back, input collection, tracking)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protego_nb import paths
from protego_nb.faces import images
from protego_nb.protect import inputs, media, owner, paste, texture, tracking

EPS = 16 / 255
OWNER = "Aaron_Peirsol"
OTHER = ("Aaron_Eckhart", 1)


def lfw_img(name: str, k: int) -> np.ndarray:
    p = paths.lfw_images_dir(check=False) / name / f"{name}_{k:04d}.jpg"
    if not p.is_file():
        pytest.skip("LFW not available")
    return images.load_rgb(p)


def frame(face: np.ndarray, size=(480, 640), at=(100, 200), fill=120) -> np.ndarray:
    out = np.full((*size, 3), fill, np.uint8)
    y, x = at
    out[y : y + face.shape[0], x : x + face.shape[1]] = face
    return out


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ppt_meta(tmp_path_factory) -> tuple[torch.Tensor, dict]:
    """A random PPT whose metadata holds the owner's mobilefacenet reference (3 photos of OWNER)."""
    from protego_nb.faces.canvas import canvases_to_tensor
    from protego_nb.faces.pipeline import build_canvases
    from protego_nb.models import zoo

    d = tmp_path_factory.mktemp("owner")
    for k in (1, 2, 3):
        Image.fromarray(lfw_img(OWNER, k)).save(d / f"{k}.png")
    rep = build_canvases(sorted(d.glob("*.png")), cache=False, progress=False)
    assert len(rep.canvases) == 3
    x, lm = canvases_to_tensor(rep.canvases)
    ref = owner.owner_embedding(zoo.load("mobilefacenet"), x, lm)
    tex = texture.init_texture(EPS, torch.Generator().manual_seed(3))
    path = texture.save_ppt(d / "me.ppt", tex, {"epsilon": EPS, "owner_model": "mobilefacenet",
                                                 "owner_embedding": ref.round(6).tolist()})
    return texture.load_ppt(path)


@pytest.fixture(scope="module")
def prot(ppt_meta) -> media.Protector:
    return media.Protector(*ppt_meta)


def test_paste_rounds_bounds_and_leaves_the_rest():
    img = np.full((60, 80, 3), 100, np.uint8)
    img[0, 0] = 255
    delta = np.zeros((20, 20, 3), np.float32)
    delta[5:15, 5:15, 0] = 0.6 / 255  # rounds up to +1 (truncation would give 0)
    delta[5:15, 5:15, 1] = -0.6 / 255  # rounds to -1
    delta[5:15, 5:15, 2] = 1.0  # far above the bound: clipped to +eps
    M = np.array([[1.0, 0, -30], [0, 1.0, -20]])  # image (30 + u, 20 + v) -> canvas (u, v)
    out = paste.paste_perturbation(img, [delta], [M], eps=EPS)
    diff = out.astype(int) - img
    assert diff[27, 37].tolist() == [1, -1, 16]
    assert np.abs(diff).max() <= 16
    changed = np.abs(diff).max(-1) > 0
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 24 and ys.max() <= 35 and xs.min() >= 34 and xs.max() <= 45
    assert out[0, 0].tolist() == [255, 255, 255]


def test_one_euro_filter_smooths_jitter_and_follows_steps():
    rng = np.random.default_rng(0)
    f = tracking.OneEuroFilter(min_cutoff=1.0, beta=0.02)
    still = [f(np.array([100.0, 50.0]) + rng.normal(0, 1.0, 2), 1 / 30) for _ in range(200)]
    assert np.std(np.array(still)[50:], axis=0).max() < 0.5  # raw jitter std is 1.0
    for _ in range(60):
        y = f(np.array([200.0, 50.0]), 1 / 30)
    assert abs(y[0] - 200.0) < 1.0


@pytest.mark.parametrize("kind", ["auto", "mtcnn"])
def test_photo_png_eps_bound_and_background_unchanged(prot, tmp_path, kind):
    prot = media.Protector(prot.texture, prot.meta, detector=prot.detector, detector_kind=kind)
    img = frame(lfw_img(OWNER, 4))
    Image.fromarray(img).save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    r = prot.protect_photo(tmp_path / "a.png", tmp_path / "out" / "a.png")
    assert r.status == "protected", r.message
    assert [f.status for f in r.faces] == ["protected"]
    with Image.open(r.output) as im:
        assert im.format == "PNG" and im.size == (640, 480)
    out = images.load_rgb(r.output)
    diff = np.abs(out.astype(int) - img)
    assert diff.max() <= 16 and diff.max() >= 8  # bounded by 255 eps, and really perturbed
    changed = diff.max(-1) > 0
    assert changed.sum() > 3000
    x0, y0, x1, y1 = r.faces[0].box
    ys, xs = np.nonzero(changed)
    w, h = x1 - x0, y1 - y0  # the face surface lies around the MTCNN box
    assert xs.min() > x0 - 0.5 * w and xs.max() < x1 + 0.5 * w and ys.min() > y0 - 0.8 * h and ys.max() < y1 + 0.5 * h
    assert (out[:90] == img[:90]).all() and (out[:, :190] == img[:, :190]).all()  # background bit-identical
    assert set(r.timings) >= {"decode", "detect", "mesh", "uv_raster", "paste", "encode", "total"}
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_jpeg_keeps_format_size_and_strips_gps_by_default(prot, tmp_path):
    img = frame(lfw_img(OWNER, 4), size=(400, 520), at=(60, 130))
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0)}
    Image.fromarray(img).save(tmp_path / "b.jpg", quality=97, exif=exif.tobytes())
    for metadata, make, gps in (("strip", None, False), ("keep", "TestCam", False), ("keep_all", "TestCam", True)):
        p = media.Protector(prot.texture, prot.meta, metadata=metadata, detector=prot.detector)
        dst = tmp_path / f"{metadata}.jpg"
        r = p.protect_photo(tmp_path / "b.jpg", dst)
        assert r.status == "protected", r.message
        with Image.open(dst) as im:
            assert im.format == "JPEG" and im.size == (520, 400)
            ex = im.getexif()
            assert ex.get(0x010F) == make
            assert (0x8825 in ex) == gps
            assert ex.get(0x0112, 1) == 1
    out = images.load_rgb(tmp_path / "keep.jpg")
    assert np.abs(out.astype(int) - img).max() <= 16 + 8  # eps plus JPEG (q95, 4:4:4) noise


def test_exif_orientation_is_honoured(prot, tmp_path):
    upright = frame(lfw_img(OWNER, 4), size=(400, 320), at=(70, 35))
    stored = np.ascontiguousarray(np.rot90(upright, k=1))  # pixels stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    Image.fromarray(stored).save(tmp_path / "r.png", exif=exif.tobytes())
    assert (images.load_rgb(tmp_path / "r.png") == upright).all()
    r = media.Protector(prot.texture, prot.meta, metadata="keep", detector=prot.detector).protect_photo(
        tmp_path / "r.png", tmp_path / "r_out.png")
    assert r.status == "protected", r.message
    with Image.open(tmp_path / "r_out.png") as im:
        assert im.size == (320, 400) and im.getexif().get(0x0112, 1) == 1
    out = images.load_rgb(tmp_path / "r_out.png")
    assert np.abs(out.astype(int) - upright).max() <= 16 and (out != upright).any()


def _two_faces() -> np.ndarray:
    img = np.full((300, 560, 3), 110, np.uint8)
    img[25:275, 15:265] = lfw_img(OWNER, 4)
    img[25:275, 295:545] = lfw_img(*OTHER)
    return img


@pytest.mark.parametrize("kind", ["auto", "mtcnn"])
def test_owner_selection_changes_only_the_owner(prot, tmp_path, kind):
    prot = media.Protector(prot.texture, prot.meta, detector=prot.detector, detector_kind=kind)
    img = _two_faces()
    Image.fromarray(img).save(tmp_path / "two.png")
    r = prot.protect_photo(tmp_path / "two.png", tmp_path / "two_out.png")
    assert r.status == "protected", r.message
    by_side = sorted(r.faces, key=lambda f: f.box[0])
    assert [f.status for f in by_side] == ["protected", "skipped"]
    assert by_side[1].reason == "not_owner"
    assert by_side[0].similarity > owner.OWNER_THRESHOLDS["mobilefacenet"] > by_side[1].similarity
    out = images.load_rgb(tmp_path / "two_out.png")
    assert (out[:, 280:] == img[:, 280:]).all()  # the other person's half is untouched
    assert (out[:, :280] != img[:, :280]).any()

    both = media.Protector(prot.texture, prot.meta, faces="all", detector=prot.detector,
                          detector_kind=kind).protect_array(img)
    assert both.n_protected == 2
    assert (both.image[:, 280:] != img[:, 280:]).any() and np.abs(both.image.astype(int) - img).max() <= 16

    meta = {k: v for k, v in prot.meta.items() if k != "owner_embedding"}
    fb = media.Protector(prot.texture, meta, detector=prot.detector, detector_kind=kind).protect_array(img)
    assert fb.n_protected == 1 and "owner_unknown_largest_face" in fb.notes


def test_bad_inputs_are_reported_never_written(prot, tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not a picture\n")
    good = tmp_path / "ok.jpg"
    Image.fromarray(frame(lfw_img(OWNER, 4))).save(good, quality=95)
    (tmp_path / "cut.jpg").write_bytes(good.read_bytes()[:2000])
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "noface.png")
    out = tmp_path / "out"
    out.mkdir()
    res = {n: prot.protect_photo(tmp_path / n, out / n) for n in ("notes.jpg", "cut.jpg", "noface.png", "gone.png")}
    assert (res["notes.jpg"].status, res["notes.jpg"].reason) == ("failed", "not_an_image")
    assert (res["cut.jpg"].status, res["cut.jpg"].reason) == ("failed", "corrupt")
    assert (res["noface.png"].status, res["noface.png"].reason) == ("skipped", "no_face")
    assert (res["gone.png"].status, res["gone.png"].reason) == ("failed", "missing")
    assert all(str(tmp_path / n) in r.message for n, r in res.items())
    assert list(out.iterdir()) == []
    same = prot.protect_photo(good, good)
    assert same.status == "failed" and same.reason == "same_path"


def test_expand_inputs(tmp_path):
    for n in ("b.jpg", "a.PNG", "c.mp4", "notes.txt", ".hidden.jpg"):
        (tmp_path / n).write_bytes(b"x")
    files, ignored = inputs.expand_inputs([tmp_path, tmp_path / "notes.txt"])
    assert [f.name for f in files] == ["a.PNG", "b.jpg", "c.mp4", "notes.txt"]
    assert [f.name for f in ignored] == ["notes.txt"]


def _make_video(path: Path, frames: list[np.ndarray], fps: int, audio: bool) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    silent = path.with_name("silent.mkv")
    wr = imageio_ffmpeg.write_frames(str(silent), (w, h), fps=fps, codec="libx264rgb", pix_fmt_out="rgb24",
                                     quality=None, macro_block_size=1, output_params=["-qp", "0"])
    wr.send(None)
    for f in frames:
        wr.send(f)
    wr.close()
    cmd = [exe, "-y", "-v", "error", "-i", str(silent)]
    if audio:
        cmd += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={len(frames) / fps}", "-c:a", "aac"]
    subprocess.run(cmd + ["-c:v", "copy", str(path)], check=True)


def _read_video(path: Path) -> tuple[dict, list[np.ndarray]]:
    import imageio_ffmpeg

    rd = imageio_ffmpeg.read_frames(str(path))
    meta = next(rd)
    w, h = meta["size"]
    return meta, [np.frombuffer(b, np.uint8).reshape(h, w, 3).copy() for b in rd]


def test_video_keeps_every_frame_and_the_audio(ppt_meta, prot, tmp_path):
    faces = [lfw_img(OWNER, k) for k in (4, 4, 4)]
    frames = []
    for i in range(9):
        f = np.full((240, 320, 3), 90, np.uint8)
        if i not in (3, 7):  # two frames without a face
            f[:, 35 + i : 285 + i] = faces[i % 3][5:245]  # the face moves 1 px per frame
        frames.append(f)
    src = tmp_path / "clip.mkv"
    _make_video(src, frames, fps=12, audio=True)
    p = media.Protector(*ppt_meta, video_codec="lossless", detect_every=3, detector=prot.detector)
    r = p.protect_video(src, tmp_path / "out.mkv")
    assert r.status == "protected", r.message
    assert (r.frames, r.frames_protected, r.frames_without_face) == (9, 7, 2)
    assert r.audio is True
    meta, out = _read_video(tmp_path / "out.mkv")
    assert meta["fps"] == 12 and meta["size"] == (320, 240) and meta.get("audio_codec")
    assert len(out) == 9
    for i, (a, b) in enumerate(zip(out, frames)):
        d = np.abs(a.astype(int) - b).max()
        if i in (3, 7):
            assert d == 0  # face-less frames pass through (lossless codec: bit-identical)
        else:
            assert 8 <= d <= 16
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


def test_video_without_audio_and_not_a_video(prot, tmp_path):
    frames = [np.full((64, 96, 3), 40 * i, np.uint8) for i in range(4)]
    src = tmp_path / "plain.mkv"
    _make_video(src, frames, fps=5, audio=False)
    p = media.Protector(prot.texture, prot.meta, video_codec="lossless", detector=prot.detector)
    r = p.protect_video(src, tmp_path / "o.mkv")
    assert (r.status, r.frames, r.frames_without_face, r.audio) == ("protected", 4, 4, False)
    assert [(a == b).all() for a, b in zip(_read_video(tmp_path / "o.mkv")[1], frames)] == [True] * 4
    (tmp_path / "fake.mp4").write_text(json.dumps({"not": "a video"}))
    bad = p.protect_video(tmp_path / "fake.mp4", tmp_path / "fake_out.mp4")
    assert bad.status == "failed" and bad.reason == "not_a_video" and "fake.mp4" in bad.message
    assert not (tmp_path / "fake_out.mp4").exists()
    (tmp_path / "blocker").write_text("a file where the output folder would be")
    nowhere = p.protect_video(src, tmp_path / "blocker" / "dir.mkv")
    assert nowhere.status == "failed" and nowhere.reason == "write_error"


def test_blazeface_detector_protects_within_the_bound(prot):
    img = frame(lfw_img(OWNER, 4))
    fast = media.Protector(prot.texture, prot.meta, detector_kind="blazeface")
    dets = fast.detect(img)
    ref = media.Protector(prot.texture, prot.meta, detector=prot.detector, detector_kind="mtcnn").detect(img)[0]
    assert len(dets) == 1 and np.abs(dets[0].points - ref.points).max() < 0.3 * ref.eye_distance
    r = fast.protect_array(img)
    assert r.n_protected == 1
    diff = np.abs(r.image.astype(int) - img)
    assert 8 <= diff.max() <= 16 and (r.image[:90] == img[:90]).all()
    with pytest.raises(ValueError, match="detector_kind"):
        media.Protector(prot.texture, prot.meta, detector_kind="haar")


def test_invalid_owner_embedding_is_refused(prot):
    meta = dict(prot.meta, owner_embedding=json.dumps([0.1, 0.2]))
    with pytest.raises(ValueError, match="192 finite numbers"):
        media.Protector(prot.texture, meta)
    with pytest.raises(ValueError, match="only UV-mode"):
        media.Protector(prot.texture, dict(prot.meta, mode="flat"))
    with pytest.raises(ValueError, match="eps"):
        media.Protector(prot.texture, prot.meta, eps=0.5)


# ----------------------------------------------------------------------------- hostile-input regressions


def test_tiff_with_exif_and_gps_under_keep_metadata(prot, tmp_path):
    img = frame(lfw_img(OWNER, 4))
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 29.0)}
    Image.fromarray(img).save(tmp_path / "g.tif", exif=exif.tobytes())
    for metadata in ("keep", "keep_all"):
        p = media.Protector(prot.texture, prot.meta, metadata=metadata, detector=prot.detector)
        r = p.protect_photo(tmp_path / "g.tif", tmp_path / f"{metadata}.tif")
        assert r.status == "protected", r.message
        with Image.open(tmp_path / f"{metadata}.tif") as im:
            assert im.format == "TIFF"
            ex = im.getexif()
            assert ex.get(0x010F) == "TestCam" and 0x8825 not in ex  # libtiff cannot write GPS back: never kept
    assert "gps_not_writable_in_tiff" in r.notes


def test_rgba_keeps_its_alpha_channel(prot, tmp_path):
    rgb = frame(lfw_img(OWNER, 4))
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0
    alpha[:50] = 128
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "t.png")
    r = prot.protect_photo(tmp_path / "t.png", tmp_path / "t_out.png")
    assert r.status == "protected", r.message
    assert "alpha_kept" in r.notes and "alpha_composited" not in r.notes
    with Image.open(tmp_path / "t_out.png") as im:
        assert im.mode == "RGBA"
        out = np.asarray(im)
    assert (out[..., 3] == alpha).all()
    diff = np.abs(out[..., :3].astype(int) - rgb)
    assert 8 <= diff.max() <= 16 and (out[:, :100, :3] == rgb[:, :100]).all()


def test_owner_twice_in_a_collage_both_protected(prot, tmp_path):
    img = np.full((300, 560, 3), 110, np.uint8)
    img[25:275, 15:265] = lfw_img(OWNER, 4)
    img[25:275, 295:545] = lfw_img(OWNER, 3)
    res = prot.protect_array(img)
    sims = [f.similarity for f in res.faces]
    assert len(res.faces) == 2 and min(sims) >= owner.OWNER_THRESHOLDS["mobilefacenet"], sims
    assert res.n_protected == 2
    assert (res.image[:, 280:] != img[:, 280:]).any() and (res.image[:, :280] != img[:, :280]).any()
    Image.fromarray(img).save(tmp_path / "c.png")
    r = prot.protect_photo(tmp_path / "c.png", tmp_path / "c_out.png")
    assert r.status == "protected" and len(r.warnings) == 1 and "2 faces" in r.warnings[0]
    assert r.warnings[0].count("owner similarity") == 2


def test_group_photo_says_which_face_was_protected(prot, tmp_path):
    Image.fromarray(_two_faces()).save(tmp_path / "two.png")
    r = prot.protect_photo(tmp_path / "two.png", tmp_path / "two_out.png")
    assert r.status == "protected"
    (w,) = r.warnings
    assert w.startswith("2 faces") and "protected #1" in w and "left #2" in w and "not_owner" in w


def test_write_error_counts_no_face_and_mode_follows_input(prot, tmp_path):
    src = tmp_path / "a.png"
    Image.fromarray(frame(lfw_img(OWNER, 4))).save(src)
    os.chmod(src, 0o644)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = prot.protect_photo(src, blocker / "a.png")
    assert r.status == "failed" and r.reason == "write_error"
    assert r.faces and not [f for f in r.faces if f.status == "protected"]
    old = os.umask(0o022)
    try:
        ok = prot.protect_photo(src, tmp_path / "out.png")
    finally:
        os.umask(old)
    assert ok.status == "protected" and (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644


def test_malformed_owner_embedding_names_the_field(prot):
    with pytest.raises(ValueError, match="owner_embedding is not a JSON list"):
        media.Protector(prot.texture, dict(prot.meta, owner_embedding="[0.1, 0.2"))


def test_symlink_loop_and_same_path_never_raise(prot, tmp_path):
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    r = prot.protect_photo(loop, tmp_path / "out" / "loop.jpg")
    assert r.status == "failed" and r.reason == "unreadable" and "loop.jpg" in r.message
    good = tmp_path / "g.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    same = prot.protect_photo(good, tmp_path / "." / "g.png")
    assert same.reason == "same_path" and "choose another output folder" in same.message


def test_collect_inputs_recursive_links_and_empty_folders(tmp_path):
    (tmp_path / "top.jpg").write_bytes(b"x")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "s.png").write_bytes(b"x")
    (tmp_path / "sub" / "deeper" / "d.mp4").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.jpg").write_bytes(b"x")  # the output folder is never searched
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    flat = inputs.collect_inputs([tmp_path], exclude=tmp_path / "out")
    assert [str(f.rel) for f in flat.files] == ["loop.jpg", "top.jpg"] and flat.broken_links
    deep = inputs.collect_inputs([tmp_path], recursive=True, exclude=tmp_path / "out")
    assert sorted(str(f.rel) for f in deep.files) == ["loop.jpg", "sub/deeper/d.mp4", "sub/s.png", "top.jpg"]
    only_sub = tmp_path / "only_sub"
    (only_sub / "inner").mkdir(parents=True)
    (only_sub / "inner" / "x.jpg").write_bytes(b"x")
    got = inputs.collect_inputs([only_sub])
    assert not got.files and got.empty_folders == {str(only_sub): 1}
    twice = inputs.collect_inputs([tmp_path / "top.jpg", tmp_path / "top.jpg"])
    assert len(twice.files) == 1


def test_ssim_floor_scales_each_face_until_its_canvas_meets_it(prot):
    from protego_nb.faces import mesh
    from protego_nb.protect.ssim import per_image_ssim

    img = frame(lfw_img(OWNER, 4))
    strict = media.Protector(prot.texture, prot.meta, detector=prot.detector, ssim_floor=0.99)
    full, floored = prot.protect_array(img), strict.protect_array(img)
    assert prot.ssim_floor is None and "ssim_floor" not in full.timings and "ssim_floor" in floored.timings
    d_full = np.abs(full.image.astype(int) - img)
    d_floor = np.abs(floored.image.astype(int) - img)
    assert 0 < d_floor.sum() < 0.8 * d_full.sum()  # weaker, not gone
    chosen, _, canv = strict._select(strict.detect(img), img, {}, [])
    canvases = [canv[k][0] for k in chosen]
    res = mesh.mesh_canvases(canvases, cache=False)
    deltas = strict.perturbations(res.vertices[res.ok])
    x = torch.from_numpy(np.stack(canvases).astype(np.float32) / 255).permute(0, 3, 1, 2)

    def canvas_ssim(d):
        return per_image_ssim(torch.clamp(x + torch.from_numpy(d).permute(0, 3, 1, 2), 0, 1), x)

    assert (canvas_ssim(deltas) < 0.99).all() and (canvas_ssim(strict.apply_floor(canvases, deltas)) >= 0.99).all()
    loose = media.Protector(prot.texture, prot.meta, detector=prot.detector, ssim_floor=0.05)
    assert np.array_equal(loose.apply_floor(canvases, deltas), deltas)  # already above: unchanged
    with pytest.raises(ValueError, match="ssim_floor"):
        media.Protector(prot.texture, prot.meta, detector=prot.detector, ssim_floor=1.5)


def test_a_ppt_of_several_textures_protects_each_photo_with_the_texture_its_pixels_choose(prot):
    """K textures: a photo is protected with texture_choice(its pixels); one texture: always the PPT's."""
    img = lfw_img(OWNER, 1)
    assert prot.texture_for(img.tobytes()) is prot.texture
    tex = texture.init_texture(EPS, torch.Generator().manual_seed(5), count=3)
    multi = media.Protector(tex, dict(prot.meta), detector=prot.detector)
    out = multi.protect_array(img)
    assert out.n_protected == 1 and not np.array_equal(out.image, img)
    chosen = multi.texture_for(img.tobytes())
    assert chosen.shape == (1, 3, tex.shape[-1], tex.shape[-1])
    assert any(torch.equal(chosen, tex[k : k + 1]) for k in range(3))
    # the same pixels always choose the same texture, and the photo is protected with exactly that texture
    assert torch.equal(multi.texture_for(img.tobytes()), chosen)
    single = media.Protector(chosen, dict(prot.meta), detector=prot.detector)
    assert np.array_equal(single.protect_array(img).image, out.image)
    picks = {int(texture.texture_choice([lfw_img(OWNER, k).tobytes()], 3)[0]) for k in (1, 2, 3, 4)}
    assert len(picks) > 1  # different photos are spread over the textures
