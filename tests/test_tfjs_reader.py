"""TFJS graph interpreter: human-models graphs agree with @tensorflow/tfjs@4.22.0; synthetic graphs check
weight decoding, layouts, TF padding and errors.

The reference outputs in ``tests/fixtures/tfjs_reference.npz`` were made by
``scripts/make_tfjs_fixture.py`` (TFJS pure-JS CPU backend, one image at a time).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protego_nb import assets
from protego_nb.models.tfjs_reader import UnsupportedOpError, decode_weights, load_tfjs_graph

FIXTURE = Path(__file__).parent / "fixtures" / "tfjs_reference.npz"
TOL = 1e-4
MODELS = {  # key -> (json, outputs)
    "faceres": ("faceres.json", ["global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"]),
    "mobileface": ("mobileface.json", ["batchnorm0/add_1"]),
    "facemesh": ("facemesh.json", ["Identity_2", "Identity_1"]),
}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Largest per-sample relative L2 error of ``a`` against the reference ``b``."""
    a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-12)))


@pytest.fixture(scope="module")
def ref():
    return np.load(FIXTURE)


def _needs_human_models():
    if not assets.is_fetched("human-models"):
        pytest.skip("human-models not in the cache (python -m protego_nb.assets fetch human-models)")


def _load(key: str, outputs=None):
    _needs_human_models()
    js, outs = MODELS[key]
    return load_tfjs_graph(assets.path("human-models", js), outputs if outputs is not None else outs)


def _fixture_input(ref, key: str) -> torch.Tensor:
    """The NCHW float input the reference run saw (facemesh: centre 192 of the faceres crops / 255)."""
    if key == "facemesh":
        x = ref["faceres|input"][:, 16:208, 16:208].astype(np.float32) / np.float32(255.0)
    else:
        x = ref[f"{key}|input"].astype(np.float32)
    return torch.from_numpy(x).permute(0, 3, 1, 2)


# ---------------------------------------------------------------------------- fidelity
@pytest.mark.assets
@pytest.mark.parametrize("key", list(MODELS))
def test_matches_tfjs_reference(ref, key, record_fidelity):
    m = _load(key)
    with torch.no_grad():
        ours = m(_fixture_input(ref, key))
    for out in MODELS[key][1]:
        r = ref[f"{key}|{out}"]
        assert ours[out].shape == r.shape
        err = record_fidelity(key, "TensorFlow.js, pure-JS CPU backend (fixture)", _rel(ours[out].numpy(), r), len(r), what=out)
        assert err <= TOL, out
    if key == "faceres":  # the ReLU6 chains and conv+bias pairs were rewritten, still within TOL
        assert sum(s.op == "_Clamp" for s in m._plan) == 27


@pytest.mark.assets
def test_faceres_gender_and_age_are_plausible(ref):
    """Preprocessing check: images 1, 2 are George W. Bush (male, ~55) and Jennifer Aniston (female, ~33)."""
    m = _load("faceres")
    with torch.no_grad():
        y = m(_fixture_input(ref, "faceres")[1:])
    male = y["gender_pred/Sigmoid"][:, 0]
    assert male[0] > 0.7 and male[1] < 0.3
    p = y["age_pred/Softmax"]
    assert torch.allclose(p.sum(1), torch.ones(2), atol=1e-5)
    age = (p * torch.arange(100.0)).sum(1)
    assert 40 < age[0] < 70 and 20 < age[1] < 45
    # the two identities are clearly apart, and an image is closest to itself
    e = torch.nn.functional.normalize(y["global_pooling/Mean"], dim=1)
    assert float(e[0] @ e[1]) < 0.6


@pytest.mark.assets
def test_signature_key_selects_output(ref):
    _needs_human_models()
    m = load_tfjs_graph(assets.path("human-models", "facemesh.json"), "output_mesh")
    with torch.no_grad():
        y = m(_fixture_input(ref, "facemesh")[1:2])
    assert y.shape == (1, 1404)
    assert _rel(y.numpy(), ref["facemesh|Identity_2"][1:2]) <= TOL
    with pytest.raises(KeyError, match="output_mesh"):
        load_tfjs_graph(assets.path("human-models", "facemesh.json"), "no_such_node")


