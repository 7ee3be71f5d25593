"""Model roles in a study: the white-box surrogates that train, and the black-box models held out of training."""

from __future__ import annotations

from collections.abc import Sequence

from ..models import zoo


def load_surrogates(names: Sequence[str], intruder: str | None, device: str = "cpu") -> dict:
    if intruder is not None and intruder in names:
        raise ValueError(
            f"the black-box intruder {intruder!r} must not be a training surrogate ({list(names)})"
        )
    return {n: zoo.load(n, device) for n in names}


# --- leave-one-out plan: rows from the zoo's strong models, plus a paper-like row

#: The paper-like held-out setting: FaceNet CASIA-WebFace held out while the same architecture trained
#: on other data (FaceNet MS-Celeb-1M) is among the surrogates, as the paper holds out IR-50 AdaFace CASIA
#: while IR-50 models on other data/losses train.
PAPER_LIKE = {"held_out": "facenet_casia", "sibling": "facenet_msceleb"}


def loo_plan(
    entries: Sequence[str], surrogates: Sequence[str] = (), pool: Sequence[str] = ()
) -> list[tuple[str, str, list[str]]]:
    """Rows ``(label, held-out model, surrogates)`` of the leave-one-out table.

    ``entries``: a model name (held out; its surrogates are every *other* model of ``pool``),
    ``"all"`` (one such row per ``pool`` model) or ``"paper_like"`` (:data:`PAPER_LIKE`: the
    profile's ``surrogates`` without the held-out model, plus its sibling). ``pool`` defaults to
    :func:`zoo.strong_models`. Labels are the held-out model's name, or ``paper_like:<name>``.
    """
    pool = list(pool) or zoo.strong_models()
    rows: list[tuple[str, str, list[str]]] = []
    for entry in entries:
        if entry == "all":
            rows += [(m, m, [s for s in pool if s != m]) for m in pool]
        elif entry == "paper_like":
            held, sib = PAPER_LIKE["held_out"], PAPER_LIKE["sibling"]
            sur = [s for s in surrogates if s != held]
            rows.append((f"paper_like:{held}", held, sur + ([sib] if sib not in sur else [])))
        elif entry in zoo.MODELS:
            rows.append((entry, entry, [s for s in pool if s != entry]))
        else:
            raise KeyError(f"leave-one-out entry {entry!r}: expected a zoo model, 'all' or 'paper_like'")
    seen: dict[str, list[str]] = {}
    for label, held, sur in rows:
        if held in sur or not sur:
            raise ValueError(f"leave-one-out row {label!r}: surrogates {sur} must be non-empty and exclude {held!r}")
        seen.setdefault(label, sur)
    return [(label, held, sur) for label, held, sur in rows if seen.pop(label, None) is not None]
