"""Read dlib's ``dlib_face_recognition_resnet_model_v1.dat`` into a PyTorch module.

The file is dlib's own binary serialisation of the network type ``anet_type`` from
dlib's ``examples/dnn_face_recognition_ex.cpp`` (Davis King, 2017): a ResNet-29-style
metric-learning net (``loss_metric``) that maps a 150x150 RGB face chip to a 128-d
descriptor; dlib's rule is Euclidean distance < 0.6 for the same person.

Serialisation (dlib ``serialize.h`` / ``dnn/core.h`` / ``dnn/layers.h``), as parsed here:

* integers: a control byte (low nibble = number of bytes, bit 0x80 = negative) followed
  by that many little-endian bytes; floats: an integer mantissa and an integer exponent
  (``m * 2**e``); strings: an integer length then the bytes; bools: ASCII ``'0'``/``'1'``.
* tensors: version 2, four integers ``(n, k, nr, nc)``, then ``n*k*nr*nc`` raw
  little-endian float32 values.
* The network is written recursively top-down: ``add_loss_layer`` writes its version and
  the loss details (``loss_metric_2``, margin, distance threshold), then every wrapper
  layer writes its version *before* its sub-network (``2`` for an ``add_layer``, ``1``
  for the parameter-free ``tag``/``skip`` wrappers), down to the input layer
  (``input_rgb_image_sized``: the three channel means and the chip size; the ``add_layer``
  directly above the input layer writes version ``3``). Then the
  ``add_layer`` details follow bottom-up, each a tag string (``con_4``, ``affine_``,
  ``relu_``, ``max_pool_2``, ``avg_pool_2``, ``add_prev_``, ``fc_2``) with its
  parameters, followed by dlib's bookkeeping (flags and empty gradient tensors), which
  we skip.

The tag/skip wrappers carry no identifiers in the file, so the residual wiring cannot be
read from it; we check instead that the file's layer sequence (kinds, order, wrapper
pattern, shapes) is exactly the one ``anet_type`` produces, and refuse any other file.

Normalisation: dlib normalises in its *input layer* (``input_rgb_image::to_tensor``):
``(pixel - mean_c) / 256`` with the per-channel means stored in the file
(122.782, 117.001, 104.298 for R, G, B). Following the readers' shared contract the
module's ``forward`` takes the tensor *after* that input layer, i.e. already normalised
values ``[B, 3, 150, 150]`` in RGB order; :meth:`DlibResNet.normalize` applies dlib's
input layer to RGB pixels in ``0..255`` and :meth:`DlibResNet.embed_pixels` chains both.

Size: one file format, self-contained (dlib's serialisation and the network it describes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import taps

__all__ = ["DlibFormatError", "DlibLayer", "DlibResNet", "load_dlib", "parse_dlib"]

_LAYER_TAGS = ("con_4", "affine_", "relu_", "max_pool_2", "avg_pool_2", "add_prev_", "fc_2")


class DlibFormatError(ValueError):
    """The file is not a dlib ``anet_type`` face-recognition network this reader understands."""


@dataclass
class DlibLayer:
    """One parsed ``add_layer``: its dlib tag and what the forward pass needs."""

    kind: str
    params: np.ndarray | None = None  # conv: [O,I,kh,kw] weights; affine: [2,C]; fc: [in,out]
    bias: np.ndarray | None = None
    ints: tuple[int, ...] = ()  # conv: (O, kh, kw, sy, sx, py, px); pool: (kh, kw, sy, sx, py, px)
    offset: int = 0  # byte offset of the tag in the file, for error messages


@dataclass
class DlibNet:
    """Everything parsed from the file."""

    loss: str
    margin: float
    distance_threshold: float
    input_mean: tuple[float, float, float]
    chip_size: tuple[int, int]
    wrapper_versions: list[int]  # top-down, one per wrapper (2 = add_layer, 1 = tag/skip, 3 = bottom layer)
    layers: list[DlibLayer] = field(default_factory=list)  # bottom-up


class _Reader:
    """Cursor over the bytes of a dlib serialisation."""

    def __init__(self, data: bytes, path: str) -> None:
        self.b = data
        self.o = 0
        self.path = path

    def fail(self, why: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.path}: not a dlib face-recognition ResNet file ({why}, at byte {self.o})"
        )

    def int(self) -> int:
        if self.o >= len(self.b):
            raise self.fail("unexpected end of file")
        c = self.b[self.o]
        n = c & 0x0F
        if n > 8 or self.o + 1 + n > len(self.b):
            raise self.fail(f"bad integer control byte 0x{c:02x}")
        v = int.from_bytes(self.b[self.o + 1 : self.o + 1 + n], "little")
        self.o += 1 + n
        return -v if c & 0x80 else v

    def float(self) -> float:
        mantissa = self.int()
        exponent = self.int()
        return float(mantissa) * 2.0**exponent

    def string(self) -> str:
        n = self.int()
        if n < 0 or n > 256 or self.o + n > len(self.b):
            raise self.fail(f"bad string length {n}")
        s = self.b[self.o : self.o + n]
        self.o += n
        try:
            return s.decode("ascii")
        except UnicodeDecodeError as exc:
            raise self.fail("non-ASCII string") from exc

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise self.fail(f"tensor version {version}, expected 2")
        dims = [self.int() for _ in range(4)]
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dims {dims}")
        count = int(np.prod(dims))
        end = self.o + 4 * count
        if end > len(self.b):
            raise self.fail(f"tensor of {count} floats runs past the end of the file")
        arr = np.frombuffer(self.b, dtype="<f4", count=count, offset=self.o).astype(np.float32).reshape(dims)
        self.o = end
        return arr

    def seek_next_layer(self) -> str | None:
        """Skip dlib's per-layer bookkeeping up to the next layer tag; None at end of file."""
        window = self.b[self.o : self.o + 300]
        best = None
        for tag in _LAYER_TAGS:
            j = window.find(bytes([0x01, len(tag)]) + tag.encode())
            if j >= 0 and (best is None or self.o + j < best[0]):
                best = (self.o + j, tag)
        if best is None:
            if self.b.find(b"\x01\x04fc_2", self.o) >= 0 or self.b.find(b"\x01\x05con_4", self.o) >= 0:
                raise self.fail("unparsed bytes before the next layer tag")
            return None
        # dlib writes at most ~70 bytes of aliases, multipliers, flags and empty tensors
        # between two layers; a larger gap would mean we skipped a layer we do not know.
        if best[0] - self.o > 256:
            raise self.fail(f"{best[0] - self.o} unparsed bytes before the next layer tag")
        self.o = best[0]
        return best[1]