@pytest.mark.assets
@pytest.mark.parametrize(
    "key,size,out", [("faceres", 224, "global_pooling/Mean"), ("mobileface", 112, "batchnorm0/add_1")]
)
def test_batch_sizes_agree(key, size, out):
    m = _load(key, out)
    g = torch.Generator().manual_seed(6)
    x = torch.rand(16, 3, size, size, generator=g) * 255
    with torch.no_grad():
        y16, y3, y1 = m(x), m(x[:3]), m(x[:1])
    assert y16.shape[0] == 16 and y3.shape[0] == 3 and y1.shape[0] == 1
    assert _rel(y3.numpy(), y16[:3].numpy()) < 1e-5
    assert _rel(y1.numpy(), y16[:1].numpy()) < 1e-5
    assert not torch.allclose(y16[0], y16[1])


@pytest.mark.assets
@pytest.mark.parametrize(
    "key,size,out", [("faceres", 224, "global_pooling/Mean"), ("mobileface", 112, "batchnorm0/add_1")]
)
def test_gradients_reach_the_input(ref, key, size, out):
    m = _load(key, out)
    x = _fixture_input(ref, key if key != "facemesh" else "faceres")[1:3].clone().requires_grad_(True)
    y = torch.nn.functional.normalize(m(x), dim=1)
    (y[0] @ y[1]).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad.abs() > 0).float().mean() > 0.5
    assert all(not b.requires_grad for b in m.buffers())


@pytest.mark.assets
def test_bad_input_shape_is_explained():
    m = _load("mobileface", "batchnorm0/add_1")
    with pytest.raises(ValueError, match=r"mobileface\.json.*width is 100"):
        m(torch.zeros(1, 3, 112, 100))


# ---------------------------------------------------------------------------- synthetic graphs
def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _write_graph(tmp_path: Path, nodes: list[dict], weights: list[tuple], name: str = "g") -> Path:
    """Write ``name.json`` + ``name.bin``. weights: (name, array, quantization-dict | None)."""
    specs, chunks = [], []
    for wname, arr, q in weights:
        arr = np.asarray(arr)
        is_int = q is None and arr.dtype.kind == "i"
        spec = {"name": wname, "shape": list(arr.shape), "dtype": "int32" if is_int else "float32"}
        if q is None:
            chunks.append(arr.astype(np.int32 if arr.dtype.kind == "i" else np.float32).tobytes())
        elif q["dtype"] == "float16":
            chunks.append(arr.astype(np.float16).tobytes())
            spec["quantization"] = q
        else:  # uint8 {scale, min}: arr holds the codes
            chunks.append(arr.astype(np.uint8).tobytes())
            spec["quantization"] = q
        specs.append(spec)
        nodes = [*nodes, {"name": wname, "op": "Const", "attr": {"dtype": {"type": "DT_FLOAT"}, "value": {}}}]
    (tmp_path / f"{name}.bin").write_bytes(b"".join(chunks))
    model = {
        "format": "graph-model",
        "modelTopology": {"node": nodes},
        "weightsManifest": [{"paths": [f"{name}.bin"], "weights": specs}],
    }
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(model))
    return p


