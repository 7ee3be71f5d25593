"""Batched extraction and the clean-feature disk cache, with a tiny stand-in face model."""

import threading
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from protego_nb.models import embed as F


class TinyModel(torch.nn.Module):
    """Stand-in for a zoo model: ``(canvas [B,3,H,W], landmarks [B,5,2]) -> [B,8]``; counts calls."""

    def __init__(self, seed: int = 0, name: str = "tiny") -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Linear(3 * 4 * 4 + 10, 8)
        with torch.no_grad():
            self.proj.weight.copy_(torch.randn(8, 58, generator=g))
            self.proj.bias.copy_(torch.randn(8, generator=g))
        self.spec = SimpleNamespace(name=name, similarity="cosine")
        self.calls = 0
        self.images = 0

    def forward(self, x: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        self.calls += 1
        self.images += x.shape[0]
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)
        return self.proj(torch.cat([pooled, lm.flatten(1) / 224.0], 1))


@dataclass
class Canvas:
    path: str
    canvas: np.ndarray
    landmarks: np.ndarray


def make_canvases(n: int, seed: int = 0, size: int = 32) -> list[Canvas]:
    rng = np.random.default_rng(seed)
    return [Canvas(f"P{seed}/P_{i:04d}.jpg", rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                   rng.uniform(0, size, (5, 2)).astype(np.float32)) for i in range(n)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTEGO_CACHE_DIR", str(tmp_path / "cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: avoid oversubscribing a shared CPU
    yield
    torch.set_num_threads(n)


def test_extract_batches_and_matches_one_big_batch():
    m = TinyModel()
    cs = make_canvases(10)
    x = torch.from_numpy(np.stack([c.canvas for c in cs])).permute(0, 3, 1, 2).float() / 255
    lm = np.stack([c.landmarks for c in cs])
    m.train()
    emb = F.extract(m, x, lm, batch_size=4, progress=False)
    assert m.calls == 3 and m.images == 10 and emb.shape == (10, 8)
    assert m.training  # mode restored
    with torch.no_grad():
        ref = m.eval()(x, torch.from_numpy(lm))
    torch.testing.assert_close(emb, ref, rtol=1e-5, atol=1e-5)
    # uint8 NHWC input (list or stacked) gives the same numbers
    emb2 = F.extract(m, [c.canvas for c in cs], lm, batch_size=3, progress=False)
    torch.testing.assert_close(emb, emb2)
    with pytest.raises(ValueError, match="landmarks must be"):
        F.extract(m, x, lm[:5])


def test_second_call_computes_nothing_and_results_are_identical():
    m = TinyModel()
    cs = make_canvases(12)
    a = F.clean_features(m, cs, batch_size=5, progress=False)
    assert m.images == 12 and set(a) == {c.path for c in cs}
    m.calls = m.images = 0
    b = F.clean_features(m, cs, batch_size=5, progress=False)
    assert m.calls == 0
    for k in a:
        assert np.array_equal(a[k], b[k]) and a[k].dtype == np.float32
    # a partly new list computes only the new canvases
    more = cs[:4] + make_canvases(3, seed=1)
    c = F.clean_features(m, more, progress=False)
    assert m.images == 3 and len(c) == 7
    assert np.array_equal(c[cs[0].path], a[cs[0].path])


def test_cache_is_keyed_by_content_and_weights():
    m = TinyModel()
    cs = make_canvases(3)
    F.clean_features(m, cs, progress=False)
    # same pixels under other ids: cache hit; identical canvases in one call are computed once
    m.images = 0
    dup = {"x/1.jpg": cs[0], "x/2.jpg": cs[0], "x/3.jpg": cs[1]}
    out = F.clean_features(m, dup, progress=False)
    assert m.images == 0 and np.array_equal(out["x/1.jpg"], out["x/2.jpg"])
    # moved landmarks change the key
    moved = [Canvas(cs[0].path, cs[0].canvas, cs[0].landmarks + 1)]
    F.clean_features(m, moved, progress=False)
    assert m.images == 1
    # other weights, same name: other fingerprint folder, recomputed
    m2 = TinyModel(seed=5)
    F.clean_features(m2, cs, progress=False)
    assert m2.images == 3
    assert F.model_fingerprint(m) != F.model_fingerprint(m2)
    assert F.model_fingerprint(m) == F.model_fingerprint(TinyModel())


def test_chunks_are_plain_npz_and_no_temp_files_remain():
    m = TinyModel()
    F.clean_features(m, make_canvases(4), progress=False)
    F.clean_features(m, make_canvases(2, seed=2), progress=False)
    store = F.FeatureCache.for_model(m)
    files = list(store.root.iterdir())
    assert len(store.chunks()) == 2 and len(files) == 2  # no leftover temporaries
    with np.load(store.chunks()[0], allow_pickle=False) as z:
        assert z["emb"].dtype == np.float32 and z["keys"].dtype.kind == "S"
    before = store.load()
    merged = store.compact()
    assert store.chunks() == [merged]
    after = store.load()
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


def test_corrupt_chunk_is_skipped_and_recomputed():
    m = TinyModel()
    cs = make_canvases(3)
    F.clean_features(m, cs, progress=False)
    store = F.FeatureCache.for_model(m)
    store.chunks()[0].write_bytes(b"not an npz")
    m.images = 0
    with pytest.warns(UserWarning, match="unreadable chunk"):
        out = F.clean_features(m, cs, progress=False)
    assert m.images == 3 and len(out) == 3


def test_concurrent_writers_share_the_cache():
    cs = make_canvases(20)
    results, errors = [], []

    def work() -> None:
        try:
            results.append(F.clean_features(TinyModel(), cs, batch_size=3, progress=False))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        assert all(np.allclose(r[k], results[0][k], atol=1e-6) for k in r)
    m = TinyModel()
    again = F.clean_features(m, cs, progress=False)
    assert m.calls == 0 and len(again) == 20


def test_non_finite_embeddings_are_left_out_and_bad_names_refused():
    class NaNModel(TinyModel):
        def forward(self, x, lm):
            out = super().forward(x, lm)
            out[0] = float("nan")
            return out

    m = NaNModel(name="nanny")
    cs = make_canvases(3)
    with pytest.warns(UserWarning, match="non-finite"):
        out = F.clean_features(m, cs, batch_size=8, progress=False)
    assert cs[0].path not in out and len(out) == 2
    with pytest.raises(ValueError, match="safe folder name"):
        F.clean_features(TinyModel(name="../evil"), cs, progress=False)
    with pytest.raises(ValueError, match="duplicate image ids"):
        F.clean_features(TinyModel(), cs, ids=["a", "a", "b"], progress=False)