def parse_dlib(path: str | os.PathLike) -> DlibNet:
    """Parse the ``.dat`` file into plain numpy arrays (no torch)."""
    path = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DlibFormatError(f"{path}: cannot read ({exc.strerror})") from exc
    r = _Reader(data, path)
    if r.int() != 1:
        raise r.fail("the add_loss_layer version is not 1")
    loss = r.string()
    if loss != "loss_metric_2":
        raise r.fail(f"loss layer '{loss}', expected 'loss_metric_2'")
    margin, thresh = r.float(), r.float()
    versions: list[int] = []
    while True:  # wrapper versions, top-down, to the input layer
        v = r.int()
        if v not in (1, 2, 3):
            raise r.fail(f"wrapper version {v}")
        versions.append(v)
        if v == 3:  # the bottom add_layer (the one over the input layer) is written as version 3
            break
        if len(versions) > 10_000:
            raise r.fail("no input layer found")
    name = r.string()
    if name != "input_rgb_image_sized":
        raise r.fail(f"input layer '{name}', expected 'input_rgb_image_sized'")
    mean = (r.float(), r.float(), r.float())
    chip = (r.int(), r.int())
    net = DlibNet(loss, margin, thresh, mean, chip, versions)
    tag = r.seek_next_layer()
    while tag is not None:
        start = r.o
        if r.string() != tag:  # pragma: no cover - seek_next_layer guarantees it
            raise r.fail("tag mismatch")
        if tag == "con_4":
            params = r.tensor().reshape(-1)
            o, kh, kw, sy, sx, py, px = (r.int() for _ in range(7))
            n_w = params.size - o
            if n_w <= 0 or n_w % (o * kh * kw):
                raise r.fail(f"con_4 has {params.size} parameters, not filters+bias for {o} {kh}x{kw}")
            c_in = n_w // (o * kh * kw)
            layer = DlibLayer(
                tag, params[:n_w].reshape(o, c_in, kh, kw), params[n_w:], (o, kh, kw, sy, sx, py, px)
            )
        elif tag == "affine_":
            params = r.tensor().reshape(-1)
            if params.size % 2:
                raise r.fail("affine_ parameter count is odd")
            layer = DlibLayer(tag, params.reshape(2, -1))  # gamma, beta
        elif tag in ("max_pool_2", "avg_pool_2"):
            layer = DlibLayer(tag, ints=tuple(r.int() for _ in range(6)))
        elif tag == "fc_2":
            n_out, n_in = r.int(), r.int()
            params = r.tensor().reshape(-1)
            if params.size == n_in * n_out:
                w, b = params.reshape(n_in, n_out), None
            elif params.size == (n_in + 1) * n_out:
                w2 = params.reshape(n_in + 1, n_out)
                w, b = w2[:n_in], w2[n_in]
            else:
                raise r.fail(f"fc_2 has {params.size} parameters for {n_in}->{n_out}")
            layer = DlibLayer(tag, w, b, (n_out, n_in))
        else:  # relu_, add_prev_: no parameters
            layer = DlibLayer(tag)
        layer.offset = start
        net.layers.append(layer)
        tag = r.seek_next_layer()
    return net


