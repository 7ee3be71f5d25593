"""Protection latency per photo (end to end, decode -> save) and video FPS, with a stage breakdown.

Photos: ``--photos N`` LFW images (one face each) are upscaled into larger frames whose background is a
smooth random colour field with fine noise (no face in it), and saved as JPEG (quality 95): 640x480 (face upscaled 1.5x) and 1920x1080
(face upscaled 3x). Each file is protected by :meth:`Protector.protect_photo` (JPEG in, JPEG out, q95) with a
random PPT, for each ``--detector`` (default: MTCNN, and auto = BlazeFace with MTCNN fallback); one warm-up file per size is excluded (the first MTCNN call of a process and of each new
image size builds its kernels: seconds). Reported: median / p90 total time, and the median of each stage
(decode, detect, canvas, mesh, uv_raster, paste = warp + add + round, encode, write).

Video: a 480p (640x480) H.264 clip of ``--frames`` frames at 25 FPS (an LFW face drifting across the frame,
every 10th frame without a face) with an AAC sine audio track; protected by :meth:`Protector.protect_video`
(H.264 output, audio copied) with MTCNN every ``--detect-every`` frames. FPS = frames / total wall time,
including decoding, encoding and muxing; also per-stage milliseconds per frame.

The machine is shared: the 1-minute load average before and after is recorded. Torch runs with
``--threads`` threads (default 1, see protego_nb.protect.media).

    python benchmarks/bench_protect.py --photos 10 --frames 100 --detect-every 1 10 --out bench_protect.json

Measured with that command (1 torch thread, shared 2-core CPU without GPU, torch 2.14.1), two runs; load
average (1 min) 3.07 -> 3.32 in run A and 3.76 -> 4.64 in run B (other jobs were running):

| | run A | run B |
|---|---|---|
| photo 640x480, ``detector=auto`` (default), median / p90 ms | 34.7 / 39.5 | 39.5 / 51.7 |
| photo 640x480, ``detector=mtcnn``, median / p90 ms | 61.4 / 71.6 | 71.7 / 82.1 |
| photo 1920x1080, auto, median / p90 ms | 48.4 / 51.2 | 76.9 / 91.1 |
| photo 1920x1080, mtcnn, median / p90 ms | 98.3 / 118.1 | 151.3 / 190.9 |
| video 480p FPS, auto, detect every 10 / every frame | 42.6 / 28.8 | 24.6 / 21.3 |
| video 480p FPS, mtcnn, detect every 10 / every frame | 29.8 / 13.1 | 26.0 / 12.2 |

Stage medians, 640x480, run A, ms: mtcnn: decode 2.2, detect 43.7, canvas 0.8, mesh 5.6, uv_raster 5.0,
paste 1.2, encode 1.9, write 1.0; auto: decode 2.8, detect 7.7, canvas 1.0, mesh 7.6, uv_raster 7.2, paste
1.7, encode 2.3, write 1.4. MTCNN is the bottleneck (70 % of the time); BlazeFace removes it. At 1080p decode
and encode (~12 ms each) join it. All 10 photos of each size were protected by every setting. The first
photo of a process costs 2.4-3.5 s with MTCNN (kernel set-up), 50-80 ms with auto. Flicker on a still face
(run B): 2.45 levels mean frame-to-frame change of the perturbation without smoothing, 1.10 with the
default One-Euro filter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protego_nb import paths  # noqa: E402
from protego_nb.faces import images  # noqa: E402
from protego_nb.io import atomic_write_text  # noqa: E402
from protego_nb.protect import media, texture  # noqa: E402

SIZES = {"640x480": ((480, 640), 1.5), "1920x1080": ((1080, 1920), 3.0)}


def lfw_files(n: int) -> list[Path]:
    root = paths.lfw_images_dir()
    people = sorted(p for p in root.iterdir() if p.is_dir())
    rng = np.random.default_rng(0)
    pick = rng.choice(len(people), size=n, replace=False)
    return [sorted(people[i].glob("*.jpg"))[0] for i in pick]


def background(seed: int, hw: tuple[int, int]) -> np.ndarray:
    """A face-free textured background: a smooth random colour field plus fine noise (JPEG-realistic)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    coarse = rng.integers(40, 220, (6, 8, 3), dtype=np.uint8)
    out = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    return np.clip(out + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)


