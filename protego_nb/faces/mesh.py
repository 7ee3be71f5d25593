"""468-point face mesh on face canvases (MediaPipe), canonical UV layout and triangles.

The mesh replaces the authors' SMIRK + FLAME + PyTorch3D pipeline (see
``reference/protego_method.md`` section 1 and ``reference/face_models.md``, "Face mesh
and UV mapping"): MediaPipe's legacy face-mesh solution (``mediapipe==0.10.21``,
Kartynnik et al., "Real-time Facial Surface Geometry from Monocular Video on Mobile
GPUs", CVPR-W 2019) predicts 468 3-D landmarks per face, and the canonical UV layout
of those 468 points plus an 880-triangle tessellation ship as plain arrays in two npm
packages (``@tensorflow-models/facemesh@0.0.5`` ``uv_coords.js`` and
``@vladmandic/human@3.3.6`` ``facemeshcoords.ts``), fetched by :mod:`protego_nb.assets`.

Conventions
-----------
* ``vertices`` are ``float32 [B, 468, 3]`` in *canvas pixel* coordinates with the
  OpenCV pixel-centre convention of :mod:`protego_nb.faces.align` (the centre of pixel
  ``(i, j)`` is ``(x=j, y=i)``). MediaPipe's normalised ``(x, y)`` treat the image as the
  unit square (pixel ``j`` spans ``[j/W, (j+1)/W]``), so ``x_pix = x_norm * W - 0.5``.
  Checked: over 6 LFW canvases and their mirror images, the mean of ``x_i + x'_m(i)``
  (``m`` = mirror partner) is 223.03 px; this convention predicts ``W - 1 = 223``, the
  other (``x_pix = x_norm * W``) 222.
  ``z`` is MediaPipe's relative depth scaled like ``x`` (``z_norm * W``): smaller is
  closer to the camera; its origin is roughly the head's centre.
* ``UV468`` is ``float32 [468, 2]`` with ``u`` to the right and ``v`` *down* (``v = 0`` at
  the top of the forehead) in ``[0, 1]``: the texture reads like a frontal face image.
* ``TRI468`` is ``int64 [880, 3]`` vertex indices.

``UV468``, ``TRI468`` and ``MIRROR468`` are loaded lazily on first attribute access
(``from protego_nb.faces import mesh; mesh.UV468``) because they need the assets.

Size: the mesh, its canonical UV layout and triangles, and its disk cache, kept together.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import assets, paths

N_VERTICES = 468
N_TRIANGLES = 880
#: Vertex indices of the forehead top and chin in the canonical mesh (used in tests and docs).
FOREHEAD, CHIN, NOSE_TIP = 10, 152, 1

MESH_CACHE_VERSION = "mp0.10.21-v1"


# --------------------------------------------------------------------------------------------
# Canonical tables (parsed from the registry-shipped JS/TS sources)
# --------------------------------------------------------------------------------------------


class MeshAssetError(ValueError):
    """A mesh table in an asset file is missing or malformed."""


def _numbers(text: str) -> list[float]:
    text = re.sub(r"//[^\n]*", "", text)  # line comments
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text)]


def _js_array(source: str, name: str, file: Path) -> list[float]:
    """Numbers of the array literal assigned to ``name`` (``name ... = [ ... ];``) in a JS/TS file."""
    m = re.search(rf"\b{re.escape(name)}\b[^=\n]*=\s*\[", source)
    if m is None:
        raise MeshAssetError(f"{file}: no array named '{name}' found")
    start, depth = m.end() - 1, 0
    for k in range(start, len(source)):
        if source[k] == "[":
            depth += 1
        elif source[k] == "]":
            depth -= 1
            if depth == 0:
                return _numbers(source[start : k + 1])
    raise MeshAssetError(f"{file}: array '{name}' is not closed")


def _read(file: Path) -> str:
    try:
        return Path(file).read_text(encoding="utf-8")
    except OSError as exc:
        raise MeshAssetError(f"{file}: cannot read mesh table ({exc})") from exc


def parse_uv_js(file: str | os.PathLike) -> np.ndarray:
    """``UV_COORDS`` of ``@tensorflow-models/facemesh`` ``uv_coords.js`` as ``float32 [468, 2]``."""
    file = Path(file)
    nums = _js_array(_read(file), "UV_COORDS", file)
    return _check_uv(np.asarray(nums, dtype=np.float64), file, "UV_COORDS")


def parse_human_ts(file: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``UV468`` (``float32 [468, 2]``) and ``TRI468`` (``int64 [880, 3]``) of human's ``facemeshcoords.ts``."""
    file = Path(file)
    src = _read(file)
    uv = _check_uv(np.asarray(_js_array(src, "UV468", file), dtype=np.float64), file, "UV468")
    tri = np.asarray(_js_array(src, "TRI468", file), dtype=np.float64)
    if tri.size != 3 * N_TRIANGLES:
        raise MeshAssetError(f"{file}: TRI468 has {tri.size} indices, expected {3 * N_TRIANGLES}")
    if not np.all(tri == np.round(tri)) or tri.min() < 0 or tri.max() >= N_VERTICES:
        raise MeshAssetError(f"{file}: TRI468 indices must be integers in [0, {N_VERTICES - 1}]")
    tri = tri.astype(np.int64).reshape(N_TRIANGLES, 3)
    if np.any((tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2]) | (tri[:, 0] == tri[:, 2])):
        raise MeshAssetError(f"{file}: TRI468 has degenerate triangles (repeated vertex)")
    return uv, tri