# --- the architecture the file must describe --------------------------------------------


def _expected_layout() -> tuple[list[str], list[int]]:
    """Bottom-up layer kinds and top-down wrapper versions of dlib's ``anet_type``.

    ``block<N,stride> = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,SUB>>>>>``;
    ``ares = relu<add_prev1<block<N,1,tag1<SUB>>>>``;
    ``ares_down = relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUB>>>>>>>``.
    Returns (kinds bottom-up with 'tag'/'skip' markers, wrapper versions top-down).
    """
    seq: list[str] = ["con_4", "affine_", "relu_", "max_pool_2"]
    block = ["con_4", "affine_", "relu_", "con_4", "affine_"]

    def ares() -> list[str]:
        return ["tag", *block, "add_prev_", "relu_"]

    def ares_down() -> list[str]:
        return ["tag", *block, "tag", "skip", "avg_pool_2", "add_prev_", "relu_"]

    for stage in (
        [ares] * 3,
        [ares_down] + [ares] * 3,
        [ares_down] + [ares] * 2,
        [ares_down] + [ares] * 2,
        [ares_down],
    ):
        for fn in stage:
            seq += fn()
    seq += ["avg_pool_2", "fc_2"]
    versions = [1 if k in ("tag", "skip") else 2 for k in reversed(seq)]
    versions[-1] = 3  # dlib's add_layer specialisation over the input layer
    return seq, versions


def _block_plan() -> list[tuple[str, int]]:
    """The residual blocks in order: (kind 'res'|'down', width)."""
    plan = [("res", 32)] * 3
    plan += [("down", 64)] + [("res", 64)] * 3
    plan += [("down", 128)] + [("res", 128)] * 2
    plan += [("down", 256)] + [("res", 256)] * 2
    plan += [("down", 256)]
    return plan


