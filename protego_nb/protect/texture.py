"""The Privacy Protection Texture (PPT): init, warps onto canvases, apply, and the ``.ppt`` safetensors file.

A PPT is one float32 tensor ``[1, 3, T, T]`` with values in ``[-eps, eps]`` (``T = 224`` as the authors'
``mask_size``); a PPT of several textures (``[K, 3, T, T]``, the ``n_textures`` training option, beyond the
paper) protects each photo with one of them, chosen by :func:`texture_choice` from the photo's id or bytes. It is put on a batch of face canvases by a *warp*, any object with

* ``len(warp)`` - the number of canvases it serves,
* ``warp.perturbation(texture, eps) -> [B, 3, H, W]`` - the additive perturbation,
* ``warp.select(index) -> warp`` - the warp of a subset of the canvases, and
* ``warp.to(device) -> warp``.

Two warps ship here; neither needs the mesh or the rasteriser:

* :class:`UVWarp` - the authors' 3D mode: ``clamp(grid_sample(T, uv, bilinear, align_corners=True), -eps, eps)
  * vis`` in exactly their order (``protego_train.py``), computed by the one texture warp
  :func:`protego_nb.faces.uv.sample_texture`. Built from any object with ``.uv`` ``[B, H, W, 2]``
  and ``.vis`` ``[B, 1, H, W]`` (e.g. :class:`protego_nb.faces.uv.UVMap`) by :meth:`UVWarp.from_uvmap`.
* :class:`FlatWarp` - the 2D ablation / Chameleon-style mode: the texture added directly in canvas space
  (bilinearly resized if its size differs from the canvas), clamped to ``+-eps``, optionally times a mask.

The file format: safetensors (never pickle) with one tensor ``"ppt"`` and string metadata (``format``,
``epsilon``, ``texture_size``, ``mode``, ``surrogates``, ``preset``, ``seed``, ``package_version``,
``created``, plus any extra keys the caller passes). :func:`load_ppt` validates it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ..faces.uv import sample_texture

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_TEXTURE_SIZE",
    "PPT_FORMAT",
    "FlatWarp",
    "PPTFileError",
    "UVWarp",
    "Warp",
    "apply_texture",
    "init_texture",
    "load_ppt",
    "perturbation",
    "save_ppt",
]

DEFAULT_EPS = 16 / 255
DEFAULT_TEXTURE_SIZE = 224
PPT_FORMAT = "protego_nb.ppt/1"
#: Values may exceed the bound by float round-off only.
_BOUND_TOL = 1e-6
#: Metadata keys decoded from their string form on load (others stay strings).
_TYPED_KEYS = {"epsilon": float, "texture_size": int, "n_textures": int, "seed": int, "steps": int, "surrogates": list}


@runtime_checkable
class Warp(Protocol):
    """What :func:`apply_texture` and training need from a warp (see the module docstring)."""

    def __len__(self) -> int: ...

    def perturbation(self, texture: torch.Tensor, eps: float) -> torch.Tensor: ...

    def select(self, index: torch.Tensor | slice | list[int]) -> Warp: ...

    def to(self, device: str | torch.device) -> Warp: ...


def _check_texture(texture: torch.Tensor) -> None:
    if not isinstance(texture, torch.Tensor) or texture.dim() != 4 or texture.shape[1] != 3 or texture.shape[0] < 1:
        shape = tuple(texture.shape) if isinstance(texture, torch.Tensor) else type(texture).__name__
        raise ValueError(f"a PPT must be a tensor [K, 3, T, T] (K = 1 texture, or K per-photo textures); got {shape}")


def texture_count(texture: torch.Tensor) -> int:
    """How many textures a PPT holds (``K`` of ``[K, 3, T, T]``; 1 for the paper's single texture)."""
    return int(texture.shape[0])


def texture_choice(keys: Sequence[str | bytes], count: int) -> torch.Tensor:
    """Which of ``count`` textures protects each photo: ``sha256(key) mod count`` (``[B]`` long).

    A stable choice (the same photo gets the same texture on every run and machine) that spreads a user's photos
    evenly over the textures; ``keys`` are the photos' ids (study) or their file contents (CLI)."""
    if count < 1:
        raise ValueError(f"the texture count must be >= 1, got {count}")
    out = []
    for key in keys:
        raw = key if isinstance(key, bytes) else str(key).encode()
        out.append(int.from_bytes(hashlib.sha256(raw).digest()[:8], "little") % count)
    return torch.tensor(out, dtype=torch.long)


def select_textures(texture: torch.Tensor, choice: torch.Tensor | Sequence[int] | None) -> torch.Tensor:
    """The texture of each canvas: ``texture`` itself for one texture (``K = 1``, ``choice`` ignored), else
    ``texture[choice]`` ``[B, 3, T, T]``; a PPT of several textures needs a ``choice``."""
    _check_texture(texture)
    if texture_count(texture) == 1:
        return texture
    if choice is None:
        raise ValueError(
            f"this PPT holds {texture_count(texture)} textures: say which protects each canvas (texture_choice)"
        )
    choice = torch.as_tensor(choice, dtype=torch.long, device=texture.device)
    if choice.numel() and (int(choice.min()) < 0 or int(choice.max()) >= texture_count(texture)):
        raise ValueError(f"texture choice out of range 0..{texture_count(texture) - 1}: {choice.tolist()}")
    return texture.index_select(0, choice)


class UVWarp:
    """The authors' 3D warp: ``clamp(grid_sample(T, uv, bilinear, align_corners=True), -eps, eps) * vis``.

    ``uv`` ``[B, H, W, 2]`` grid_sample coordinates in ``[-1, 1]`` (anything outside samples zero),
    ``vis`` ``[B, 1, H, W]`` 0/1 visibility (the authors' ``bin_mask``).
    """

    def __init__(self, uv: torch.Tensor, vis: torch.Tensor) -> None:
        if uv.dim() != 4 or uv.shape[-1] != 2:
            raise ValueError(f"uv must be [B, H, W, 2], got {tuple(uv.shape)}")
        if vis.shape != (uv.shape[0], 1, uv.shape[1], uv.shape[2]):
            raise ValueError(f"vis must be [B, 1, H, W] = {(uv.shape[0], 1, *uv.shape[1:3])}, got {tuple(vis.shape)}")
        self.uv = uv
        self.vis = vis

    @classmethod
    def from_uvmap(cls, uvmap: Any) -> UVWarp:
        """From any object with ``.uv`` and ``.vis`` (e.g. ``protego_nb.faces.uv.UVMap``)."""
        return cls(uvmap.uv, uvmap.vis)

    def __len__(self) -> int:
        return int(self.uv.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        return int(self.uv.shape[1]), int(self.uv.shape[2])

    def perturbation(self, texture: torch.Tensor, eps: float) -> torch.Tensor:
        _check_texture(texture)
        return sample_texture(texture, self.uv, self.vis, bound=eps, align_corners=True, mode="bilinear")

    def select(self, index) -> UVWarp:
        if isinstance(index, int):
            index = [index]
        return UVWarp(self.uv[index], self.vis[index])

    def to(self, device: str | torch.device) -> UVWarp:
        return UVWarp(self.uv.to(device), self.vis.to(device))


class FlatWarp:
    """The 2D warp: the texture is the perturbation in canvas space (resized to ``H x W`` if needed).

    ``batch`` canvases of ``height x width``; optional ``mask`` ``[B, 1, H, W]`` (e.g. a face region)
    multiplies the clamped perturbation, as the authors' ``bin_mask`` in their 2D re-implementations.
    """

    def __init__(self, batch: int, height: int, width: int, mask: torch.Tensor | None = None) -> None:
        if batch < 1 or height < 1 or width < 1:
            raise ValueError(f"FlatWarp needs a positive batch and size, got {batch}, {height}x{width}")
        if mask is not None and mask.shape != (batch, 1, height, width):
            raise ValueError(f"mask must be [B, 1, H, W] = {(batch, 1, height, width)}, got {tuple(mask.shape)}")
        self.batch, self.height, self.width, self.mask = int(batch), int(height), int(width), mask

    @classmethod
    def for_canvases(cls, canvases: torch.Tensor, mask: torch.Tensor | None = None) -> FlatWarp:
        """A flat warp matching a canvas batch ``[B, 3, H, W]``."""
        b, _, h, w = canvases.shape
        return cls(b, h, w, mask)

    def __len__(self) -> int:
        return self.batch

    @property
    def size(self) -> tuple[int, int]:
        return self.height, self.width

    def perturbation(self, texture: torch.Tensor, eps: float) -> torch.Tensor:
        _check_texture(texture)
        if texture.shape[-2:] != (self.height, self.width):
            texture = F.interpolate(texture, size=(self.height, self.width), mode="bilinear", align_corners=False)
        delta = torch.clamp(texture, -eps, eps)
        if delta.shape[0] == 1:
            delta = delta.expand(self.batch, -1, -1, -1)
        elif delta.shape[0] != self.batch:
            raise ValueError(f"texture batch {delta.shape[0]} must be 1 or match the canvases' batch {self.batch}")
        if self.mask is not None:
            delta = delta * self.mask.to(device=texture.device, dtype=texture.dtype)
        return delta

    def select(self, index) -> FlatWarp:
        if isinstance(index, int):
            index = [index]
        n = len(range(self.batch)[index]) if isinstance(index, slice) else len(index)
        mask = None if self.mask is None else self.mask[index]
        return FlatWarp(n, self.height, self.width, mask)

    def to(self, device: str | torch.device) -> FlatWarp:
        return FlatWarp(self.batch, self.height, self.width, None if self.mask is None else self.mask.to(device))


def init_texture(
    eps: float = DEFAULT_EPS,
    generator: torch.Generator | None = None,
    size: int = DEFAULT_TEXTURE_SIZE,
    device: str | torch.device = "cpu",
    count: int = 1,
) -> torch.Tensor:
    """A fresh PPT ``U(-eps, eps)`` ``[count, 3, size, size]`` float32, as the authors (``(rand - 0.5) * eps / 0.5``).

    Drawn on the CPU with ``generator`` (the authors seed it with 114), then moved to ``device``, so a
    seed gives the same texture on every device; ``count`` > 1: several textures (one drawn per photo).
    """
    if not eps > 0:
        raise ValueError(f"epsilon must be > 0, got {eps}")
    if count < 1:
        raise ValueError(f"the texture count must be >= 1, got {count}")
    u = torch.rand((count, 3, size, size), generator=generator, dtype=torch.float32)
    return ((u - 0.5) * (eps / 0.5)).to(device)


def perturbation(warp: Warp, texture: torch.Tensor, eps: float) -> torch.Tensor:
    """The additive perturbation ``[B, 3, H, W]`` the PPT puts on ``warp``'s canvases (bounded by ``eps``)."""
    return warp.perturbation(texture, eps)


def apply_texture(
    canvas: torch.Tensor,
    warp: Warp,
    texture: torch.Tensor,
    eps: float,
    choice: torch.Tensor | Sequence[int] | None = None,
) -> torch.Tensor:
    """Protected canvases ``clamp(canvas + perturbation, 0, 1)``; ``canvas`` ``[B, 3, H, W]`` in ``[0, 1]``.

    ``choice`` (``[B]``): which texture protects each canvas, for a PPT of several textures
    (:func:`select_textures`)."""
    if canvas.dim() != 4 or canvas.shape[1] != 3:
        raise ValueError(f"canvases must be [B, 3, H, W], got {tuple(canvas.shape)}")
    if len(warp) != canvas.shape[0]:
        raise ValueError(f"the warp serves {len(warp)} canvases but {canvas.shape[0]} were given")
    if texture_count(texture) > 1 and choice is not None and len(choice) != canvas.shape[0]:
        raise ValueError(f"the texture choice names {len(choice)} canvases but {canvas.shape[0]} were given")
    texture = select_textures(texture.to(device=canvas.device, dtype=canvas.dtype), choice)
    delta = warp.perturbation(texture, eps)
    if delta.shape != canvas.shape:
        raise ValueError(f"perturbation shape {tuple(delta.shape)} does not match the canvases {tuple(canvas.shape)}")
    return torch.clamp(canvas + delta, 0.0, 1.0)


def _meta_to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    return json.dumps(value)


def save_ppt(path: str | os.PathLike, texture: torch.Tensor, meta: Mapping[str, Any] | None = None) -> Path:
    """Write a PPT to ``path`` as safetensors (atomically: temporary file, then rename).

    ``meta`` must give ``epsilon``; ``surrogates`` (list of names), ``preset``, ``seed``, ``mode``
    (``"uv"``/``"flat"``) and any further keys are stored too; values are stored as strings (non-strings
    as JSON). ``format``, ``texture_size``, ``package_version`` and ``created`` are filled in.
    """
    from safetensors.torch import save

    from protego_nb import __version__

    target = Path(path)
    _check_texture(texture)
    meta = dict(meta or {})
    if "epsilon" not in meta:
        raise ValueError(f"{target}: the metadata must give 'epsilon' (the L-inf bound of the texture)")
    eps = float(meta["epsilon"])
    tex = texture.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(tex).all():
        raise ValueError(f"{target}: refusing to save a texture with NaN/inf values")
    peak = float(tex.abs().max())
    if peak > eps + _BOUND_TOL:
        raise ValueError(f"{target}: texture exceeds its bound: max |value| {peak:.6g} > epsilon {eps:.6g}")
    if tex.shape[-1] != tex.shape[-2]:
        raise ValueError(f"{target}: a PPT must be square, got {tuple(tex.shape)}")
    mode = str(meta.get("mode", "uv"))
    if mode not in ("uv", "flat"):
        raise ValueError(f"{target}: mode must be 'uv' or 'flat', got {mode!r}")
    full = {
        "format": PPT_FORMAT,
        "mode": mode,
        "texture_size": int(tex.shape[-1]),
        "n_textures": int(tex.shape[0]),
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    full.update({k: v for k, v in meta.items() if k not in ("format", "texture_size", "n_textures")})
    full["epsilon"] = eps
    strmeta = {str(k): _meta_to_str(v) for k, v in full.items()}
    data = save({"ppt": tex}, metadata=strmeta)
    from ..io import atomic_write_bytes

    return atomic_write_bytes(target, data)


class PPTFileError(ValueError):
    """A ``.ppt`` file is missing, not safetensors, or holds an invalid texture."""


def load_ppt(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.Tensor, dict[str, Any]]:
    """Read and validate a PPT file; returns ``(texture [K, 3, T, T] float32, meta)`` (``K = 1``: the paper's
    single texture; ``K > 1``: several textures, one chosen per photo by :func:`texture_choice`).

    Checks: the file exists and is safetensors (no pickle is ever read), it holds exactly a ``"ppt"``
    tensor of shape ``[K, 3, T, T]`` and dtype float32, all finite, within ``epsilon`` from the metadata,
    and ``T`` matches ``texture_size``. ``meta`` has ``epsilon`` (float), ``texture_size``/``seed``/``steps``
    (int), ``surrogates`` (list) decoded; other values are strings. Raises :class:`PPTFileError` naming
    the file and the reason.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise PPTFileError(f"{p}: no such PPT file")
    try:
        raw = p.read_bytes()
        tensors = load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError, OSError) as exc:
        raise PPTFileError(f"{p}: not a readable safetensors PPT file ({exc})") from exc
    strmeta = header.get("__metadata__") or {}
    if set(tensors) != {"ppt"}:
        raise PPTFileError(f"{p}: expected exactly one tensor named 'ppt', found {sorted(tensors)}")
    tex = tensors["ppt"]
    if tex.dtype != torch.float32:
        raise PPTFileError(f"{p}: the texture must be float32, found {tex.dtype}")
    if tex.dim() != 4 or tex.shape[0] < 1 or tex.shape[1] != 3 or tex.shape[2] != tex.shape[3]:
        raise PPTFileError(f"{p}: the texture must have shape [K, 3, T, T], found {tuple(tex.shape)}")
    if not torch.isfinite(tex).all():
        raise PPTFileError(f"{p}: the texture holds NaN or inf values")
    if "epsilon" not in strmeta:
        raise PPTFileError(f"{p}: the metadata lacks 'epsilon', so the bound cannot be checked")
    meta: dict[str, Any] = dict(strmeta)
    for key, kind in _TYPED_KEYS.items():
        if key in meta:
            try:
                value = json.loads(meta[key]) if kind is list else kind(meta[key])
            except (ValueError, TypeError) as exc:
                raise PPTFileError(f"{p}: metadata {key!r} = {meta[key]!r} is not a valid {kind.__name__}") from exc
            if kind is list and not isinstance(value, list):
                raise PPTFileError(f"{p}: metadata {key!r} must be a JSON list, found {meta[key]!r}")
            meta[key] = value
    eps = meta["epsilon"]
    if not (eps > 0 and eps < 1):
        raise PPTFileError(f"{p}: epsilon must be in (0, 1), found {eps}")
    peak = float(tex.abs().max())
    if peak > eps + _BOUND_TOL:
        raise PPTFileError(f"{p}: texture exceeds its bound: max |value| {peak:.6g} > epsilon {eps:.6g}")
    if "texture_size" in meta and meta["texture_size"] != tex.shape[-1]:
        raise PPTFileError(f"{p}: metadata texture_size {meta['texture_size']} != tensor size {tex.shape[-1]}")
    if "n_textures" in meta and meta["n_textures"] != tex.shape[0]:
        raise PPTFileError(f"{p}: metadata n_textures {meta['n_textures']} != tensor count {tex.shape[0]}")
    if meta.get("mode", "uv") not in ("uv", "flat"):
        raise PPTFileError(f"{p}: mode must be 'uv' or 'flat', found {meta['mode']!r}")
    return tex.to(device), meta
