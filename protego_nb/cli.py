"""``protego-nb``: train a Privacy Protection Texture from your photos, then protect photos and videos with it.

    protego-nb train PHOTOS_DIR -o me.ppt [--preset release|paper|transfer|ci] [--surrogates A B ...] [--epsilon 16]
                     [--set input_diversity=0.5 blur_view=1.5 ...]
    protego-nb protect IN... --ppt me.ppt -o OUTDIR [--faces owner|all] [--jpeg-quality 95] [--keep-metadata]
                       [--recursive]

Exit status: 0 when every input was handled (inputs skipped because they hold no face to protect are not
errors), 1 when any input failed (or training failed), 2 for usage errors (bad arguments, a device that is
not there, a missing or invalid PPT or checkpoint, an output that cannot be written, inputs that hold no
photo or video), reported in one line before any work is done and before anything is created.
``--help`` imports nothing heavy (no torch).

Size: the argument parser and the two commands with every check that runs before work starts (usage errors exit 2);
the protection itself lives in :mod:`protego_nb.protect.media`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import Counter, defaultdict
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
    t.add_argument("--preset", default="release", choices=("release", "paper", "transfer", "ci"),
                   help="training preset (default: release; transfer: paper + 4 textures per user, the best measured "
                        "against a held-out model; ci is a seconds-long smoke run)")
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
    t.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")

    q = sub.add_parser("protect", help="protect photos and videos with your PPT",
                       description="Protect photos (same format, full resolution) and videos (all frames, "
                                   "audio kept). Folders expand to their photo and video files (sub-folders "
                                   "with --recursive).")
    q.add_argument("inputs", nargs="+", metavar="IN", help="photo or video files, or folders of them")
    q.add_argument("-r", "--recursive", action="store_true",
                   help="also search the sub-folders of folders (the outputs keep the folder structure)")
    q.add_argument("--ppt", required=True, help="your PPT file (from 'protego-nb train')")
    q.add_argument("-o", "--output-dir", required=True, help="folder for the protected files (created if needed)")
    q.add_argument("--faces", default="owner", choices=("owner", "all"),
                   help="owner: the faces matching the PPT's owner (default); all: every face")
    q.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1..100 (default 95)")
    q.add_argument("--keep-metadata", action="store_true",
                   help="keep EXIF / video tags, without GPS or location; default: strip them (photos keep only "
                        "their colour profile)")
    q.add_argument("--keep-gps", action="store_true",
                   help="with --keep-metadata, keep the GPS position / video location too")
    q.add_argument("--epsilon", type=parse_epsilon, help="a bound below the PPT's own (default: the PPT's)")
    q.add_argument("--detector", default="auto", choices=("auto", "mtcnn", "blazeface"),
                   help="face detector: auto (default: BlazeFace, MTCNN when BlazeFace finds no face), "
                        "mtcnn (as in training; slower, finds harder faces) or blazeface")
    q.add_argument("--ssim-floor", type=float, default=0.95,
                   help="every protected face keeps at least this SSIM to the original (its perturbation is "
                        "scaled down until it does; default 0.95, the method's floor); 0 adds the PPT at full "
                        "strength (the behaviour before this option)")
    q.add_argument("--detect-every", type=int, default=10, help="videos: run face detection every N frames")
    q.add_argument("--video-codec", default="h264", choices=("h264", "lossless"),
                   help="h264 (CRF 17) or lossless (libx264rgb -qp 0, large files)")
    q.add_argument("--overwrite", action="store_true",
                   help="replace existing files in the output folder (never an input: choose another -o)")
    q.add_argument("--report", help="also write the per-file results as JSON here (default: none)")
    q.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    q.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the per-face networks are small, and extra threads "
                        "slow everything down badly on a busy machine)")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


# ----------------------------------------------------------------------------- checks (no side effects)


def _quiet_native_logs() -> None:
    """Silence MediaPipe's and TFLite's C++ INFO/WARNING lines (glog, absl, TF): set before they are imported."""
    for key, value in (("GLOG_minloglevel", "2"), ("TF_CPP_MIN_LOG_LEVEL", "3"), ("ABSL_MIN_LOG_LEVEL", "2")):
        os.environ.setdefault(key, value)


#: MediaPipe / TFLite start-up chatter written by C++ straight to file descriptor 2 (not errors).
_NATIVE_NOISE = re.compile(r"^(INFO: Created TensorFlow Lite|WARNING: All log messages before absl::InitializeLog"
                           r"|[IW]\d{4} [\d:. ]+\d+ [\w.]+\.cc:\d+\])")


class _QuietNativeStderr:
    """Route file descriptor 2 to a temporary file while MediaPipe/TFLite run, keeping Python's own stderr
    (progress bars, messages) on the terminal; on exit, lines that are not start-up chatter are passed on."""

    def __enter__(self):
        import tempfile

        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile()
        os.dup2(self._file.fileno(), 2)
        self._py = sys.stderr
        try:
            on_fd2 = sys.stderr.fileno() == 2
        except (AttributeError, OSError, ValueError):  # a captured or replaced stream: leave it alone
            on_fd2 = False
        if on_fd2:
            sys.stderr = open(self._saved, "w", closefd=False, buffering=1)  # noqa: SIM115 - closed in __exit__
        return self

    def __exit__(self, *exc) -> None:
        if sys.stderr is not self._py:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = self._py
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        for line in self._file.read().decode("utf-8", "replace").splitlines():
            if line.strip() and not _NATIVE_NOISE.match(line):
                print(line, file=sys.stderr)
        self._file.close()


def _check_device(name: str) -> str:
    """The torch device for ``--device``; a missing GPU or an unknown name is a usage error (checked first)."""
    if name == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if name != "auto" and not m:
        raise UsageError(f"--device {name!r}: unknown device; use auto, cpu, cuda or cuda:N")
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available on this machine (use --device cpu)")
    if m and m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def _check_dir_creatable(d: Path, what: str = "output folder") -> None:
    """``d`` is a writable folder, or can be created (checked without creating anything)."""
    if d.exists():
        if not d.is_dir():
            raise UsageError(f"{d}: exists and is not a folder")
        if not os.access(d, os.W_OK | os.X_OK):
            raise UsageError(f"{d}: the {what} is not writable")
        return
    parent = d
    while not parent.exists():
        if parent.is_symlink():
            raise UsageError(f"{d}: cannot create the {what} ({parent} is a broken link)")
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{d}: cannot create the {what} ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{d}: cannot create the {what} (permission denied in {parent})")


def _check_output_file(f: Path, flag: str, example: str = "out") -> None:
    """``f`` can be written as a file (not a folder; its folder exists or can be created)."""
    if f.is_dir():
        raise UsageError(f"{flag} {f}: is a folder; give a file name (e.g. {f / example})")
    if f.exists() and not os.access(f, os.W_OK) and not os.access(f.parent, os.W_OK):
        raise UsageError(f"{flag} {f}: not writable")
    _check_dir_creatable(f.parent if str(f.parent) else Path("."), f"folder of {flag}")


def _make_dir(d: Path) -> None:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{d}: cannot create the output folder ({exc.strerror or exc})") from exc


# ----------------------------------------------------------------------------- train


def _check_checkpoint(path: Path) -> None:
    """An existing ``--checkpoint`` must be a readable training checkpoint; a new one must be writable."""
    if path.is_dir():
        raise UsageError(f"--checkpoint {path}: is a folder; give a file name")
    if path.exists():
        from .protect.checkpoint import load_checkpoint

        try:
            load_checkpoint(path)
        except (ValueError, OSError, RuntimeError) as exc:
            raise UsageError(f"--checkpoint {path}: not a usable training checkpoint "
                             f"({str(exc).removeprefix(f'{path}: ')})") from exc
    _check_output_file(path, "--checkpoint", "train.ckpt")


def _cmd_train(args: argparse.Namespace) -> int:
    src = Path(args.photos_dir)
    if not src.is_dir():
        raise UsageError(f"{src}: not a folder of photos")
    out = Path(args.output)
    _check_output_file(out, "-o", "me.ppt")
    if args.checkpoint:
        _check_checkpoint(Path(args.checkpoint))
    if args.epochs is not None and args.epochs < 1:
        raise UsageError(f"--epochs {args.epochs}: must be >= 1 (0 epochs would write an untrained PPT)")

    from .faces import uv
    from .faces.canvas import canvases_to_tensor
    from .faces.pipeline import build_canvases
    from .models import zoo
    from .protect import inputs
    from .protect import owner as owner_match

    photos, ignored = inputs.expand_inputs([src])
    photos = [p for p in photos if inputs.media_kind(p) == "photo"]
    if not photos:
        raise UsageError(f"{src}: no photos found (looked for {', '.join(sorted(inputs.PHOTO_FORMATS))}; "
                         f"sub-folders are not searched)")
    surrogates = list(args.surrogates or zoo.SURROGATES_DEFAULT)
    unknown = [s for s in surrogates if s not in zoo.MODELS]
    if unknown:
        raise UsageError(f"unknown surrogate model(s) {unknown}; known: {', '.join(zoo.MODELS)}")
    if zoo.INTRUDER_DEFAULT in surrogates:
        raise UsageError(f"{zoo.INTRUDER_DEFAULT!r} is the held-out intruder model and cannot be a surrogate")
    if args.owner_model not in zoo.MODELS:
        raise UsageError(f"unknown owner model {args.owner_model!r}")
    from .protect.train import TrainConfig, train_ppt

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
    if cfg.epochs < 1:
        raise UsageError(f"epochs {cfg.epochs}: must be >= 1 (0 epochs would write an untrained PPT)")
    device = _check_device(args.device)
    progress = not args.no_progress

    import numpy as np
    import torch

    from .protect.texture import UVWarp

    with _QuietNativeStderr():
        rep = build_canvases(photos, progress=progress)
        x, lm = canvases_to_tensor(rep.canvases) if rep.canvases else (None, None)
    for f in rep.failures:
        print(f"skipped {_one_line(f.message)}", file=sys.stderr)
    if len(rep.canvases) == 0:
        print(f"error: no usable face in any of the {len(photos)} photos of {src}", file=sys.stderr)
        return EXIT_FAILED
    with _QuietNativeStderr():
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
    used = [rep.canvases[i] for i in idx.tolist()]
    for c in used:
        if c.n_faces > 1:
            print(f"warning: {c.path}: {c.n_faces} faces; trained on the most central one (photos where you "
                  f"are alone are safer)", file=sys.stderr)
    warps = UVWarp.from_uvmap(uvm).select(idx.tolist())
    try:
        models = {n: zoo.load(n, device) for n in surrogates}
        owner = zoo.load(args.owner_model, device)
    except (zoo.ModelUnavailable, KeyError) as exc:
        raise UsageError(str(exc)) from exc
    emb = owner_match.face_embeddings(owner, x.to(device), lm.to(device))
    thr = owner_match.OWNER_THRESHOLDS.get(args.owner_model, 0.4)
    odd = owner_match.unlike_the_rest(emb, thr)
    if odd.any():
        names = ", ".join(Path(used[i].path).name for i in np.flatnonzero(odd)[:8]) + (" ..." if odd.sum() > 8 else "")
        if 2 * odd.sum() >= len(odd):
            print(f"warning: the {len(odd)} training faces do not look like one person ({args.owner_model} "
                  f"similarity to the others below {thr:.2f}); a PPT protects one person: train it on photos of "
                  f"the owner only", file=sys.stderr)
        else:
            print(f"warning: {int(odd.sum())} of {len(odd)} training faces do not look like the others "
                  f"({args.owner_model} similarity below {thr:.2f}): {names}; they are left out of the owner "
                  f"reference (check that they show you)", file=sys.stderr)
    keep = ~odd if 0 < odd.sum() and 2 * odd.sum() < len(odd) else np.ones(len(odd), bool)
    ref = owner_match.reference_embedding(emb[keep])
    try:
        result = train_ppt(x, lm, warps, models, cfg, device=device, checkpoint=args.checkpoint,
                           progress=progress, intruder=zoo.INTRUDER_DEFAULT)
    except ValueError as exc:
        if args.checkpoint and str(args.checkpoint) in str(exc):
            raise UsageError(f"--checkpoint {_one_line(str(exc))}") from exc
        raise
    _make_dir(out.parent if str(out.parent) else Path("."))
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


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _targets(files: list, outdir: Path) -> list[Path]:
    """Output path per input, unique in this batch: ``outdir / rel`` (the file name, or the path below the
    folder searched with ``--recursive``); inputs whose names clash (case-insensitively) keep as many of their
    parent folders as it takes to tell them apart (``a/good.jpg``, ``b/good.jpg`` -> ``OUT/a/good.jpg``,
    ``OUT/b/good.jpg``). Plain paths are taken as files named directly."""
    from .protect.inputs import InputFile

    items = [f if isinstance(f, InputFile) else InputFile(Path(f), Path(Path(f).name), Path(f).parent)
             for f in files]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(items):
        groups[str(f.rel).lower()].append(i)
    rel: list[Path] = [f.rel for f in items]
    for members in groups.values():
        if len(members) < 2:
            continue
        parts = {i: Path(os.path.abspath(items[i].base)).parts[1:] for i in members}
        depth = max(len(p) for p in parts.values())
        for k in range(1, depth + 1):
            keys = [tuple(x.lower() for x in parts[i][-k:]) for i in members]
            if len(set(keys)) == len(keys):
                break
        for i in members:
            rel[i] = Path(*parts[i][-k:], items[i].rel) if parts[i] else items[i].rel
    out, taken = [], set()
    for r in rel:
        cand, n = r, 1
        while str(cand).lower() in taken:
            n += 1
            cand = r.with_name(f"{r.stem}-{n}{r.suffix}")
        taken.add(str(cand).lower())
        out.append(outdir / cand)
    return out


def _why(r) -> str:
    """The message of a result without the input's path (already shown) and without the repeated reason tag."""
    msg = r.message or ""
    if msg.startswith(f"{r.input}: "):
        msg = msg[len(r.input) + 2 :]
    return _one_line(msg.replace(f" [{r.reason}]", ""))


