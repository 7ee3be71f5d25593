"""Where and how a run executes: device choice, seeding, the git revision and the machine (provenance)."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

from . import paths


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
