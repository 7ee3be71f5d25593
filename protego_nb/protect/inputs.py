"""Input collection for ``protego-nb protect``: which files a command line names, and whether each is a photo
or a video.

:func:`collect_inputs` expands files and folders (recursively on request, never into the output folder),
reports what it ignored, broken links and folders that yielded nothing; :func:`media_kind` tells photos
from videos by extension (photos are recognised by content when decoded); :func:`same_file` says whether
writing an output would replace its input.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "PHOTO_FORMATS",
    "VIDEO_EXTENSIONS",
    "InputFile",
    "InputSet",
    "collect_inputs",
    "expand_inputs",
    "media_kind",
    "same_file",
]

#: File extension -> Pillow format written for photos (the output keeps the input's actual format).
PHOTO_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm")


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


def same_file(src: Path, dst: Path) -> bool:
    """Whether writing ``dst`` would replace ``src`` (symlink loops and missing files never raise)."""
    try:
        if dst.exists() and src.exists() and os.path.samefile(src, dst):
            return True
    except OSError:
        pass
    return os.path.realpath(src) == os.path.realpath(dst)
