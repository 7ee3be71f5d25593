"""benchmarks/bench_train.py's lever mode: every named ablation is timed with its own options and surrogates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fakes import TinyFR

from protego_nb import study

_SPEC = importlib.util.spec_from_file_location("bench_train", Path(__file__).parents[1] / "benchmarks" / "bench_train.py")
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_lever_costs_time_each_ablation_with_its_config(monkeypatch):
    from protego_nb.models import zoo

    loaded, seen = [], []
    monkeypatch.setattr(zoo, "load", lambda name, device: loaded.append(name) or TinyFR(len(loaded), name))
    real = bench.time_steps

    def spy(models, batch, steps, device, cfg=None):
        seen.append((sorted(models), cfg.n_textures, cfg.spectrum_copies, cfg.epochs, batch))
        return real(models, batch, steps, device, cfg)

    monkeypatch.setattr(bench, "time_steps", spy)
    out = bench.lever_costs(["base", "textures4", "ens5"], 2, "cpu", ["dlib_resnet", "mobilefacenet"])
    assert list(out) == ["base", "textures4", "ens5"] and out["base"]["x_base"] == 1.0
    assert len(loaded) == len(set(loaded)) == 5  # every model once, the ensemble's extra three included
    assert seen[0] == (["dlib_resnet", "mobilefacenet"], 1, 0, 50, 4)  # the paper preset, timed one epoch
    assert seen[1][1] == 4 and len(seen[2][0]) == 5
    assert all(r["s_per_step"] > 0 and r["steps"] == 2 for r in out.values())
    with pytest.raises(ValueError, match="unknown ablation"):
        bench.lever_costs(["nope"], 1, "cpu", ["dlib_resnet"])
    assert set(study.ABLATIONS) >= set(out)
