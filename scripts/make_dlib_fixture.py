"""Make ``tests/fixtures/dlib_reference.npz``: dlib's own descriptors for a few fixed chips.

Run it with a *throw-away* Python environment that has the prebuilt dlib wheel (dlib is
not a project dependency; only this script needs it)::

    python3 -m venv /tmp/dlibref
    /tmp/dlibref/bin/pip install dlib-bin==20.0.1.post1 numpy pillow
    /tmp/dlibref/bin/python scripts/make_dlib_fixture.py

It needs no torch: it imports only ``protego_nb.paths`` / ``protego_nb.assets`` (standard
library) to find LFW and the cached ``dlib_face_recognition_resnet_model_v1.dat``.

Chips (150x150 RGB uint8, what ``face_recognition_model_v1.compute_face_descriptor``
takes for an already aligned face):

* ``noise``: uniform 4-level noise (0, 85, 170, 255), ``numpy.random.default_rng(0)``;
* ``smooth``: a seeded 10x10 random image upsampled bilinearly (smooth colour blobs);
* two LFW deep-funneled photos (two people) cropped to their central 150x150 window
  (rows/cols 50..199), which holds the face.

The descriptors are computed one chip at a time with ``num_jitters=0`` (no random
jitter), so the reference is deterministic. Output: ``chips`` uint8 [N,150,150,3],
``descriptors`` float32 [N,128], ``names``, ``dlib_version``; written atomically.
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

LFW_FILES = ("Colin_Powell/Colin_Powell_0001.jpg", "Tony_Blair/Tony_Blair_0001.jpg")
OUT = REPO / "tests" / "fixtures" / "dlib_reference.npz"


def make_chips() -> tuple[list[str], np.ndarray]:
    """The fixed chips, in the order they are stored."""
    rng = np.random.default_rng(0)
    noise = (rng.integers(0, 4, size=(150, 150, 3)) * 85).astype(np.uint8)  # 4 levels: compresses well
    small = rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((150, 150), Image.BILINEAR))
    names, chips = ["noise", "smooth"], [noise, smooth]
    root = paths.lfw_images_dir()
    for rel in LFW_FILES:
        img = np.asarray(Image.open(root / rel).convert("RGB"))
        if img.shape != (250, 250, 3):
            raise ValueError(f"{root / rel}: expected a 250x250 RGB LFW image, got {img.shape}")
        chips.append(np.ascontiguousarray(img[50:200, 50:200]))
        names.append(rel)
    return names, np.stack(chips)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    try:
        import dlib
    except ImportError:
        print("dlib is not installed in this interpreter; see the instructions at the top of this file.")
        return 2
    model = assets.path("face-recognition-models", "dlib_face_recognition_resnet_model_v1.dat")
    rec = dlib.face_recognition_model_v1(str(model))
    names, chips = make_chips()
    desc = np.stack([np.asarray(rec.compute_face_descriptor(c, 0), dtype=np.float32) for c in chips])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=args.out.parent)
    os.close(fd)
    try:
        np.savez_compressed(
            tmp, chips=chips, descriptors=desc, names=np.array(names), dlib_version=dlib.__version__
        )
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {len(names)} chips, dlib {dlib.__version__}")
    for n, d in zip(names, desc):
        print(f"  {n:40s} |d| = {np.linalg.norm(d):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
