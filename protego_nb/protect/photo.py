"""Photo file I/O for :meth:`protego_nb.protect.media.Protector.protect_photo`.

* :func:`read_photo`: the upright RGB pixels (:func:`protego_nb.faces.images.decode_rgb`), and for an image
  with transparency the *unpremultiplied* colour channels plus the alpha channel, which is written back
  unchanged (only the colour channels are protected);
* :func:`encode_photo`: the input's format; the metadata policy (``strip``: no EXIF/XMP, only an RGB colour
  profile; ``keep``: EXIF without its GPS block; ``keep_all``: with it). TIFF output keeps only the
  descriptive main-directory tags (camera make and model, date, author, copyright, description, software):
  libtiff cannot write Exif or GPS sub-directories back, so a TIFF never keeps its GPS position;
* :func:`write_file`: atomic (temporary file in the same folder, ``fsync``, rename) with the permissions a
  copy would get (the input's read/write bits, limited by the umask), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..faces.images import decode_rgb, read_bytes

__all__ = ["PhotoData", "encode_photo", "output_mode", "read_photo", "write_file"]

_WRITABLE = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO"}
#: TIFF main-directory tags that describe the picture (everything else there is image structure).
_TIFF_DESCRIPTIVE = (0x010E, 0x010F, 0x0110, 0x0131, 0x0132, 0x013B, 0x8298)
_GPS_IFD = 0x8825
_ORIENTATION = 0x0112


@dataclass
class PhotoData:
    """A decoded photo: upright ``rgb`` ``uint8 [H, W, 3]``, ``alpha`` ``uint8 [H, W]`` or ``None``, the Pillow
    ``format``, its ``info`` dict, its EXIF (or ``None``) and the decoding notes."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    format: str
    info: dict[str, Any]
    exif: Any
    notes: list[str] = field(default_factory=list)


def _straight_rgba(data: bytes) -> np.ndarray | None:
    """Upright ``uint8 [H, W, 4]`` RGBA without compositing, or ``None`` if the image has no transparency."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info
        if not has_alpha:
            return None
        try:
            up = ImageOps.exif_transpose(im) or im
        except Exception:
            up = im
        return np.asarray(up.convert("RGBA"), np.uint8)


def read_photo(src: str | os.PathLike) -> PhotoData:
    """Decode a photo file; raises :class:`~protego_nb.faces.images.ImageError` (missing, corrupt, ...)."""
    from PIL import Image

    data = read_bytes(src)
    img, notes = decode_rgb(data, src)
    notes = list(notes)
    with Image.open(io.BytesIO(data)) as im:
        fmt = im.format or ""
        info = dict(im.info)
        try:
            exif = im.getexif()
        except Exception:
            exif = None
    alpha = None
    if "alpha_composited" in notes:
        try:
            rgba = _straight_rgba(data)
        except Exception:
            rgba = None
        if rgba is not None and rgba.shape[:2] == img.shape[:2]:
            img, alpha = np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
            notes = [n for n in notes if n != "alpha_composited"] + ["alpha_kept"]
    return PhotoData(img, alpha, fmt, info, exif, notes)


def writable(fmt: str) -> bool:
    return fmt in _WRITABLE


def _rgb_icc(icc: bytes | None) -> bytes | None:
    """The ICC profile if it describes an RGB colour space (a CMYK or gray profile must not tag RGB pixels)."""
    if not icc:
        return None
    try:
        from PIL import ImageCms

        prof = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return icc if prof.profile.xcolor_space.strip() == "RGB" else None
    except Exception:
        return None


def _exif_for(fmt: str, exif: Any, metadata: str, notes: list[str]) -> Any:
    """The EXIF to write under the metadata policy, or ``None``."""
    from PIL import Image

    if exif is None or metadata == "strip" or fmt not in ("JPEG", "MPO", "PNG", "WEBP", "TIFF"):
        return None
    if fmt == "TIFF":
        out = Image.Exif()
        for k in _TIFF_DESCRIPTIVE:
            if k in exif:
                out[k] = exif[k]
        out[_ORIENTATION] = 1
        if metadata == "keep_all" and _GPS_IFD in exif:
            notes.append("gps_not_writable_in_tiff")
        return out
    exif[_ORIENTATION] = 1  # pixels are stored upright
    if metadata == "keep" and _GPS_IFD in exif:
        del exif[_GPS_IFD]
    return exif.tobytes()


def encode_photo(rgb: np.ndarray, alpha: np.ndarray | None, fmt: str, info: dict[str, Any], exif: Any,
                 metadata: str = "strip", jpeg_quality: int = 95, notes: list[str] | None = None) -> bytes:
    """Encode in ``fmt`` (JPEG quality ``jpeg_quality``, 4:4:4; PNG/WebP/TIFF/BMP lossless), alpha kept where the
    format has one (JPEG has none: ``alpha`` is then dropped and a note says so)."""
    from PIL import Image

    notes = notes if notes is not None else []
    if alpha is not None and fmt not in ("JPEG", "MPO"):
        im = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    else:
        if alpha is not None:
            notes.append("alpha_dropped_jpeg")
        im = Image.fromarray(rgb, "RGB")
    kw: dict[str, Any] = {}
    icc = _rgb_icc(info.get("icc_profile"))
    if icc:
        kw["icc_profile"] = icc
    ex = _exif_for(fmt, exif, metadata, notes)
    if ex is not None:
        kw["exif"] = ex
    buf = io.BytesIO()
    if fmt in ("JPEG", "MPO"):
        im.save(buf, "JPEG", quality=int(jpeg_quality), subsampling=0, **kw)
    elif fmt == "WEBP":
        im.save(buf, "WEBP", lossless=True, **kw)
    elif fmt == "PNG":
        im.save(buf, "PNG", compress_level=6, **kw)
    elif fmt == "TIFF":
        im.save(buf, "TIFF", compression="tiff_lzw", **kw)
    else:
        im.save(buf, fmt)
    return buf.getvalue()


def _umask() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def output_mode(src: str | os.PathLike | None) -> int:
    """Permission bits of an output: the input's read/write bits limited by the umask (``cp`` semantics),
    or the umask default ``0o666 & ~umask`` when the input cannot be stat'ed."""
    base = 0o666
    if src is not None:
        try:
            base = os.stat(src).st_mode & 0o666
        except OSError:
            pass
    return base & ~_umask()


def write_file(dst: str | os.PathLike, payload: bytes, mode: int) -> Path:
    """Write ``payload`` to ``dst`` atomically (temporary file in the same folder, fsync, rename) with ``mode``."""
    dst = Path(dst)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst

