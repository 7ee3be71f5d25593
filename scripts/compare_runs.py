"""Compare two runs' results folders (``papermill_runs/<profile>/results``) number for number, timings excluded.

Used to check that a change which must not alter results (a refactor) gives the same tables: run the same
profile before and after on the same machine, each with an empty protections cache (``PROTEGO_CACHE_DIR``
with the other cache folders linked in), then::

    python scripts/compare_runs.py BEFORE/papermill_runs/ci/results AFTER/papermill_runs/ci/results

Every JSON value and every CSV cell must be equal, except run metadata, wall times and throughput (keys or
columns that name seconds, times or rates) and the cache path quoted in a message. Exit 1 listing the
differences; 0 when the runs agree.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import pandas as pd

TIMING = re.compile(
    r"(seconds|^_run$|^_written$|throughput|_per_s$|^ms_|_ms_|_ms$|s/user|^train_s$|^train_s_per|wall_|loadavg)", re.I
)
CACHE_PATH = re.compile(r"/\S*cache\S*")


def _walk(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if TIMING.search(str(k)):
                continue
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'the first' if k in a else 'the second'} run")
            else:
                _walk(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: {len(a)} vs {len(b)} items")
        for i, (x, y) in enumerate(zip(a, b)):
            _walk(x, y, f"{path}[{i}]", out)
    elif isinstance(a, str) and isinstance(b, str):
        if CACHE_PATH.sub("<cache>", a) != CACHE_PATH.sub("<cache>", b):
            out.append(f"{path}: {a!r} vs {b!r}")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return
    elif a != b:
        out.append(f"{path}: {a!r} vs {b!r}")


def compare(first: Path, second: Path) -> tuple[int, list[str]]:
    """``(files compared, differences)`` of two results folders."""
    diffs: list[str] = []
    n = 0
    for fa in sorted(first.glob("*")):
        fb = second / fa.name
        if fa.suffix not in (".json", ".csv"):
            continue
        if not fb.exists():
            diffs.append(f"{fa.name}: missing in the second run")
            continue
        n += 1
        if fa.suffix == ".json":
            _walk(json.loads(fa.read_text()), json.loads(fb.read_text()), fa.name, diffs)
            continue
        ta, tb = pd.read_csv(fa), pd.read_csv(fb)
        keep = [c for c in ta.columns if not TIMING.search(str(c))]
        if "throughput" in fa.name:
            continue
        if list(ta.columns) != list(tb.columns):
            diffs.append(f"{fa.name}: columns differ")
            continue
        ta = ta[keep].replace(CACHE_PATH, "<cache>", regex=True)
        tb = tb[keep].replace(CACHE_PATH, "<cache>", regex=True)
        if not ta.equals(tb):
            diffs.append(f"{fa.name}: values differ")
    diffs += [f"{fb.name}: only in the second run" for fb in sorted(second.glob("*.json")) + sorted(second.glob("*.csv"))
              if not (first / fb.name).exists()]
    return n, diffs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    n, diffs = compare(Path(args[0]), Path(args[1]))
    print(f"{n} files compared (JSON values and CSV cells, timings excluded): "
          + ("identical" if not diffs else f"{len(diffs)} differences"))
    for d in diffs:
        print("  " + d)
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
