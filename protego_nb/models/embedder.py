"""The differentiable front end of every zoo model: from the 224 face canvas and its 5 landmarks to the model's
aligned, normalised input, then the frozen network (:class:`FaceEmbedder`).

The embedder aligns the face itself, differentiably: a least-squares similarity from the canvas landmarks to the
model's 5-point template (:func:`align.similarity_transform_torch`) and a bilinear
:func:`align.warp_affine_torch` to the model's input size; then it applies the model's channel order and
normalisation and runs the torch port of the original network.

Templates (5 points, MTCNN order: image-left eye, image-right eye, nose tip, mouth corners):

* ``arcface112``: the ArcFace / InsightFace template (Deng et al., CVPR 2019);
* ``arcface224``: the same, times 2, for a 224 input;
* ``dlib150``: dlib's ``get_face_chip_details(det, size=150, padding=0.25)`` mean face
  (``dlib/image_transforms/interpolation.h``, Davis King): the 68-point mean-shape
  constants for points 17-67, reduced to our 5 points (mean of eye points 36-41 and
  42-47, nose tip 30, mouth corners 48 and 54) and mapped by ``(padding + p) /
  (2 padding + 1) * size``, as dlib does for every point;
* ``arcface160``: the ArcFace template times 160/112 (an ArcFace-style alignment at FaceNet's size);
* ``mtcnn160``: FaceNet's own crop, expressed with the 5 points: David Sandberg's FaceNet
  models were trained and evaluated on MTCNN boxes grown by a margin and resized to 160x160
  (``align/align_dataset_mtcnn.py``: no landmark alignment, and the non-square box is
  squeezed to a square). :func:`mtcnn_box_template` gives where the 5 points land in such a
  crop on average (MTCNN's own points relative to its own box, measured on LFW with this
  project's detector, :data:`MTCNN_BOX_POINTS`) and the crop's height/width ratio; the
  embedder fits a similarity to that template in an isotropic frame and then squeezes the
  height by the same ratio, so it reproduces the box-with-margin crop for an average face,
  differentiably (``affine_grid`` / ``grid_sample``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..faces import align

if TYPE_CHECKING:
    from .zoo import ModelSpec


# dlib's mean face shape for the 68-point landmarks 17..67 (x, y in [0, 1] of the face box),
# from get_face_chip_details in dlib/image_transforms/interpolation.h.
_DLIB_MEAN_X = np.array([
    0.000213256, 0.0752622, 0.18113, 0.29077, 0.393397, 0.586856, 0.689483, 0.799124,
    0.904991, 0.98004, 0.490127, 0.490127, 0.490127, 0.490127, 0.36688, 0.426036,
    0.490127, 0.554217, 0.613373, 0.121737, 0.187122, 0.265825, 0.334606, 0.260918,
    0.182743, 0.645647, 0.714428, 0.793132, 0.858516, 0.79751, 0.719335, 0.254149,
    0.340985, 0.428858, 0.490127, 0.551395, 0.639268, 0.726104, 0.642159, 0.556721,
    0.490127, 0.423532, 0.338094, 0.290379, 0.428096, 0.490127, 0.552157, 0.689874,
    0.553364, 0.490127, 0.42689,
])  # fmt: skip
_DLIB_MEAN_Y = np.array([
    0.106454, 0.038915, 0.0187482, 0.0344891, 0.0773906, 0.0773906, 0.0344891,
    0.0187482, 0.038915, 0.106454, 0.203352, 0.307009, 0.409805, 0.515625, 0.587326,
    0.609345, 0.628106, 0.609345, 0.587326, 0.216423, 0.178758, 0.179852, 0.231733,
    0.245099, 0.244077, 0.231733, 0.179852, 0.178758, 0.216423, 0.244077, 0.245099,
    0.780233, 0.745405, 0.727388, 0.742578, 0.727388, 0.745405, 0.780233, 0.864805,
    0.902192, 0.909281, 0.902192, 0.864805, 0.784792, 0.778746, 0.785343, 0.778746,
    0.784792, 0.824182, 0.831803, 0.824182,
])  # fmt: skip


def dlib_chip_template(size: int = 150, padding: float = 0.25) -> np.ndarray:
    """dlib's face-chip mean face reduced to our 5 points, in chip pixels (``[5, 2]``)."""
    pts68 = np.stack([_DLIB_MEAN_X, _DLIB_MEAN_Y], 1)  # rows are landmarks 17..67

    def p(i: int | range) -> np.ndarray:
        idx = np.atleast_1d(np.arange(i.start, i.stop) if isinstance(i, range) else i) - 17
        return pts68[idx].mean(0)

    five = np.stack([p(range(36, 42)), p(range(42, 48)), p(30), p(48), p(54)])
    return (padding + five) / (2 * padding + 1) * size


