"""``protego-nb``: train a Privacy Protection Texture from your photos, then protect photos and videos with it.

    protego-nb train PHOTOS_DIR -o me.ppt [--preset release|paper|ci] [--surrogates A B ...] [--epsilon 16]
                     [--set input_diversity=0.5 blur_view=1.5 ...]
    protego-nb protect IN... --ppt me.ppt -o OUTDIR [--faces owner|all] [--jpeg-quality 95] [--keep-metadata]

Exit status: 0 when every input was handled (inputs skipped because they hold no face to protect are not
errors), 1 when any input failed (or training failed), 2 for usage errors (bad arguments, a missing or
invalid PPT, an output folder that cannot be written). ``--help`` imports nothing heavy (no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with the command line or its files, reported with exit status 2."""


def parse_epsilon(text: str) -> float:
    """``16`` or ``16/255`` (levels of 255) or ``0.0627`` (a fraction of the full range) -> fraction in (0, 1)."""
    try:
        value = float(Fraction(text.strip()))
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"epsilon {text!r} is not a number such as 16 or 16/255") from exc
    if "/" not in text and value >= 1:
        value /= 255.0
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"epsilon {text!r} must be in (0, 255) levels")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="protego-nb",
        description="Protego: protect your face photos against face-recognition search with a personal "
                    "Privacy Protection Texture (PPT).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser("train", help="learn your PPT from a folder of your own photos",
                       description="Detect your face in every photo of PHOTOS_DIR, map it to UV space and "
                                   "train your PPT with the surrogate face-recognition models.")
    t.add_argument("photos_dir", metavar="PHOTOS_DIR", help="folder with photos of you (one face each, ideally)")
    t.add_argument("-o", "--output", required=True, help="the PPT file to write (e.g. me.ppt)")
    t.add_argument("--preset", default="release", choices=("release", "paper", "ci"),
                   help="training preset (default: release; ci is a seconds-long smoke run)")
    t.add_argument("--surrogates", nargs="+", metavar="MODEL",
                   help="surrogate FR models (default: the zoo's default ensemble; never the intruder)")
    t.add_argument("--epsilon", type=parse_epsilon, help="L-inf bound, e.g. 16 or 16/255 (default: the preset's)")
    t.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    t.add_argument("--seed", type=int, help="override the preset's seed")
    t.add_argument("--owner-model", default="mobilefacenet",
                   help="model of the owner's reference embedding stored in the PPT (default: mobilefacenet)")
    t.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE", dest="settings",
                   help="override training options, e.g. --set input_diversity=0.5 blur_view=1.5 "
                        "(any TrainConfig field; values as JSON: numbers, true/false, strings)")
    t.add_argument("--checkpoint", help="checkpoint file to resume an interrupted training")
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    q = sub.add_parser("protect", help="protect photos and videos with your PPT",
                       description="Protect photos (same format, full resolution) and videos (all frames, "
                                   "audio kept). Folders expand to their photo and video files.")
    q.add_argument("inputs", nargs="+", metavar="IN", help="photo or video files, or folders of them")
    q.add_argument("--ppt", required=True, help="your PPT file (from 'protego-nb train')")
    q.add_argument("-o", "--output-dir", required=True, help="folder for the protected files (created if needed)")
    q.add_argument("--faces", default="owner", choices=("owner", "all"),
                   help="owner: only the face matching the PPT's owner (default); all: every face")
    q.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1..100 (default 95)")
    q.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF (without GPS); default: strip EXIF/XMP, keep only the colour profile")
    q.add_argument("--keep-gps", action="store_true", help="with --keep-metadata, keep the GPS position too")
    q.add_argument("--epsilon", type=parse_epsilon, help="a bound below the PPT's own (default: the PPT's)")
    q.add_argument("--detector", default="auto", choices=("auto", "mtcnn", "blazeface"),
                   help="face detector: auto (default: BlazeFace, MTCNN when BlazeFace finds no face), "
                        "mtcnn (as in training; slower, finds harder faces) or blazeface")
    q.add_argument("--detect-every", type=int, default=10, help="videos: run face detection every N frames")
    q.add_argument("--video-codec", default="h264", choices=("h264", "lossless"),
                   help="h264 (CRF 17) or lossless (libx264rgb -qp 0, large files)")
    q.add_argument("--overwrite", action="store_true", help="replace existing files in the output folder")
    q.add_argument("--report", help="also write the per-file results as JSON here (default: none)")
    q.add_argument("--device", default="cpu", help="cpu (default), auto or cuda")
    q.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the per-face networks are small, and extra threads "
                        "slow everything down badly on a busy machine)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ----------------------------------------------------------------------------- train


