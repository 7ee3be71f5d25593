"""Owner matching helpers (protego_nb.protect.owner) on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from protego_nb.protect.owner import parse_owner_embedding, reference_embedding, unlike_the_rest


def unit(*v: float) -> np.ndarray:
    a = np.asarray(v, np.float64)
    return a / np.linalg.norm(a)


def test_unlike_the_rest_flags_the_odd_face_out():
    e = np.stack([unit(1, 0.1, 0), unit(1, 0, 0.1), unit(1, 0.05, 0.05), unit(0, 0, 1)])
    assert unlike_the_rest(e, 0.5).tolist() == [False, False, False, True]
    assert unlike_the_rest(e[:1], 0.5).tolist() == [False]  # one face is never odd
    assert unlike_the_rest(np.eye(3), 0.5).all()  # three different people: all of them


def test_reference_embedding_is_the_renormalised_mean():
    ref = reference_embedding(np.stack([unit(1, 0), unit(0, 1)]))
    assert ref.dtype == np.float32 and np.allclose(ref, unit(1, 1))
    assert np.isfinite(reference_embedding(np.stack([unit(1, 0), unit(-1, 0)]))).all()  # no division by 0


def test_parse_owner_embedding_absent_text_or_list():
    assert parse_owner_embedding(None, "mobilefacenet") is None
    v = np.linspace(-1, 1, 192).round(4)
    assert np.allclose(parse_owner_embedding(v.tolist(), "mobilefacenet"), v)
    assert np.allclose(parse_owner_embedding(str(v.tolist()), "mobilefacenet"), v)
    with pytest.raises(ValueError, match="unknown owner model"):
        parse_owner_embedding([0.1], "no_such_model")
