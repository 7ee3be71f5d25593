"""Check the installed environment: every runtime import works and `pip check` reports nothing
beyond the two known stale pins (see requirements-nodeps.txt). Run by `make setup`."""

from __future__ import annotations

import importlib
import subprocess
import sys

IMPORTS = [
    "torch", "torchvision", "numpy", "cv2", "kornia", "umap", "papermill", "seaborn", "ipywidgets", "safetensors",
    "imageio_ffmpeg", "onnx", "tflite", "facenet_pytorch", "mediapipe.python.solutions.face_mesh", "protego_nb",
]
# Declared pins that are stale and knowingly overridden (requirements-nodeps.txt explains why).
KNOWN = ("facenet-pytorch", "mediapipe")


def main() -> int:
    bad = []
    for name in IMPORTS:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - report every failure
            bad.append(f"import {name}: {type(exc).__name__}: {exc}")
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if line.strip() and not line.startswith(KNOWN) and "No broken requirements" not in line:
            bad.append(f"pip check: {line}")
    if bad:
        print("environment check failed:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    print("environment ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