def _cmd_train(args: argparse.Namespace) -> int:
    src = Path(args.photos_dir)
    if not src.is_dir():
        raise UsageError(f"{src}: not a folder of photos")
    out = Path(args.output)
    _check_writable_dir(out.parent if str(out.parent) else Path("."))

    import torch

    from .faces import detect, uv
    from .models import zoo
    from .protect import media
    from .protect.texture import UVWarp
    from .protect.train import TrainConfig, train_ppt
    from .report import resolve_device

    photos, ignored = media.expand_inputs([src])
    photos = [p for p in photos if media.media_kind(p) == "photo"]
    if not photos:
        raise UsageError(f"{src}: no photos found (looked for {', '.join(sorted(media.PHOTO_FORMATS))})")
    surrogates = list(args.surrogates or zoo.SURROGATES_DEFAULT)
    unknown = [s for s in surrogates if s not in zoo.MODELS]
    if unknown:
        raise UsageError(f"unknown surrogate model(s) {unknown}; known: {', '.join(zoo.MODELS)}")
    if zoo.INTRUDER_DEFAULT in surrogates:
        raise UsageError(f"{zoo.INTRUDER_DEFAULT!r} is the held-out intruder model and cannot be a surrogate")
    if args.owner_model not in zoo.MODELS:
        raise UsageError(f"unknown owner model {args.owner_model!r}")
    overrides = {k: v for k, v in (("eps", args.epsilon), ("epochs", args.epochs), ("seed", args.seed))
                 if v is not None}
    base = TrainConfig.from_preset(args.preset).to_dict()
    for item in args.settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item!r}: expected FIELD=VALUE")
        if key not in base:
            raise UsageError(f"--set {item!r}: unknown training option {key!r}; known: {', '.join(sorted(base))}")
        try:
            val = json.loads(value)
        except json.JSONDecodeError:
            val = value  # a bare string, e.g. grad_balance=per_term
        want = type(base[key])
        if want is float and type(val) is int:
            val = float(val)
        if base[key] is not None and type(val) is not want:
            raise UsageError(f"--set {item!r}: {key} takes a {want.__name__}, got {value!r}")
        overrides[key] = val
    try:
        cfg = TrainConfig.from_preset(args.preset, **overrides)
        cfg.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    device = resolve_device(args.device)
    progress = not args.no_progress

    rep = detect.build_canvases(photos, progress=progress)
    x, lm = detect.canvases_to_tensor(rep.canvases)
    for f in rep.failures:
        print(f"skipped {f.message}", file=sys.stderr)
    if len(rep.canvases) == 0:
        print(f"error: no usable face in any of the {len(photos)} photos of {src}", file=sys.stderr)
        return EXIT_FAILED
    meshres, uvm = uv.canvas_uv(x, progress=progress)
    ok = torch.from_numpy(meshres.ok)
    for c, good in zip(rep.canvases, meshres.ok):
        if not good:
            print(f"skipped {c.path}: no face mesh on its canvas [no_mesh]", file=sys.stderr)
    if not bool(ok.any()):
        print("error: no face mesh could be fitted to any canvas", file=sys.stderr)
        return EXIT_FAILED
    idx = ok.nonzero().squeeze(1)
    x, lm = x[idx], lm[idx]
    warps = UVWarp.from_uvmap(uvm).select(idx.tolist())
    try:
        models = {n: zoo.load(n, device) for n in surrogates}
        owner = zoo.load(args.owner_model, device)
    except (zoo.ModelUnavailable, KeyError) as exc:
        raise UsageError(str(exc)) from exc
    result = train_ppt(x, lm, warps, models, cfg, device=device, checkpoint=args.checkpoint,
                       progress=progress, intruder=zoo.INTRUDER_DEFAULT)
    ref = media.owner_embedding(owner, x.to(device), lm.to(device))
    result.save(out, owner_model=args.owner_model, owner_embedding=[round(float(v), 6) for v in ref],
                n_train_images=int(len(idx)), source="protego-nb train")
    print(f"wrote {out}: {len(idx)} training faces of {len(photos)} photos, preset {cfg.preset}, "
          f"epsilon {cfg.eps * 255:.3g}/255, surrogates {', '.join(surrogates)}, {result.steps} steps in "
          f"{result.seconds:.1f} s")
    if len(idx) < 5:
        print(f"note: only {len(idx)} training face(s); 10 or more photos in varied poses give a better PPT")
    if ignored:
        print(f"ignored {len(ignored)} file(s) without a photo extension in {src}")
    return EXIT_OK


