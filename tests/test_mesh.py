"""Tests for protego_nb.faces.mesh: canonical tables, MediaPipe meshes on canvases, cache, yaw."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import lfw_canvas_stack

from protego_nb.faces import align, mesh

pytestmark = pytest.mark.assets

LFW_NAMES = [
    "Aaron_Eckhart/Aaron_Eckhart_0001.jpg",
    "George_W_Bush/George_W_Bush_0001.jpg",
    "Serena_Williams/Serena_Williams_0001.jpg",
    "Tony_Blair/Tony_Blair_0001.jpg",
]


def lfw_canvases() -> np.ndarray:
    """Aligned 224x224 canvases of a few LFW images (the package's MTCNN canvases)."""
    return lfw_canvas_stack(tuple(LFW_NAMES))


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """A private cache root, so cache tests neither read nor pollute the user's mesh cache.

    The canonical tables are loaded (from the real asset cache) before the switch.
    """
    mesh.load_tables()
    mesh.mirror_index()
    root = tmp_path / "cache"
    monkeypatch.setenv("PROTEGO_CACHE_DIR", str(root))
    return root


# ------------------------------------------------------------------------------------ tables


def test_tables_shapes_ranges_and_landmarks():
    uv, tri = mesh.load_tables()
    assert uv.shape == (468, 2) and uv.dtype == np.float32
    assert tri.shape == (880, 3) and tri.dtype == np.int64
    assert 0 < uv.min() and uv.max() < 1
    # forehead top and chin on the midline, v pointing down
    np.testing.assert_allclose(uv[mesh.FOREHEAD], [0.5, 0.107], atol=1e-3)
    np.testing.assert_allclose(uv[mesh.CHIN], [0.5, 0.954], atol=1e-3)
    assert uv[mesh.FOREHEAD, 1] < uv[mesh.NOSE_TIP, 1] < uv[mesh.CHIN, 1]
    assert set(np.unique(tri)) == set(range(468))  # every vertex is used
    assert len({tuple(sorted(t)) for t in tri}) == 880  # no duplicate triangle


def test_triangles_consistently_wound_in_uv():
    uv, tri = mesh.load_tables()
    a = uv[tri].astype(np.float64)
    cross = (a[:, 1, 0] - a[:, 0, 0]) * (a[:, 2, 1] - a[:, 0, 1]) - (a[:, 1, 1] - a[:, 0, 1]) * (a[:, 2, 0] - a[:, 0, 0])
    assert (cross < 0).all() or (cross > 0).all()
    assert np.abs(cross).min() > 1e-6  # no degenerate triangle in UV space


def test_both_packages_agree(tmp_path):
    uv_js = mesh.parse_uv_js(mesh.assets.path("tfjs-facemesh", "uv_coords.js"))
    uv_ts, _ = mesh.parse_human_ts(mesh.assets.path("human", "facemeshcoords.ts"))
    assert np.abs(uv_js - uv_ts).max() == 0.0


def test_mirror_index_and_asymmetry():
    uv, tri = mesh.load_tables()
    m = mesh.mirror_index()
    np.testing.assert_array_equal(m[m], np.arange(468))
    mid = m == np.arange(468)
    assert np.abs(uv[mid, 0] - 0.5).max() < 2e-3  # self-paired points lie on the midline
    asym = mesh.uv_asymmetry()
    # measured: max 0.0012, mean 1e-4 (UV units) -- the canonical layout is symmetric to ~0.1 %
    assert asym["max"] < 2e-3 and asym["mean"] < 2e-4
    # the triangulation itself is mirror-symmetric for all but a few quads' diagonals
    tris = {tuple(sorted(t)) for t in tri}
    mirrored = {tuple(sorted(m[t])) for t in tri}
    assert len(tris & mirrored) >= 860


def test_annotations():
    ann = mesh.mesh_annotations()
    assert len(ann["silhouette"]) == 36
    assert ann["noseTip"] == [1]
    assert "leftEyeIris" not in ann  # 478-point refinement indices are dropped


@pytest.mark.parametrize(
    "content, message",
    [
        ("exports.UV_COORDS = [[0.1, 0.2], [0.3, 0.4]];", "468"),
        ("var nothing = 1;", "no array named 'UV_COORDS'"),
        ("exports.UV_COORDS = [[0.1, 0.2]", "not closed"),
    ],
)
def test_bad_uv_file_names_file_and_reason(tmp_path, content, message):
    f = tmp_path / "uv_coords.js"
    f.write_text(content)
    with pytest.raises(mesh.MeshAssetError, match=message) as exc:
        mesh.parse_uv_js(f)
    assert str(f) in str(exc.value)


def test_bad_triangle_indices(tmp_path):
    uv = ", ".join("[0.5, 0.5]" for _ in range(468))
    tri = ", ".join(["0, 1, 468"] * 880)
    f = tmp_path / "facemeshcoords.ts"
    f.write_text(f"export const UV468 = [{uv}];\nexport const TRI468: number[] = [{tri}];\n")
    with pytest.raises(mesh.MeshAssetError, match=r"indices must be integers in \[0, 467\]"):
        mesh.parse_human_ts(f)
    with pytest.raises(mesh.MeshAssetError, match="cannot read"):
        mesh.parse_human_ts(tmp_path / "missing.ts")


def test_lazy_attributes():
    assert mesh.UV468.shape == (468, 2) and mesh.TRI468.shape == (880, 3) and mesh.MIRROR468.shape == (468,)
    with pytest.raises(AttributeError):
        mesh.NOPE  # noqa: B018


# ------------------------------------------------------------------------------- MediaPipe


def test_mesh_on_canvases(tmp_cache):
    cans = lfw_canvases()
    res = mesh.mesh_canvases(cans)
    assert res.vertices.shape == (len(cans), 468, 3) and res.vertices.dtype == np.float32
    assert res.ok.all() and res.reasons == [None] * len(cans) and res.n_failed == 0
    v = res.vertices
    assert (v[..., :2] > -5).all() and (v[..., :2] < 229).all()
    # the mesh sits where the 5-point alignment put the face: nose tip near the template nose,
    # forehead above, chin below, image-left eye corner left of the image-right one
    nose = v[:, mesh.NOSE_TIP, :2]
    assert np.linalg.norm(nose - align.CANVAS_TEMPLATE[2], axis=1).max() < 15
    assert (v[:, mesh.FOREHEAD, 1] < nose[:, 1]).all() and (v[:, mesh.CHIN, 1] > nose[:, 1]).all()
    assert (v[:, 33, 0] < v[:, 263, 0]).all()
    # z: the nose tip is closer (smaller z) than the face-contour cheek points
    assert (v[:, mesh.NOSE_TIP, 2] < v[:, [234, 454], 2].min(1)).all()


def test_failures_are_reported_not_raised(tmp_cache):
    cans = lfw_canvases()
    blank = np.full((224, 224, 3), 127, np.uint8)
    res = mesh.mesh_canvases([cans[0], blank, np.zeros((224, 224), np.uint8), cans[1].astype(np.float32)])
    assert res.ok.tolist() == [True, False, False, False]
    assert res.reasons[1] == "no_mesh"
    assert res.reasons[2].startswith("bad_input") and "[H, W, 3]" in res.reasons[2]
    assert res.reasons[3].startswith("bad_input") and "uint8" in res.reasons[3]
    assert np.isnan(res.vertices[1:]).all() and np.isfinite(res.vertices[0]).all()
    assert res.failures == {1: "no_mesh", 2: res.reasons[2], 3: res.reasons[3]}
    # a bad first canvas does not poison the batch; a size mismatch is named
    res = mesh.mesh_canvases([np.zeros((5, 5), np.uint8), cans[0], np.zeros((100, 100, 3), np.uint8)])
    assert res.ok.tolist() == [False, True, False] and res.size == 224
    assert "100 px" in res.reasons[2] and "224 px" in res.reasons[2]


def test_cache_roundtrip_and_atomic(tmp_cache):
    cans = lfw_canvases()[:2]
    blank = np.full((224, 224, 3), 127, np.uint8)
    first = mesh.mesh_canvases([*cans, blank])
    assert first.cache_hits == 0
    files = sorted((tmp_cache / "mesh").rglob("*"))
    npz = [f for f in files if f.is_file()]
    assert len(npz) == 3 and all(f.suffix == ".npz" and not f.name.startswith(".") for f in npz)
    second = mesh.mesh_canvases([*cans, blank])
    assert second.cache_hits == 3  # failures are cached too
    np.testing.assert_array_equal(np.nan_to_num(first.vertices), np.nan_to_num(second.vertices))
    assert second.ok.tolist() == [True, True, False]
    # a corrupt entry is recomputed, not trusted
    npz[0].write_bytes(b"garbage")
    third = mesh.mesh_canvases([*cans, blank])
    assert third.cache_hits == 2
    np.testing.assert_array_equal(np.nan_to_num(first.vertices), np.nan_to_num(third.vertices))


def test_tensor_input_matches_uint8(tmp_cache):
    torch = pytest.importorskip("torch")
    cans = lfw_canvases()[:2]
    x = torch.from_numpy(cans).permute(0, 3, 1, 2).float() / 255
    a = mesh.mesh_canvases(cans, cache=False)
    b = mesh.mesh_canvases(x, cache=False)
    np.testing.assert_allclose(a.vertices, b.vertices, atol=1e-4)


# ------------------------------------------------------------------------------------ yaw


def _rot_y(deg: float) -> np.ndarray:
    t = np.radians(deg)
    return np.array([[np.cos(t), 0, -np.sin(t)], [0, 1, 0], [np.sin(t), 0, np.cos(t)]])


@pytest.mark.parametrize("yaw", [-60.0, -25.0, 0.0, 10.0, 45.0, 80.0])
def test_yaw_of_rotated_synthetic_head(yaw):
    uv, _ = mesh.load_tables()
    # a symmetric 3-D head: the canonical layout on a half-cylinder (z smaller = closer at the centre)
    x = (uv[:, 0] - 0.5) * 150
    y = (uv[:, 1] - 0.5) * 180
    z = -np.sqrt(np.clip(80.0**2 - x**2, 0, None))
    pts = np.stack([x, y, z], 1)
    # the rotation maps (1, 0, 0) to (cos, 0, sin): the nose (0, 0, -1) moves to +x for yaw > 0
    rotated = pts @ _rot_y(yaw).T + [112, 112, 0]
    assert mesh.estimate_yaw(rotated) == pytest.approx(yaw, abs=0.5)
    nose = rotated[mesh.NOSE_TIP, 0] - 112
    assert np.sign(nose) == np.sign(yaw) or yaw == 0


def test_yaw_is_antisymmetric_under_flip(tmp_cache):
    cans = lfw_canvases()
    a = mesh.estimate_yaw(mesh.mesh_canvases(cans).vertices)
    b = mesh.estimate_yaw(mesh.mesh_canvases(cans[:, :, ::-1].copy()).vertices)
    assert a.shape == (len(cans),)
    # measured on these canvases: |a + b| <= 1.3 degrees
    np.testing.assert_allclose(a, -b, atol=3.0)
    assert np.isnan(mesh.estimate_yaw(np.full((468, 3), np.nan)))
