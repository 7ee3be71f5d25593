"""Video I/O for :meth:`protego_nb.protect.media.Protector.protect_video`: every frame once, with its timestamp.

All work goes through the ``ffmpeg`` binary of the ``imageio-ffmpeg`` package (no ffprobe, no PyAV):

* :func:`probe` decodes the first video stream once with ``-fps_mode passthrough -enc_time_base demux`` into
  ffmpeg's ``framecrc`` muxer, which lists every decoded frame with its presentation timestamp and duration in
  the stream's own time base (exact integers, no frame-rate guess); a ``-c copy`` pass over the packets
  gives the container's warnings (``partial file``: the file was cut short) and the stream list;
* :class:`FrameReader` decodes the same frames (same options) as upright ``uint8 [H, W, 3]`` RGB arrays;
* :class:`FrameWriter` encodes the protected frames (H.264 without B-frames, so one packet per frame in
  presentation order) into a temporary MP4; :func:`set_mp4_durations` then rewrites that MP4's sample table
  (``stts``: one duration per frame) and media time scale with the source's timestamps, so a variable frame
  rate survives exactly;
* :func:`mux` joins that video with the source's audio (copied, else AAC), shifted by the source's first
  video timestamp so that picture and sound stay in sync, and applies the metadata policy: ``strip`` drops
  all metadata; ``keep`` keeps the container tags minus every location tag (``location``,
  ``com.apple.quicktime.location.ISO6709``, GPS, ...); ``keep_all`` keeps them all.

Problems are raised as :class:`VideoError` with a short ``reason`` and a one-line ``message``.

Size: all of video I/O (probe, decode with timestamps, encode, mux audio, rewrite sample times) in one place.
"""

from __future__ import annotations

import math
import os
import re
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["LOCATION_KEY", "FrameReader", "FrameWriter", "VideoError", "VideoInfo", "count_packets", "ffmpeg_exe",
           "frame_times", "mux", "probe", "set_mp4_durations"]

#: Metadata keys that carry a place (removed unless the location is to be kept), matched case-insensitively.
LOCATION_KEY = re.compile(r"location|iso6709|gps|latitude|longitude|coordinates|©xyz|\bxyz\b", re.I)

_PASSTHROUGH = ["-map", "0:V:0", "-fps_mode", "passthrough", "-enc_time_base", "demux"]


class VideoError(Exception):
    """A video that cannot be processed: ``reason`` (short tag) and a one-line ``message`` naming the file."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str) -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        self.message = f"{path}: {detail}"
        super().__init__(self.message)


def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _last_line(text: str) -> str:
    """The most telling line of ffmpeg's stderr, without the ``[component @ 0x...]`` prefix, at most 160 chars."""
    lines = [re.sub(r"^\[[^\]]*\]\s*", "", ln).strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("Error opening input file", "Conversion failed",
                                                             "Exiting", "Error opening output"))]
    return (lines[-1] if lines else "ffmpeg failed")[:160]


