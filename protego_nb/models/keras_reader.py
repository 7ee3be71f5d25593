"""A Keras HDF5 (``model.save('x.h5')``) weight reader with ``h5py``; no TensorFlow or Keras needed.

A Keras 2 HDF5 model file holds::

    /                       attrs: keras_version, backend, model_config (JSON of the layer graph)
    /model_weights          attrs: layer_names (every layer, in order)
    /model_weights/<layer>  attrs: weight_names ("<layer>/kernel:0", ...)
    /model_weights/<layer>/<layer>/kernel:0 ...   the arrays (TF layouts: conv HWIO, dense [in, out])

:func:`read_keras_h5` returns the decoded ``model_config`` and ``{layer: {param: array}}``
(``param`` without the ``:0`` suffix). :func:`load_facenet_keras` maps the Keras port of
David Sandberg's FaceNet Inception-ResNet-v1 (layer names ``Conv2d_1a_3x3``,
``Block35_1_Branch_0_Conv2d_1x1``, ..., ``Block8_6_...``, ``Bottleneck``,
``Bottleneck_BatchNorm``) onto facenet-pytorch's ``InceptionResnetV1``, after checking the
parts of the graph the mapping relies on (batch-norm epsilon and ``scale=False``, residual
scales, the 128-d bottleneck).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from .graphdef_reader import _facenet_tf_names, _load_state, to_torch_layout

__all__ = ["KerasFormatError", "facenet_keras_state_dict", "load_facenet_keras", "read_keras_h5"]


class KerasFormatError(ValueError):
    """The file is not a Keras HDF5 model this reader understands."""


def read_keras_h5(path: str | Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """``(model_config, weights)`` of a Keras 2 HDF5 model file; ``weights[layer][param]`` float arrays."""
    import h5py

    src = str(path)
    if not Path(src).is_file():
        raise KerasFormatError(f"{src}: no such file")
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise KerasFormatError(f"{src}: not an HDF5 file ({exc})") from exc
    with f:
        raw = f.attrs.get("model_config")
        if raw is None or "model_weights" not in f:
            raise KerasFormatError(f"{src}: no model_config / model_weights (not a Keras HDF5 model)")
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        mw = f["model_weights"]
        weights: dict[str, dict[str, np.ndarray]] = {}
        for layer in mw.attrs.get("layer_names", []):
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            g = mw[layer]
            params = {}
            for wname in g.attrs.get("weight_names", []):
                wname = wname.decode() if isinstance(wname, bytes) else str(wname)
                key = wname.split("/")[-1].split(":")[0]
                params[key] = np.asarray(g[wname])
            if params:
                weights[layer] = params
    return config, weights


def _keras_name(tf: str) -> tuple[str, str]:
    """Sandberg's TF variable (``Repeat/block35_1/Branch_0/Conv2d_1x1/weights``) -> (Keras layer, param)."""
    layer, var = tf.rsplit("/", 1)
    bn = False
    if layer.endswith("/BatchNorm"):
        layer, bn = layer[: -len("/BatchNorm")], True
    layer = re.sub(r"^Repeat(_\d)?/", "", layer)
    layer = re.sub(r"^block(35|17|8)_", r"Block\1_", layer)
    if layer.startswith("Block8/"):
        layer = "Block8_6/" + layer[len("Block8/") :]
    layer = layer.replace("/", "_") + ("_BatchNorm" if bn else "")
    param = {"weights": "kernel", "biases": "bias"}.get(var, var)
    return layer, param


def facenet_keras_state_dict(weights: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Keras FaceNet weights -> a facenet-pytorch ``InceptionResnetV1`` state dict (numpy; bn weight = 1)."""
    out: dict[str, np.ndarray] = {}
    names = _facenet_tf_names()
    for pt, tf in names.items():
        layer, param = _keras_name(tf)
        if layer not in weights or param not in weights[layer]:
            raise KerasFormatError(f"Keras layer {layer!r} has no {param!r} (needed for {pt})")
        out[pt] = to_torch_layout(pt, np.asarray(weights[layer][param], dtype=np.float32))
        if pt.endswith(".bias") and pt.replace(".bias", ".running_mean") in names:
            gamma = weights[layer].get("gamma")
            out[pt.replace(".bias", ".weight")] = (
                np.ones_like(out[pt]) if gamma is None else np.asarray(gamma, dtype=np.float32)
            )
    return out


#: facenet-pytorch's residual scales, in block order (5 x Block35, 10 x Block17, 5 x Block8, final Block8).
_SCALES = [0.17] * 5 + [0.10] * 10 + [0.20] * 5 + [1.0]


def _check_config(config: dict, src: str) -> int:
    """Check what the mapping assumes; returns the bottleneck size."""
    layers = config.get("config", {}).get("layers", [])
    if not layers:
        raise KerasFormatError(f"{src}: model_config lists no layers")
    by_class: dict[str, list[dict]] = {}
    for layer in layers:
        by_class.setdefault(layer["class_name"], []).append(layer["config"])
    for bn in by_class.get("BatchNormalization", []):
        if abs(bn.get("epsilon", 0.001) - 0.001) > 1e-9:
            raise KerasFormatError(f"{src}: {bn['name']} has epsilon {bn['epsilon']}, the port assumes 0.001")
    scales = [float(lam.get("arguments", {}).get("scale", np.nan)) for lam in by_class.get("Lambda", [])]
    if not np.allclose(scales, _SCALES):
        raise KerasFormatError(f"{src}: residual scales {scales} differ from Inception-ResNet-v1's {_SCALES}")
    dense = by_class.get("Dense", [])
    if len(dense) != 1 or dense[0]["name"] != "Bottleneck" or dense[0].get("use_bias"):
        raise KerasFormatError(
            f"{src}: expected one bias-free Dense 'Bottleneck', found {[d['name'] for d in dense]}"
        )
    last = layers[-1]["config"]["name"]
    if last != "Bottleneck_BatchNorm":
        raise KerasFormatError(f"{src}: the model ends in {last!r}, expected 'Bottleneck_BatchNorm'")
    return int(dense[0]["units"])


def load_facenet_keras(path: str | Path):
    """facenet-pytorch ``InceptionResnetV1`` (eval) with the Keras FaceNet's weights.

    The network's forward L2-normalises (facenet-pytorch); the Keras model's own output is
    the un-normalised ``Bottleneck_BatchNorm``, i.e. ``net.last_bn``'s output.
    """
    import torch
    from facenet_pytorch import InceptionResnetV1

    config, weights = read_keras_h5(path)
    dim = _check_config(config, str(path))
    state = facenet_keras_state_dict(weights)
    net = InceptionResnetV1(pretrained=None, classify=False)
    if dim != net.last_linear.out_features:
        net.last_linear = torch.nn.Linear(1792, dim, bias=False)
        net.last_bn = torch.nn.BatchNorm1d(dim, eps=0.001, momentum=0.1, affine=True)
    _load_state(net, state, str(path), KerasFormatError)
    return net.eval()