def _placeholder(h: int, w: int, c: int) -> dict:
    dims = [{"size": "-1"}, {"size": str(h)}, {"size": str(w)}, {"size": str(c)}]
    return {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": dims}}}}


def _conv_attrs(stride: int, padding: str = "SAME") -> dict:
    return {
        "strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}},
        "padding": {"s": _b64(padding)},
        "data_format": {"s": _b64("NHWC")},
        "dilations": {"list": {"i": ["1", "1", "1", "1"]}},
    }


def _np_conv_same(x: np.ndarray, w_hwio: np.ndarray, stride: int) -> np.ndarray:
    """Reference NHWC convolution straight from TF's SAME definition (extra padding at bottom/right)."""
    n, h, wd, _ = x.shape
    kh, kw, _, co = w_hwio.shape
    oh, ow = -(-h // stride), -(-wd // stride)
    ph = max((oh - 1) * stride + kh - h, 0)
    pw = max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = np.zeros((n, oh, ow, co))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.einsum("nhwc,hwco->no", patch, w_hwio)
    return out


def _np_depthwise_same(x: np.ndarray, w: np.ndarray, stride: int) -> np.ndarray:
    """Reference depthwise conv, TF layout ``[kh, kw, C, m]``; output channel ``c * m + j``."""
    kh, kw, c, m = w.shape
    outs = [_np_conv_same(x[..., ci : ci + 1], w[:, :, ci : ci + 1, :], stride) for ci in range(c)]
    return np.concatenate(outs, axis=-1)  # [.., C*m] with channel ci*m + j


def test_synthetic_graph_matches_numpy_reference(tmp_path):
    """_FusedConv2D (BiasAdd+Prelu, fp16 weights, stride 2 SAME on even size) -> depthwise (m=2, uint8
    weights) -> MaxPool SAME -> Mean -> _FusedMatMul (BiasAdd+Relu6) -> Softmax, against numpy."""
    r = np.random.default_rng(7)
    w1 = r.normal(size=(3, 3, 3, 4)).astype(np.float16).astype(np.float32)
    b1 = r.normal(size=4).astype(np.float16).astype(np.float32)
    a1 = np.abs(r.normal(size=4)).astype(np.float16).astype(np.float32)
    codes = r.integers(0, 256, size=(3, 3, 4, 2))
    scale, mn = 0.01, -1.2
    w2 = (codes * np.float32(scale) + np.float32(mn)).astype(np.float32)
    fc = r.normal(size=(8, 5)).astype(np.float32)
    fcb = r.normal(size=5).astype(np.float32)
    fp16 = {"dtype": "float16", "original_dtype": "float32"}
    nodes = [
        _placeholder(10, 8, 3),
        {"name": "c1", "op": "_FusedConv2D", "input": ["x", "w1", "b1", "a1"],
         "attr": {**_conv_attrs(2), "fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Prelu")]}},
                  "num_args": {"i": "2"}}},
        {"name": "dw", "op": "DepthwiseConv2dNative", "input": ["c1", "w2"], "attr": _conv_attrs(1)},
        {"name": "mp", "op": "MaxPool", "input": ["dw"],
         "attr": {"ksize": {"list": {"i": ["1", "2", "2", "1"]}}, "strides": {"list": {"i": ["1", "2", "2", "1"]}},
                  "padding": {"s": _b64("SAME")}, "data_format": {"s": _b64("NHWC")}}},
        {"name": "mean", "op": "Mean", "input": ["mp", "axes"], "attr": {"keep_dims": {"b": False}}},
        {"name": "fc", "op": "_FusedMatMul", "input": ["mean", "fcw", "fcb"],
         "attr": {"fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu6")]}}, "transpose_a": {"b": False},
                  "transpose_b": {"b": False}}},
        {"name": "sm", "op": "Softmax", "input": ["fc"]},
    ]  # fmt: skip
    weights = [
        ("w1", w1, fp16), ("b1", b1, fp16), ("a1", a1, fp16),
        ("w2", codes, {"dtype": "uint8", "scale": scale, "min": mn}),
        ("axes", np.array([1, 2], np.int32), None), ("fcw", fc, None), ("fcb", fcb, None),
    ]  # fmt: skip
    p = _write_graph(tmp_path, nodes, weights)
    x = r.normal(size=(3, 10, 8, 3)).astype(np.float32)

    # numpy reference from the definitions
    y = _np_conv_same(x.astype(np.float64), w1, 2) + b1
    y = np.where(y < 0, y * a1, y)
    y = _np_depthwise_same(y, w2, 1)
    n, h, w, c = y.shape  # 5 x 4: max pool 2/2 SAME pads one -inf row at the bottom
    yp = np.pad(y, ((0, 0), (0, 1), (0, 0), (0, 0)), constant_values=-np.inf)
    mp = yp.reshape(n, 3, 2, 2, 2, c).max(axis=(2, 4))
    f = np.clip(mp.mean(axis=(1, 2)) @ fc + fcb, 0, 6)
    sm = np.exp(f - f.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)

    m = load_tfjs_graph(p, ["sm", "mp"], flatten=False)
    with torch.no_grad():
        ours = m(torch.from_numpy(x).permute(0, 3, 1, 2))
    assert ours["mp"].shape == (3, 3, 2, 8)
    np.testing.assert_allclose(ours["mp"].numpy(), mp, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours["sm"].numpy(), sm, rtol=1e-4, atol=1e-5)


