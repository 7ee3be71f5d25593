"""tables.lever_pairs and benchmarks/transfer_levers.py's rendering: one lever against another, paired over the same users."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from protego_nb.evaluate import tables

_SPEC = importlib.util.spec_from_file_location(
    "transfer_levers", Path(__file__).parents[1] / "benchmarks" / "transfer_levers.py"
)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def _rec(pairs=None):
    users = [f"u{i}" for i in range(6)]
    cols = ("bb_1b", "bb_1a", "bb_2b", "bb_2a", "wb_1b", "wb_2a")
    per = {}
    for k, shift in (("base", 0.0), ("a", -10.0), ("b", -4.0)):
        per[k] = {c: {u: 80.0 + i + (shift if c == "bb_2a" else 0.0) for i, u in enumerate(users)} for c in cols}
        per[k]["ssim"] = {u: 0.94 for u in users}
        per[k]["train_s"] = {u: 1.0 for u in users}
        per[k]["what"], per[k]["method"] = k, "protego"
    rec = {"params": {"ablations": ["base", "a", "b"]}, "per_user": {"ablations": per}}
    if pairs is not None:
        rec["pairs"] = pairs
    return rec


def test_pair_table_is_a_minus_b_on_the_same_users():
    t = tables.lever_pairs(_rec(), ["a:b"])
    row = t.loc[("a", "b", "bb_2a")]
    assert row["n"] == 6 and row["a - b [95% CI]"] == "-6.0 [-6.0, -6.0]" and row["effect"] == "yes"
    assert t.loc[("a", "b", "bb_1a")]["effect"] == "no"
    with pytest.raises(ValueError, match="both sides"):
        tables.lever_pairs(_rec(), ["a:nope"])


def test_render_adds_pairs_after_the_run_without_touching_its_fields(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps(_rec()))
    assert "One lever against another" not in bench.render(_rec())
    assert bench.main(["--render", str(f), "--pairs", "b:a"]) == 0
    rec = json.loads(f.read_text())
    assert rec["pairs"] == ["b:a"] and rec["params"] == _rec()["params"]
    assert "+6.0 [+6.0, +6.0]" in f.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        bench.main(["--render", str(f), "--pairs", "ab"])
