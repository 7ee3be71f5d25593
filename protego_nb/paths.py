"""Where things live: repository, data, cache and output folders.

Every location can be overridden by an environment variable so that the same
code runs in a checkout, in CI and on a user's machine:

* ``PROTEGO_DATA_DIR``  - folder holding ``lfw/`` (default ``<repo>/../shared/data``
  when that exists, else ``<repo>/data/external``).
* ``PROTEGO_CACHE_DIR`` - fetched model assets and computed caches
  (default ``~/.cache/protego_nb``), kept outside git.
* ``PROTEGO_OUTPUT_DIR`` - root for ``figures/`` and ``papermill_runs/``
  (default: the repository).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

LFW_HELP = (
    "LFW (deep-funneled) was not found at {path}.\n"
    "Set PROTEGO_DATA_DIR to a folder that contains lfw/lfw-deepfunneled/<Name>/<Name>_NNNN.jpg "
    "(and optionally lfw/pairs.txt), e.g. `export PROTEGO_DATA_DIR=../shared/data`,\n"
    "or download the official archive lfw-deepfunneled.tgz from the LFW site of the University of "
    "Massachusetts Amherst and unpack it into $PROTEGO_DATA_DIR/lfw/."
)


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser().resolve() if value else None


def data_dir() -> Path:
    """Root of the datasets (read-only for the project)."""
    env = _env_path("PROTEGO_DATA_DIR")
    if env is not None:
        return env
    shared = REPO_ROOT.parent / "shared" / "data"
    if shared.is_dir():
        return shared.resolve()
    return REPO_ROOT / "data" / "external"


def lfw_dir() -> Path:
    """Folder holding LFW's text files (pairs.txt, people.txt, ...)."""
    return data_dir() / "lfw"


def lfw_images_dir(check: bool = True) -> Path:
    """``<data>/lfw/lfw-deepfunneled``; raises a helpful error when missing."""
    path = lfw_dir() / "lfw-deepfunneled"
    if check and not path.is_dir():
        raise FileNotFoundError(LFW_HELP.format(path=path))
    return path


def cache_dir(*parts: str, create: bool = True) -> Path:
    """Cache root (or a sub-folder of it); outside git by default."""
    root = _env_path("PROTEGO_CACHE_DIR") or Path("~/.cache/protego_nb").expanduser()
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def output_root() -> Path:
    return _env_path("PROTEGO_OUTPUT_DIR") or REPO_ROOT


def figures_dir(profile: str, create: bool = True) -> Path:
    path = output_root() / "figures" / profile
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def runs_dir(profile: str, create: bool = True) -> Path:
    path = output_root() / "papermill_runs" / profile
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(profile: str, create: bool = True) -> Path:
    path = runs_dir(profile, create=create) / "results"
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def manifests_dir() -> Path:
    """Small, committed split manifests and checksums."""
    return REPO_ROOT / "data"


def notebooks_dir() -> Path:
    return REPO_ROOT / "notebooks"