def test_float16_and_uint8_weight_decoding(tmp_path):
    vals = np.array([0.0, 1.0, -2.5, 65504.0, 1e-4, np.pi], dtype=np.float32)
    codes = np.array([[0, 1], [128, 255]], dtype=np.uint8)
    specs = [
        {
            "name": "h",
            "shape": [6],
            "dtype": "float32",
            "quantization": {"dtype": "float16", "original_dtype": "float32"},
        },
        {
            "name": "q",
            "shape": [2, 2],
            "dtype": "float32",
            "quantization": {"dtype": "uint8", "scale": 0.5, "min": -3.0},
        },
        {"name": "i", "shape": [3], "dtype": "int32"},
        {"name": "f", "shape": [1], "dtype": "float32"},
    ]
    raw = vals.astype(np.float16).tobytes() + codes.tobytes() + np.array([4, -5, 6], np.int32).tobytes()
    raw += np.array([0.1], np.float32).tobytes()
    (tmp_path / "w.bin").write_bytes(raw)
    out = decode_weights([{"paths": ["w.bin"], "weights": specs}], tmp_path, "test")
    assert out["h"].dtype == np.float32
    np.testing.assert_array_equal(out["h"], vals.astype(np.float16).astype(np.float32))
    assert out["h"][2] == -2.5 and out["h"][3] == 65504.0 and abs(out["h"][5] - np.pi) < 2e-3
    np.testing.assert_allclose(out["q"], [[-3.0, -2.5], [61.0, 124.5]])
    np.testing.assert_array_equal(out["i"], [4, -5, 6])
    assert out["f"][0] == np.float32(0.1)
    # shards shorter or longer than the manifest are refused, naming the file
    (tmp_path / "w.bin").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="too short"):
        decode_weights([{"paths": ["w.bin"], "weights": specs}], tmp_path, "test")
    (tmp_path / "w.bin").write_bytes(raw + b"\0\0\0\0")
    with pytest.raises(ValueError, match="manifest describes"):
        decode_weights([{"paths": ["w.bin"], "weights": specs}], tmp_path, "test")


def test_unsupported_op_raises_clear_error(tmp_path):
    nodes = [_placeholder(4, 4, 3), {"name": "weird/node", "op": "Cumsum", "input": ["x", "ax"]}]
    p = _write_graph(tmp_path, nodes, [("ax", np.array(1, np.int32), None)], name="weird")
    with pytest.raises(UnsupportedOpError, match=r"weird\.json.*'weird/node'.*'Cumsum'"):
        load_tfjs_graph(p, "weird/node")


def test_bad_files_are_explained(tmp_path):
    p = _write_graph(tmp_path, [_placeholder(4, 4, 3), {"name": "r", "op": "Relu", "input": ["x"]}], [])
    (tmp_path / "g.bin").unlink()
    spec = json.loads(p.read_text())
    spec["weightsManifest"][0]["weights"] = [{"name": "z", "shape": [1], "dtype": "float32"}]
    p.write_text(json.dumps(spec))
    with pytest.raises(FileNotFoundError, match=r"g\.json.*g\.bin"):
        load_tfjs_graph(p, "r")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON"):
        load_tfjs_graph(bad, "r")
    bad.write_text(json.dumps({"modelTopology": {"config": {}}, "weightsManifest": []}))
    with pytest.raises(ValueError, match="layers"):
        load_tfjs_graph(bad, "r")
