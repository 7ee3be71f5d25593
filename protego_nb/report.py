"""Figures, tables and numbers of the notebooks, written where the runner, the tests and the README find them.

Every notebook writes its artefacts through these helpers so that the runner,
the tests and the README all find them in one place:

* figures  -> ``figures/<profile>/<name>.png`` and ``.pdf``
* tables   -> ``papermill_runs/<profile>/results/<name>.csv`` and ``.md``
* numbers  -> ``papermill_runs/<profile>/results/<notebook>.json``

All writes are atomic (:mod:`protego_nb.io`), so a crashed run never leaves half a file behind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from . import paths
from .io import atomic_write_text


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
    if index and getattr(df.index, "nlevels", 1) > 1:  # one column per index level, not tuples
        df, index = df.reset_index(), False
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
