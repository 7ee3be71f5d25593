"""A small ONNX -> PyTorch interpreter (``onnx`` parses the file; inference is pure torch).

Written for OpenCV Zoo's SFace (``face_recognition_sface_2021dec_int8bq.onnx``, opset 21),
but generic over the operators in :data:`SUPPORTED_OPS`:

* Every node whose inputs are all constants (initialisers, ``Constant`` nodes) is
  evaluated **once at load time**: the blocked int8 ``DequantizeLinear`` (opset 21
  ``block_size``) and the ``Reshape`` of the dequantised weights become float32 buffers,
  so the forward pass runs plain float convolutions.
* The remaining nodes run in graph order on torch tensors, so the module is batched,
  runs on CPU or CUDA and is differentiable with respect to its input.
* Graph inputs without an initialiser that no node reads (SFace declares every raw weight
  as a graph input this way) are ignored; the single graph input that nodes do read is
  the module's input. Inputs that have an initialiser are constants (ONNX lets a caller
  override them; we do not).

The module takes exactly what the ONNX graph's input takes (for SFace: ``[B, 3, 112, 112]``
float32, BGR, ``0..255``; the graph itself computes ``(x - 127.5) * 0.0078125``) and
returns the named output. ONNX operator semantics: https://onnx.ai/onnx/operators/.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import taps

__all__ = ["OnnxFormatError", "OnnxModule", "SUPPORTED_OPS", "load_onnx"]


class OnnxFormatError(ValueError):
    """The ONNX file cannot be read or uses something this interpreter does not support."""


@dataclass
class _Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""


def _attr(node: _Node, key: str, default: Any = None) -> Any:
    return node.attrs.get(key, default)


# --- operators: f(node, inputs) -> list of outputs; inputs are tensors (None for omitted) ---


def _dequantize(node: _Node, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None) -> torch.Tensor:
    """DequantizeLinear (opset 10-21): per-tensor, per-axis or blocked (``block_size``)."""
    axis = _attr(node, "axis", 1)
    block = _attr(node, "block_size", 0)
    xf = x.to(torch.float32)
    zf = torch.zeros((), dtype=torch.float32) if zp is None else zp.to(torch.float32)
    if scale.numel() == 1 and block == 0:
        return (xf - zf.reshape(())) * scale.reshape(())
    axis = axis % x.dim()
    if block:
        if scale.dim() != x.dim():
            raise OnnxFormatError(
                f"blocked DequantizeLinear '{node.name}': scale rank {scale.dim()} != {x.dim()}"
            )
        n = x.shape[axis]
        if scale.shape[axis] != math.ceil(n / block):
            raise OnnxFormatError(
                f"DequantizeLinear '{node.name}': {scale.shape[axis]} blocks for {n} values"
            )
        scale = scale.repeat_interleave(block, dim=axis).narrow(axis, 0, n)
        if zp is not None:
            zf = zf.repeat_interleave(block, dim=axis).narrow(axis, 0, n)
        return (xf - zf) * scale
    shape = [1] * x.dim()
    shape[axis] = -1
    zf = zf.reshape(shape) if zf.dim() else zf
    return (xf - zf) * scale.reshape(shape)


def _reshape(node: _Node, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    dims = [int(d) for d in shape.tolist()]
    if not _attr(node, "allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


def _conv(node: _Node, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise OnnxFormatError(f"Conv '{node.name}': auto_pad={_attr(node, 'auto_pad')} is not supported")
    nd = w.dim() - 2
    if nd != 2:
        raise OnnxFormatError(f"Conv '{node.name}': only 2-D convolutions are supported, got {nd}-D")
    pads = list(_attr(node, "pads", [0] * 2 * nd))
    begin, end = pads[:nd], pads[nd:]
    if begin != end:  # asymmetric: pad explicitly (F.pad takes last dim first)
        x = F.pad(x, [begin[1], end[1], begin[0], end[0]])
        begin = [0, 0]
    return F.conv2d(
        x,
        w,
        b,
        stride=tuple(_attr(node, "strides", [1] * nd)),
        padding=tuple(begin),
        dilation=tuple(_attr(node, "dilations", [1] * nd)),
        groups=_attr(node, "group", 1),
    )


def _batchnorm(node: _Node, x, gamma, beta, mean, var) -> torch.Tensor:
    if _attr(node, "training_mode", 0):
        raise OnnxFormatError(f"BatchNormalization '{node.name}': training_mode=1 is not supported")
    return F.batch_norm(x, mean, var, gamma, beta, training=False, eps=_attr(node, "epsilon", 1e-5))


def _prelu(node: _Node, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    if x.dim() >= 2 and slope.numel() == x.shape[1] and slope.shape == (x.shape[1],) + (1,) * (x.dim() - 2):
        return F.prelu(x, slope.reshape(-1))  # per-channel: one fused kernel
    return torch.where(x >= 0, x, x * slope)  # general ONNX (numpy) broadcasting of the slope


def _gemm(node: _Node, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    if _attr(node, "transA", 0):
        a = a.transpose(-1, -2)
    if _attr(node, "transB", 0):
        b = b.transpose(-1, -2)
    y = _attr(node, "alpha", 1.0) * (a @ b)
    if c is not None:
        y = y + _attr(node, "beta", 1.0) * c
    return y


def _flatten(node: _Node, x: torch.Tensor) -> torch.Tensor:
    axis = _attr(node, "axis", 1) % max(x.dim(), 1) if _attr(node, "axis", 1) < 0 else _attr(node, "axis", 1)
    lead = int(np.prod(x.shape[:axis])) if axis else 1
    return x.reshape(lead, -1)


def _transpose(node: _Node, x: torch.Tensor) -> torch.Tensor:
    perm = _attr(node, "perm", list(reversed(range(x.dim()))))
    return x.permute(*perm)


def _concat(node: _Node, *xs: torch.Tensor) -> torch.Tensor:
    return torch.cat(list(xs), dim=_attr(node, "axis"))


def _one(fn: Callable[..., torch.Tensor]) -> Callable[..., list[torch.Tensor]]:
    return lambda node, *args: [fn(node, *args)]


_OPS: dict[str, Callable[..., list[torch.Tensor]]] = {
    "DequantizeLinear": _one(_dequantize),
    "Reshape": _one(_reshape),
    "Conv": _one(_conv),
    "BatchNormalization": _one(_batchnorm),
    "PRelu": _one(_prelu),
    "Gemm": _one(_gemm),
    "Flatten": _one(_flatten),
    "Transpose": _one(_transpose),
    "Concat": _one(_concat),
    "Add": _one(lambda n, a, b: a + b),
    "Sub": _one(lambda n, a, b: a - b),
    "Mul": _one(lambda n, a, b: a * b),
    "Div": _one(lambda n, a, b: a / b),
    "MatMul": _one(lambda n, a, b: a @ b),
    "Relu": _one(lambda n, x: F.relu(x)),
    "Sigmoid": _one(lambda n, x: torch.sigmoid(x)),
    "Identity": _one(lambda n, x: x),
    "GlobalAveragePool": _one(lambda n, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    # inference: Dropout is the identity; its optional mask output is all True
    "Dropout": lambda n, x, *rest: [x, torch.ones_like(x, dtype=torch.bool)],
}
#: Operators the interpreter implements (plus ``Constant``, folded at load time).
SUPPORTED_OPS = tuple(sorted([*_OPS, "Constant"]))


def _run(node: _Node, args: list[torch.Tensor | None]) -> list[torch.Tensor]:
    while args and args[-1] is None:  # trailing omitted optional inputs
        args = args[:-1]
    return _OPS[node.op](node, *args)


#: Tap points (:mod:`.taps`): an ``Add`` of two computed tensors is a residual join; activations are ``"act"``.
_TAP_KINDS = {"Add": "join", "Relu": "act", "PRelu": "act", "LeakyRelu": "act"}


class OnnxModule(nn.Module):
    """An ONNX graph as a torch module: constants as buffers, the rest interpreted in order."""

    def __init__(
        self,
        consts: dict[str, torch.Tensor],
        nodes: list[_Node],
        input_name: str,
        output_name: str,
        source: str,
    ) -> None:
        super().__init__()
        self.input_name, self.output_name, self.source = input_name, output_name, source
        self._const_attr: dict[str, str] = {}
        for i, (name, value) in enumerate(consts.items()):
            attr = f"const_{i}"
            self.register_buffer(attr, value)
            self._const_attr[name] = attr
        self.nodes = nodes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input_name: x}

        def get(name: str) -> torch.Tensor | None:
            if name == "":
                return None
            if name in env:
                return env[name]
            return getattr(self, self._const_attr[name])

        for node in self.nodes:
            outs = _run(node, [get(n) for n in node.inputs])
            kind = _TAP_KINDS.get(node.op)
            if kind is not None and outs[0].dim() == 4 and (kind == "act" or all(n in env for n in node.inputs)):
                outs = [taps.point(outs[0], kind), *outs[1:]]  # a residual join / an activation (models.taps)
            for name, value in zip(node.outputs, outs):
                if name:
                    env[name] = value
        return env[self.output_name]

    def extra_repr(self) -> str:
        return f"source={self.source!r}, input={self.input_name!r}, output={self.output_name!r}, nodes={len(self.nodes)}"


def load_onnx(
    path: str | os.PathLike, output: str | None = None, fuse_batchnorm: bool = True, free_batch: bool = True
) -> OnnxModule:
    """Read an ONNX model into an eval-mode :class:`OnnxModule` returning ``output``.

    ``output`` defaults to the graph's only output. ``fuse_batchnorm`` folds each
    inference ``BatchNormalization`` that directly follows a ``Conv`` with constant
    weights into that convolution (``w * g / sqrt(v + eps)``, ``(b - m) * g / sqrt(v + eps)
    + beta``), which changes results only by float rounding and saves a pass per layer.
    ``free_batch``: a graph traced at batch 1 (its data input declares a fixed batch of 1)
    bakes that 1 into its ``Reshape`` targets (e.g. ``[1, -1]`` before the embedding); such
    a leading constant 1 becomes ONNX's ``0`` ("copy this dimension of the input"), so the
    module runs any batch and a batch of one is unchanged. Raises :class:`OnnxFormatError` naming
    the file and the reason for unreadable files, unsupported operators, several data
    inputs or an unknown output name.
    """
    import onnx
    from onnx import numpy_helper

    src = str(path)
    if not Path(src).is_file():
        raise OnnxFormatError(f"{src}: no such file")
    try:
        model = onnx.load(src)
    except Exception as exc:  # protobuf DecodeError and friends
        raise OnnxFormatError(f"{src}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    graph = model.graph
    if not graph.node:
        raise OnnxFormatError(f"{src}: the ONNX graph has no nodes")

    consts: dict[str, torch.Tensor] = {}
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        consts[init.name] = torch.from_numpy(np.array(arr, copy=True))
    nodes: list[_Node] = []
    for n in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        node = _Node(n.op_type, list(n.input), list(n.output), attrs, n.name or n.output[0])
        if n.domain not in ("", "ai.onnx"):
            raise OnnxFormatError(f"{src}: node '{node.name}' uses custom domain '{n.domain}'")
        if n.op_type == "Constant":
            if "value" not in attrs:
                raise OnnxFormatError(
                    f"{src}: Constant '{node.name}' without a tensor 'value' is not supported"
                )
            consts[n.output[0]] = torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"]), copy=True))
            continue
        if n.op_type not in _OPS:
            raise OnnxFormatError(
                f"{src}: operator {n.op_type} (node '{node.name}') is not supported; supported: {', '.join(SUPPORTED_OPS)}"
            )
        nodes.append(node)

    read = {i for n in nodes for i in n.inputs}
    data_inputs = [i.name for i in graph.input if i.name not in consts and i.name in read]
    if len(data_inputs) != 1:
        raise OnnxFormatError(f"{src}: expected exactly one data input, found {data_inputs}")
    outputs = [o.name for o in graph.output]
    if output is None:
        if len(outputs) != 1:
            raise OnnxFormatError(f"{src}: the graph has outputs {outputs}; pass output=...")
        output = outputs[0]

    # fold every node that depends only on constants (dequantisation, weight reshapes)
    runtime: list[_Node] = []
    with torch.no_grad():
        for node in nodes:
            if all(i == "" or i in consts for i in node.inputs):
                outs = _run(node, [consts[i] if i else None for i in node.inputs])
                for name, value in zip(node.outputs, outs):
                    if name:
                        consts[name] = value.contiguous()
            else:
                runtime.append(node)
    if fuse_batchnorm:
        runtime = _fuse_conv_bn(runtime, consts, keep={output})
    if free_batch and _declared_batch(graph, data_inputs[0]) == 1:
        for node in runtime:
            if node.op == "Reshape" and len(node.inputs) > 1 and node.inputs[1] in consts:
                shape = consts[node.inputs[1]]
                if (
                    shape.dim() == 1
                    and len(shape) > 1
                    and int(shape[0]) == 1
                    and not _attr(node, "allowzero", 0)
                ):
                    fixed = shape.clone()
                    fixed[0] = 0
                    consts[node.inputs[1] + "/free_batch"] = fixed
                    node.inputs[1] = node.inputs[1] + "/free_batch"
    produced = {o for n in runtime for o in n.outputs} | {data_inputs[0]}
    if output not in produced and output not in consts:
        raise OnnxFormatError(f"{src}: no tensor named '{output}' (graph outputs: {outputs})")
    needed = {i for n in runtime for i in n.inputs} | {output}
    kept = {k: (v.float() if v.is_floating_point() else v) for k, v in consts.items() if k in needed}
    module = OnnxModule(kept, _prune(runtime, output), data_inputs[0], output, src)
    return module.eval()


def _declared_batch(graph: Any, name: str) -> int | None:
    """The fixed leading dimension the graph declares for input ``name`` (None if symbolic/absent)."""
    for i in graph.input:
        if i.name == name:
            dims = i.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value"):
                return int(dims[0].dim_value)
    return None


def _fuse_conv_bn(nodes: list[_Node], consts: dict[str, torch.Tensor], keep: set[str]) -> list[_Node]:
    """Fold Conv -> BatchNormalization pairs (constant weights, conv output read only by the BN)."""
    readers: dict[str, int] = {}
    for n in nodes:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    producer = {o: n for n in nodes for o in n.outputs}
    fused: set[int] = set()
    for bn in nodes:
        if bn.op != "BatchNormalization" or len(bn.outputs) != 1 or _attr(bn, "training_mode", 0):
            continue
        conv = producer.get(bn.inputs[0])
        if (
            conv is None
            or conv.op != "Conv"
            or readers.get(conv.outputs[0], 0) != 1
            or conv.outputs[0] in keep
        ):
            continue
        if not all(i in consts for i in conv.inputs[1:] if i) or not all(i in consts for i in bn.inputs[1:]):
            continue
        w = consts[conv.inputs[1]].double()
        b = (
            consts[conv.inputs[2]].double()
            if len(conv.inputs) > 2 and conv.inputs[2]
            else torch.zeros(w.shape[0])
        )
        gamma, beta, mean, var = (consts[i].double() for i in bn.inputs[1:5])
        k = gamma / torch.sqrt(var + _attr(bn, "epsilon", 1e-5))
        wname, bname = f"{conv.outputs[0]}__fused_w", f"{conv.outputs[0]}__fused_b"
        consts[wname] = (w * k.view(-1, *([1] * (w.dim() - 1)))).float()
        consts[bname] = ((b.double() - mean) * k + beta).float()
        conv.inputs = [conv.inputs[0], wname, bname]
        conv.outputs = [bn.outputs[0]]
        fused.add(id(bn))
    return [n for n in nodes if id(n) not in fused]


def _prune(nodes: list[_Node], output: str) -> list[_Node]:
    """Drop nodes the requested output does not depend on."""
    needed, kept = {output}, []
    for node in reversed(nodes):
        if any(o in needed for o in node.outputs):
            kept.append(node)
            needed.update(i for i in node.inputs if i)
    return kept[::-1]
