"""Leave-one-out rows come from the zoo's strong models; the paper-like row holds out FaceNet CASIA."""

from __future__ import annotations

import pytest

from protego_nb import study
from protego_nb.models import zoo


def test_every_strong_model_is_held_out_once_against_all_others():
    strong = zoo.strong_models()
    assert {
        "sface",
        "mobilefacenet",
        "dlib_resnet",
        "facenet_casia",
        "facenet_msceleb",
        "mobilefacenet512",
    } == set(strong)
    rows = study.loo_plan(["all"])
    assert [r[1] for r in rows] == strong
    for label, held, sur in rows:
        assert label == held and held not in sur and set(sur) | {held} == set(strong)


def test_paper_like_row():
    ((label, held, sur),) = study.loo_plan(
        ["paper_like"], surrogates=["dlib_resnet", "mobilefacenet", "facenet_casia"]
    )
    assert label == "paper_like:facenet_casia" and held == "facenet_casia"
    assert sur == ["dlib_resnet", "mobilefacenet", "facenet_msceleb"]  # the sibling architecture trains
    assert zoo.MODELS["facenet_casia"].fmt != zoo.MODELS["facenet_msceleb"].fmt  # other file, other data
    rows = study.loo_plan(["all", "paper_like", "sface"], surrogates=["dlib_resnet", "mobilefacenet"])
    labels = [r[0] for r in rows]
    assert len(labels) == len(set(labels)) == len(zoo.strong_models()) + 1  # duplicates dropped


def test_pool_and_errors():
    assert study.loo_plan(["mobilefacenet"], pool=["sface", "dlib_resnet", "mobilefacenet"]) == [
        ("mobilefacenet", "mobilefacenet", ["sface", "dlib_resnet"])
    ]
    with pytest.raises(KeyError, match="arcface_r100"):
        study.loo_plan(["arcface_r100"])
    with pytest.raises(ValueError, match="non-empty"):
        study.loo_plan(["sface"], pool=["sface"])