@dataclass
class VideoInfo:
    """What :func:`probe` found: frame size (upright), per-frame timestamps and durations (ticks of ``time_base``)."""

    width: int
    height: int
    time_base: Fraction
    pts: list[int]
    durations: list[int]
    has_audio: bool
    container_duration: float | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return len(self.pts)

    @property
    def start(self) -> float:
        """The first frame's time in seconds, relative to the start of the file (where the audio starts from)."""
        return float(self.pts[0] * self.time_base)

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end of the last one."""
        return float(sum(self.durations) * self.time_base)

    @property
    def mean_fps(self) -> float:
        return self.n_frames / self.duration if self.duration > 0 else 25.0


def _run(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                          stdin=subprocess.DEVNULL)


def frame_times(path: str | os.PathLike) -> tuple[Fraction, list[int], list[int], tuple[int, int], str]:
    """Decode the first video stream (timestamps passed through) -> ``(time base, pts, durations, (w, h), stderr)``."""
    p = _run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "warning", "-i", str(path), *_PASSTHROUGH,
              "-pix_fmt", "gray", "-f", "framecrc", "-"])
    tb, size, pts, dur = Fraction(1, 1), (0, 0), [], []
    for line in p.stdout.splitlines():
        if line.startswith("#tb 0:"):
            tb = Fraction(line.split(":", 1)[1].strip())
        elif line.startswith("#dimensions 0:"):
            w, h = line.split(":", 1)[1].strip().split("x")
            size = (int(w), int(h))
        elif line and not line.startswith("#"):
            parts = [s.strip() for s in line.split(",")]
            if len(parts) >= 4 and parts[0] == "0":
                pts.append(int(parts[2]))
                dur.append(int(parts[3]))
    if p.returncode != 0 and not pts:
        raise RuntimeError(_last_line(p.stderr))
    return tb, pts, dur, size, p.stderr


def probe(path: str | os.PathLike) -> VideoInfo:
    """Streams, frames and timestamps of a video file; raises :class:`VideoError` with a one-line cause."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise VideoError(path, "missing" if isinstance(exc, FileNotFoundError) else "unreadable",
                         f"cannot read the file ({exc.strerror or exc})") from exc
    if size == 0:
        raise VideoError(path, "not_a_video", "the file is empty (0 bytes)")
    # packets only (no decoding): the stream list, the container duration and the demuxer's warnings
    p = _run([ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "info", "-i", str(path), "-map", "0:V:0?",
              "-c", "copy", "-f", "null", "-"])
    err = p.stderr
    with open(path, "rb") as fh:
        head = fh.read(12)
    if "moov atom not found" in err and head[4:8] in (b"ftyp", b"mdat", b"free", b"wide"):
        raise VideoError(path, "truncated", "truncated: the file ends before its index (moov atom); "
                                            "no frame can be decoded")
    if "Error opening input" in err or "moov atom not found" in err or \
            ("Invalid data found when processing input" in err and "Stream #" not in err):
        raise VideoError(path, "not_a_video", "not a video container (ffmpeg cannot open it)")
    streams = [ln for ln in err.splitlines() if re.match(r"\s*Stream #0:\d+", ln)]
    video = [s for s in streams if ": Video:" in s and "(attached pic)" not in s]
    if not video:
        kinds = sorted({m.group(1).lower() for s in streams for m in [re.search(r": (Audio|Data|Subtitle):", s)] if m})
        raise VideoError(path, "no_video", "no video stream" + (f" (only {', '.join(kinds)})" if kinds else ""))
    has_audio = any(": Audio:" in s for s in streams)
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", err)
    container_duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else None
    warnings = []
    if re.search(r"partial file|truncat|Packet corrupt|invalid packet size|incomplete frame", err, re.I):
        warnings.append("truncated")
    try:
        tb, pts, dur, (w, h), derr = frame_times(path)
    except RuntimeError as exc:
        raise VideoError(path, "corrupt", f"the video stream cannot be decoded ({exc})") from exc
    if not pts:
        raise VideoError(path, "no_video_frames", "no video frames (the video stream holds no decodable frame)")
    if w <= 0 or h <= 0:
        raise VideoError(path, "corrupt", "the video frames have no size")
    if re.search(r"partial file|truncat|error while decoding|Invalid NAL|corrupt", derr, re.I) and \
            "truncated" not in warnings:
        warnings.append("decode_errors")
    durations = _durations(pts, dur)
    info = VideoInfo(w, h, tb, pts, durations, has_audio, container_duration, warnings)
    return info


def _durations(pts: list[int], dur: list[int]) -> list[int]:
    """Per-frame durations from successive timestamps (the last frame keeps its own, else the median step).

    A timestamp that does not increase gets one tick, so that no frame is ever dropped."""
    steps = [b - a for a, b in zip(pts, pts[1:])]
    pos = [s for s in steps if s > 0]
    last = dur[-1] if dur and dur[-1] > 0 else (int(np.median(pos)) if pos else 1)
    return [max(1, s) for s in steps] + [max(1, last)]


class FrameReader:
    """Iterate the decoded frames of the first video stream as upright ``uint8 [H, W, 3]`` RGB arrays."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, log: str | os.PathLike) -> None:
        self.path, self.shape = Path(path), (height, width, 3)
        self._log = open(log, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-i", str(path), *_PASSTHROUGH,
             "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, bufsize=0)

    def __iter__(self) -> Iterator[np.ndarray]:
        n = int(np.prod(self.shape))
        assert self.proc.stdout is not None
        while True:
            buf = bytearray()
            while len(buf) < n:
                chunk = self.proc.stdout.read(n - len(buf))
                if not chunk:
                    break
                buf += chunk
            if len(buf) < n:
                return  # a partial trailing frame is never produced by rawvideo; treat it as the end
            yield np.frombuffer(bytes(buf), np.uint8).reshape(self.shape)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class FrameWriter:
    """Encode ``uint8 [H, W, 3]`` RGB frames into an MP4 with one packet per frame (no B-frames)."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float, codec: str = "h264",
                 crf: int = 17, log: str | os.PathLike | None = None) -> None:
        if codec == "lossless":
            enc = ["-c:v", "libx264rgb", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "rgb24"]
        else:
            pix = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            enc = ["-c:v", "libx264", "-crf", str(int(crf)), "-preset", "veryfast", "-pix_fmt", pix]
        rate = Fraction(min(max(fps, 1.0), 240.0)).limit_denominator(1001)
        self.path = Path(path)
        self._log = open(log or os.devnull, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
             "-s", f"{width}x{height}", "-framerate", str(rate), "-i", "pipe:0", "-an", *enc, "-bf", "0",
             "-f", "mp4", str(self.path)],
            stdin=subprocess.PIPE, stderr=self._log, stdout=subprocess.DEVNULL)
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(np.ascontiguousarray(frame, np.uint8).tobytes())
        self.frames += 1

    def close(self) -> int:
        """Finish the file; returns ffmpeg's exit status."""
        try:
            if self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()
        except BrokenPipeError:
            pass
        rc = self.proc.wait()
        self._log.close()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# ----------------------------------------------------------------------------- MP4 sample-table rewrite

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


