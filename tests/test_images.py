"""Robust image loading: every odd-but-valid file loads as upright uint8 RGB with a note;
every bad file raises ImageError with the right reason and a message naming the file."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra.numpy import arrays
from PIL import Image

from protego_nb.faces.images import FAILURE_REASONS, ImageError, decode_rgb, load_rgb


def _pattern(h: int = 40, w: int = 60) -> np.ndarray:
    """An asymmetric RGB test pattern (so any flip / rotation is visible)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * y) % 256], -1).astype(np.uint8)
    img[:5, :10] = (255, 0, 0)  # red block at the top-left corner
    return img


def test_rgb_jpeg_has_no_notes(tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(_pattern()).save(p)
    img, notes = load_rgb(p, return_notes=True)
    assert img.dtype == np.uint8 and img.shape == (40, 60, 3)
    assert notes == ()
    np.testing.assert_array_equal(img, _pattern())
    np.testing.assert_array_equal(load_rgb(p), img)


def test_grayscale_and_bilevel(tmp_path):
    gray = _pattern()[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    img, notes = load_rgb(tmp_path / "g.png", return_notes=True)
    assert "grayscale" in notes
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)
    Image.fromarray(gray > 128).save(tmp_path / "b.png")
    img, notes = load_rgb(tmp_path / "b.png", return_notes=True)
    assert "grayscale" in notes and set(np.unique(img)) <= {0, 255}


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[0, :, 3] = 255  # opaque row keeps its colour
    rgba[1, :, 3] = 0  # transparent row becomes white
    rgba[2, :, 3] = 128  # half-transparent row is the mix
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img, notes = load_rgb(tmp_path / "a.png", return_notes=True)
    assert notes == ("alpha_composited",)
    np.testing.assert_array_equal(img[0, 0], (10, 20, 30))
    np.testing.assert_array_equal(img[1, 0], (255, 255, 255))
    a = 128 / 255
    np.testing.assert_allclose(img[2, 0], np.rint(np.array([10, 20, 30]) * a + 255 * (1 - a)), atol=1)


def test_gray_alpha(tmp_path):
    la = np.zeros((3, 3, 2), np.uint8)
    la[..., 0] = 50
    la[..., 1] = 255
    la[0, 0, 1] = 0
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img, notes = load_rgb(tmp_path / "la.png", return_notes=True)
    assert "grayscale" in notes and "alpha_composited" in notes
    assert tuple(img[0, 0]) == (255, 255, 255) and tuple(img[1, 1]) == (50, 50, 50)


def test_palette_with_and_without_transparency(tmp_path):
    rgb = _pattern()
    pal = Image.fromarray(rgb).quantize(colors=16)
    pal.save(tmp_path / "p.png")
    img, notes = load_rgb(tmp_path / "p.png", return_notes=True)
    assert notes == ("palette",)
    np.testing.assert_array_equal(img, np.asarray(pal.convert("RGB")))

    idx = np.zeros((4, 4), np.uint8)
    idx[0] = 1
    p = Image.fromarray(idx, "P")
    p.putpalette([0, 0, 255] + [255, 0, 0] + [0, 0, 0] * 254)
    p.save(tmp_path / "pt.png", transparency=0)  # palette index 0 (blue) is transparent
    img, notes = load_rgb(tmp_path / "pt.png", return_notes=True)
    assert "palette" in notes and "alpha_composited" in notes
    assert tuple(img[0, 0]) == (255, 0, 0) and tuple(img[2, 2]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path):
    rgb = np.zeros((32, 96, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)
    rgb[:, 32:64] = (30, 200, 30)
    rgb[:, 64:] = (240, 240, 240)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    img, notes = load_rgb(tmp_path / "c.jpg", return_notes=True)
    assert "cmyk" in notes and img.shape == (32, 96, 3)
    # colours survive (JPEG loss aside): the middle of each block
    for x, colour in ((16, (200, 30, 30)), (48, (30, 200, 30)), (80, (240, 240, 240))):
        np.testing.assert_allclose(img[16, x].astype(int), colour, atol=12)


@pytest.mark.parametrize("dtype,fmt", [("<u2", "PNG"), (">u2", "TIFF")])
def test_16bit_gray_scaled_not_clipped(tmp_path, dtype, fmt):
    vals = np.array([[0, 257, 1000, 32768], [40000, 65278, 65535, 12345]], dtype=np.uint16)
    p = tmp_path / f"g16.{fmt.lower()}"
    Image.fromarray(vals.astype(dtype)).save(p, fmt)
    img, notes = load_rgb(p, return_notes=True)
    assert "16bit" in notes
    expected = np.rint(vals / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(img[..., 0], expected)
    np.testing.assert_array_equal(img[..., 2], expected)
    assert img[0, 2, 0] == 4  # 1000 / 257; clipping to 255 would give 255


def test_16bit_rgb_png_rounded(tmp_path):
    bgr16 = (np.arange(8 * 3, dtype=np.uint16) * 2800).reshape(2, 4, 3)
    cv2.imwrite(str(tmp_path / "c16.png"), bgr16)
    img, notes = load_rgb(tmp_path / "c16.png", return_notes=True)
    assert "16bit" in notes
    np.testing.assert_array_equal(img, np.rint(bgr16[..., ::-1] / 257.0).astype(np.uint8))


@settings(max_examples=25, deadline=None)
@given(arrays(np.uint16, (3, 5)))
def test_16bit_property(vals):
    buf = io.BytesIO()
    Image.fromarray(vals).save(buf, "PNG")
    img, notes = decode_rgb(buf.getvalue())
    np.testing.assert_array_equal(img[..., 1], np.rint(vals / 257.0).astype(np.uint8))
    assert notes == ("16bit",)


@pytest.mark.parametrize("orientation,stored", [(6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270),
                                                (3, Image.Transpose.ROTATE_180)])
def test_exif_orientation_applied(tmp_path, orientation, stored):
    upright = Image.fromarray(_pattern())
    raw = upright.transpose(stored)  # pixels as a camera would store them
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = tmp_path / f"o{orientation}.png"
    raw.save(p, exif=exif.tobytes())
    img, notes = load_rgb(p, return_notes=True)
    assert notes == ("exif_rotated",)
    np.testing.assert_array_equal(img, _pattern())


def test_missing_file(tmp_path):
    p = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as ei:
        load_rgb(p)
    assert ei.value.reason == "missing" and str(p) in str(ei.value) and "does not exist" in ei.value.message


def test_directory_is_unreadable(tmp_path):
    with pytest.raises(ImageError) as ei:
        load_rgb(tmp_path)
    assert ei.value.reason == "unreadable" and str(tmp_path) in ei.value.message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can read any file")
def test_permission_denied_is_unreadable(tmp_path):
    p = tmp_path / "secret.png"
    Image.fromarray(_pattern()).save(p)
    p.chmod(0)
    with pytest.raises(ImageError) as ei:
        load_rgb(p)
    assert ei.value.reason == "unreadable"


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a photo\n")
    with pytest.raises(ImageError) as ei:
        load_rgb(p)
    assert ei.value.reason == "not_an_image" and "notes.jpg" in ei.value.message and "text" in ei.value.message


def test_truncated_and_empty_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError) as ei:
        load_rgb(p)
    assert ei.value.reason == "corrupt" and "cut.jpg" in ei.value.message
    e = tmp_path / "empty.jpg"
    e.write_bytes(b"")
    with pytest.raises(ImageError) as ei:
        load_rgb(e)
    assert ei.value.reason == "corrupt" and "empty" in ei.value.message


def _png_with_size(w: int, h: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``w x h`` (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_too_large(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_with_size(100_000, 100_000))  # 10 gigapixels claimed, 70 bytes on disk
    with pytest.raises(ImageError) as ei:
        load_rgb(p)
    assert ei.value.reason == "too_large" and "bomb.png" in ei.value.message
    q = tmp_path / "ok.png"
    Image.fromarray(_pattern()).save(q)
    with pytest.raises(ImageError) as ei:
        load_rgb(q, max_pixels=1000)
    assert ei.value.reason == "too_large" and "2400" not in ei.value.reason
    assert load_rgb(q, max_pixels=2400).shape == (40, 60, 3)


def test_image_error_is_picklable_and_checked():
    e = ImageError("/x/y.jpg", "corrupt", "bad huffman")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.path, e2.reason, e2.message) == (e.path, e.reason, e.message)
    assert set(FAILURE_REASONS) == {"missing", "unreadable", "not_an_image", "corrupt", "too_large"}
    with pytest.raises(ValueError):
        ImageError("/x", "bogus")