def parse_mesh_annotations(file: str | os.PathLike) -> dict[str, list[int]]:
    """``meshAnnotations`` of human's ``facemeshcoords.ts``: region name -> vertex indices (< 468 only)."""
    file = Path(file)
    src = _read(file)
    m = re.search(r"meshAnnotations[^=]*=\s*\{(.*?)\n\};", src, flags=re.S)
    if m is None:
        raise MeshAssetError(f"{file}: no meshAnnotations object found")
    body = re.sub(r"//[^\n]*", "", m.group(1))
    out = {}
    for name, arr in re.findall(r"(\w+)\s*:\s*\[([^\]]*)\]", body):
        idx = [int(x) for x in re.findall(r"\d+", arr)]
        if idx and max(idx) < N_VERTICES:  # iris points (468+) belong to the refined 478-point mesh
            out[name] = idx
    return out


def _check_uv(nums: np.ndarray, file: Path, name: str) -> np.ndarray:
    if nums.size != 2 * N_VERTICES:
        raise MeshAssetError(f"{file}: {name} has {nums.size // 2} (u, v) pairs, expected {N_VERTICES}")
    uv = nums.reshape(N_VERTICES, 2)
    if uv.min() < 0 or uv.max() > 1:
        raise MeshAssetError(f"{file}: {name} values must lie in [0, 1]")
    return uv.astype(np.float32)


@functools.cache
def load_tables() -> tuple[np.ndarray, np.ndarray]:
    """``(UV468 [468, 2] float32, TRI468 [880, 3] int64)`` from the assets, cross-checked.

    The UVs of both packages must agree to 1e-6 (they are identical, max difference 0).
    """
    js = assets.path("tfjs-facemesh", "uv_coords.js")
    ts = assets.path("human", "facemeshcoords.ts")
    uv_js = parse_uv_js(js)
    uv_ts, tri = parse_human_ts(ts)
    diff = float(np.abs(uv_js - uv_ts).max())
    if diff > 1e-6:
        raise MeshAssetError(f"{js} and {ts} disagree on the canonical UVs (max difference {diff:.3g})")
    uv_ts.setflags(write=False)
    tri.setflags(write=False)
    return uv_ts, tri


@functools.cache
def mirror_index() -> np.ndarray:
    """``int64 [468]``: the left-right partner of each vertex (``u -> 1 - u``), midline points map to themselves.

    Found as the nearest canonical UV to ``(1 - u, v)``; the pairing is checked to be an
    involution (``m[m] == identity``).
    """
    uv, _ = load_tables()
    target = np.stack([1.0 - uv[:, 0], uv[:, 1]], 1)
    d = ((target[:, None, :] - uv[None, :, :]) ** 2).sum(-1)
    m = d.argmin(1)
    if not np.array_equal(m[m], np.arange(N_VERTICES)):
        raise MeshAssetError("canonical UV468 is not mirror-symmetric enough to pair vertices")
    m.setflags(write=False)
    return m


def uv_asymmetry() -> dict[str, float]:
    """How far the canonical UV468 is from exact left-right symmetry.

    For every vertex ``i`` with partner ``m(i)``: ``|(1 - u_i, v_i) - UV[m(i)]|`` (Euclidean,
    in UV units). Returns ``{"max": ..., "mean": ..., "max_du": ..., "max_dv": ...}``.
    """
    uv, _ = load_tables()
    m = mirror_index()
    r = np.stack([1.0 - uv[:, 0], uv[:, 1]], 1) - uv[m]
    n = np.linalg.norm(r, axis=1)
    return {
        "max": float(n.max()),
        "mean": float(n.mean()),
        "max_du": float(np.abs(r[:, 0]).max()),
        "max_dv": float(np.abs(r[:, 1]).max()),
    }


@functools.cache
def mesh_annotations() -> dict[str, list[int]]:
    """Named vertex groups (silhouette, lips, eyes, eyebrows, ...) of the 468-point mesh."""
    return parse_mesh_annotations(assets.path("human", "facemeshcoords.ts"))


