"""The protego-nb command-line tool: train and protect end to end, errors and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protego_nb import cli, paths
from protego_nb.faces import images
from protego_nb.protect import texture

OWNER = "Aaron_Peirsol"


def lfw(name: str, k: int) -> Path:
    p = paths.lfw_images_dir(check=False) / name / f"{name}_{k:04d}.jpg"
    if not p.is_file():
        pytest.skip("LFW not available")
    return p


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """``protego-nb train`` with the ci preset on 3 photos of one person."""
    d = tmp_path_factory.mktemp("me")
    for k in (1, 2, 3):
        (d / f"me{k}.jpg").write_bytes(lfw(OWNER, k).read_bytes())
    (d / "readme.txt").write_text("my photos")
    out = d / "me.ppt"
    rc = cli.main(["train", str(d), "-o", str(out), "--preset", "ci", "--surrogates", "mobilefacenet",
                   "dlib_resnet", "--no-progress", "--set", "blur_view=1", "input_diversity=0.5"])
    assert rc == 0
    return out


def test_help_works_without_torch():
    code = "import sys; from protego_nb import cli; rc = cli.main(['--help']); " \
           "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parent.parent)
    assert p.returncode == 0, p.stderr
    assert "train" in p.stdout and "protect" in p.stdout


def test_parse_epsilon():
    assert cli.parse_epsilon("16") == pytest.approx(16 / 255)
    assert cli.parse_epsilon("16/255") == pytest.approx(16 / 255)
    assert cli.parse_epsilon("0.03") == pytest.approx(0.03)
    with pytest.raises(Exception, match="must be in"):
        cli.parse_epsilon("300")


def test_train_writes_a_valid_ppt_with_owner(trained):
    tex, meta = texture.load_ppt(trained)
    assert tex.shape == (1, 3, 224, 224) and float(tex.abs().max()) <= 16 / 255 + 1e-6
    assert meta["preset"] == "ci" and meta["surrogates"] == ["mobilefacenet", "dlib_resnet"]
    emb = np.asarray(json.loads(meta["owner_embedding"]))
    assert meta["owner_model"] == "mobilefacenet" and emb.shape == (192,)
    assert abs(np.linalg.norm(emb) - 1) < 1e-4 and meta["n_train_images"] == "3"
    config = json.loads(meta["config"])  # the --set options reached the training config
    assert config["blur_view"] == 1.0 and config["input_diversity"] == 0.5 and config["grad_smooth"] == 0


def test_train_usage_errors(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "nope"), "-o", str(tmp_path / "x.ppt")]) == 2
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(b"")
    rc = cli.main(["train", str(tmp_path / "d"), "-o", str(tmp_path / "x.ppt"), "--surrogates", "sface"])
    assert rc == 2 and "intruder" in capsys.readouterr().err
    assert cli.main(["train"]) == 2
    for bad, msg in (("nope=1", "unknown training option"), ("blur_view=abc", "takes a float"),
                     ("momentum", "FIELD=VALUE"), ("blur_view=-1", "blur_view")):
        rc = cli.main(["train", str(tmp_path / "d"), "-o", str(tmp_path / "x.ppt"), "--set", bad])
        assert rc == 2 and msg in capsys.readouterr().err, bad


def test_protect_end_to_end(trained, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    big = np.full((480, 640, 3), 100, np.uint8)
    big[100:350, 200:450] = images.load_rgb(lfw(OWNER, 4))
    Image.fromarray(big).save(inp / "party.png")
    (inp / "beach.jpg").write_bytes(lfw(OWNER, 4).read_bytes())
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(inp / "sky.png")  # no face
    (inp / "list.jpg").write_text("shopping list")  # not an image
    (inp / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    rc = cli.main(["protect", str(inp), "--ppt", str(trained), "-o", str(out), "--no-progress",
                   "--report", str(tmp_path / "report.json")])
    text = capsys.readouterr().out
    assert rc == 1  # list.jpg failed
    assert sorted(p.name for p in out.iterdir()) == ["beach.jpg", "party.png"]
    with Image.open(out / "beach.jpg") as im:
        assert im.format == "JPEG" and im.size == (250, 250)
    prot = images.load_rgb(out / "party.png")
    assert prot.shape == big.shape and 0 < np.abs(prot.astype(int) - big).max() <= 16
    assert "protected      2" in text and "skipped        1" in text and "failed         1" in text
    assert "sky.png  [no_face]" in text and "list.jpg  [not_an_image]" in text
    assert "ignored 1 file" in text
    rep = json.loads((tmp_path / "report.json").read_text())
    assert {r["status"] for r in rep} == {"protected", "skipped", "failed"}

    # again without the bad file: all handled -> 0; existing outputs are not overwritten silently
    rc = cli.main(["protect", str(inp / "sky.png"), str(inp / "party.png"), "--ppt", str(trained), "-o", str(out),
                   "--no-progress"])
    assert rc == 1 and "output_exists" in capsys.readouterr().out
    rc = cli.main(["protect", str(inp / "sky.png"), str(inp / "party.png"), "--ppt", str(trained), "-o", str(out),
                   "--no-progress", "--overwrite"])
    assert rc == 0


def test_protect_usage_errors(trained, tmp_path, capsys):
    img = tmp_path / "a.png"
    img.write_bytes(b"")
    assert cli.main(["protect", str(img), "--ppt", str(tmp_path / "missing.ppt"), "-o", str(tmp_path / "o")]) == 2
    assert "no such PPT file" in capsys.readouterr().err
    bad = tmp_path / "bad.ppt"
    bad.write_text("not safetensors")
    assert cli.main(["protect", str(img), "--ppt", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "invalid PPT" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["protect", str(img), "--ppt", str(trained), "-o", str(blocker / "sub")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        assert cli.main(["protect", str(img), "--ppt", str(trained), "-o", str(ro)]) == 2
    assert cli.main(["protect", str(img), "--ppt", str(trained)]) == 2  # -o missing
    assert cli.main(["protect", str(img), "--ppt", str(trained), "-o", str(tmp_path), "--keep-gps"]) == 2
