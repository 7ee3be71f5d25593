"""Protect one photo file with a :class:`~protego_nb.protect.media.Protector`.

The photo is decoded upright (EXIF orientation applied) and protected in memory
(:meth:`~protego_nb.protect.media.Protector.protect_array`), then saved in the input's format under the
given name, atomically (temporary file, ``fsync``, rename), with the input's permission bits limited by the
umask; an image with transparency keeps its alpha channel unchanged (its colour channels, not composited, are
protected). The file I/O and the metadata policy are :mod:`protego_nb.protect.photo`'s. A photo without a
usable face is skipped and not written; when it holds several faces, a warning says which were protected.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..faces.images import ImageError
from . import photo as _photo
from .inputs import same_file
from .results import ProtectResult

if TYPE_CHECKING:
    from .media import Protector

__all__ = ["protect_photo"]


def protect_photo(prot: Protector, src: str | os.PathLike, dst: str | os.PathLike) -> ProtectResult:
    """Protect one photo file into ``dst`` (same format); never raises for a bad input (see ``status``)."""
    src, dst = Path(src), Path(dst)
    r = ProtectResult(str(src), "photo", "failed")
    t0 = time.perf_counter()
    if same_file(src, dst):
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
        fr = prot.protect_array(ph.rgb)
    except Exception as exc:  # a detector/mesh error on one image must not stop a batch
        r.reason, r.message = "protect_error", f"{src}: {type(exc).__name__}: {exc}"
        return r
    r.timings.update(fr.timings)
    r.faces, r.notes = fr.faces, r.notes + fr.notes
    _face_warning(r, fr.notes)
    if fr.n_protected == 0:
        r.status = "skipped"
        reasons = sorted({f.reason for f in fr.faces if f.reason})
        r.reason = "no_face" if not fr.faces else (reasons[0] if len(reasons) == 1 else "+".join(reasons))
        r.message = f"{src}: nothing protected ({r.reason}); no output written"
        r.timings["total"] = time.perf_counter() - t0
        return r
    t = time.perf_counter()
    try:
        payload = _photo.encode_photo(fr.image, ph.alpha, ph.format, ph.info, ph.exif, prot.metadata,
                                      prot.jpeg_quality, r.notes)
    except Exception as exc:
        _unprotect(r, "not_written")
        r.reason, r.message = "encode_error", f"{dst}: cannot encode the output ({type(exc).__name__}: {exc})"
        return r
    r.timings["encode"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        _photo.write_file(dst, payload, _photo.output_mode(src))
    except OSError as exc:
        _unprotect(r, "not_written")
        r.reason, r.message = "write_error", f"{dst}: cannot write the output ({exc.strerror or exc})"
        return r
    r.timings["write"] = time.perf_counter() - t
    r.status, r.output = "protected", str(dst)
    if prot.metadata == "strip":
        r.notes.append("metadata_stripped")
    r.timings["total"] = time.perf_counter() - t0
    return r


def _face_warning(r: ProtectResult, notes: list[str]) -> None:
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


def _unprotect(r: ProtectResult, reason: str) -> None:
    """The output was not written: no face of it counts as protected."""
    for f in r.faces:
        if f.status == "protected":
            f.status, f.reason = "skipped", reason
