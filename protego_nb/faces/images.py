"""Robust image loading: any common photo file -> ``uint8 [H, W, 3]`` RGB.

Real photo collections contain grayscale scans, PNGs with transparency, CMYK JPEGs
from print workflows, 16-bit PNGs, phone photos whose pixels are stored sideways
with an EXIF orientation tag, and the odd broken or mis-named file. ``load_rgb``
turns every loadable file into the same RGB array and records which conversions it
applied as *notes*; files it cannot load raise :class:`ImageError` with one of the
reasons in :data:`FAILURE_REASONS` and a message naming the file.

Conversions (each adds the note in brackets):

* bilevel / grayscale (``1``, ``L``) -> gray replicated to 3 channels [``grayscale``];
* alpha (``LA``, ``RGBA``, ``PA``, palette with a transparency entry): composited on
  **white**, the way a viewer shows a transparent image on a white page. Fully opaque
  alpha therefore leaves the pixels unchanged (= dropping it) [``alpha_composited``];
* palette (``P``) -> its RGB colours [``palette``];
* CMYK (print JPEGs) -> RGB through the embedded ICC profile when there is one
  (LittleCMS via ``PIL.ImageCms``), otherwise Pillow's plain conversion [``cmyk``];
* 16 bits per channel (gray ``I;16``, ``I;16B``, ``I;16L``, ``I`` holding 16-bit values,
  and 16-bit RGB / RGBA / gray-alpha PNGs, which are decoded with OpenCV because Pillow
  keeps only their high byte) -> ``round(v / 257)``, i.e. 0..65535 mapped linearly onto
  0..255 (not clipped) [``16bit``]; 32-bit float (``F``) is taken as [0, 1] when its maximum is <= 1,
  otherwise as [0, 255] [``float``];
* other modes (``YCbCr``, ``LAB``, ``HSV``, ...) -> Pillow's RGB conversion [``converted_<mode>``];
* an EXIF orientation other than 1 -> ``ImageOps.exif_transpose`` so that the array
  is upright as a viewer shows it [``exif_rotated``]; unreadable EXIF is ignored
  [``exif_unreadable``];
* animated / multi-page files -> first frame [``multi_frame``].

Decompression bombs: images with more than :data:`MAX_PIXELS` pixels (default 120
megapixels, e.g. 13400 x 9000; a 6000 x 4000 phone photo is 24 MP) are refused with
reason ``too_large`` from the header alone, before any pixel is decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

#: Largest accepted image, in pixels (width * height). 120 MP of RGB is 360 MB decoded.
MAX_PIXELS = 120_000_000

#: Why an image could not be loaded.
FAILURE_REASONS = ("missing", "unreadable", "not_an_image", "corrupt", "too_large")

_PLAIN = {
    "missing": "the file does not exist",
    "unreadable": "the file could not be read",
    "not_an_image": "the file is not an image in a format Pillow knows",
    "corrupt": "the image data is truncated or corrupt",
    "too_large": "the image is too large to decode safely",
}


class ImageError(Exception):
    """An image file that could not be loaded: ``path``, ``reason`` (one of :data:`FAILURE_REASONS`), ``message``."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        if reason not in FAILURE_REASONS:
            raise ValueError(f"unknown image failure reason {reason!r}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        self.message = f"{self.path}: {_PLAIN[reason]} [{reason}]" + (f": {detail}" if detail else "")
        super().__init__(self.message)

    def __reduce__(self):  # picklable across processes
        return (type(self), (self.path, self.reason, self.detail))


def read_bytes(path: str | os.PathLike) -> bytes:
    """Read a whole file, mapping OS errors to :class:`ImageError` (``missing`` / ``unreadable``)."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError as exc:
        raise ImageError(p, "missing") from exc
    except IsADirectoryError as exc:
        raise ImageError(p, "unreadable", "it is a directory") from exc
    except PermissionError as exc:
        raise ImageError(p, "unreadable", "permission denied") from exc
    except OSError as exc:
        raise ImageError(p, "unreadable", str(exc)) from exc


def _to_rgb(img: Image.Image, notes: list[str]) -> np.ndarray:
    """Convert any Pillow mode to ``uint8 [H, W, 3]`` RGB, appending notes."""
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8)
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        if arr.dtype.byteorder not in ("=", "|"):
            arr = arr.astype(arr.dtype.newbyteorder("="))
        arr = np.clip(arr.astype(np.float64), 0, 65535)
        notes.append("16bit")
        gray = np.rint(arr / 257.0).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        top = 1.0 if finite.size and finite.max() <= 1.0 else 255.0
        notes.append("float")
        gray = np.rint(np.clip(np.nan_to_num(arr) / top, 0, 1) * 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "P":
        notes.append("palette")
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
        if mode == "RGB":
            return np.asarray(img, dtype=np.uint8)
    if mode == "CMYK":
        notes.append("cmyk")
        icc = img.info.get("icc_profile")
        if icc:
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                return np.asarray(ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"),
                                                            outputMode="RGB"), dtype=np.uint8)
            except (ImageCms.PyCMSError, OSError, ValueError):
                notes.append("icc_ignored")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in ("1", "L"):
        notes.append("grayscale")
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        if mode in ("LA", "La"):
            notes.append("grayscale")
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:4] / 255.0
        notes.append("alpha_composited")
        return np.rint(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    notes.append(f"converted_{mode}")
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _exact_16bit_png(data: bytes, img: Image.Image, notes: list[str]) -> Image.Image:
    """16-bit colour PNGs: Pillow keeps only the high byte (``v // 256``); decode them
    with OpenCV instead and round ``v / 257``. 16-bit gray (``I;16``) is handled in ``_to_rgb``."""
    if img.format != "PNG" or len(data) < 26 or data[12:16] != b"IHDR" or data[24] != 16 or data[25] not in (2, 4, 6):
        return img
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.shape[:2] != (img.height, img.width):
        return img
    arr8 = np.rint(arr.astype(np.float64) / 257.0).astype(np.uint8)
    if arr8.ndim == 2:
        out = Image.fromarray(arr8, "L")
    elif arr8.shape[2] == 3:
        out = Image.fromarray(cv2.cvtColor(arr8, cv2.COLOR_BGR2RGB), "RGB")
    else:
        out = Image.fromarray(cv2.cvtColor(arr8, cv2.COLOR_BGRA2RGBA), "RGBA")
    exif = img.getexif()
    if exif:
        out.info["exif"] = exif.tobytes()
    notes.append("16bit")
    return out


def decode_rgb(
    data: bytes, path: str | os.PathLike = "<bytes>", max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decode file bytes to ``(uint8 [H, W, 3] RGB, notes)``; ``path`` is only used in messages."""
    if len(data) == 0:
        raise ImageError(path, "corrupt", "the file is empty (0 bytes)")
    notes: list[str] = []
    with warnings.catch_warnings():
        # Our own MAX_PIXELS check replaces Pillow's global bomb warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as exc:
            raise ImageError(path, "too_large", str(exc)) from exc
        except UnidentifiedImageError as exc:
            head = data[:16]
            kind = "text" if all(32 <= b < 127 or b in (9, 10, 13) for b in head) else "binary"
            raise ImageError(path, "not_an_image", f"unrecognised {kind} content starting {head[:8]!r}") from exc
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError(path, "corrupt", f"{type(exc).__name__}: {exc}") from exc
        with img:
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(path, "too_large", f"{w}x{h} = {w * h / 1e6:.1f} MP > limit of {max_pixels / 1e6:.1f} MP")
            if w == 0 or h == 0:
                raise ImageError(path, "corrupt", f"image has zero size {w}x{h}")
            if getattr(img, "n_frames", 1) > 1:
                notes.append("multi_frame")
            try:
                img.load()
            except Image.DecompressionBombError as exc:
                raise ImageError(path, "too_large", str(exc)) from exc
            except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
                raise ImageError(path, "corrupt", f"{type(exc).__name__}: {exc}") from exc
            img = _exact_16bit_png(data, img, notes)
            try:
                orientation = img.getexif().get(0x0112, 1)
            except Exception:  # malformed EXIF must not make a good photo unusable
                orientation = 1
                notes.append("exif_unreadable")
            if orientation not in (None, 1):
                try:
                    rotated = ImageOps.exif_transpose(img)
                    if rotated is not None:
                        img = rotated
                        notes.append("exif_rotated")
                except Exception:
                    notes.append("exif_unreadable")
            try:
                arr = _to_rgb(img, notes)
            except (OSError, ValueError) as exc:
                raise ImageError(path, "corrupt", f"{type(exc).__name__}: {exc}") from exc
    return np.ascontiguousarray(arr), tuple(notes)


def load_rgb(
    path: str | os.PathLike, return_notes: bool = False, max_pixels: int = MAX_PIXELS
) -> np.ndarray | tuple[np.ndarray, tuple[str, ...]]:
    """Load an image file as ``uint8 [H, W, 3]`` RGB, upright (EXIF applied).

    With ``return_notes=True`` returns ``(image, notes)`` where ``notes`` names the
    conversions applied (see the module docstring). Raises :class:`ImageError`
    (``missing``, ``unreadable``, ``not_an_image``, ``corrupt``, ``too_large``).
    """
    img, notes = decode_rgb(read_bytes(path), path, max_pixels=max_pixels)
    return (img, notes) if return_notes else img


def check_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, 3] RGB image, got {img.dtype} {img.shape}")
    return img