#: MTCNN's 5 points relative to its own box (``(p - (x1, y1)) / (w, h)``), mean over 9,562 LFW
#: deep-funneled detections (the face nearest the image centre, probability > 0.95) of
#: :mod:`protego_nb.faces.pipeline` (its cached detections).
MTCNN_BOX_POINTS = np.array(
    [[0.28987673, 0.38908796], [0.7396513, 0.38141998], [0.51848912, 0.58366434],
     [0.32516556, 0.75868215], [0.72208831, 0.75239641]]
)  # fmt: skip
#: Mean height / width of those MTCNN boxes (their mean size, sqrt(w h), is 107.8 px on LFW's 250x250).
MTCNN_BOX_ASPECT = 1.333
#: FaceNet crop margin as a fraction of the box size (geometric mean of width and height). Sandberg
#: evaluates LFW with ``--margin 32`` source pixels on 250x250 images, whose MTCNN boxes are ~107 px:
#: 32/107 = 0.30 (training used 44 px at 182 then a random 160 crop: about the same face scale).
FACENET_MARGIN = 0.30


def mtcnn_box_template(size: int = 160, margin: float = FACENET_MARGIN) -> tuple[np.ndarray, float]:
    """5-point template of an MTCNN box grown by ``margin`` x box size and resized to ``size`` square.

    Returns ``(template [5, 2] in crop pixels, crop height / width)``: the box has the mean
    aspect :data:`MTCNN_BOX_ASPECT`; the resize squeezes it anisotropically (as FaceNet's
    ``align_dataset_mtcnn`` does), which is why the ratio is needed to reproduce it.
    """
    w, h = 1.0 / np.sqrt(MTCNN_BOX_ASPECT), np.sqrt(MTCNN_BOX_ASPECT)  # box of unit geometric size
    cw, ch = w + margin, h + margin
    x = (MTCNN_BOX_POINTS[:, 0] * w + margin / 2) / cw * size
    y = (MTCNN_BOX_POINTS[:, 1] * h + margin / 2) / ch * size
    return np.stack([x, y], 1), ch / cw


TEMPLATES: dict[str, np.ndarray] = {
    "arcface112": align.ARCFACE_112.copy(),
    "arcface224": align.ARCFACE_112 * 2.0,
    "arcface160": align.ARCFACE_112 * (160.0 / 112.0),
    "dlib150": dlib_chip_template(150, 0.25),
    "mtcnn160": mtcnn_box_template(160, FACENET_MARGIN)[0],
}
#: Height/width squeeze of the crop for templates that are not plain similarity alignments.
TEMPLATE_ASPECT: dict[str, float] = {"mtcnn160": mtcnn_box_template(160, FACENET_MARGIN)[1]}


# ----------------------------------------------------------------------------- similarity


def similarity(a: torch.Tensor, b: torch.Tensor, metric: str) -> torch.Tensor:
    """Row-wise similarity (higher = more alike): cosine, or minus the Euclidean distance."""
    if metric == "cosine":
        return F.cosine_similarity(a, b, dim=-1)
    if metric == "euclidean":
        return -torch.linalg.vector_norm(a - b, dim=-1)
    raise ValueError(f"unknown metric {metric!r}; expected 'cosine' or 'euclidean'")


# ----------------------------------------------------------------------------- embedder


