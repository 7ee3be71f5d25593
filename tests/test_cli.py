"""The protego-nb command-line tool: train and protect end to end, errors and exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
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


# ----------------------------------------------------------------------------- hostile-input regressions


def _err_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize("device", ["tpu", "cuda"])
def test_unavailable_device_is_a_usage_error_before_work(trained, tmp_path, capsys, device):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(lfw(OWNER, 1).read_bytes())
    rc = cli.main(["train", str(tmp_path / "photos"), "-o", str(tmp_path / "new" / "me.ppt"), "--device", device])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "--device" in lines[0], lines
    rc = cli.main(["protect", str(tmp_path / "photos"), "--ppt", str(trained), "-o", str(tmp_path / "out"),
                   "--device", device, "--no-progress"])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "--device" in lines[0], lines
    assert not (tmp_path / "out").exists() and not (tmp_path / "new").exists()


def test_outputs_checked_before_any_work(trained, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(lfw(OWNER, 1).read_bytes())
    (tmp_path / "folder.ppt").mkdir()
    rc = cli.main(["train", str(photos), "-o", str(tmp_path / "folder.ppt")])
    assert rc == 2 and "is a folder" in capsys.readouterr().err
    bad_ckpt = tmp_path / "ck.safetensors"
    bad_ckpt.write_bytes(b"\x00garbage")
    rc = cli.main(["train", str(photos), "-o", str(tmp_path / "me.ppt"), "--checkpoint", str(bad_ckpt)])
    assert rc == 2 and "not a usable training checkpoint" in capsys.readouterr().err
    rc = cli.main(["train", str(photos), "-o", str(tmp_path / "me.ppt"), "--epochs", "0"])
    assert rc == 2 and "--epochs 0" in capsys.readouterr().err
    assert not (tmp_path / "me.ppt").exists()
    rc = cli.main(["protect", str(photos), "--ppt", str(trained), "-o", str(tmp_path / "out"), "--report",
                   str(tmp_path), "--no-progress"])
    lines = _err_lines(capsys)
    assert rc == 2 and len(lines) == 1 and "--report" in lines[0] and "is a folder" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing created on a usage error


def test_nothing_found_is_said(trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["protect", str(empty), "--ppt", str(trained), "-o", str(tmp_path / "o1")]) == 2
    assert "holds no photo or video" in capsys.readouterr().err
    nested = tmp_path / "nested"
    (nested / "2024").mkdir(parents=True)
    (nested / "2024" / "me.jpg").write_bytes(lfw(OWNER, 4).read_bytes())
    assert cli.main(["protect", str(nested), "--ppt", str(trained), "-o", str(tmp_path / "o2")]) == 2
    assert "add --recursive" in capsys.readouterr().err
    loops = tmp_path / "loops"
    loops.mkdir()
    for n in ("a.jpg", "b.png"):
        os.symlink(loops / n, loops / n)
    rc = cli.main(["protect", str(loops), "--ppt", str(trained), "-o", str(tmp_path / "o3"), "--no-progress"])
    assert rc == 1 and "[unreadable]" in capsys.readouterr().out  # named and reported, never a crash
    rc = cli.main(["protect", str(nested), "--recursive", "--ppt", str(trained), "-o", str(tmp_path / "o4"),
                   "--no-progress"])
    assert rc == 0 and (tmp_path / "o4" / "2024" / "me.jpg").is_file()


def test_same_file_names_never_overwrite_each_other(trained, tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "good.jpg").write_bytes(lfw(OWNER, 4).read_bytes())
    out = tmp_path / "out"
    rc = cli.main(["protect", str(tmp_path / "a" / "good.jpg"), str(tmp_path / "b"), "--ppt", str(trained), "-o",
                   str(out), "--overwrite", "--no-progress", "--report", str(tmp_path / "r.json")])
    assert rc == 0 and "protected      2" in capsys.readouterr().out
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a/good.jpg", "b/good.jpg"]
    rep = json.loads((tmp_path / "r.json").read_text())
    assert sorted(r["output"] for r in rep) == [str(out / "a" / "good.jpg"), str(out / "b" / "good.jpg")]
    assert cli._targets([Path("x/p.jpg"), Path("y/P.jpg"), Path("z/q.jpg")], Path("o")) == [
        Path("o/x/p.jpg"), Path("o/y/P.jpg"), Path("o/q.jpg")]


def test_table_lines_same_folder_and_owner_notes(trained, tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    good = d / "me.jpg"
    good.write_bytes(lfw(OWNER, 4).read_bytes())
    (d / "cut.jpg").write_bytes(good.read_bytes()[:1500])
    rc = cli.main(["protect", str(d / "cut.jpg"), "--ppt", str(trained), "-o", str(tmp_path / "oc"),
                   "--no-progress"])
    out = capsys.readouterr().out
    cut_line = next(ln for ln in out.splitlines() if "cut.jpg" in ln)
    assert rc == 1 and cut_line.count("[corrupt]") == 1 and "corrupt" in cut_line.split("]", 1)[1], cut_line
    rc = cli.main(["protect", str(good), "--ppt", str(trained), "-o", str(d), "--no-progress"])
    out = capsys.readouterr().out
    me_line = next(ln for ln in out.splitlines() if "me.jpg" in ln)
    assert "choose another output folder" in me_line and "--overwrite" not in me_line
    tex, meta = texture.load_ppt(trained)
    bad = tmp_path / "bad_owner.ppt"
    texture.save_ppt(bad, tex, {k: v for k, v in meta.items() if k not in ("format", "texture_size",
                                                                      "package_version", "created")}
                     | {"owner_embedding": "[0.1, 0.2"})
    assert cli.main(["protect", str(good), "--ppt", str(bad), "-o", str(tmp_path / "o")]) == 2
    assert "owner_embedding" in capsys.readouterr().err
    plain = tmp_path / "plain.ppt"
    texture.save_ppt(plain, tex, {"epsilon": meta["epsilon"]})
    rc = cli.main(["protect", str(good), "--ppt", str(plain), "-o", str(tmp_path / "o"), "--no-progress"])
    assert rc == 0 and "holds no owner embedding" in capsys.readouterr().out
    assert (tmp_path / "o" / "me.jpg").is_file()


def test_train_warns_about_several_people(tmp_path, capsys):
    d = tmp_path / "mixed"
    d.mkdir()
    for name, k in ((OWNER, 1), ("Aaron_Eckhart", 1), ("Abdullah_Gul", 1), ("Adam_Sandler", 1)):
        (d / f"{name}.jpg").write_bytes(lfw(name, k).read_bytes())
    rc = cli.main(["train", str(d), "-o", str(tmp_path / "m.ppt"), "--preset", "ci", "--surrogates",
                   "mobilefacenet", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "do not look like one person" in err, err
    group = np.full((300, 560, 3), 110, np.uint8)  # a group photo among photos of the owner
    group[25:275, 15:265] = images.load_rgb(lfw(OWNER, 4))
    group[25:275, 295:545] = images.load_rgb(lfw("Aaron_Eckhart", 1))
    own = tmp_path / "own"
    own.mkdir()
    for k in (1, 2, 3):
        (own / f"{k}.jpg").write_bytes(lfw(OWNER, k).read_bytes())
    Image.fromarray(group).save(own / "group.png")
    rc = cli.main(["train", str(own), "-o", str(tmp_path / "o.ppt"), "--preset", "ci", "--surrogates",
                   "mobilefacenet", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0 and "group.png: 2 faces" in err, err


def test_cli_subprocess_is_quiet_and_one_line(trained, tmp_path):
    img = tmp_path / "me.jpg"
    img.write_bytes(lfw(OWNER, 4).read_bytes())
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    cmd = [sys.executable, "-m", "protego_nb.cli", "protect", str(img), "--ppt", str(trained), "-o",
           str(tmp_path / "o"), "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stderr.strip() == "", p.stderr  # no MediaPipe / TFLite log lines
    p = subprocess.run(cmd[:-1] + ["--device", "tpu"], capture_output=True, text=True, env=env)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr


_KINDS = ("face", "noface", "corrupt", "empty", "text", "loop", "dangling", "badvideo", "infolder", "video")


@given(st.lists(st.sampled_from(_KINDS), min_size=1, max_size=6))
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_property_mixed_batch_processes_every_good_input(trained_ppt, kinds):
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="mixed"))
    good, bad = [], []
    inputs = []
    for i, k in enumerate(kinds):
        sub = root / f"d{i}"
        sub.mkdir()
        p = sub / ("x.mp4" if k in ("badvideo", "video") else ("x.png" if k == "noface" else "x.jpg"))
        if k in ("face", "infolder"):
            p.write_bytes(lfw(OWNER, 4).read_bytes())
        elif k == "noface":
            Image.fromarray(np.full((60, 80, 3), 30 * (i % 8), np.uint8)).save(p)
        elif k == "corrupt":
            p.write_bytes(lfw(OWNER, 4).read_bytes()[:900])
        elif k == "empty":
            p.write_bytes(b"")
        elif k == "text":
            p.write_text("not a photo")
        elif k == "loop":
            os.symlink(p, p)
        elif k == "dangling":
            os.symlink(sub / "gone.jpg", p)
        elif k == "video":
            import imageio_ffmpeg

            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                            "testsrc=size=64x48:rate=10", "-frames:v", "3", "-pix_fmt", "yuv420p", str(p)], check=True)
        else:
            p.write_text("not a video")
        (good if k in ("face", "noface", "infolder", "video") else bad).append(str(p))
        inputs.append(str(p) if k != "infolder" else str(sub))
    out, rep = root / "out", root / "report.json"
    with redirect_stdout(io.StringIO()) as buf:
        rc = cli.main(["protect", *inputs, "--ppt", str(trained_ppt), "-o", str(out), "--no-progress", "--report",
                       str(rep)])
    text = buf.getvalue()
    assert "status     files" in text and rep.is_file()
    results = {r["input"]: r for r in json.loads(rep.read_text())}
    assert set(results) == set(good) | set(bad)
    assert all(results[g]["status"] in ("protected", "skipped") for g in good)
    assert all(results[b]["status"] == "failed" for b in bad)
    assert rc == (1 if bad else 0)
    written = sorted(str(p) for p in out.rglob("*") if p.is_file())
    assert written == sorted(r["output"] for r in results.values() if r["status"] == "protected")
    leftovers = [p for p in root.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers, leftovers


@pytest.fixture(scope="module")
def trained_ppt(trained) -> Path:
    return trained


def test_the_transfer_preset_trains_several_textures_and_protect_uses_them(tmp_path, capsys):
    d = tmp_path / "me"
    d.mkdir()
    for k in (1, 2, 3):
        (d / f"me{k}.jpg").write_bytes(lfw(OWNER, k).read_bytes())
    out = tmp_path / "me.ppt"
    rc = cli.main(["train", str(d), "-o", str(out), "--preset", "transfer", "--epochs", "1", "--surrogates",
                   "mobilefacenet", "--no-progress"])
    assert rc == 0
    tex, meta = texture.load_ppt(out)
    assert tex.shape == (4, 3, 224, 224) and meta["preset"] == "transfer" and meta["n_textures"] == 4
    res = tmp_path / "out"
    rc = cli.main(["protect", str(d / "me1.jpg"), str(d / "me2.jpg"), "--ppt", str(out), "-o", str(res),
                   "--no-progress"])
    assert rc == 0 and "protected      2" in capsys.readouterr().out
    for k in (1, 2):
        a, b = images.load_rgb(res / f"me{k}.jpg").astype(int), images.load_rgb(d / f"me{k}.jpg").astype(int)
        assert 0 < np.abs(a - b).max()