def __getattr__(name: str):  # lazy module attributes: UV468, TRI468, MIRROR468
    if name == "UV468":
        return load_tables()[0]
    if name == "TRI468":
        return load_tables()[1]
    if name == "MIRROR468":
        return mirror_index()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# Running MediaPipe on canvases
# --------------------------------------------------------------------------------------------


@dataclass
class MeshResult:
    """468-point meshes of a batch of canvases.

    ``vertices`` float32 ``[B, 468, 3]`` (NaN where ``ok`` is False), ``ok`` bool ``[B]``,
    ``reasons[i]`` is ``None`` on success else a short reason (``"no_mesh"``, ``"bad_input: ..."``),
    ``n_faces[i]`` how many faces MediaPipe found, ``size`` the canvas side in pixels.
    """

    vertices: np.ndarray
    ok: np.ndarray
    reasons: list[str | None]
    n_faces: np.ndarray
    size: int
    cache_hits: int = 0
    failures: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ok)

    @property
    def n_failed(self) -> int:
        return int((~self.ok).sum())


def _as_uint8_list(canvases) -> list[np.ndarray]:
    """Canvases as a list of ``uint8 [H, W, 3]`` RGB arrays (accepts arrays, lists, float tensors)."""
    try:
        import torch

        if isinstance(canvases, torch.Tensor):
            if canvases.dim() != 4 or canvases.shape[1] != 3:
                raise ValueError(f"canvas tensor must be [B, 3, H, W], got {tuple(canvases.shape)}")
            arr = (canvases.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1)
            return list(arr.cpu().numpy())
    except ImportError:  # pragma: no cover
        pass
    if isinstance(canvases, np.ndarray) and canvases.ndim == 3:
        canvases = canvases[None]
    return [np.asarray(c) for c in canvases]


def _validate(c: np.ndarray) -> str | None:
    if c.ndim != 3 or c.shape[2] != 3:
        return f"bad_input: expected an RGB image [H, W, 3], got shape {c.shape}"
    if c.dtype != np.uint8:
        return f"bad_input: expected uint8 pixels, got {c.dtype}"
    if c.shape[0] != c.shape[1]:
        return f"bad_input: canvas must be square, got {c.shape[0]}x{c.shape[1]}"
    return None


def canvas_key(canvas: np.ndarray, max_num_faces: int = 1) -> str:
    """Content hash of a canvas and of the mesh settings (the cache key)."""
    h = hashlib.sha256()
    h.update(f"{MESH_CACHE_VERSION}|{canvas.shape}|{canvas.dtype}|faces={max_num_faces}|".encode())
    h.update(np.ascontiguousarray(canvas).tobytes())
    return h.hexdigest()


def _cache_file(key: str) -> Path:
    return paths.cache_dir("mesh", key[:2]) / f"{key}.npz"


def _cache_load(key: str) -> tuple[np.ndarray, int] | None:
    f = _cache_file(key)
    if not f.exists():
        return None
    try:
        with np.load(f) as z:
            return z["vertices"].astype(np.float32), int(z["n_faces"])
    except Exception:  # corrupt cache entry: recompute (it will be overwritten atomically)
        return None


def _cache_save(key: str, vertices: np.ndarray, n_faces: int) -> None:
    f = _cache_file(key)
    fd, tmp = tempfile.mkstemp(prefix=f".{f.stem}.", suffix=".npz", dir=f.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, vertices=vertices.astype(np.float32), n_faces=np.int64(n_faces))
        os.replace(tmp, f)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@functools.cache
def _face_mesh(max_num_faces: int):
    """One reusable static-image FaceMesh per ``max_num_faces`` (creating one costs ~50 ms)."""
    from mediapipe.python.solutions import face_mesh

    return face_mesh.FaceMesh(
        static_image_mode=True,
        refine_landmarks=False,
        max_num_faces=max_num_faces,
        min_detection_confidence=0.5,
    )


def _run_mediapipe(canvas: np.ndarray, max_num_faces: int) -> tuple[np.ndarray, int]:
    """Vertices ``[468, 3]`` in pixels (NaN when no face) and the number of faces found.

    With several faces, the one whose vertex centroid is closest to the canvas centre wins
    (the canvas is aligned on the face of interest).
    """
    h, w = canvas.shape[:2]
    res = _face_mesh(max_num_faces).process(np.ascontiguousarray(canvas))
    faces = res.multi_face_landmarks or []
    if not faces:
        return np.full((N_VERTICES, 3), np.nan, np.float32), 0
    cands = []
    for f in faces:
        a = np.array([(p.x, p.y, p.z) for p in f.landmark[:N_VERTICES]], dtype=np.float64)
        v = np.stack([a[:, 0] * w - 0.5, a[:, 1] * h - 0.5, a[:, 2] * w], 1)
        cands.append(v)
    centre = np.array([(w - 1) / 2, (h - 1) / 2])
    best = min(cands, key=lambda v: float(np.linalg.norm(v[:, :2].mean(0) - centre)))
    return best.astype(np.float32), len(faces)


