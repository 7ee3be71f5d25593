"""Figures, tables, numbers and provenance for the notebooks.

Every notebook writes its artefacts through these helpers so that the runner,
the tests and the README all find them in one place:

* figures  -> ``figures/<profile>/<name>.png`` and ``.pdf``
* tables   -> ``papermill_runs/<profile>/results/<name>.csv`` and ``.md``
* numbers  -> ``papermill_runs/<profile>/results/<notebook>.json``

All writes are atomic (temporary file, then rename), so a crashed run never
leaves half a file behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import paths


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically: a temporary file in the same folder, fsync, rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_write_text(target: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def savefig(
    fig, name: str, profile: str, formats: tuple[str, ...] = ("png", "pdf"), dpi: int = 120
) -> list[Path]:
    """Save a matplotlib figure as ``figures/<profile>/<name>.<fmt>`` (atomic); returns the paths."""
    out = []
    folder = paths.figures_dir(profile)
    for fmt in formats:
        target = folder / f"{name}.{fmt}"
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".{fmt}", dir=folder)
        os.close(fd)
        try:
            fig.savefig(tmp, format=fmt, dpi=dpi, bbox_inches="tight")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        out.append(target)
    return out


def _jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, Paths and NaN into plain JSON."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if np is not None:
        if isinstance(obj, np.ndarray):
            return _jsonable(obj.tolist())
        if isinstance(obj, np.generic):
            return _jsonable(obj.item())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch tensor
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    return obj


#: Version of the run-JSON layout (``_format``); 2: fresh per run, with ``_run`` provenance from the runner.
RESULTS_FORMAT = 2


def save_results(notebook: str, results: dict, profile: str) -> Path:
    """Write ``papermill_runs/<profile>/results/<notebook>.json`` anew (never merged with an older file).

    A notebook collects its numbers in one dict and saves it once, at the end; nothing of a previous run
    survives (the runner also deletes the notebook's old outputs before it starts, see
    :func:`protego_nb.run.clear_outputs`). The runner adds ``_run`` (git commit, dirty flag, profile,
    parameters, wall time, machine) after the notebook has finished.
    """
    target = paths.results_dir(profile) / f"{notebook}.json"
    data = _jsonable(dict(results))
    data["_written"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    data["_profile"] = profile
    data["_format"] = RESULTS_FORMAT
    return atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_results(notebook: str, profile: str) -> dict:
    target = paths.results_dir(profile, create=False) / f"{notebook}.json"
    return json.loads(target.read_text())


def save_table(df, name: str, profile: str, floatfmt: str = ".3f", index: bool = True) -> tuple[Path, Path]:
    """Write a pandas DataFrame as CSV and Markdown under ``papermill_runs/<profile>/results/``."""
    folder = paths.results_dir(profile)
    csv = atomic_write_text(folder / f"{name}.csv", df.to_csv(index=index))
    md = atomic_write_text(folder / f"{name}.md", to_markdown(df, floatfmt=floatfmt, index=index) + "\n")
    return csv, md


def to_markdown(df, floatfmt: str = ".3f", index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (no `tabulate` dependency)."""
    cols = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]

    def fmt(v):
        if isinstance(v, float):
            return "" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        cells = ([str(idx)] if index else []) + [fmt(v) for v in row.tolist()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=paths.REPO_ROOT, capture_output=True, text=True, timeout=10
    ).stdout.strip()


def git_info() -> dict:
    """``{"commit": full sha or None, "dirty": bool or None}``; dirty = tracked files differ from the commit."""
    try:
        commit = _git("rev-parse", "HEAD") or None
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
        return {"commit": commit, "dirty": dirty}
    except Exception:
        return {"commit": None, "dirty": None}


def git_revision() -> str:
    """Short commit, ``+dirty`` when tracked files differ from it; ``unknown`` outside git."""
    info = git_info()
    if not info["commit"]:
        return "unknown"
    return info["commit"][:7] + ("+dirty" if info["dirty"] else "")


def machine() -> dict:
    """The machine a run used: platform, CPU model and count, torch threads and device, load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        threads = torch.get_num_threads()
    except Exception:  # pragma: no cover
        device, threads = "unknown", None
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        load = None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "python": sys.version.split()[0],
        "loadavg": load,
    }


def provenance() -> dict:
    """Versions, device and git revision: the last cell of every notebook prints this."""
    import importlib.metadata as md

    versions = {}
    for pkg in [
        "protego_nb",
        "torch",
        "torchvision",
        "numpy",
        "kornia",
        "facenet-pytorch",
        "mediapipe",
        "umap-learn",
        "papermill",
        "scikit-learn",
        "opencv-contrib-python-headless",
    ]:
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        threads = torch.get_num_threads()
    except Exception:  # pragma: no cover
        device, threads = "unknown", None
    return {
        "git": git_revision(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": device,
        "versions": versions,
        "time_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) in one call."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
