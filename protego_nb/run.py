"""Run the notebooks in order with papermill.

    python -m protego_nb.run --profile ci|default|full [--only 00 01] [--list]

Parameters come from ``notebooks/params/<profile>.yaml``::

    common:                 # passed to every notebook that declares the key
      SEED: 0
    00_data_and_models:     # passed to that notebook only (overrides common)
      N_USERS: 3

Only keys a notebook declares in its ``parameters`` cell are injected (papermill
would otherwise inject unknown names silently). ``PROFILE`` is always set to the
profile name. Executed notebooks go to ``papermill_runs/<profile>/``; every
notebook runs even if an earlier one failed, all failures are reported at the
end, and the exit status is non-zero when any failed.

Fresh outputs: before a notebook runs, every output it owns is deleted (files
and folders named ``NN_*`` - its two-digit number - under ``papermill_runs/<profile>/``,
its ``results/`` and ``figures/<profile>/``), so nothing of an earlier run can pass
for this one; ``--only 05`` touches 05's files only. After it ran, the runner adds
``_run`` to the notebook's results JSON: git commit and dirty flag, profile,
command, the parameters injected, start/end time, wall time and the machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from . import paths
from .io import atomic_write_text
from .runtime import git_info, machine, provenance

PROFILES = ("ci", "default", "full")


@dataclass
class NotebookRun:
    notebook: str
    ok: bool
    seconds: float
    output: str
    error: str = ""


def list_notebooks() -> list[Path]:
    """Notebooks named ``NN_*.ipynb`` in study order."""
    return sorted(p for p in paths.notebooks_dir().glob("[0-9][0-9]_*.ipynb"))


def load_params(profile: str) -> dict:
    target = paths.notebooks_dir() / "params" / f"{profile}.yaml"
    if not target.exists():
        raise FileNotFoundError(f"no parameter file for profile {profile!r}: {target}")
    data = yaml.safe_load(target.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{target}: expected a mapping at top level")
    return data


def declared_parameters(notebook: Path) -> dict:
    """Names (and defaults) declared in the notebook's ``parameters`` cell."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def parameters_for(notebook: Path, profile: str, params: dict | None = None) -> dict:
    params = load_params(profile) if params is None else params
    declared = declared_parameters(notebook)
    merged = dict(params.get("common", {}) or {})
    merged.update(params.get(notebook.stem, {}) or {})
    merged["PROFILE"] = profile
    unknown = sorted(set(merged) - set(declared) - {"PROFILE"})
    if unknown and notebook.stem in params:
        extra = sorted(set(params.get(notebook.stem) or {}) - set(declared))
        if extra:
            raise KeyError(
                f"{notebook.name}: parameters {extra} in {profile}.yaml are not declared in the notebook"
            )
    return {k: v for k, v in merged.items() if k in declared}