def summary_table(results: list) -> str:
    """Plain-text summary: counts by status, then one line per skipped or failed input with its reason, then
    the warnings (several faces, truncated videos, ...)."""
    counts = Counter(r.status for r in results)
    lines = ["", "status     files", "---------  -----"]
    for s in ("protected", "skipped", "failed"):
        lines.append(f"{s:<9}  {counts.get(s, 0):>5}")
    faces = sum(sum(f.status == "protected" for f in r.faces) for r in results
                if r.kind == "photo" and r.status == "protected")
    frames = [(r.frames_protected, r.frames) for r in results if r.kind == "video" and r.status == "protected"]
    lines.append(f"faces protected in photos: {faces}")
    if frames:
        lines.append(f"video frames with a protected face: {sum(a for a, _ in frames)} of {sum(b for _, b in frames)}")
    for s in ("skipped", "failed"):
        bad = [r for r in results if r.status == s]
        if bad:
            lines += ["", f"{s}:"]
            lines += [f"  {r.input}  [{r.reason}]  {_why(r)}" for r in bad]
    warned = [r for r in results if getattr(r, "warnings", None)]
    if warned:
        lines += ["", "warnings:"]
        lines += [f"  {r.input}  {w}" for r in warned for w in r.warnings]
    return "\n".join(lines)


