"""Per-pixel UV maps of face canvases (a z-buffered torch rasteriser) and texture warping.

This is the stand-in for the authors' FLAME + PyTorch3D ``rasterize_meshes`` step
(``reference/protego_method.md`` section 1): for every canvas pixel it finds the front-most
triangle of the 468-point mesh (:mod:`protego_nb.faces.mesh`), interpolates the canonical
UVs of its corners, and returns a ``grid_sample`` grid plus a binary visibility mask. A
Privacy Protection Texture is then warped onto any face with :func:`sample_texture` (the one warp;
:func:`warp_texture` takes a :class:`UVMap`).

Conventions
-----------
* **Pixel centres.** The centre of output pixel ``(i, j)`` is the point ``(x=j, y=i)`` in
  output-pixel coordinates, the OpenCV convention of :mod:`protego_nb.faces.align`. When the
  output ``size`` differs from ``canvas_size`` the vertices are mapped with
  ``x' = (x + 0.5) * size / canvas_size - 0.5`` (what ``cv2.resize`` and
  ``interpolate(..., align_corners=False)`` do), ``z`` is scaled by the same factor.
* **Coverage rule.** A pixel belongs to a triangle when its centre has all three
  barycentric coordinates ``>= 0`` (edges inclusive, so no cracks between neighbours).
  Degenerate triangles (|area| < 1e-9 px^2) and triangles with a non-finite vertex are skipped.
* **Depth.** Nearest surface wins: the smallest interpolated ``z`` (MediaPipe: smaller is
  closer); exact ties go to the lowest triangle index, so the result is deterministic.
* **Interpolation.** Screen-space (affine) barycentrics, no perspective correction (as the
  authors' PyTorch3D call, and MediaPipe's mesh is weak-perspective anyway).
* **UV orientation.** Canonical ``u`` points right and ``v`` points down (``v = 0`` at the
  forehead top), and the grid is ``(2u - 1, 2v - 1)``: ``grid[..., 0]`` selects the texture
  column (x, right) and ``grid[..., 1]`` the texture row (y, down). So a texture image is
  laid out like an upright frontal face: its top rows land on the forehead, its left
  columns on the image-left cheek of a frontal face. Unlike the authors' FLAME pipeline
  there is no ``v`` flip to undo.
* Pixels that see no triangle get ``vis = 0``, ``face_index = -1``, ``depth = +inf`` and
  ``uv = INVISIBLE_UV`` (outside ``[-1, 1]``, so ``grid_sample`` with zero padding reads 0
  there even without the mask).

Size: the rasteriser, the UV layout it reads and the one texture warp (:func:`sample_texture`) belong together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

INVISIBLE_UV = -2.0
#: ``align_corners`` the authors pass to ``grid_sample`` when warping the texture.
ALIGN_CORNERS = True


@dataclass
class UVMap:
    """Rasterised UV maps of a batch.

    ``uv`` float32 ``[B, H, W, 2]`` grid_sample coordinates in ``[-1, 1]`` (``INVISIBLE_UV`` where
    nothing is visible); ``vis`` float32 ``[B, 1, H, W]`` 0/1; ``face_index`` int64 ``[B, H, W]``
    (triangle index into ``faces``, -1 for none); ``depth`` float32 ``[B, 1, H, W]`` (``+inf`` for none).
    """

    uv: torch.Tensor
    vis: torch.Tensor
    face_index: torch.Tensor
    depth: torch.Tensor

    def __len__(self) -> int:
        return self.uv.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.uv.shape[1]), int(self.uv.shape[2])

    def to(self, device: str | torch.device) -> UVMap:
        return UVMap(self.uv.to(device), self.vis.to(device), self.face_index.to(device), self.depth.to(device))

    def __getitem__(self, idx) -> UVMap:
        """Select images (int, slice, index list or bool mask); always keeps the batch dimension."""
        if isinstance(idx, (int, np.integer)):
            i = int(idx) + (len(self) if idx < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"UV map index {int(idx)} out of range for a batch of {len(self)}")
            idx = slice(i, i + 1)
        return UVMap(self.uv[idx], self.vis[idx], self.face_index[idx], self.depth[idx])

    @staticmethod
    def cat(maps: list[UVMap]) -> UVMap:
        return UVMap(
            torch.cat([m.uv for m in maps]),
            torch.cat([m.vis for m in maps]),
            torch.cat([m.face_index for m in maps]),
            torch.cat([m.depth for m in maps]),
        )

    def visible_fraction(self) -> torch.Tensor:
        """Fraction of each canvas covered by the face surface, ``[B]``."""
        return self.vis.flatten(1).mean(1)


def _as_tensor(x, device=None, dtype=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device or x.device, dtype=dtype or x.dtype)
    return torch.as_tensor(np.array(x, copy=True), device=device, dtype=dtype)


@torch.no_grad()
def rasterize_uv(
    vertices,
    faces,
    uvs,
    size: int = 224,
    canvas_size: int = 224,
    device: str | torch.device | None = None,
    chunk_elems: int = 1 << 21,
) -> UVMap:
    """Rasterise meshes into per-pixel UV maps with a z-buffer (see the module docstring for conventions).

    ``vertices`` ``[B, N, 3]`` (x, y in canvas pixels, z like x, smaller = closer; NaN rows allowed:
    that image gets an empty map), ``faces`` ``[F, 3]`` int, ``uvs`` ``[N, 2]`` in ``[0, 1]`` (u right,
    v down). Output ``size`` x ``size`` (vertices are rescaled from ``canvas_size``). Runs on the
    device of ``vertices`` (or ``device``); fully vectorised: triangles are grouped by bounding-box
    size (powers of two) and each group is tested against all pixel centres of its boxes at once,
    in chunks of at most ``chunk_elems`` candidate pixels.
    """
    if device is None:
        device = vertices.device if isinstance(vertices, torch.Tensor) else "cpu"
    V = _as_tensor(vertices, device, torch.float32)
    if V.dim() == 2:
        V = V.unsqueeze(0)
    if V.dim() != 3 or V.shape[-1] != 3:
        raise ValueError(f"vertices must be [B, N, 3], got {tuple(V.shape)}")
    Fc = _as_tensor(faces, device, torch.long)
    UV = _as_tensor(uvs, device, torch.float32)
    if Fc.dim() != 2 or Fc.shape[1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(Fc.shape)}")
    if UV.shape != (V.shape[1], 2):
        raise ValueError(f"uvs must be [{V.shape[1]}, 2] to match the vertices, got {tuple(UV.shape)}")
    if Fc.numel() and (int(Fc.min()) < 0 or int(Fc.max()) >= V.shape[1]):
        raise ValueError(f"faces index vertices out of range [0, {V.shape[1] - 1}]")
    B, H, W = V.shape[0], int(size), int(size)
    s = size / float(canvas_size)
    P = torch.cat([(V[..., :2] + 0.5) * s - 0.5, V[..., 2:] * s], -1)

    nF = Fc.shape[0]
    T = P.index_select(1, Fc.reshape(-1)).view(B * nF, 3, 3)  # [B*F, 3 corners, (x, y, z)]
    x, y = T[..., 0], T[..., 1]
    area = (x[:, 1] - x[:, 0]) * (y[:, 2] - y[:, 0]) - (x[:, 2] - x[:, 0]) * (y[:, 1] - y[:, 0])
    j0 = torch.ceil(x.amin(-1)).clamp_min(0)
    j1 = torch.floor(x.amax(-1)).clamp_max(W - 1)
    i0 = torch.ceil(y.amin(-1)).clamp_min(0)
    i1 = torch.floor(y.amax(-1)).clamp_max(H - 1)
    valid = torch.isfinite(T).flatten(1).all(1) & (area.abs() > 1e-9) & (j1 >= j0) & (i1 >= i0)
    tid = valid.nonzero().squeeze(1)  # valid (image, triangle) pairs, flat index b * F + f
    bi, fi = torch.div(tid, nF, rounding_mode="floor"), tid % nF

    uv_out = torch.full((B * H * W, 2), INVISIBLE_UV, device=device)
    face_out = torch.full((B * H * W,), -1, dtype=torch.long, device=device)
    depth_out = torch.full((B * H * W,), math.inf, device=device)

    def result() -> UVMap:
        vis = (face_out >= 0).float().view(B, 1, H, W)
        return UVMap(uv_out.view(B, H, W, 2), vis, face_out.view(B, H, W), depth_out.view(B, 1, H, W))

    if tid.numel() == 0:
        return result()

    # Per-triangle affine forms over the pixel offsets (ox, oy) inside its bounding box:
    # lambda_k(p) = base_k + dx_k * ox + dy_k * oy (lambda_0 = E(v1, v2, p) / area, ...) and the
    # interpolated depth likewise, computed in float64 once per triangle and evaluated in float32
    # for every candidate pixel.
    Tv = T.index_select(0, tid).double()
    xs, ys, zs = Tv[..., 0], Tv[..., 1], Tv[..., 2]  # [M, 3]
    inv_area = 1.0 / area.index_select(0, tid).double()
    j0, i0 = j0.index_select(0, tid).double(), i0.index_select(0, tid).double()
    wv = (j1.index_select(0, tid) - j0).long() + 1
    nv = wv * ((i1.index_select(0, tid) - i0).long() + 1)  # candidate pixels per triangle
    lam_coef = []
    for a, b in ((1, 2), (2, 0), (0, 1)):
        ex, ey = xs[:, b] - xs[:, a], ys[:, b] - ys[:, a]
        base = (ex * (i0 - ys[:, a]) - ey * (j0 - xs[:, a])) * inv_area
        lam_coef.append(torch.stack([base, -ey * inv_area, ex * inv_area], 1))  # [M, 3]
    lam_coef = torch.stack(lam_coef, 1)  # [M, 3 (lambda_k), 3 (base, d/dox, d/doy)]
    z_coef = (lam_coef * zs[:, :, None]).sum(1)  # [M, 3]
    # [12, M] rows: (base, d/dox, d/doy) of lambda_0, lambda_1, lambda_2, z; rows stay contiguous after gathers
    coef = torch.cat([lam_coef.flatten(1), z_coef], 1).float().t().contiguous()
    pix_base = bi * (H * W) + i0.long() * W + j0.long()

    c_pix, c_tri, c_lam, c_z = [], [], [], []
    ends = torch.cumsum(nv, 0)
    starts = ends - nv
    lo, M = 0, nv.numel()
    while lo < M:  # chunks of whole triangles with at most ~chunk_elems candidate pixels
        hi = max(int(torch.searchsorted(ends, int(starts[lo]) + chunk_elems, right=True)), lo + 1)
        n_lo, n_hi = int(starts[lo]), int(ends[hi - 1])
        rep = torch.repeat_interleave(torch.arange(lo, hi, device=device), nv[lo:hi], output_size=n_hi - n_lo)
        local = torch.arange(n_lo, n_hi, device=device) - starts.index_select(0, rep)
        w_r = wv.index_select(0, rep)
        oy = torch.div(local, w_r, rounding_mode="floor")
        ox = local - oy * w_r
        fx, fy = ox.float(), oy.float()
        cr = coef[:9].index_select(1, rep)  # [9, n]
        lam = [torch.addcmul(torch.addcmul(cr[3 * k], cr[3 * k + 1], fx), cr[3 * k + 2], fy) for k in range(3)]
        inside = (torch.minimum(torch.minimum(lam[0], lam[1]), lam[2]) >= 0).nonzero().squeeze(1)
        if inside.numel():
            r_in, fx_in, fy_in = rep.index_select(0, inside), fx.index_select(0, inside), fy.index_select(0, inside)
            c_pix.append(pix_base.index_select(0, r_in) + oy.index_select(0, inside) * W + ox.index_select(0, inside))
            c_tri.append(r_in)
            c_lam.append(torch.stack([t.index_select(0, inside) for t in lam], 1))
            cz = coef[9:].index_select(1, r_in)
            c_z.append(torch.addcmul(torch.addcmul(cz[0], cz[1], fx_in), cz[2], fy_in))
        lo = hi
    if not c_pix:
        return result()
    pix, tri, lam, zc = torch.cat(c_pix), torch.cat(c_tri), torch.cat(c_lam), torch.cat(c_z)

    # z-buffer: nearest depth per pixel, then the lowest triangle index among exact ties
    depth_out.scatter_reduce_(0, pix, zc, reduce="amin", include_self=True)
    face_of = fi.index_select(0, tri)
    front = (zc <= depth_out.index_select(0, pix)).nonzero().squeeze(1)
    pix, tri, lam, face_of = (t.index_select(0, front) for t in (pix, tri, lam, face_of))
    best = torch.full((B * H * W,), torch.iinfo(torch.long).max, dtype=torch.long, device=device)
    best.scatter_reduce_(0, pix, face_of, reduce="amin", include_self=True)
    win = (face_of == best.index_select(0, pix)).nonzero().squeeze(1)  # one candidate per covered pixel
    wpix, wtri, wlam = pix.index_select(0, win), tri.index_select(0, win), lam.index_select(0, win)
    face_out.index_copy_(0, wpix, face_of.index_select(0, win))
    corner_uv = UV[Fc].index_select(0, fi.index_select(0, wtri))  # [n, 3, 2]
    uvw = (wlam[..., None] * corner_uv).sum(1)
    uv_out.index_copy_(0, wpix, uvw * 2.0 - 1.0)
    return result()


def sample_texture(
    texture: torch.Tensor,
    uv: torch.Tensor,
    vis: torch.Tensor,
    bound: float | None = None,
    align_corners: bool = ALIGN_CORNERS,
    mode: str = "bilinear",
) -> torch.Tensor:
    """The texture warp: ``grid_sample(texture, uv)``, clamped to ``[-bound, bound]`` when ``bound`` is given,
    times ``vis`` -> ``[B, C, H, W]``. The one implementation (training's :class:`protego_nb.protect.texture.UVWarp`
    and :func:`warp_texture` call it).

    ``texture`` ``[1, C, T, T]`` (one texture for the whole batch, e.g. a user's PPT) or ``[B, C, T, T]``;
    ``uv`` ``[B, H, W, 2]`` grid_sample coordinates (outside ``[-1, 1]`` reads zero), ``vis`` ``[B, 1, H, W]``.
    Differentiable w.r.t. the texture; ``align_corners=True`` as the authors (``u = 0`` and ``u = 1`` are the
    centres of the first and last texel columns). With ``bound`` this is the authors' order:
    ``clamp(grid_sample(T, uv), -eps, eps) * vis``.
    """
    if texture.dim() != 4:
        raise ValueError(f"texture must be [1 or B, C, T, T], got {tuple(texture.shape)}")
    B = uv.shape[0]
    if texture.shape[0] == 1 and B != 1:
        texture = texture.expand(B, -1, -1, -1)
    elif texture.shape[0] != B:
        raise ValueError(f"texture batch {texture.shape[0]} must be 1 or match the UV maps' batch {B}")
    grid = uv.to(device=texture.device, dtype=texture.dtype)
    out = F.grid_sample(texture, grid, mode=mode, padding_mode="zeros", align_corners=align_corners)
    if bound is not None:
        out = torch.clamp(out, -bound, bound)
    return out * vis.to(device=texture.device, dtype=texture.dtype)


def warp_texture(
    texture: torch.Tensor,
    uvmap: UVMap,
    align_corners: bool = ALIGN_CORNERS,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Warp a UV-space texture onto the canvases of ``uvmap``: :func:`sample_texture` without a bound,
    ``grid_sample(texture, uv) * vis`` -> ``[B, C, H, W]`` (``texture`` ``[1 or B, C, T, T]``)."""
    return sample_texture(texture, uvmap.uv, uvmap.vis, align_corners=align_corners, mode=mode)


def texel_coverage(uvmap: UVMap, texture_size: int, align_corners: bool = ALIGN_CORNERS) -> torch.Tensor:
    """How many visible canvas pixels read each texel (bilinear footprint), ``int64 [T, T]``.

    A texel is *covered* when any visible pixel of any image in the batch gives it a non-zero
    bilinear weight, i.e. when the texture gradient can reach it (``counts > 0``).
    """
    T = int(texture_size)
    g = uvmap.uv[uvmap.vis[:, 0] > 0]  # [n, 2]
    if align_corners:
        t = (g + 1) / 2 * (T - 1)
    else:
        t = ((g + 1) * T - 1) / 2
    t0 = torch.floor(t)
    frac = t - t0
    t0 = t0.long()
    counts = torch.zeros(T * T, dtype=torch.long, device=g.device)
    for dx in (0, 1):
        for dy in (0, 1):
            wx = frac[:, 0] if dx else 1 - frac[:, 0]
            wy = frac[:, 1] if dy else 1 - frac[:, 1]
            cx, cy = t0[:, 0] + dx, t0[:, 1] + dy
            keep = (wx > 0) & (wy > 0) & (cx >= 0) & (cx < T) & (cy >= 0) & (cy < T)
            counts += torch.bincount(cy[keep] * T + cx[keep], minlength=T * T)
    return counts.view(T, T)


# --------------------------------------------------------------------------------------------
# Convenience: canvases -> mesh -> UV maps, and demonstration textures
# --------------------------------------------------------------------------------------------


def canvas_uv(
    canvases,
    size: int = 224,
    device: str | torch.device = "cpu",
    cache: bool = True,
    max_num_faces: int = 1,
    progress: bool = False,
):
    """Mesh the canvases and rasterise their UV maps with the canonical tables.

    Returns ``(MeshResult, UVMap)``; a canvas without a mesh gets an empty map (``vis`` all 0).
    """
    from . import mesh as _mesh

    res = _mesh.mesh_canvases(canvases, max_num_faces=max_num_faces, cache=cache, progress=progress)
    uv468, tri468 = _mesh.load_tables()
    canvas_size = res.size or 224
    uvm = rasterize_uv(res.vertices, tri468, uv468, size=size, canvas_size=canvas_size, device=device)
    return res, uvm


@dataclass
class UVStats:
    """Dataset-level UV statistics from :func:`uv_statistics` (no per-pixel maps kept).

    ``visible_fraction`` ``[N]`` share of each canvas covered by the face (0 without a mesh);
    ``counts`` ``int64 [T, T]`` texel reads summed over all images (:func:`texel_coverage`);
    ``single_image_coverage`` ``[N]`` share of the face texels (:func:`face_texel_mask`) that each
    image reads on its own (NaN without a mesh).
    """

    visible_fraction: np.ndarray
    counts: torch.Tensor
    single_image_coverage: np.ndarray

    @property
    def coverage_fraction(self) -> float:
        """Share of all ``T x T`` texels read by at least one image."""
        return float((self.counts > 0).float().mean())

    def face_coverage_fraction(self) -> float:
        """Share of the face-silhouette texels read by at least one image."""
        mask = face_texel_mask(self.counts.shape[0]).to(self.counts.device)
        return float((self.counts > 0)[mask].float().mean())


def uv_statistics(
    vertices,
    texture_size: int = 256,
    size: int = 224,
    canvas_size: int = 224,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    progress: bool = False,
) -> UVStats:
    """Rasterise many meshes (canonical tables) in batches and keep only the statistics.

    Memory stays at one batch of UV maps, so it scales to all of LFW. ``vertices`` ``[N, 468, 3]``
    (NaN rows = no mesh).
    """
    from tqdm.auto import tqdm

    from . import mesh as _mesh

    uv468, tri = _mesh.load_tables()
    V = _as_tensor(vertices, "cpu", torch.float32)
    faces, uvs = torch.from_numpy(tri.copy()).to(device), torch.from_numpy(uv468.copy()).to(device)
    mask = face_texel_mask(texture_size).to(device)
    T = int(texture_size)
    counts = torch.zeros(T, T, dtype=torch.long, device=device)
    frac = np.zeros(len(V))
    single = np.full(len(V), np.nan)
    for start in tqdm(range(0, len(V), batch_size), desc="UV maps", disable=not progress, leave=False):
        m = rasterize_uv(V[start : start + batch_size].to(device), faces, uvs, size=size, canvas_size=canvas_size)
        counts += texel_coverage(m, T)
        frac[start : start + len(m)] = m.visible_fraction().cpu().numpy()
        for k in range(len(m)):
            if m.vis[k].any():
                single[start + k] = float((texel_coverage(m[k], T) > 0)[mask].float().mean())
    return UVStats(frac, counts, single)


def checkerboard_texture(size: int = 256, squares: int = 16) -> torch.Tensor:
    """A ``[1, 3, size, size]`` checkerboard whose colour also encodes position (u -> red, v -> green).

    Dark squares are ``0.15 * (u, v, 1)``-tinted and light squares ``(0.4 + 0.6 u, 0.4 + 0.6 v, 0.9)``,
    so both the grid lines and the orientation are visible on a face.
    """
    t = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    v, u = torch.meshgrid(t, t, indexing="ij")
    cell = ((u * squares).floor() + (v * squares).floor()) % 2
    light = torch.stack([0.4 + 0.6 * u, 0.4 + 0.6 * v, torch.full_like(u, 0.9)])
    dark = 0.15 * torch.stack([u, v, torch.ones_like(u)])
    return torch.where(cell.bool(), light, dark).unsqueeze(0)


#: region name -> RGB colour of :func:`semantic_texture`.
SEMANTIC_COLOURS: dict[str, tuple[float, float, float]] = {
    "skin (image-left half)": (0.93, 0.80, 0.62),
    "skin (image-right half)": (0.80, 0.88, 0.95),
    "eyebrows": (0.35, 0.20, 0.10),
    "eyes": (0.10, 0.45, 0.95),
    "nose": (0.95, 0.55, 0.10),
    "lips": (0.85, 0.10, 0.20),
}

# Nose: convex hull (in UV space) of these vertices (bridge 168/6/197/195, tip 4/1, bottom 2,
# nostril wings 98/327/64/294/129/358/48/278/102/331/49/279).
_NOSE_POINTS = [168, 6, 197, 195, 5, 4, 1, 2, 98, 327, 64, 294, 129, 358, 48, 278, 102, 331, 49, 279]


def face_texel_mask(size: int = 256) -> torch.Tensor:
    """``bool [size, size]``: texels inside the face silhouette of the canonical UV layout.

    Texels outside it can never be sampled (no triangle maps there); coverage statistics are
    reported relative to this mask. Same texel convention as ``align_corners=True``.
    """
    return semantic_texture(size)[0].sum(0) > 0


def semantic_texture(size: int = 256) -> torch.Tensor:
    """A ``[1, 3, size, size]`` texture with facial regions painted in UV space.

    Regions come from the mesh annotations of ``facemeshcoords.ts`` (silhouette, eyes,
    eyebrows, lips) plus a nose outline; the face's two halves (``u < 0.5`` and ``u > 0.5``)
    get different skin tones so left-right consistency is visible. Outside the silhouette is black.
    """
    import cv2

    from . import mesh as _mesh

    uv, _ = _mesh.load_tables()
    ann = _mesh.mesh_annotations()
    img = np.zeros((size, size, 3), np.float32)
    sc = size - 1  # align_corners=True: u=0 -> column 0, u=1 -> column size-1
    shift = 4
    pts = lambda idx: np.round(uv[idx] * sc * (1 << shift)).astype(np.int32)  # noqa: E731

    sil = np.zeros((size, size), np.uint8)
    cv2.fillPoly(sil, [pts(ann["silhouette"])], 1, lineType=cv2.LINE_8, shift=shift)
    col = np.arange(size)[None, :].repeat(size, 0)
    img[(sil > 0) & (col <= sc / 2)] = SEMANTIC_COLOURS["skin (image-left half)"]
    img[(sil > 0) & (col > sc / 2)] = SEMANTIC_COLOURS["skin (image-right half)"]

    def fill(poly_idx: list[int], colour: tuple[float, float, float]) -> None:
        cv2.fillPoly(img, [pts(poly_idx)], colour, lineType=cv2.LINE_8, shift=shift)

    hull = cv2.convexHull(pts(_NOSE_POINTS)).reshape(-1, 2)
    cv2.fillPoly(img, [hull], SEMANTIC_COLOURS["nose"], lineType=cv2.LINE_8, shift=shift)
    fill(ann["lipsUpperOuter"] + ann["lipsLowerOuter"][::-1], SEMANTIC_COLOURS["lips"])
    for side in ("left", "right"):
        fill(ann[f"{side}EyeUpper0"] + ann[f"{side}EyeLower0"][::-1], SEMANTIC_COLOURS["eyes"])
        fill(ann[f"{side}EyebrowUpper"] + ann[f"{side}EyebrowLower"][::-1], SEMANTIC_COLOURS["eyebrows"])
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).contiguous()
