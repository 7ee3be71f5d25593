"""Protect one video file with a :class:`~protego_nb.protect.media.Protector`.

Every frame is decoded upright and written once, in order, with its own timestamp, at the input's size
(variable frame rates are kept exactly; the bundled ffmpeg of ``imageio-ffmpeg``, :mod:`protego_nb.protect.video`);
faces are tracked and their placement smoothed across frames (:mod:`protego_nb.protect.tracking`); frames
without a protected face pass through unchanged (counted); the audio stream is copied from the input
(re-encoded to AAC only if the container refuses a copy) and stays in sync. Location tags are removed unless
``metadata="keep_all"``; a file cut short is protected up to its last decodable frame with a warning. The
output is assembled in a temporary folder next to ``dst`` and renamed into place, with the input's permission
bits limited by the umask.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import photo as _photo
from . import video as _video
from .inputs import same_file
from .results import ProtectResult
from .tracking import VideoTracker

if TYPE_CHECKING:
    from .media import Protector

__all__ = ["protect_video"]


def protect_video(prot: Protector, src: str | os.PathLike, dst: str | os.PathLike,
                  progress: bool = False) -> ProtectResult:
    """Protect every frame of a video into ``dst`` (container by extension), timestamps and audio kept."""
    src, dst = Path(src), Path(dst)
    r = ProtectResult(str(src), "video", "failed")
    t0 = time.perf_counter()
    if same_file(src, dst):
        r.reason = "same_path"
        r.message = f"{src}: the output would replace the input; choose another output folder (-o)"
        return r
    try:
        info = _video.probe(src)
    except _video.VideoError as exc:
        r.reason, r.message = exc.reason, exc.message
        return r
    r.audio = info.has_audio
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    except OSError as exc:
        r.reason, r.message = "write_error", f"{dst}: cannot write the output ({exc.strerror or exc})"
        return r
    encoded, muxed = tmp_dir / "video.mp4", tmp_dir / f"muxed{dst.suffix}"
    stage: dict[str, float] = {}
    tracker = VideoTracker(prot)
    reader = writer = None
    times = [float(p * info.time_base) for p in info.pts]
    try:
        reader = _video.FrameReader(src, info.width, info.height, tmp_dir / "decode.log")
        writer = _video.FrameWriter(encoded, info.width, info.height, info.mean_fps, codec=prot.video_codec,
                                    crf=prot.video_crf, log=tmp_dir / "encode.log")
        from tqdm.auto import tqdm

        for k, frame in enumerate(tqdm(reader, total=info.n_frames, desc=src.name, unit="frame",
                                       disable=not progress, leave=False)):
            dt = times[k] - times[k - 1] if 0 < k < len(times) else 1.0 / info.mean_fps
            out, n_prot = tracker.step(frame, stage, max(dt, 1e-3))
            r.frames += 1
            if n_prot:
                r.frames_protected += 1
            else:
                r.frames_without_face += 1
            t = time.perf_counter()
            try:
                writer.write(out)
            except BrokenPipeError:
                break
            stage["encode"] = stage.get("encode", 0.0) + time.perf_counter() - t
        reader.close()
        if writer.close() != 0:
            raise RuntimeError(f"the encoder failed: {_video._last_line(_read_text(tmp_dir / 'encode.log'))}")
        if r.frames != info.n_frames:
            raise RuntimeError(f"decoded {r.frames} frames, but the first pass found {info.n_frames}")
        t = time.perf_counter()
        tb = info.time_base
        _video.set_mp4_durations(encoded, [d * tb.numerator for d in info.durations], tb.denominator)
        r.notes += _video.mux(encoded, src, muxed, info, prot.metadata)
        n_out = _video.count_packets(muxed)
        if n_out != info.n_frames:
            raise RuntimeError(f"the output holds {n_out} frames instead of {info.n_frames}")
        stage["mux"] = time.perf_counter() - t
        os.chmod(muxed, _photo.output_mode(src))
        os.replace(muxed, dst)
    except Exception as exc:
        r.reason = "video_error"
        r.message = f"{src}: {type(exc).__name__}: {_video._last_line(str(exc))}"
        r.frames_protected = 0
        return r
    finally:
        for c in (reader, writer):
            if c is not None:
                try:
                    c.kill() if isinstance(c, _video.FrameWriter) else c.close()
                except Exception:
                    pass
        tracker.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    r.status, r.output = "protected", str(dst)
    r.timings = dict(stage)
    r.timings["total"] = time.perf_counter() - t0
    r.notes.append(f"fps={info.mean_fps:.4g}")
    if len(set(info.durations[:-1])) > 1:
        r.notes.append("variable_frame_rate")
    r.notes.append(f"detections={tracker.detections}")
    if prot.metadata == "strip":
        r.notes.append("metadata_stripped")
    if "truncated" in info.warnings:
        r.notes.append("truncated")
        r.warnings.append(f"the file is cut short: protected its {info.n_frames} decodable frames "
                          f"({info.duration:.2f} s); the rest could not be read")
    elif "decode_errors" in info.warnings:
        r.notes.append("decode_errors")
        r.warnings.append(f"ffmpeg reported damaged data; protected the {info.n_frames} frames it could decode")
    if r.frames_protected == 0:
        r.notes.append("no_face_in_any_frame")
    return r


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