def _nothing_found(got, inputs: list[str]) -> str:
    parts = []
    for folder, subdirs in got.empty_folders.items():
        extra = f" ({subdirs} sub-folder(s) not searched: add --recursive)" if subdirs else ""
        parts.append(f"{folder} holds no photo or video{extra}")
    if got.broken_links:
        parts.append(f"{len(got.broken_links)} broken link(s) or symlink loop(s) ignored")
    if got.ignored:
        parts.append(f"{len(got.ignored)} file(s) without a photo or video extension ignored")
    return "; ".join(parts) or f"no input among {inputs}"


def _protect_all(args: argparse.Namespace, got, outdir: Path, prot) -> list:
    """Protect every input of ``got`` into ``outdir``; one result per input, whatever happens to it."""
    from tqdm.auto import tqdm

    from .protect import inputs
    from .protect.results import ProtectResult

    results = []
    for item, dst in tqdm(list(zip(got.files, _targets(got.files, outdir))), desc="protect", unit="file",
                          disable=args.no_progress):
        src = item.path
        kind = inputs.media_kind(src)
        if inputs.same_file(src, dst):
            results.append(ProtectResult(str(src), kind, "failed", reason="same_path",
                                               message=f"{src}: the output would replace the input; choose "
                                                       f"another output folder (-o)"))
            continue
        if dst.is_dir() and not dst.is_symlink():
            results.append(ProtectResult(str(src), kind, "failed", reason="output_exists",
                                               message=f"{dst}: a folder of that name is in the way"))
            continue
        if (dst.exists() or dst.is_symlink()) and not args.overwrite:
            results.append(ProtectResult(str(src), kind, "failed", reason="output_exists",
                                               message=f"{dst}: exists (use --overwrite to replace it)"))
            continue
        try:
            if kind == "video":
                r = prot.protect_video(src, dst, progress=not args.no_progress)
            else:
                r = prot.protect_photo(src, dst)
        except Exception as exc:  # one input must never end the batch
            r = ProtectResult(str(src), kind, "failed", reason="internal_error",
                                    message=f"{src}: {type(exc).__name__}: {_one_line(str(exc), 200)}")
        results.append(r)
    return results


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
    if args.threads < 1:
        raise UsageError(f"--threads {args.threads} must be >= 1")
    _check_dir_creatable(outdir)
    if args.report:
        _check_output_file(Path(args.report), "--report", "report.json")
    device = _check_device(args.device)

    from .protect import inputs, media
    from .protect.texture import PPTFileError

    got = inputs.collect_inputs(args.inputs, recursive=args.recursive, exclude=outdir)
    if not got.files:
        raise UsageError(f"nothing to protect: {_nothing_found(got, args.inputs)}")

    import torch

    torch.set_num_threads(args.threads)
    metadata = "keep_all" if args.keep_gps else ("keep" if args.keep_metadata else "strip")
    try:
        prot = media.Protector.from_file(
            ppt, faces=args.faces, eps=args.epsilon, device=device,
            jpeg_quality=args.jpeg_quality, metadata=metadata, video_codec=args.video_codec,
            detect_every=args.detect_every, detector_kind=args.detector,
            ssim_floor=args.ssim_floor if args.ssim_floor > 0 else None)
    except PPTFileError as exc:
        raise UsageError(f"invalid PPT: {_one_line(str(exc))}") from exc
    except ValueError as exc:
        raise UsageError(f"{ppt}: {_one_line(str(exc))}") from exc
    _make_dir(outdir)

    for folder, subdirs in got.empty_folders.items():
        extra = f" ({subdirs} sub-folder(s) not searched: add --recursive)" if subdirs else ""
        print(f"note: {folder} holds no photo or video{extra}", file=sys.stderr)
    with _QuietNativeStderr():
        results = _protect_all(args, got, outdir, prot)
    print(summary_table(results))
    if prot.owner_ref is None and args.faces == "owner":
        print("\nnote: this PPT holds no owner embedding: in photos with several faces only the largest face "
              "was protected (train it again with 'protego-nb train', or use --faces all)")
    if got.ignored:
        print(f"\nignored {len(got.ignored)} file(s) without a photo or video extension: "
              + ", ".join(p.name for p in got.ignored[:5]) + (" ..." if len(got.ignored) > 5 else ""))
    if args.report:
        from .io import atomic_write_text

        try:
            atomic_write_text(args.report, json.dumps([r.to_dict() for r in results], indent=1))
        except OSError as exc:
            print(f"protego-nb protect: error: --report {args.report}: cannot write it ({exc.strerror or exc})",
                  file=sys.stderr)
            return EXIT_FAILED
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``protego-nb``; returns the exit status (see the module docstring)."""
    _quiet_native_logs()
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