def _parse_boxes(data: bytes, start: int, end: int) -> list[list]:
    """``[[type, payload-or-children], ...]`` for the boxes in ``data[start:end]`` (containers parsed recursively)."""
    out, i = [], start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i : i + 8])
        head = 8
        if size == 1:
            size = struct.unpack(">Q", data[i + 8 : i + 16])[0]
            head = 16
        elif size == 0:
            size = end - i
        if size < head or i + size > end:
            raise ValueError(f"malformed MP4 box {kind!r} at offset {i}")
        body = data[i + head : i + size]
        out.append([kind, _parse_boxes(data, i + head, i + size) if kind in _CONTAINERS else body])
        i += size
    return out


def _build(boxes: list[list]) -> bytes:
    parts = []
    for kind, body in boxes:
        payload = _build(body) if isinstance(body, list) else body
        if len(payload) + 8 < 2**32:
            parts.append(struct.pack(">I4s", len(payload) + 8, kind) + payload)
        else:
            parts.append(struct.pack(">I4sQ", 1, kind, len(payload) + 16) + payload)
    return b"".join(parts)


def _find(boxes: list[list], kind: bytes) -> list:
    return [b for b in boxes if b[0] == kind]


def _set_duration(body: bytes, value: int, timescale: int | None = None, track: bool = False) -> bytes:
    """``mvhd``/``mdhd`` (time scale, duration) or ``tkhd`` (track id, reserved, duration) with a new duration
    (and time scale); always written as version 1 (64-bit times)."""
    version, flags = body[0], body[1:4]
    if version == 0:
        ctime, mtime, a = struct.unpack(">III", body[4:16])
        if track:
            reserved, tail = struct.unpack(">I", body[16:20])[0], body[24:]
        else:
            tail = body[20:]
    else:
        ctime, mtime, a = struct.unpack(">QQI", body[4:24])
        if track:
            reserved, tail = struct.unpack(">I", body[24:28])[0], body[36:]
        else:
            tail = body[32:]
    if track:
        return bytes([1]) + flags + struct.pack(">QQIIQ", ctime, mtime, a, reserved, value) + tail
    return bytes([1]) + flags + struct.pack(">QQIQ", ctime, mtime, a if timescale is None else timescale, value) + tail