def _pad_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib ``add_prev``: sum of two tensors, the smaller one zero-padded at the end of C, H and W."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:]))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class _Affine(nn.Module):
    """dlib ``affine_`` in CONV_MODE: per-channel ``gamma * x + beta`` (batch-norm folded at export)."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("gamma", torch.from_numpy(gamma.copy()).view(1, -1, 1, 1))
        self.register_buffer("beta", torch.from_numpy(beta.copy()).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta, x, self.gamma)


def _conv(layer: DlibLayer) -> nn.Conv2d:
    o, kh, kw, sy, sx, py, px = layer.ints
    assert layer.params is not None and layer.bias is not None
    conv = nn.Conv2d(layer.params.shape[1], o, (kh, kw), stride=(sy, sx), padding=(py, px), bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(layer.params))
        conv.bias.copy_(torch.from_numpy(layer.bias))
    return conv


class _Block(nn.Module):
    """conv -> affine -> relu -> conv -> affine, plus the shortcut, then relu."""

    def __init__(self, layers: list[DlibLayer], down: bool) -> None:
        super().__init__()
        self.down = down
        self.conv1, self.aff1 = _conv(layers[0]), _Affine(*layers[1].params)  # type: ignore[misc]
        self.conv2, self.aff2 = _conv(layers[3]), _Affine(*layers[4].params)  # type: ignore[misc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return taps.point(F.relu(_pad_add(shortcut, y)), "join")  # a residual join (models.taps)


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet (``anet_type``) as a torch module.

    ``forward(x)``: ``x [B, 3, 150, 150]`` float32 holding dlib's input-layer output
    (RGB, ``(pixel - mean) / 256``); returns the 128-d descriptor ``[B, 128]`` (not
    normalised; compare with Euclidean distance, dlib's threshold 0.6). Works for any
    batch size, on CPU or CUDA, with gradients to the input.
    """

    def __init__(self, net: DlibNet) -> None:
        super().__init__()
        self.chip_size = net.chip_size
        self.distance_threshold = net.distance_threshold
        self.register_buffer("input_mean", torch.tensor(net.input_mean, dtype=torch.float32).view(1, 3, 1, 1))
        layers = [ly for ly in net.layers]
        self.stem_conv = _conv(layers[0])
        self.stem_aff = _Affine(*layers[1].params)  # type: ignore[misc]
        kh, kw, sy, sx, py, px = layers[3].ints
        self.pool = (kh, kw, sy, sx, py, px)
        blocks = []
        i = 4
        for kind, _width in _block_plan():
            blocks.append(_Block(layers[i : i + 5], down=kind == "down"))
            i += 5 + (1 if kind == "down" else 0) + 2  # block, [avg_pool], add_prev, relu
        self.blocks = nn.ModuleList(blocks)
        fc = layers[-1]
        assert fc.params is not None
        self.register_buffer("fc_weight", torch.from_numpy(fc.params.T.copy()))  # [out, in]
        self.register_buffer("fc_bias", None if fc.bias is None else torch.from_numpy(fc.bias.copy()))

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """dlib's input layer: RGB pixels in ``0..255`` ``[B,3,H,W]`` -> ``(pixels - mean) / 256``."""
        return (pixels - self.input_mean.to(pixels)) / 256.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"DlibResNet expects [B, 3, H, W], got {tuple(x.shape)}")
        x = F.relu(self.stem_aff(self.stem_conv(x)))
        kh, kw, sy, sx, py, px = self.pool
        x = F.max_pool2d(x, (kh, kw), (sy, sx), (py, px))
        for block in self.blocks:
            x = block(x)
        x = x.mean(dim=(2, 3))  # avg_pool_everything
        return F.linear(x, self.fc_weight, self.fc_bias)

    def embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Descriptor of RGB chips in ``0..255`` (``[B,3,150,150]``), like ``compute_face_descriptor``."""
        return self(self.normalize(pixels))


def _check_layout(net: DlibNet, path: str) -> None:
    kinds, versions = _expected_layout()
    got = [ly.kind for ly in net.layers]
    want = [k for k in kinds if k not in ("tag", "skip")]
    if got != want:
        raise DlibFormatError(
            f"{path}: layer sequence differs from dlib's anet_type "
            f"({len(got)} layers found, {len(want)} expected; first difference at layer "
            f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))})"
        )
    if net.wrapper_versions != versions:
        raise DlibFormatError(f"{path}: the tag/skip wiring differs from dlib's anet_type")
    # pools: stem max_pool 3/2, avg_pool 2/2 in down blocks, avg_pool_everything (0x0 window) at the end
    pools = [ly for ly in net.layers if ly.kind.endswith("pool_2")]
    if pools[0].ints[:4] != (3, 3, 2, 2) or any(p.ints[:4] != (2, 2, 2, 2) for p in pools[1:-1]):
        raise DlibFormatError(f"{path}: unexpected pooling windows {[p.ints for p in pools]}")
    if pools[-1].ints[:2] != (0, 0):
        raise DlibFormatError(f"{path}: the last pooling layer is not avg_pool_everything")
    convs = [ly for ly in net.layers if ly.kind == "con_4"]
    widths = [32] + [w for kind, w in _block_plan() for _ in range(2)]
    if [c.ints[0] for c in convs] != widths:
        raise DlibFormatError(f"{path}: conv widths {[c.ints[0] for c in convs]} differ from anet_type")
    for c, a in zip(convs, [ly for ly in net.layers if ly.kind == "affine_"]):
        assert a.params is not None
        if a.params.shape[1] != c.ints[0]:
            raise DlibFormatError(f"{path}: affine layer at byte {a.offset} has {a.params.shape[1]} channels")


def load_dlib(path: str | os.PathLike, device: str | torch.device = "cpu") -> DlibResNet:
    """Load ``dlib_face_recognition_resnet_model_v1.dat`` as an eval-mode :class:`DlibResNet`.

    Raises :class:`DlibFormatError` (naming the file and the reason) for anything that is
    not dlib's ``anet_type`` network.
    """
    net = parse_dlib(path)
    _check_layout(net, str(path))
    model = DlibResNet(net).eval()
    return model.to(device)