def select(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    if not only:
        return notebooks
    chosen = [nb for nb in notebooks if any(nb.stem.startswith(o) or nb.stem == o for o in only)]
    missing = [o for o in only if not any(nb.stem.startswith(o) for nb in notebooks)]
    if missing:
        raise SystemExit(f"no notebook matches {missing}; have {[nb.stem for nb in notebooks]}")
    return chosen


def owned_outputs(profile: str, notebook: str) -> list[Path]:
    """Existing outputs of ``notebook`` (``NN_...``) for ``profile``: entries named ``NN_*`` in the run folder,
    its ``results/`` and ``figures/<profile>/``."""
    prefix = notebook[:3]
    if len(prefix) != 3 or not prefix[:2].isdigit() or prefix[2] != "_":
        raise ValueError(f"notebook names start with two digits and '_', got {notebook!r}")
    out = []
    for folder in (
        paths.runs_dir(profile, create=False),
        paths.results_dir(profile, create=False),
        paths.figures_dir(profile, create=False),
    ):
        if folder.is_dir():
            out += sorted(folder.glob(prefix + "*"))
    return out


def clear_outputs(profile: str, notebook: str) -> list[Path]:
    """Delete every output ``notebook`` owns (:func:`owned_outputs`); returns what was deleted."""
    gone = owned_outputs(profile, notebook)
    for p in gone:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    return gone


def command_line(profile: str, only: list[str] | None) -> str:
    return f"python -m protego_nb.run --profile {profile}" + (f" --only {' '.join(only)}" if only else "")


def _stamp_results(profile: str, notebook: str, record: dict) -> bool:
    """Add ``_run`` to the notebook's results JSON (written by this run: old ones were deleted before)."""
    target = paths.results_dir(profile, create=False) / f"{notebook}.json"
    if not target.exists():
        return False
    data = json.loads(target.read_text())
    data["_run"] = record
    atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return True


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def run(
    profile: str = "ci", only: list[str] | None = None, progress: bool = True, kernel: str = "python3"
) -> list[NotebookRun]:
    """Run the (selected) notebooks of ``profile`` into ``paths.output_root()``; see the module docstring."""
    import papermill

    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    params = load_params(profile)
    notebooks = select(list_notebooks(), only)
    out_dir = paths.runs_dir(profile)
    runs: list[NotebookRun] = []
    command = command_line(profile, only)
    # the kernel is a child process: it inherits the environment, so it writes where this process reads
    saved_env = os.environ.get("PROTEGO_OUTPUT_DIR")
    os.environ["PROTEGO_OUTPUT_DIR"] = str(paths.output_root())
    try:
        for i, nb in enumerate(notebooks, 1):
            clear_outputs(profile, nb.stem)
            output = out_dir / nb.name
            nb_params = parameters_for(nb, profile, params)
            git = git_info()
            started = _now()
            t0 = time.perf_counter()
            print(f"[run:{profile}] ({i}/{len(notebooks)}) {nb.name} ...", flush=True)
            try:
                papermill.execute_notebook(
                    str(nb),
                    str(output),
                    parameters=nb_params,
                    kernel_name=kernel,
                    progress_bar=progress,
                    cwd=str(paths.notebooks_dir()),
                    report_mode=False,
                )
                runs.append(NotebookRun(nb.stem, True, time.perf_counter() - t0, str(output)))
            except Exception as exc:  # collect every failure, report at the end
                msg = f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, papermill.PapermillExecutionError):
                    msg += "\n" + traceback.format_exc(limit=3)
                runs.append(NotebookRun(nb.stem, False, time.perf_counter() - t0, str(output), msg))
            record = {
                "notebook": nb.stem,
                "ok": runs[-1].ok,
                "profile": profile,
                "command": command,
                "git_commit": git["commit"],
                "git_dirty": git["dirty"],
                "parameters": nb_params,
                "started_utc": started,
                "finished_utc": _now(),
                "wall_seconds": round(runs[-1].seconds, 1),
                "machine": machine(),
            }
            _stamp_results(profile, nb.stem, record)
            status = "ok" if runs[-1].ok else "FAILED"
            print(f"[run:{profile}] {nb.name}: {status} in {runs[-1].seconds:.1f} s", flush=True)
    finally:
        if saved_env is None:
            os.environ.pop("PROTEGO_OUTPUT_DIR", None)
        else:
            os.environ["PROTEGO_OUTPUT_DIR"] = saved_env
    summary = {
        "profile": profile,
        "command": command,
        "notebooks": [asdict(r) for r in runs],
        "total_seconds": sum(r.seconds for r in runs),
        "provenance": provenance(),
    }
    atomic_write_text(out_dir / "run_summary.json", json.dumps(summary, indent=2) + "\n")
    return runs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m protego_nb.run", description="Run the notebooks with papermill."
    )
    ap.add_argument("--profile", default="default", choices=PROFILES)
    ap.add_argument("--only", nargs="*", help="notebook number(s) or name prefix(es), e.g. 00 02")
    ap.add_argument(
        "--list", action="store_true", help="list the notebooks and their parameters, run nothing"
    )
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.list:
        for nb in select(list_notebooks(), args.only):
            print(nb.name, json.dumps(parameters_for(nb, args.profile)))
        return 0
    runs = run(args.profile, args.only, progress=not args.no_progress)
    failed = [r for r in runs if not r.ok]
    total = sum(r.seconds for r in runs)
    print(f"\n[run:{args.profile}] {len(runs) - len(failed)}/{len(runs)} notebooks ok in {total:.0f} s")
    for r in runs:
        print(f"  {'ok ' if r.ok else 'FAIL'} {r.notebook:32s} {r.seconds:7.1f} s  {r.output}")
    if failed:
        print(f"\n{len(failed)} notebook(s) failed:", file=sys.stderr)
        for r in failed:
            print(f"--- {r.notebook} ---\n{r.error[-3000:]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
