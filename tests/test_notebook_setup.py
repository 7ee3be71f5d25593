"""protego_nb.notebook: the set-up call of the notebooks and the small builders they store results with."""

import ast
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from protego_nb import data, notebook, run

BASE = {"PROFILE": "ci", "SEED": 3, "DEVICE": "cpu", "INTERACTIVE": False}


def _ci_params(stem: str) -> dict:
    """A notebook's globals after papermill: its declared defaults, overridden by the ci profile."""
    nb = next(p for p in run.list_notebooks() if p.stem == stem)
    declared = run.declared_parameters(nb)
    return {**{k: ast.literal_eval(v["default"]) for k, v in declared.items()}, **run.parameters_for(nb, "ci")}


def test_parameters_are_the_upper_case_globals():
    ns = {**BASE, "In": [], "Out": {}, "_": 1, "np": np, "ctx": None, "__name__": "__main__", "_PRIVATE": 2}
    assert notebook.parameters(ns) == BASE


def test_max_distractors_zero_means_no_cap():
    assert notebook.max_distractors({"MAX_DISTRACTORS": 0}) is None
    assert notebook.max_distractors({"MAX_DISTRACTORS": 300}) == 300


def test_train_config_from_the_parameters():
    from protego_nb.protect import train as tr

    p = {"PRESET": "ci", "EPSILON_255": 8.0, "EPOCHS": 0}
    assert notebook.train_config(p) == tr.TrainConfig.from_preset("ci", eps=8 / 255)
    assert notebook.train_config({**p, "EPOCHS": 5}).epochs == 5


def test_selected_users():
    split = SimpleNamespace(user_names=["a", "b", "c"])
    assert notebook.selected_users(split, {"USER": ""}) == ["a"]
    assert notebook.selected_users(split, {"USER": "b"}) == ["b"]
    assert notebook.selected_users(split, {"ABLATION_USERS": 2}) == ["a", "b"]
    assert notebook.selected_users(split, {}) is None


def test_setup_without_a_split_seeds_and_resolves_the_device():
    ctx = notebook.setup({**BASE, "EPSILON_255": 16.0})
    a = (np.random.rand(), torch.rand(1).item())
    notebook.setup({**BASE, "EPSILON_255": 16.0})
    assert (np.random.rand(), torch.rand(1).item()) == a
    assert ctx.device == "cpu" and ctx.profile == "ci" and ctx.eps == pytest.approx(16 / 255)
    assert ctx.ds is None and ctx.split is None and ctx.cfg is None and ctx.faces is None
    assert ctx.p.SEED == 3


def test_baselines_are_registered_only_when_declared(monkeypatch):
    from protego_nb.protect import methods

    calls = []
    monkeypatch.setattr(methods, "register_baselines", lambda pool, **kw: calls.append((pool, kw)))
    notebook.setup(dict(BASE))
    assert calls == []
    notebook.setup({**BASE, "PER_IMAGE_STEPS": 0, "FAWKES_MODE": "high"})
    assert calls == [(None, {"steps": None, "fawkes_mode": "high"})]
    notebook.setup({**BASE, "PER_IMAGE_STEPS": 30, "FAWKES_MODE": "mid"})
    assert calls[-1] == (None, {"steps": 30, "fawkes_mode": "mid"})


def test_the_notebooks_do_not_register_baselines_themselves():
    for nb in run.list_notebooks():
        assert "register_baselines" not in nb.read_text() and "TargetPool" not in nb.read_text(), nb.name


def test_fawkes_is_registered_with_the_distractors_as_its_target_pool(monkeypatch):
    from protego_nb.protect import methods

    calls = []
    monkeypatch.setattr(methods, "register_baselines", lambda pool, **kw: calls.append(pool))
    monkeypatch.setattr(methods.TargetPool, "from_faces", staticmethod(lambda d: ("pool", d)))
    params = {"PER_IMAGE_STEPS": 3, "FAWKES_MODE": "mid"}
    assert notebook.baselines_pending(params) == ("fawkes",) and notebook.baselines_pending({}) == ()
    assert notebook.register_baselines(params, "D") and calls == [("pool", "D")]
    assert not notebook.register_baselines({}, "D") and len(calls) == 1


@pytest.mark.parametrize("stem", ["03_dense_cluster_umap", "04_gram_volume_ablations", "02_ppt_training"])
def test_setup_with_the_ci_parameters_matches_the_explicit_calls(lfw, stem):
    p = _ci_params(stem)
    ctx = notebook.setup(p, faces=False)
    split = data.get_split(lfw, p["SPLIT_NAME"], protocol=p["PROTOCOL"], seed=p["SEED"], n_users=p["N_USERS"],
                           min_images=p["MIN_IMAGES"], max_images=p["MAX_IMAGES"],
                           max_distractors=None if p["MAX_DISTRACTORS"] <= 0 else p["MAX_DISTRACTORS"])
    assert ctx.split.user_names == split.user_names and ctx.split.distractors == split.distractors
    assert ctx.cfg.to_dict() == notebook.train_config(p).to_dict() and ctx.cfg.epochs == p["EPOCHS"]
    assert ctx.eps == pytest.approx(p["EPSILON_255"] / 255) and ctx.profile == "ci"
    assert ctx.faces is None and ctx.surrogates is None
    if stem == "04_gram_volume_ablations":
        assert ctx.users == split.user_names[: p["ABLATION_USERS"]]
    elif stem == "02_ppt_training":
        assert ctx.users == [split.user_names[0]] and ctx.methods == p["METHODS"]
    else:
        assert ctx.users is None and ctx.methods == p["METHODS"] and ctx.skipped == []


