"""Video protection end to end on small generated clips: every frame once with its timestamp, audio in sync,
location tags, broken and truncated files (protego_nb.protect.video and Protector.protect_video)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from protego_nb.protect import media, texture, video

EPS = 16 / 255
pytestmark = pytest.mark.usefixtures("one_thread")


def ff(*args: str) -> str:
    """Run the bundled ffmpeg quietly; returns its stderr."""
    p = subprocess.run([video.ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stderr


def segment(path: Path, rate: int, frames: int, size: str = "64x48") -> Path:
    ff("-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}", "-frames:v", str(frames), "-c:v", "libx264",
       "-pix_fmt", "yuv420p", "-video_track_timescale", "15360", str(path))
    return path


def vfr_clip(d: Path) -> Path:
    """15 frames at 10 fps then 15 at 30 fps, joined with the concat demuxer (-c copy), with a 2 s tone."""
    a, b = segment(d / "a.mp4", 10, 15), segment(d / "b.mp4", 30, 15)
    (d / "list.txt").write_text(f"file '{a}'\nfile '{b}'\n")
    out = d / "vfr.mp4"
    ff("-f", "concat", "-safe", "0", "-i", str(d / "list.txt"), "-f", "lavfi", "-i",
       "sine=frequency=440:duration=2", "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", str(out))
    return out


def container_duration(path: Path) -> float:
    p = subprocess.run([video.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    h, m, s = re.search(r"Duration: (\d+):(\d+):([\d.]+)", p.stderr).groups()
    return int(h) * 3600 + int(m) * 60 + float(s)


def audio_seconds(path: Path) -> float:
    """Decoded audio length in seconds (samples / rate)."""
    p = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "s16le",
                        "-ac", "1", "-ar", "8000", "-"], capture_output=True)
    return len(p.stdout) / 2 / 8000


@pytest.fixture(scope="module")
def prot(tmp_path_factory) -> media.Protector:
    d = tmp_path_factory.mktemp("ppt")
    tex = texture.init_texture(EPS, torch.Generator().manual_seed(1))
    tex_path = texture.save_ppt(d / "x.ppt", tex, {"epsilon": EPS})
    return media.Protector.from_file(tex_path, detector_kind="blazeface", video_codec="lossless")


def test_vfr_keeps_every_frame_its_timestamp_and_the_audio(prot, tmp_path):
    src = vfr_clip(tmp_path)
    info = video.probe(src)
    assert info.n_frames == 30 and abs(info.duration - 2.0) < 1e-6
    r = prot.protect_video(src, tmp_path / "out" / "vfr.mp4")
    assert r.status == "protected", r.message
    assert r.frames == 30 and "variable_frame_rate" in r.notes
    out = video.probe(tmp_path / "out" / "vfr.mp4")
    assert out.n_frames == 30
    t_in = [float(p * info.time_base) for p in info.pts]
    t_out = [float(p * out.time_base) for p in out.pts]
    assert np.abs(np.array(t_in) - np.array(t_out)).max() < 1e-3  # every frame at its own time
    assert abs(out.duration - 2.0) < 1e-3 and abs(audio_seconds(tmp_path / "out" / "vfr.mp4") - 2.0) < 0.05
    assert abs(container_duration(tmp_path / "out" / "vfr.mp4") - 2.0) < 0.05
    # lossless: the (face-less) frames come out bit-identical, in order
    frames_in = list(video.FrameReader(src, 64, 48, tmp_path / "l1"))
    frames_out = list(video.FrameReader(tmp_path / "out" / "vfr.mp4", 64, 48, tmp_path / "l2"))
    assert len(frames_out) == 30 and all((a == b).all() for a, b in zip(frames_in, frames_out))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_stream_loop_300_in_300_out(prot, tmp_path):
    seg = segment(tmp_path / "s.mp4", 30, 30, size="32x24")
    ff("-i", str(seg), "-f", "lavfi", "-i", "sine=duration=1", "-map", "0:v", "-map", "1:a", "-c:v", "copy",
       "-c:a", "aac", str(tmp_path / "s_a.mp4"))
    ff("-stream_loop", "9", "-i", str(tmp_path / "s_a.mp4"), "-c", "copy", str(tmp_path / "loop.mp4"))
    info = video.probe(tmp_path / "loop.mp4")
    assert info.n_frames == 300
    r = prot.protect_video(tmp_path / "loop.mp4", tmp_path / "loop_out.mkv")
    assert r.status == "protected" and r.frames == 300, r.message
    out = video.probe(tmp_path / "loop_out.mkv")
    assert out.n_frames == 300 and abs(out.duration - info.duration) < 2e-3


def test_rotated_and_late_starting_video(prot, tmp_path):
    seg = segment(tmp_path / "s.mp4", 10, 15)
    ff("-display_rotation", "90", "-i", str(seg), "-c", "copy", str(tmp_path / "rot.mp4"))
    r = prot.protect_video(tmp_path / "rot.mp4", tmp_path / "rot_out.mp4")
    out = video.probe(tmp_path / "rot_out.mp4")
    assert r.status == "protected" and (out.width, out.height, out.n_frames) == (48, 64, 15)  # stored upright
    # the picture starts 0.5 s after the sound: it must still start 0.5 s after it
    ff("-itsoffset", "0.5", "-i", str(seg), "-f", "lavfi", "-i", "sine=duration=2", "-map", "0:v", "-map", "1:a",
       "-c:v", "copy", "-c:a", "aac", str(tmp_path / "late.mp4"))
    assert abs(video.probe(tmp_path / "late.mp4").start - 0.5) < 1e-3
    r = prot.protect_video(tmp_path / "late.mp4", tmp_path / "late_out.mp4")
    out = video.probe(tmp_path / "late_out.mp4")
    assert r.status == "protected" and abs(out.start - 0.5) < 2e-3 and abs(out.duration - 1.5) < 2e-3
    assert abs(audio_seconds(tmp_path / "late_out.mp4") - 2.0) < 0.05


def test_location_tag_removed_unless_keep_gps(prot, tmp_path):
    seg = segment(tmp_path / "s.mp4", 10, 5)
    src = tmp_path / "geo.mp4"
    ff("-i", str(seg), "-c", "copy", "-metadata", "location=+48.8584+002.2945/", "-metadata", "title=Trip",
       str(src))
    assert "location" in video._metadata_keys(src)
    for metadata, title, location in (("strip", False, False), ("keep", True, False), ("keep_all", True, True)):
        p = media.Protector(prot.texture, prot.meta, metadata=metadata, detector=prot.detector,
                            detector_kind="blazeface")
        dst = tmp_path / f"{metadata}.mp4"
        r = p.protect_video(src, dst)
        assert r.status == "protected", r.message
        keys = video._metadata_keys(dst)
        assert ("title" in keys) == title, (metadata, keys)
        assert any(video.LOCATION_KEY.search(k) for k in keys) == location, (metadata, keys)
        raw = dst.read_bytes()
        assert (b"loci" in raw or b"\xa9xyz" in raw or b"+48.8584" in raw) == location


@pytest.mark.parametrize("case", ["text", "empty", "audio_only", "no_index"])
def test_broken_videos_give_a_one_line_cause(prot, tmp_path, case):
    src = tmp_path / "bad.mp4"
    if case == "text":
        src.write_text("this is not a video\n" * 5)
    elif case == "empty":
        src.write_bytes(b"")
    elif case == "audio_only":
        ff("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(src))
    else:  # moov at the end, file cut in the middle: no index at all
        full = segment(tmp_path / "full.mp4", 10, 20)
        src.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    r = prot.protect_video(src, tmp_path / "out.mp4")
    want = {"text": ("not_a_video", "not a video container"), "empty": ("not_a_video", "empty"),
            "audio_only": ("no_video", "no video stream"), "no_index": ("truncated", "truncated")}[case]
    assert r.status == "failed" and r.reason == want[0] and want[1] in r.message, r.message
    assert "\n" not in r.message and "ffmpeg version" not in r.message and len(r.message) < 250
    assert str(src) in r.message
    assert not (tmp_path / "out.mp4").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_no_video_frames_and_truncated_with_index(prot, tmp_path):
    full = tmp_path / "fs.mp4"
    seg = segment(tmp_path / "s.mp4", 10, 30)
    ff("-i", str(seg), "-c", "copy", "-movflags", "+faststart", str(full))
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    r = prot.protect_video(cut, tmp_path / "cut_out.mp4")
    assert r.status == "protected", r.message
    assert 0 < r.frames < 30 and "truncated" in r.notes
    assert any("cut short" in w for w in r.warnings)
    assert video.probe(tmp_path / "cut_out.mp4").n_frames == r.frames


def test_output_mode_follows_the_input(prot, tmp_path):
    src = segment(tmp_path / "m.mp4", 10, 3)
    os.chmod(src, 0o644)
    old = os.umask(0o022)
    try:
        r = prot.protect_video(src, tmp_path / "m_out.mp4")
    finally:
        os.umask(old)
    assert r.status == "protected", r.message
    assert (tmp_path / "m_out.mp4").stat().st_mode & 0o777 == 0o644


def test_set_mp4_durations_rejects_a_frame_count_mismatch(tmp_path):
    w = video.FrameWriter(tmp_path / "v.mp4", 16, 16, 10.0)
    for k in range(3):
        w.write(np.full((16, 16, 3), 40 * k, np.uint8))
    assert w.close() == 0
    with pytest.raises(ValueError, match="3 frames written but 2"):
        video.set_mp4_durations(tmp_path / "v.mp4", [100, 100], 1000)
    video.set_mp4_durations(tmp_path / "v.mp4", [100, 300, 50], 1000)
    _, pts, dur, size, _ = video.frame_times(tmp_path / "v.mp4")
    assert size == (16, 16) and len(pts) == 3