def mesh_canvases(
    canvases,
    max_num_faces: int = 1,
    cache: bool = True,
    progress: bool = False,
) -> MeshResult:
    """468-point meshes of face canvases (``uint8 [H, W, 3]`` RGB, square; 224x224 by convention).

    ``canvases``: a list of arrays, an array ``[B, H, W, 3]`` or a float tensor ``[B, 3, H, W]`` in
    ``[0, 1]``. One bad or face-less canvas never stops the batch: it gets ``ok=False`` and a reason.
    Results (including failures) are cached by the canvas bytes' sha256 under
    ``paths.cache_dir("mesh")`` with atomic writes; ``cache=False`` always runs MediaPipe and
    writes nothing.
    """
    from tqdm.auto import tqdm

    items = _as_uint8_list(canvases)
    n = len(items)
    first_good = next((c for c in items if _validate(c) is None), None)
    size = int(first_good.shape[0]) if first_good is not None else 0
    verts = np.full((n, N_VERTICES, 3), np.nan, np.float32)
    ok = np.zeros(n, bool)
    n_faces = np.zeros(n, np.int64)
    reasons: list[str | None] = [None] * n
    hits = 0
    for i, c in enumerate(tqdm(items, desc="face mesh", disable=not progress, leave=False)):
        bad = _validate(c)
        if bad is None and c.shape[0] != size:
            bad = f"bad_input: canvas {i} is {c.shape[0]} px but the batch's first good canvas is {size} px"
        if bad is not None:
            reasons[i] = bad
            continue
        key = canvas_key(c, max_num_faces) if cache else ""
        got = _cache_load(key) if cache else None
        if got is not None:
            hits += 1
            v, nf = got
        else:
            v, nf = _run_mediapipe(c, max_num_faces)
            if cache:
                _cache_save(key, v, nf)
        verts[i], n_faces[i] = v, nf
        ok[i] = nf > 0 and bool(np.isfinite(v).all())
        if not ok[i]:
            reasons[i] = "no_mesh"
    failures = {i: r for i, r in enumerate(reasons) if r is not None}
    return MeshResult(verts, ok, reasons, n_faces, size, hits, failures)


# --------------------------------------------------------------------------------------------
# Head pose from the mesh
# --------------------------------------------------------------------------------------------


def _pair_lists(min_du: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Mirror pairs ``(right_side, left_side)`` (u > 0.5 vs u < 0.5) at least ``min_du`` off the midline."""
    uv, _ = load_tables()
    m = mirror_index()
    idx = np.where(uv[:, 0] > 0.5 + min_du)[0]
    return idx, m[idx]


def head_axes(vertices) -> np.ndarray:
    """Unit 3-D left-to-right axis of the head(s) in canvas coordinates, ``[..., 3]``.

    Mean of ``v[i] - v[m(i)]`` over the mirror pairs of the canonical layout (image-right
    member minus image-left member of a frontal face), normalised.
    """
    v = np.asarray(vertices, dtype=np.float64)
    right, left = _pair_lists()
    a = (v[..., right, :] - v[..., left, :]).mean(-2)
    with np.errstate(invalid="ignore", divide="ignore"):  # NaN rows (no mesh) stay NaN
        return a / np.linalg.norm(a, axis=-1, keepdims=True)


def estimate_yaw(vertices) -> np.ndarray | float:
    """Head yaw in degrees from a 468-point mesh (``[468, 3]`` or ``[B, 468, 3]``; NaN rows give NaN).

    Method: the head's left-to-right axis ``a`` is the mean 3-D difference between the two
    members of the 181 mirror-symmetric vertex pairs of the canonical UV layout that lie at
    least 0.05 in ``u`` off the midline (:func:`head_axes`); a rotation by ``yaw`` about the
    vertical axis turns ``a = (1, 0, 0)`` into ``(cos yaw, 0, sin yaw)`` in (x right, y down,
    z away from the camera), so ``yaw = atan2(a_z, a_x)``. Positive yaw: the nose points
    to the image's right (the person turns to their own left). MediaPipe's ``z`` is a
    learned, weak-perspective relative depth, so this is an estimate (a few degrees), not a
    calibrated head pose; it is anti-symmetric under a horizontal flip of the image.
    """
    a = head_axes(vertices)
    yaw = np.degrees(np.arctan2(a[..., 2], a[..., 0]))
    return float(yaw) if np.ndim(yaw) == 0 else yaw