def test_setup_can_leave_the_split_to_the_notebook(lfw):
    p = _ci_params("00_data_and_models")
    ctx = notebook.setup(p, split=False)
    assert ctx.ds is not None and ctx.split is None
    assert ctx.load_split().user_names == ctx.split.user_names and len(ctx.split.users) == p["N_USERS"]


def test_unregistered_method_is_an_error_unless_optional():
    p = {**BASE, "SPLIT_NAME": "x"}
    with pytest.raises(KeyError):
        notebook.study.check_methods(["no_such_method"], [])
    assert notebook.study.check_methods(["protego", "no_such_method"], ["no_such_method"]) == (
        ["protego"], ["no_such_method"])
    assert "SPLIT_NAME" in notebook.parameters(p)


def test_detection_sample_and_summary():
    ds = SimpleNamespace(all_images=lambda: [f"img{i}" for i in range(50)])
    a = notebook.detection_sample(ds, 10, seed=0)
    assert a == notebook.detection_sample(ds, 10, seed=0) and len(set(a)) == 10 and a == sorted(a, key=lambda s: int(s[3:]))
    assert notebook.detection_sample(ds, 0, seed=0) == ds.all_images()
    assert notebook.detection_sample(ds, 80, seed=0) == ds.all_images()
    rep = SimpleNamespace(canvases=[1] * 8, counts={"no_face": 2}, notes={"several": 1}, seconds=1.5)
    d = notebook.detection_summary(rep, 10)
    assert d["n_canvases"] == 8 and d["failures"] == {"no_face": 2} and d["failure_rate"] == pytest.approx(0.2)


def test_user_means():
    per = {"sface": {"protego": {"1b": {"u1": 100.0, "u2": 90.0}, "2a": {"u1": 10.0, "u2": 30.0}}}}
    assert notebook.user_means(per) == {"sface/protego": {"1b": 95.0, "2a": 20.0}}
    assert notebook.user_means(per["sface"], prefixed=False) == {"protego": {"1b": 95.0, "2a": 20.0}}


def test_coverage_scenarios_end_in_the_named_scenarios():
    names = notebook.coverage_scenarios([0.0, 0.5, 1.0])
    assert len(names) == 6 and (names[0], names[2], names[3], names[5]) == ("1b", "1a", "2b", "2a")


def test_main_numbers_and_targets():
    per = {"protego": {s: {"u1": v, "u2": v} for s, v in (("1b", 100.0), ("2a", 20.0))},
           "chameleon": {s: {"u1": v, "u2": v} for s, v in (("1b", 100.0), ("2a", 60.0))}}
    q = {m: {"ssim": {"u1": 0.9, "u2": 0.95}, "psnr": {"u1": 35.0, "u2": 37.0}} for m in per}
    r = {"per_user": {"native": {"sface": per}, "quality": q}}
    main = notebook.main_numbers(r, "sface", ["protego", "chameleon"], ["1b", "2a"])
    assert main["protego"]["2a"] == 20.0 and main["protego"]["2a_std"] == 0.0
    assert main["chameleon"]["ssim"] == pytest.approx(0.925) and main["chameleon"]["psnr"] == 36.0
    main["protego"].update({"1a": 5.0, "2b": 50.0})
    t = notebook.target_numbers({"main": main}, pd.DataFrame({"met": [True]}, index=["x"]))
    assert t["protego_2a_over_1b"] == pytest.approx(0.2) and t["reduction_ratio"] == pytest.approx(2.0)
    assert t["met"] == {"x": True}
    del main["chameleon"]
    assert "reduction_ratio" not in notebook.target_numbers({"main": main}, pd.DataFrame({"met": []}))


def test_pose_summary():
    poses = pd.DataFrame({"yaw": [1.0, -3.0, np.nan], "pitch": [2.0, 4.0, 0.0], "roll": [0.5, -1.5, 0.0],
                          "yaw_axis": [1.5, -3.0, np.nan]})
    s = notebook.pose_summary(poses)
    assert s["n_images"] == 3 and s["n_no_mesh"] == 1 and s["max_abs_roll"] == 1.5
    assert s["max_abs_yaw_minus_yaw01"] == 0.5 and s["median_pitch"] == 2.0


def test_yaw_fits():
    f = SimpleNamespace(n=3, pearson_abs_yaw=-0.5, spearman_abs_yaw=-0.4, coef=[1, 2, 3], r2=0.9)
    assert notebook.yaw_fits({"a": f}) == {"a": {"n": 3, "pearson_abs_yaw": -0.5, "spearman_abs_yaw": -0.4,
                                                 "quadratic_coef": [1, 2, 3], "quadratic_r2": 0.9}}
