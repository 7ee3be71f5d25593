"""The protection study, end to end: faces of a split -> protections per user and method -> embeddings -> tables.

This package is the orchestration layer the notebooks, benchmarks and CLI call; it consumes the layers below
(faces, models, protect, evaluate) and adds no method or metric of its own. One module per stage:

============================ ==========================================================================
:mod:`.faces`                the split's canvases, landmarks and UV maps (:class:`FaceSet`), missing images
:mod:`.roles`                surrogates that train and models held out (:func:`loo_plan`)
:mod:`.protections`          every registered method for every user, trained once and cached
:mod:`.scoring`              clean/protected embeddings, retrieval rows, image quality, per-user numbers
:mod:`.robustness`           what a platform does to an uploaded photo (JPEG, resize, blur)
:mod:`.ablations`            named changes over the base configuration, paired per user
:mod:`.pose`                 recall by head pose (notebook 06)
:mod:`.transfer`             black-box transfer diagnostics (2x2 of carrier x loss, refinement)
============================ ==========================================================================

The names below are re-exported so that a notebook reads ``study.<name>``; the method registry itself lives in
:mod:`protego_nb.protect.methods` and the dense-cluster measure in :mod:`protego_nb.evaluate.cohesion`.
"""

from __future__ import annotations

from ..evaluate.cohesion import cohesion, within_cosine
from ..protect.methods import METHODS, Method, register
from .ablations import (
    ABLATION_VALUES,
    ABLATIONS,
    ablation_per_user,
    ablation_rows,
    ablation_setup,
    run_ablation,
)
from .faces import FaceSet, load_faces, load_study_faces, missing_faces, user_images
from .protections import (
    Protection,
    check_methods,
    protect_faces,
    protect_users,
    run_method,
    with_ssim_floor,
)
from .robustness import TRANSFORMS, transform_canvases, transformed
from .roles import PAPER_LIKE, load_surrogates, loo_plan
from .scoring import clean_embeddings, embed, evaluate, features_for, per_user, quality_table, recall_table

register_method = register

__all__ = [
    "ABLATIONS",
    "ABLATION_VALUES",
    "METHODS",
    "PAPER_LIKE",
    "TRANSFORMS",
    "FaceSet",
    "Method",
    "Protection",
    "ablation_per_user",
    "ablation_rows",
    "ablation_setup",
    "check_methods",
    "clean_embeddings",
    "cohesion",
    "embed",
    "evaluate",
    "features_for",
    "load_faces",
    "load_study_faces",
    "load_surrogates",
    "loo_plan",
    "missing_faces",
    "per_user",
    "protect_faces",
    "protect_users",
    "quality_table",
    "recall_table",
    "register_method",
    "run_ablation",
    "run_method",
    "transform_canvases",
    "transformed",
    "user_images",
    "with_ssim_floor",
    "within_cosine",
]
