"""Fail when a file to be committed is larger than the limit (model weights, caches and run outputs stay out of git).

Usage: ``python scripts/check_large_files.py [--max-kb N] [FILE ...]``; without files, every file git tracks.
Exit 1 naming each file over the limit with its size; exit 0 otherwise.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

MAX_KB = 1024


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f]


def too_large(files: list[str], max_kb: int) -> list[tuple[str, int]]:
    big = []
    for f in files:
        p = Path(f)
        if p.is_file() and not p.is_symlink() and p.stat().st_size > max_kb * 1024:
            big.append((f, p.stat().st_size))
    return big


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="*")
    ap.add_argument("--max-kb", type=int, default=MAX_KB)
    args = ap.parse_args(argv)
    big = too_large(args.files or tracked_files(), args.max_kb)
    for f, size in big:
        print(f"{f}: {size / 1024:.0f} KiB is over the {args.max_kb} KiB limit (keep weights, caches and run "
              "outputs out of git)", file=sys.stderr)
    return 1 if big else 0


if __name__ == "__main__":
    sys.exit(main())