def compose(face: np.ndarray, seed: int, hw: tuple[int, int], scale: float, at: tuple[float, float]) -> np.ndarray:
    h, w = hw
    out = background(seed, hw)
    s = round(face.shape[0] * scale)
    f = cv2.resize(face, (s, s), interpolation=cv2.INTER_CUBIC)
    y, x = int(at[1] * (h - s)), int(at[0] * (w - s))
    out[y : y + s, x : x + s] = f
    return out


def q(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def bench_photos(prot: media.Protector, files: list[Path], tmp: Path) -> dict:
    from PIL import Image

    res = {}
    n = len(files)
    for name, (hw, scale) in SIZES.items():
        rows = []
        for i in range(n + 1):  # first one = warm-up
            face = images.load_rgb(files[i % n])
            img = compose(face, i, hw, scale, (0.3 + 0.4 * (i % 3) / 2, 0.5))
            src = tmp / f"{name}_{i}.jpg"
            Image.fromarray(img).save(src, quality=95)
            r = prot.protect_photo(src, tmp / f"{name}_{i}_out.jpg")
            if i == 0:
                res[f"{name}_cold_ms"] = 1000 * r.timings.get("total", float("nan"))
                continue
            if r.status == "protected":
                rows.append(r.timings)
        totals = [1000 * t["total"] for t in rows]
        stages = ("decode", "detect", "canvas", "mesh", "uv_raster", "paste", "encode", "write")
        res[name] = {
            "n_protected": len(rows),
            "n": n,
            "median_ms": statistics.median(totals) if totals else None,
            "p90_ms": q(totals, 90) if totals else None,
            "stage_median_ms": {s: statistics.median(1000 * t.get(s, 0.0) for t in rows) for s in stages} if rows else {},
        }
    return res


def make_video(path: Path, files: list[Path], frames: int, fps: int = 25) -> None:
    import imageio_ffmpeg

    face = images.load_rgb(files[0])
    silent = path.with_name("silent.mp4")
    wr = imageio_ffmpeg.write_frames(str(silent), (640, 480), fps=fps, codec="libx264", quality=None,
                                     macro_block_size=1, output_params=["-crf", "18", "-preset", "veryfast"],
                                     ffmpeg_log_level="error")
    wr.send(None)
    for i in range(frames):
        if i % 10 == 9:
            wr.send(background(0, (480, 640)))
        else:
            wr.send(compose(face, 0, (480, 640), 1.3, (0.2 + 0.6 * i / max(frames - 1, 1), 0.5)))
    wr.close()
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([exe, "-y", "-v", "error", "-i", str(silent), "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={frames / fps}", "-c:v", "copy", "-c:a", "aac", str(path)],
                   check=True)


def bench_video(prot: media.Protector, files: list[Path], frames: int, tmp: Path) -> dict:
    src = tmp / "clip480p.mp4"
    make_video(src, files, frames)
    t = time.perf_counter()
    r = prot.protect_video(src, tmp / "clip480p_out.mp4")
    wall = time.perf_counter() - t
    per = {k: 1000 * v / max(r.frames, 1) for k, v in r.timings.items() if k != "total"}
    return {"status": r.status, "message": r.message, "frames": r.frames, "frames_protected": r.frames_protected,
            "frames_without_face": r.frames_without_face, "audio": r.audio, "fps": r.frames / wall,
            "seconds": wall, "stage_ms_per_frame": per, "notes": r.notes}


def bench_flicker(tex: torch.Tensor, files: list[Path], tmp: Path, frames: int = 40) -> dict:
    """Frame-to-frame change of the perturbation on a still face with sensor noise, smoothing on vs off.

    A 480p clip of one still LFW face plus fresh Gaussian noise (sigma 2 levels) per frame, lossless in and
    out; ``delta_t = out_t - in_t``; flicker = mean over face pixels of ``|delta_t - delta_{t-1}|`` (levels).
    Without smoothing, landmark/mesh jitter moves the texture every frame.
    """
    import imageio_ffmpeg

    rng = np.random.default_rng(0)
    still = compose(images.load_rgb(files[0]), 0, (480, 640), 1.3, (0.5, 0.5))
    clip = [np.clip(still + rng.normal(0, 2, still.shape), 0, 255).astype(np.uint8) for _ in range(frames)]
    src = tmp / "still.mkv"
    wr = imageio_ffmpeg.write_frames(str(src), (640, 480), fps=25, codec="libx264rgb", pix_fmt_out="rgb24",
                                     quality=None, macro_block_size=1, output_params=["-qp", "0"])
    wr.send(None)
    for f in clip:
        wr.send(f)
    wr.close()
    out = {}
    for name, sm in (("one_euro_default", None), ("none", (1e6, 0.0))):
        kw = {} if sm is None else {"smoothing": sm}
        p = media.Protector(tex, {"epsilon": 16 / 255, "mode": "uv"}, video_codec="lossless", **kw)
        dst = tmp / f"still_{name}.mkv"
        p.protect_video(src, dst)
        rd = imageio_ffmpeg.read_frames(str(dst))
        next(rd)
        got = [np.frombuffer(b, np.uint8).reshape(480, 640, 3).astype(np.int16) for b in rd]
        deltas = [g - c for g, c in zip(got, clip)]
        face = np.abs(np.stack(deltas)).max(axis=(0, 3)) > 0
        diffs = [float(np.abs(a - b).max(-1)[face].mean()) for a, b in zip(deltas[1:], deltas[:-1])]
        out[name] = {"flicker_levels": float(np.mean(diffs)), "face_pixels": int(face.sum())}
    return out


def owner_thresholds(models: list[str], per_fold: int = 40) -> dict:
    """Cosine scores of LFW pairs (``pairs.txt``, ``per_fold`` per fold, seed 0) on this package's canvases:
    the numbers behind ``protego_nb.protect.owner.OWNER_THRESHOLDS``."""
    from sklearn.metrics import roc_curve

    from protego_nb import data
    from protego_nb.evaluate import lfw_benchmark, verification
    from protego_nb.models import embed as features
    from protego_nb.models import zoo

    pairs = verification.load_pairs().sample(per_fold=per_fold, seed=0)
    canv, fallbacks, _ = lfw_benchmark.pair_canvases(data.lfw(), pairs.images())
    out: dict = {"n_pairs": len(pairs), "fallback_canvases": len(fallbacks)}
    ids = list(canv)
    for name in models:
        emb = features.clean_features(zoo.load(name), [canv[i] for i in ids], ids=ids, batch_size=32,
                                      model_name=name, progress=False)
        sc, kept = verification.pair_scores(emb, pairs, "cosine")
        same = pairs.same[kept]
        t, acc = verification.best_threshold(sc, same)
        fpr, _, thr = roc_curve(same, sc)
        i = int(np.searchsorted(fpr, 0.01, side="right") - 1)
        out[name] = {"best_threshold": t, "best_accuracy": acc, "threshold_far_1pct": float(thr[i]),
                     "matched_p5": q(list(sc[same]), 5), "mismatched_p99": q(list(sc[~same]), 99)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=10)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--detect-every", type=int, nargs="+", default=[5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--detector", nargs="+", default=["mtcnn", "auto"], choices=("auto", "mtcnn", "blazeface"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--owner-thresholds", action="store_true",
                    help="also score LFW pairs for the owner check's cosine thresholds (mobilefacenet, dlib_resnet)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"load_before": os.getloadavg(), "threads": args.threads, "device": args.device,
                    "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__}
    tex = texture.init_texture(16 / 255, torch.Generator().manual_seed(0))
    files = lfw_files(args.photos)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for kind in args.detector:
            prot = media.Protector(tex, {"epsilon": 16 / 255, "mode": "uv"}, device=args.device, detector_kind=kind)
            report[f"photos_{kind}"] = bench_photos(prot, files, tmp)
            report[f"video_480p_{kind}"] = {}
            for k in args.detect_every:
                pv = media.Protector(tex, {"epsilon": 16 / 255, "mode": "uv"}, device=args.device, detect_every=k,
                                     detector=prot.detector, detector_kind=kind)
                report[f"video_480p_{kind}"][f"detect_every_{k}"] = bench_video(pv, files, args.frames, tmp)
        report["flicker_still_face"] = bench_flicker(tex, files, tmp)
    if args.owner_thresholds:
        report["owner_thresholds"] = owner_thresholds(["mobilefacenet", "dlib_resnet"])
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=1, default=float)
    print(text)
    if args.out:
        atomic_write_text(args.out, text)


if __name__ == "__main__":
    main()