def set_mp4_durations(path: str | os.PathLike, durations: list[int], timescale: int) -> None:
    """Give the single video track of an MP4 written by :class:`FrameWriter` these per-frame durations.

    Rewrites ``stts`` (run-length durations), the media time scale and duration (``mdhd``), the track and
    movie durations (``tkhd``, ``mvhd``) and drops the edit list (the start offset is applied when muxing).
    The ``moov`` box must follow ``mdat`` (ffmpeg's default), so no chunk offset moves."""
    path = Path(path)
    with open(path, "rb") as fh:
        end = os.fstat(fh.fileno()).st_size
        tops, i = [], 0
        while i + 8 <= end:
            fh.seek(i)
            hdr = fh.read(16)
            size, kind = struct.unpack(">I4s", hdr[:8])
            if size == 1:
                size = struct.unpack(">Q", hdr[8:16])[0]
            elif size == 0:
                size = end - i
            if size < 8:
                raise ValueError(f"{path}: malformed MP4 box {kind!r} at offset {i}")
            tops.append((kind, i, size))
            i += size
        kinds = [t[0] for t in tops]
        if b"moov" not in kinds or b"mdat" not in kinds or kinds.index(b"moov") < kinds.index(b"mdat"):
            raise ValueError(f"{path}: expected an MP4 with its moov box after mdat")
        _, moov_at, moov_size = tops[kinds.index(b"moov")]
        fh.seek(moov_at)
        raw = fh.read(moov_size)
        after = fh.read()
    top = _parse_boxes(raw, 0, len(raw))
    moov = _find(top, b"moov")[0][1]
    traks = _find(moov, b"trak")
    if len(traks) != 1:
        raise ValueError(f"{path}: expected one track, found {len(traks)}")
    trak = traks[0][1]
    mdia = _find(trak, b"mdia")[0][1]
    stbl = _find(_find(mdia, b"minf")[0][1], b"stbl")[0][1]
    if _find(stbl, b"ctts"):
        raise ValueError(f"{path}: the track has B-frames (ctts); durations cannot be set per frame")
    stsz = _find(stbl, b"stsz")[0][1]
    n_samples = struct.unpack(">I", stsz[8:12])[0]
    if n_samples != len(durations):
        raise ValueError(f"{path}: {n_samples} frames written but {len(durations)} timestamps")
    runs: list[list[int]] = []
    for d in durations:
        if runs and runs[-1][1] == d:
            runs[-1][0] += 1
        else:
            runs.append([1, int(d)])
    stts = _find(stbl, b"stts")[0]
    stts[1] = b"\0\0\0\0" + struct.pack(">I", len(runs)) + b"".join(struct.pack(">II", c, d) for c, d in runs)
    total = int(sum(durations))
    mdhd = _find(mdia, b"mdhd")[0]
    mdhd[1] = _set_duration(mdhd[1], total, timescale=timescale)
    mvhd = _find(moov, b"mvhd")[0]
    movie_scale = struct.unpack(">I", mvhd[1][12:16] if mvhd[1][0] == 0 else mvhd[1][20:24])[0]
    movie_total = math.ceil(total * movie_scale / timescale)
    mvhd[1] = _set_duration(mvhd[1], movie_total)
    tkhd = _find(trak, b"tkhd")[0]
    tkhd[1] = _set_duration(tkhd[1], movie_total, track=True)
    trak[:] = [b for b in trak if b[0] != b"edts"]
    with open(path, "r+b") as fh:
        fh.seek(moov_at)
        fh.write(_build([[b"moov", moov]]) + after)
        fh.truncate()


# ----------------------------------------------------------------------------- mux


def _metadata_keys(src: str | os.PathLike) -> list[str]:
    """Global metadata keys of ``src`` (ffmpeg's ffmetadata dump)."""
    p = _run([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(src), "-f", "ffmetadata", "-"])
    keys = []
    for line in p.stdout.splitlines():
        if line.startswith((";", "[")) or "=" not in line:
            continue
        keys.append(line.split("=", 1)[0].replace("\\=", "="))
    return keys


def mux(video: str | os.PathLike, src: str | os.PathLike, out: str | os.PathLike, info: VideoInfo,
        metadata: str = "strip") -> list[str]:
    """``video`` (the protected frames) + the audio of ``src`` -> ``out``; returns notes (e.g. ``audio_aac``).

    The video is delayed by the source's first frame time (:attr:`VideoInfo.start`), so it keeps its place
    against the audio, which ffmpeg also measures from the start of the source file."""
    notes: list[str] = []
    if metadata == "strip":
        meta = ["-map_metadata", "-1", "-map_chapters", "-1", "-metadata:s", "handler_name="]
    else:
        meta = ["-map_metadata", "1"]
        if metadata == "keep":
            dropped = [k for k in _metadata_keys(src) if LOCATION_KEY.search(k)]
            for k in dropped:
                meta += ["-metadata", f"{k}="]
            if dropped:
                notes.append("location_removed")
    offset = ["-itsoffset", f"{info.start:.6f}"] if info.start > 0 else []
    base = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y", *offset, "-i", str(video), "-i",
            str(src), "-map", "0:v:0"]
    if info.has_audio:
        cmds = [(base + ["-map", "1:a?", "-c:v", "copy", "-c:a", a] + meta + [str(out)], a) for a in ("copy", "aac")]
    else:
        cmds = [(base + ["-c:v", "copy"] + meta + [str(out)], "")]
    err = ""
    for cmd, a in cmds:
        p = _run(cmd)
        if p.returncode == 0:
            if a == "aac":
                notes.append("audio_reencoded_aac")
            return notes
        err = _last_line(p.stderr)
    raise RuntimeError(f"ffmpeg could not write the output container: {err}")


def count_packets(path: str | os.PathLike) -> int:
    """Number of video packets (= frames for our encodes) in ``path``, without decoding."""
    p = _run([ffmpeg_exe(), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:V:0", "-c", "copy", "-f",
              "framecrc", "-"])
    return sum(1 for ln in p.stdout.splitlines() if ln and not ln.startswith("#"))