# ----------------------------------------------------------------------------- protect


def _check_writable_dir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{d}: cannot create the output folder ({exc.strerror or exc})") from exc
    if not d.is_dir():
        raise UsageError(f"{d}: exists and is not a folder")
    if not os.access(d, os.W_OK | os.X_OK):
        raise UsageError(f"{d}: the output folder is not writable")


def _targets(files: list[Path], outdir: Path) -> list[Path]:
    """Output path per input: the same file name in ``outdir``; name clashes get ``-2``, ``-3``, ... ."""
    seen: Counter = Counter()
    out = []
    for f in files:
        seen[f.name] += 1
        n = seen[f.name]
        out.append(outdir / (f.name if n == 1 else f"{f.stem}-{n}{f.suffix}"))
    return out


def summary_table(results: list) -> str:
    """Plain-text summary: counts by status, then one line per skipped or failed input with its reason."""
    counts = Counter(r.status for r in results)
    lines = ["", "status     files", "---------  -----"]
    for s in ("protected", "skipped", "failed"):
        lines.append(f"{s:<9}  {counts.get(s, 0):>5}")
    faces = sum(sum(f.status == "protected" for f in r.faces) for r in results if r.kind == "photo")
    frames = [(r.frames_protected, r.frames) for r in results if r.kind == "video" and r.status == "protected"]
    lines.append(f"faces protected in photos: {faces}")
    if frames:
        lines.append(f"video frames with a protected face: {sum(a for a, _ in frames)} of {sum(b for _, b in frames)}")
    for s in ("skipped", "failed"):
        bad = [r for r in results if r.status == s]
        if bad:
            lines += ["", f"{s}:"]
            lines += [f"  {r.input}  [{r.reason}]  {r.message.split(': ', 1)[-1] if r.message else ''}" for r in bad]
    return "\n".join(lines)


def _cmd_protect(args: argparse.Namespace) -> int:
    outdir = Path(args.output_dir)
    ppt = Path(args.ppt)
    if not ppt.is_file():
        raise UsageError(f"{ppt}: no such PPT file (create one with 'protego-nb train PHOTOS_DIR -o {ppt}')")
    if not 1 <= args.jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality {args.jpeg_quality} must be in 1..100")
    if args.detect_every < 1:
        raise UsageError(f"--detect-every {args.detect_every} must be >= 1")
    if args.keep_gps and not args.keep_metadata:
        raise UsageError("--keep-gps needs --keep-metadata")
    _check_writable_dir(outdir)

    from tqdm.auto import tqdm

    from .protect import media
    from .protect.texture import PPTFileError
    from .report import resolve_device

    if args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be >= 1")
    import torch

    torch.set_num_threads(args.threads)
    metadata = "keep_all" if args.keep_gps else ("keep" if args.keep_metadata else "strip")
    try:
        prot = media.Protector.from_file(
            ppt, faces=args.faces, eps=args.epsilon, device=resolve_device(args.device),
            jpeg_quality=args.jpeg_quality, metadata=metadata, video_codec=args.video_codec,
            detect_every=args.detect_every, detector_kind=args.detector)
    except PPTFileError as exc:
        raise UsageError(f"invalid PPT: {exc}") from exc
    except ValueError as exc:
        raise UsageError(f"{ppt}: {exc}") from exc

    files, ignored = media.expand_inputs(args.inputs)
    results = []
    for src, dst in tqdm(list(zip(files, _targets(files, outdir))), desc="protect", unit="file",
                         disable=args.no_progress):
        if dst.exists() and not args.overwrite:
            results.append(media.ProtectResult(str(src), media.media_kind(src), "failed", reason="output_exists",
                                               message=f"{dst}: exists (use --overwrite to replace it)"))
            continue
        if media.media_kind(src) == "video":
            r = prot.protect_video(src, dst, progress=not args.no_progress)
        else:
            r = prot.protect_photo(src, dst)
        results.append(r)
    print(summary_table(results))
    if ignored:
        print(f"\nignored {len(ignored)} file(s) without a photo or video extension: "
              + ", ".join(p.name for p in ignored[:5]) + (" ..." if len(ignored) > 5 else ""))
    if args.report:
        from .report import atomic_write_text

        atomic_write_text(args.report, json.dumps([r.to_dict() for r in results], indent=1))
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``protego-nb``; returns the exit status (see the module docstring)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 0 for --help, 2 for usage errors
        return int(exc.code or 0)
    try:
        if args.command == "train":
            return _cmd_train(args)
        return _cmd_protect(args)
    except UsageError as exc:
        print(f"protego-nb {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
