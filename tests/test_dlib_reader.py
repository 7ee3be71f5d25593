"""dlib ResNet reader: fidelity against dlib's own C++ descriptors, and clear failures on bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protego_nb import assets
from protego_nb.models.dlib_reader import DlibFormatError, load_dlib, parse_dlib

FIXTURE = Path(__file__).parent / "fixtures" / "dlib_reference.npz"
KEY, NAME = "face-recognition-models", "dlib_face_recognition_resnet_model_v1.dat"

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def dat() -> Path:
    if not assets.is_fetched(KEY):
        pytest.skip("dlib model not in the cache (python -m protego_nb.assets fetch face-recognition-models)")
    return assets.path(KEY, NAME)


@pytest.fixture(scope="module")
def model(dat):
    torch.manual_seed(0)
    return load_dlib(dat)


def test_parse_structure(dat):
    net = parse_dlib(dat)
    kinds = [ly.kind for ly in net.layers]
    assert kinds.count("con_4") == 29 and kinds.count("affine_") == 29 and kinds.count("fc_2") == 1
    assert net.chip_size == (150, 150)
    np.testing.assert_allclose(net.input_mean, (122.782, 117.001, 104.298), atol=1e-4)
    assert abs(net.distance_threshold - 0.6) < 1e-6
    n_params = sum(
        ly.params.size + (0 if ly.bias is None else ly.bias.size)
        for ly in net.layers
        if ly.params is not None
    )
    assert n_params == 5_614_592


def test_matches_dlib_cpp(model, record_fidelity):
    """Descriptors equal dlib 20.0.1's ``compute_face_descriptor`` (scripts/make_dlib_fixture.py)."""
    ref = np.load(FIXTURE)
    chips = torch.from_numpy(ref["chips"]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        ours = model.embed_pixels(chips).numpy()
    want = ref["descriptors"]
    rel = np.linalg.norm(ours - want, axis=1) / np.linalg.norm(want, axis=1)
    record_fidelity("dlib_resnet", "dlib 20.0.1 compute_face_descriptor (fixture)", rel.max(), len(want))
    assert rel.max() <= 1e-4, rel
    # and the face chips are not degenerate: two different people are far apart in dlib's metric
    names = list(ref["names"])
    i, j = names.index("Colin_Powell/Colin_Powell_0001.jpg"), names.index("Tony_Blair/Tony_Blair_0001.jpg")
    assert np.linalg.norm(want[i] - want[j]) > 0.6


def test_batch_independent_and_grad(model):
    x = (torch.rand(3, 3, 150, 150, generator=torch.Generator().manual_seed(1)) * 255).requires_grad_(True)
    y = model.embed_pixels(x)
    assert y.shape == (3, 128)
    with torch.no_grad():
        y1 = model.embed_pixels(x[1:2])
    torch.testing.assert_close(y[1:2].detach(), y1, rtol=1e-4, atol=1e-5)
    y.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_normalisation_is_dlibs_input_layer(model):
    x = torch.full((1, 3, 150, 150), 200.0)
    n = model.normalize(x)
    torch.testing.assert_close(n[0, :, 0, 0], (200.0 - torch.tensor([122.782, 117.001, 104.298])) / 256.0)


def test_bad_files(tmp_path, dat):
    bad = tmp_path / "not_dlib.dat"
    bad.write_bytes(b"\x01\x01\x01\x05hello")
    with pytest.raises(DlibFormatError, match="not_dlib.dat"):
        load_dlib(bad)
    truncated = tmp_path / "truncated.dat"
    truncated.write_bytes(Path(dat).read_bytes()[:1_000_000])
    with pytest.raises(DlibFormatError, match="truncated.dat"):
        load_dlib(truncated)
    with pytest.raises(DlibFormatError, match="cannot read"):
        load_dlib(tmp_path / "missing.dat")
