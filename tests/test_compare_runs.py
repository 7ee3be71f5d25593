"""scripts/compare_runs.py: equal results pass whatever their timings; any changed number is reported."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import compare_runs  # noqa: E402


def _run(folder: Path, recall: float, seconds: float, cache: str) -> Path:
    folder.mkdir()
    (folder / "05_recall_tables.json").write_text(json.dumps({
        "_run": {"wall_seconds": seconds}, "params": {"split": "s"}, "train_seconds": {"protego": seconds},
        "per_user": {"sface": {"protego": {"2a": {"Ann": recall}}}}, "note": f"place it in {cache}/weights"}))
    (folder / "04_ablations.csv").write_text(f"ablation,bb_2a,train s/user\nbase,{recall},{seconds}\n")
    return folder


def test_equal_numbers_with_other_timings_and_cache_paths_agree(tmp_path):
    a = _run(tmp_path / "a", 90.0, 12.0, "/tmp/cache_before")
    b = _run(tmp_path / "b", 90.0, 31.5, "/root/.cache/protego_nb")
    assert compare_runs.compare(a, b) == (2, [])
    assert compare_runs.main([str(a), str(b)]) == 0


def test_a_changed_number_is_reported(tmp_path):
    a = _run(tmp_path / "a", 90.0, 12.0, "/c")
    b = _run(tmp_path / "b", 90.5, 12.0, "/c")
    n, diffs = compare_runs.compare(a, b)
    assert n == 2 and any("2a/Ann" in d for d in diffs) and any("04_ablations.csv" in d for d in diffs)
    assert compare_runs.main([str(a), str(b)]) == 1
    (b / "05_recall_tables.json").unlink()
    assert any("missing" in d for d in compare_runs.compare(a, b)[1])