def prewhiten(x: torch.Tensor) -> torch.Tensor:
    """FaceNet's per-face standardisation, batched and differentiable: each ``[C, H, W]`` item
    becomes ``(x - mean) / max(std, 1 / sqrt(C H W))`` (population std, as ``numpy.std``)."""
    flat = x.flatten(1)
    mean = flat.mean(1)
    std = flat.std(1, correction=0).clamp_min(1.0 / float(flat.shape[1]) ** 0.5)
    return (x - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)


class FaceEmbedder(nn.Module):
    """A frozen FR network behind its own differentiable alignment and normalisation.

    ``forward(canvas, landmarks)``: ``canvas`` float ``[B, 3, H, W]`` RGB in ``[0, 1]`` (the
    224x224 face canvas), ``landmarks`` ``[B, 5, 2]`` (or ``[5, 2]`` for all) in canvas
    pixels; returns ``[B, spec.dim]`` raw embeddings (not normalised unless the network
    itself normalises).
    """

    def __init__(self, spec: ModelSpec, net: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.net = net.eval()
        self.net.requires_grad_(False)
        self.register_buffer("template", torch.tensor(TEMPLATES[spec.template], dtype=torch.float32))
        self.aspect = TEMPLATE_ASPECT.get(spec.template)
        if (
            self.aspect is not None
        ):  # a buffer only here, so other models' feature-cache fingerprints stay put
            self.register_buffer("crop_aspect", torch.tensor(self.aspect, dtype=torch.float32))
        mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("mean", mean)
        self.scale = float(spec.scale)

    def train(self, mode: bool = True) -> FaceEmbedder:  # the network always stays in eval mode
        super().train(mode)
        self.net.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.template.device

    def _check(self, canvas: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        if canvas.dim() != 4 or canvas.shape[1] != 3:
            raise ValueError(f"{self.spec.name}: canvas must be [B, 3, H, W], got {tuple(canvas.shape)}")
        if not canvas.is_floating_point():
            raise ValueError(f"{self.spec.name}: canvas must be float in [0, 1], got {canvas.dtype}")
        landmarks = torch.as_tensor(landmarks, dtype=canvas.dtype, device=canvas.device)
        if landmarks.dim() == 2:
            landmarks = landmarks.unsqueeze(0).expand(canvas.shape[0], -1, -1)
        if landmarks.shape != (canvas.shape[0], 5, 2):
            raise ValueError(
                f"{self.spec.name}: landmarks must be [B, 5, 2] with B={canvas.shape[0]}, got {tuple(landmarks.shape)}"
            )
        return landmarks

    def crop(self, canvas: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """The aligned model crop, RGB in ``[0, 1]``, ``[B, 3, S, S]`` (before colour order/normalisation)."""
        landmarks = self._check(canvas, landmarks)
        template = self.template.to(canvas)
        if self.aspect is None:
            M = align.similarity_transform_torch(landmarks, template)
        else:  # similarity onto the template in an isotropic frame, then squeeze the height (mtcnn160)
            a = self.crop_aspect.to(canvas)
            stretch = torch.stack([torch.ones_like(a), a])
            M = align.similarity_transform_torch(landmarks, template * stretch)
            M = M / torch.stack([torch.ones_like(a), a]).view(1, 2, 1)
        return align.warp_affine_torch(canvas, M, self.spec.input_size)

    def preprocess(self, crop: torch.Tensor) -> torch.Tensor:
        """RGB crop in ``[0, 1]`` -> exactly what the network's input expects."""
        x = crop * 255.0
        if self.spec.channels == "BGR":
            x = x.flip(1)
        x = (x - self.mean.to(x)) * self.scale
        if self.spec.prewhiten:
            x = prewhiten(x)
        return x

    def forward(self, canvas: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(self.crop(canvas, landmarks)))

    def embed_crops(self, crop: torch.Tensor) -> torch.Tensor:
        """Embeddings of already aligned crops (RGB ``[0, 1]``, ``[B, 3, S, S]``)."""
        return self.net(self.preprocess(crop))

    def similarity(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Row-wise similarity in this model's native metric (higher = more alike)."""
        return similarity(a, b, self.spec.metric)

    def extra_repr(self) -> str:
        s = self.spec
        return f"name={s.name!r}, template={s.template}, input={s.input_size}, dim={s.dim}, metric={s.metric}"
