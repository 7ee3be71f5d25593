"""Tests for protego_nb.protect.texture: init, warps, apply, and the .ppt file."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from protego_nb.protect import texture as X

EPS = 16 / 255
torch.set_num_threads(1)


def _identity_uv(b: int, s: int) -> torch.Tensor:
    """UV grid that samples texel (i, j) at canvas pixel (i, j) (align_corners=True, T == S)."""
    lin = torch.linspace(-1, 1, s)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([xx, yy], -1).expand(b, -1, -1, -1).clone()


def test_init_texture_matches_the_authors_formula_and_is_seeded():
    t = X.init_texture(EPS, torch.Generator().manual_seed(114), size=16)
    ref = (torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(114)) - 0.5) * EPS / 0.5
    assert torch.equal(t, ref)
    assert t.shape == (1, 3, 16, 16) and t.dtype == torch.float32
    assert t.abs().max() <= EPS and t.min() < -0.8 * EPS and t.max() > 0.8 * EPS
    assert not torch.equal(t, X.init_texture(EPS, torch.Generator().manual_seed(115), size=16))
    with pytest.raises(ValueError, match="epsilon"):
        X.init_texture(0.0)


def test_uv_warp_identity_grid_reproduces_the_texture_times_visibility():
    s = 12
    tex = X.init_texture(EPS, torch.Generator().manual_seed(0), size=s)
    vis = torch.zeros(2, 1, s, s)
    vis[0, :, 2:8, 3:9] = 1
    vis[1] = 1
    w = X.UVWarp(_identity_uv(2, s), vis)
    d = X.perturbation(w, tex, EPS)
    torch.testing.assert_close(d, tex.expand(2, -1, -1, -1) * vis)
    assert len(w) == 2 and w.size == (s, s) and isinstance(w, X.Warp)


def test_uv_warp_clamps_before_masking_and_zeroes_outside_the_texture():
    s = 8
    tex = torch.full((1, 3, s, s), 0.5)  # far beyond eps: the warp must clamp (the authors' order)
    uv = _identity_uv(1, s)
    uv[0, 0, 0] = torch.tensor([-2.0, -2.0])  # invisible-pixel convention of faces.uv: samples zero
    d = X.UVWarp(uv, torch.ones(1, 1, s, s)).perturbation(tex, EPS)
    assert d[0, :, 1:, :].eq(torch.tensor(EPS, dtype=torch.float32)).all()
    assert d[0, :, 0, 0].eq(0).all()


def test_uv_warp_from_duck_typed_uvmap_and_select():
    class Map:
        uv = _identity_uv(3, 6)
        vis = torch.ones(3, 1, 6, 6)

    w = X.UVWarp.from_uvmap(Map())
    sub = w.select(torch.tensor([2, 0]))
    assert len(sub) == 2 and torch.equal(sub.uv[0], Map.uv[2])
    assert len(w.select(1)) == 1 and len(w.select(slice(0, 2))) == 2
    with pytest.raises(ValueError, match="vis"):
        X.UVWarp(Map.uv, torch.ones(3, 6, 6))
    with pytest.raises(ValueError, match="uv"):
        X.UVWarp(torch.ones(3, 6, 6), Map.vis)


def test_uv_warp_and_warp_texture_share_one_warp_bit_for_bit():
    """UVWarp (training) and faces.uv.warp_texture (plots, notebook 01) are the one sample_texture: the authors'
    clamp(grid_sample(T, uv, bilinear, align_corners=True), -eps, eps) * vis, and without the bound the plain
    warp; values and gradients match the grid_sample formula exactly."""
    from protego_nb.faces import uv as U

    g = torch.Generator().manual_seed(3)
    grid = torch.rand(4, 40, 40, 2, generator=g) * 2.4 - 1.2  # some coordinates outside [-1, 1]
    vis = (torch.rand(4, 1, 40, 40, generator=g) > 0.3).float()
    tex = ((torch.rand(1, 3, 24, 24, generator=g) - 0.5) * 0.3).requires_grad_(True)
    fn = torch.nn.functional
    ref = fn.grid_sample(tex.expand(4, -1, -1, -1), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = X.UVWarp(grid, vis).perturbation(tex, 0.1)
    assert torch.equal(out, torch.clamp(ref, -0.1, 0.1) * vis)
    (g_ref,) = torch.autograd.grad((torch.clamp(ref, -0.1, 0.1) * vis).pow(2).sum(), tex)
    (g_out,) = torch.autograd.grad(out.pow(2).sum(), tex)
    assert torch.equal(g_out, g_ref)
    m = U.UVMap(uv=grid, vis=vis, face_index=torch.zeros(4, 40, 40, dtype=torch.long), depth=torch.zeros(4, 1, 40, 40))
    assert torch.equal(U.warp_texture(tex, m), ref * vis)
    assert torch.equal(U.sample_texture(tex, grid, vis, bound=0.1), out)
    assert torch.equal(U.warp_texture(tex, m, align_corners=False, mode="nearest"),
                       fn.grid_sample(tex.expand(4, -1, -1, -1), grid, mode="nearest", align_corners=False) * vis)


def test_flat_warp_adds_the_texture_in_canvas_space():
    tex = torch.linspace(-0.2, 0.2, 3 * 10 * 10).view(1, 3, 10, 10)
    canv = torch.rand(2, 3, 10, 10)
    mask = torch.zeros(2, 1, 10, 10)
    mask[:, :, :5] = 1
    d = X.FlatWarp.for_canvases(canv).perturbation(tex, EPS)
    torch.testing.assert_close(d, tex.clamp(-EPS, EPS).expand(2, -1, -1, -1))
    dm = X.FlatWarp.for_canvases(canv, mask).perturbation(tex, EPS)
    assert dm[:, :, 5:].eq(0).all() and torch.equal(dm[:, :, :5], d[:, :, :5])
    # a texture of another size is resized to the canvas
    big = X.FlatWarp(2, 20, 20).perturbation(tex, EPS)
    assert big.shape == (2, 3, 20, 20) and big.abs().max() <= EPS
    sub = X.FlatWarp.for_canvases(canv, mask).select(torch.tensor([1]))
    assert len(sub) == 1 and sub.mask.shape == (1, 1, 10, 10)
    assert len(X.FlatWarp(5, 4, 4).select(slice(1, 4))) == 3


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(1 / 255, 0.3), st.booleans())
def test_prop_apply_texture_bound_and_range(seed, eps, flat):
    g = torch.Generator().manual_seed(seed)
    s = 9
    canv = (torch.rand(2, 3, s, s, generator=g) > 0.5).float()  # saturated pixels: clipping must act
    tex = (torch.rand(1, 3, s, s, generator=g) - 0.5) * 4 * eps  # raw texture beyond the bound
    if flat:
        w = X.FlatWarp.for_canvases(canv)
    else:
        w = X.UVWarp(torch.rand(2, s, s, 2, generator=g) * 2.2 - 1.1, torch.ones(2, 1, s, s))
    out = X.apply_texture(canv, w, tex, eps)
    assert out.min() >= 0 and out.max() <= 1
    assert (out - canv).abs().max() <= eps + 1e-6


def test_apply_texture_errors():
    canv = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="serves 3"):
        X.apply_texture(canv, X.FlatWarp(3, 8, 8), torch.zeros(1, 3, 8, 8), EPS)
    with pytest.raises(ValueError, match=r"\[K, 3, T, T\]"):
        X.apply_texture(canv, X.FlatWarp(2, 8, 8), torch.zeros(3, 8, 8), EPS)


# ---------------------------------------------------------------- the .ppt file


def test_save_load_round_trip(tmp_path):
    tex = X.init_texture(EPS, torch.Generator().manual_seed(1), size=24)
    meta = {"epsilon": EPS, "surrogates": ["dlib_resnet", "faceres"], "preset": "release", "seed": 114,
            "mode": "flat", "note": "hello"}
    path = X.save_ppt(tmp_path / "sub" / "me.ppt", tex, meta)
    assert [p.name for p in path.parent.iterdir()] == ["me.ppt"]  # no temporary file left behind
    got, m = X.load_ppt(path)
    assert torch.equal(got, tex)
    assert m["epsilon"] == EPS and m["surrogates"] == ["dlib_resnet", "faceres"] and m["seed"] == 114
    assert m["preset"] == "release" and m["mode"] == "flat" and m["texture_size"] == 24 and m["note"] == "hello"
    assert m["format"] == X.PPT_FORMAT and m["package_version"] and m["created"].startswith("20")
    # the file is plain safetensors: any reader sees string metadata
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        assert all(isinstance(v, str) for v in fh.metadata().values())


def test_save_refuses_bad_textures(tmp_path):
    with pytest.raises(ValueError, match="exceeds its bound"):
        X.save_ppt(tmp_path / "a.ppt", torch.full((1, 3, 4, 4), 0.5), {"epsilon": EPS})
    with pytest.raises(ValueError, match="epsilon"):
        X.save_ppt(tmp_path / "a.ppt", torch.zeros(1, 3, 4, 4), {})
    with pytest.raises(ValueError, match="NaN"):
        X.save_ppt(tmp_path / "a.ppt", torch.full((1, 3, 4, 4), float("nan")), {"epsilon": EPS})
    with pytest.raises(ValueError, match="mode"):
        X.save_ppt(tmp_path / "a.ppt", torch.zeros(1, 3, 4, 4), {"epsilon": EPS, "mode": "3d"})
    assert not list(tmp_path.iterdir())


def _write(path, tensors, meta=None):
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "tensors, meta, reason",
    [
        ({"ppt": torch.zeros(1, 3, 4, 4)}, {}, "lacks 'epsilon'"),
        ({"mask": torch.zeros(1, 3, 4, 4)}, {"epsilon": "0.06"}, "exactly one tensor named 'ppt'"),
        ({"ppt": torch.zeros(3, 4, 4)}, {"epsilon": "0.06"}, r"shape \[K, 3, T, T\]"),
        ({"ppt": torch.zeros(1, 3, 4, 5)}, {"epsilon": "0.06"}, r"shape \[K, 3, T, T\]"),
        ({"ppt": torch.zeros(1, 3, 4, 4, dtype=torch.float64)}, {"epsilon": "0.06"}, "float32"),
        ({"ppt": torch.full((1, 3, 4, 4), float("inf"))}, {"epsilon": "0.06"}, "NaN or inf"),
        ({"ppt": torch.full((1, 3, 4, 4), 0.1)}, {"epsilon": "0.06"}, "exceeds its bound"),
        ({"ppt": torch.zeros(1, 3, 4, 4)}, {"epsilon": "abc"}, "not a valid float"),
        ({"ppt": torch.zeros(1, 3, 4, 4)}, {"epsilon": "2"}, r"epsilon must be in \(0, 1\)"),
        ({"ppt": torch.zeros(1, 3, 4, 4)}, {"epsilon": "0.06", "texture_size": "8"}, "texture_size 8"),
        ({"ppt": torch.zeros(1, 3, 4, 4)}, {"epsilon": "0.06", "surrogates": "a,b"}, "surrogates"),
        ({"ppt": torch.zeros(1, 3, 4, 4)}, {"epsilon": "0.06", "mode": "3d"}, "mode"),
    ],
)
def test_load_validation_errors_name_the_file(tmp_path, tensors, meta, reason):
    path = _write(tmp_path / "bad.ppt", tensors, meta)
    with pytest.raises(X.PPTFileError, match=reason) as exc:
        X.load_ppt(path)
    assert str(path) in str(exc.value)


def test_load_rejects_missing_garbage_and_pickle(tmp_path):
    with pytest.raises(X.PPTFileError, match="no such PPT file"):
        X.load_ppt(tmp_path / "none.ppt")
    (tmp_path / "junk.ppt").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(X.PPTFileError, match="not a readable safetensors"):
        X.load_ppt(tmp_path / "junk.ppt")
    torch.save({"ppt": torch.zeros(1, 3, 4, 4)}, tmp_path / "pickled.ppt")
    with pytest.raises(X.PPTFileError, match="not a readable safetensors"):
        X.load_ppt(tmp_path / "pickled.ppt")
