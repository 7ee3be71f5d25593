"""Protections of a study: every method for every user, trained once and cached, under one budget.

:func:`run_method` runs any registered :class:`~protego_nb.protect.methods.Method` (texture, texture_fn or
per_image) on a user's images. A trained texture or a per-image perturbation is cached under
``paths.cache_dir("protections")``, keyed by the method, its settings and context, the full training config,
the surrogate names and the exact canvases (and UV maps), so the same request later loads it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import paths
from ..data import Split
from ..io import atomic_write_bytes
from ..protect import ssim_floor
from ..protect import train as tr
from ..protect.methods import METHODS, Method, get
from ..protect.texture import PPTFileError, apply_texture, load_ppt, save_ppt, texture_choice, texture_count
from .faces import FaceSet


@dataclass
class Protection:
    """What one method did for one user."""

    user: str
    method: str
    texture: torch.Tensor | None
    protected: torch.Tensor  # [N, 3, 224, 224] protected canvases of ``ids``
    ids: list[str]
    train: tr.TrainResult | None
    seconds: float
    ppt_path: Path | None = None

    @property
    def train_seconds(self) -> float:
        """Training wall time (from the cache's record on a cache hit), else the time this call took."""
        return float(self.train.seconds) if self.train is not None else float(self.seconds)


def protect_faces(
    faces: FaceSet, texture: torch.Tensor, mode: str, eps: float, batch: int = 64
) -> torch.Tensor:
    """Protected canvases of a FaceSet with a trained texture (exactly the training warp). A PPT of several
    textures protects each image with the one :func:`texture_choice` picks from the image's id."""
    out = []
    warp = faces.warp(mode)
    choice = texture_choice(faces.ids, texture_count(texture)) if texture_count(texture) > 1 else None
    for s in range(0, len(faces), batch):
        sel = list(range(s, min(s + batch, len(faces))))
        pick = choice[sel] if choice is not None else None
        out.append(apply_texture(faces.x[sel], warp.select(sel), texture.cpu(), eps, pick).detach())
    return torch.cat(out) if out else faces.x.clone()



def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _faces_fingerprint(faces: FaceSet, mode: str) -> list:
    parts = [faces.ids, faces.x, faces.lm]
    if mode == "uv" and faces.uv is not None:
        parts += [faces.uv.uv, faces.uv.vis]
    return parts


def run_method(
    method: str | Method,
    user: str,
    train_faces: FaceSet,
    all_faces: FaceSet,
    surrogates: Mapping[str, torch.nn.Module],
    cfg: tr.TrainConfig,
    device: str = "cpu",
    out_dir: Path | None = None,
    intruder: str | None = None,
    progress: bool = False,
    cache: bool = True,
) -> Protection:
    """Train (texture methods) on ``train_faces`` and protect every image of ``all_faces``.

    With ``cache`` (default), a trained texture is stored under ``paths.cache_dir("protections")`` keyed
    by the method, the full config, the surrogate names and the exact training canvases, landmarks and
    UV maps; the same request later (another notebook, a re-run) loads it instead of training again.
    Per-image methods cache their perturbations (float16; first runs use the same rounding) the same way.
    """
    m = get(method) if isinstance(method, str) else method
    t0 = time.perf_counter()
    names = sorted(surrogates)
    if m.kind == "texture":
        mcfg = cfg.replace(mode=m.mode, **dict(m.config))
        key = _fingerprint(
            "texture", m.name, dict(m.config), mcfg.key_dict(), names, *_faces_fingerprint(train_faces, m.mode)
        )
        result = _load_cached_ppt(key, mcfg, names) if cache else None
        if result is None:
            gen = torch.Generator().manual_seed(mcfg.seed)
            result = tr.train_ppt(
                train_faces.x,
                train_faces.lm,
                train_faces.warp(m.mode),
                surrogates,
                mcfg,
                device=device,
                generator=gen,
                progress=progress,
                intruder=intruder,
            )
            if cache:
                _save_cached_ppt(key, result)
        protected = protect_faces(all_faces, result.texture.detach().cpu(), m.mode, mcfg.eps)
        ppt = None
        if out_dir is not None:
            ppt = save_ppt(
                Path(out_dir) / f"{user}.{m.name}.ppt",
                result.texture.detach().cpu(),
                result.meta(user=user, method=m.name),
            )
        return Protection(
            user,
            m.name,
            result.texture.detach().cpu(),
            protected,
            list(all_faces.ids),
            result,
            time.perf_counter() - t0,
            ppt,
        )
    if m.kind == "texture_fn":
        mcfg = cfg.replace(mode=m.mode, **dict(m.config))
        key = _fingerprint(
            "texture_fn",
            m.name,
            m.title,
            dict(m.config),
            mcfg.key_dict(),
            names,
            *_faces_fingerprint(train_faces, m.mode),
        )
        target = _cache_path(key, "ppt")
        train_seconds = None
        if cache and target.exists():
            texture, meta = load_ppt(target)
            train_seconds = float(meta.get("train_seconds", "nan"))
        else:
            t_train = time.perf_counter()
            gen = torch.Generator().manual_seed(mcfg.seed)
            texture = m.fn(train_faces, surrogates, mcfg, device=device, generator=gen).detach().cpu()
            train_seconds = time.perf_counter() - t_train
            if cache:
                meta = {"epsilon": mcfg.eps, "method": m.name, "surrogates": names,
                        "train_seconds": f"{train_seconds:.3f}"}
                save_ppt(target, texture, meta)
        protected = protect_faces(all_faces, texture, m.mode, mcfg.eps)
        seconds = train_seconds if train_seconds is not None else time.perf_counter() - t0
        return Protection(user, m.name, texture, protected, list(all_faces.ids), None, seconds)
    if m.kind == "per_image":
        # m.config records the per-image method's own settings (steps, mode, ...): part of the cache key only
        key = _fingerprint(
            "per_image/delta16",
            m.name,
            m.title,
            dict(m.config),
            cfg.key_dict(),
            names,
            all_faces.ids,
            all_faces.x,
            all_faces.lm,
            list(m.context),
        )
        target = _cache_path(key, "safetensors")
        if cache and target.exists():
            from safetensors import safe_open

            with safe_open(str(target), framework="pt") as fh:
                delta = fh.get_tensor("delta")
                recorded = (fh.metadata() or {}).get("seconds")
            # the time the cloaks took when they were computed (a cache hit itself takes milliseconds)
            seconds = float(recorded) if recorded is not None else float("nan")
            protected = _from_delta(all_faces.x, delta, cfg.eps)
            return Protection(user, m.name, None, protected, list(all_faces.ids), None, seconds)
        gen = torch.Generator().manual_seed(cfg.seed)
        protected = m.fn(
            all_faces, surrogates, eps=cfg.eps, min_ssim=cfg.min_ssim, device=device, generator=gen
        )
        # the perturbation is kept in float16 (error <= eps * 2^-11, about 3e-5) whether cached or not, so a
        # first run and a cache hit score exactly the same images; the bound and [0, 1] hold exactly
        delta = (protected.detach().cpu().float() - all_faces.x).half()
        seconds = time.perf_counter() - t0
        if cache:
            _save_tensor(target, {"delta": delta}, {"seconds": f"{seconds:.3f}", "method": m.name})
        protected = _from_delta(all_faces.x, delta, cfg.eps)
        return Protection(user, m.name, None, protected, list(all_faces.ids), None, seconds)
    raise ValueError(f"unknown method kind {m.kind!r}")


def _cache_path(key: str, ext: str) -> Path:
    return paths.cache_dir("protections", key[:2]) / f"{key}.{ext}"


def _save_tensor(target: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    from safetensors.torch import save

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={k: str(v) for k, v in (meta or {}).items()})
    atomic_write_bytes(target, data)


def _from_delta(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Protected canvases ``clamp(x + clamp(delta, -eps, eps), 0, 1)`` in float32 from a stored perturbation."""
    return torch.clamp(x + torch.clamp(delta.float(), -eps, eps), 0.0, 1.0)


def _save_cached_ppt(key: str, result: tr.TrainResult) -> None:
    meta = result.meta(history=json.dumps(result.history), clean_seconds=f"{result.clean_seconds:.3f}")
    save_ppt(_cache_path(key, "ppt"), result.texture.detach().cpu(), meta)


def _load_cached_ppt(key: str, cfg: tr.TrainConfig, names: list[str]) -> tr.TrainResult | None:
    target = _cache_path(key, "ppt")
    if not target.exists():
        return None
    try:
        texture, meta = load_ppt(target)
        history = json.loads(meta["history"])
        return tr.TrainResult(
            texture=texture,
            history=history,
            seconds=float(meta["train_seconds"]),
            steps=int(meta["steps"]),
            config=cfg,
            surrogates=names,
        )
    except (PPTFileError, KeyError, ValueError):
        return None  # unreadable or old cache entry: train again



def check_methods(
    methods: Sequence[str], optional: Sequence[str] = (), pending: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """``(available, skipped)``: a method that is not registered is an error unless ``optional`` lists it;
    ``pending`` names methods the caller registers later (e.g. Fawkes once its target pool is loaded)."""
    known = set(METHODS) | set(pending)
    unknown = [m for m in methods if m not in known]
    required = [m for m in unknown if m not in set(optional)]
    if required:
        raise KeyError(
            f"methods {required} are not registered (registered: {sorted(METHODS)}); list them under "
            "OPTIONAL_METHODS in the profile to run without them"
        )
    return [m for m in methods if m in known], unknown



def protect_users(
    methods: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    surrogates: Mapping[str, torch.nn.Module],
    cfg: tr.TrainConfig,
    device: str = "cpu",
    out_dir: Path | None = None,
    intruder: str | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Protection]]:
    """Train/apply every method for every user: ``{method: {user: Protection}}``."""
    from tqdm.auto import tqdm

    out: dict[str, dict[str, Protection]] = {}
    jobs = [(m, u) for m in methods for u in faces]
    for m, u in tqdm(jobs, desc="protect", disable=not progress):
        fs = faces[u]
        train_faces = fs.take(split.users[u].train)
        out.setdefault(m, {})[u] = run_method(
            m, u, train_faces, fs, surrogates, cfg, device=device, out_dir=out_dir, intruder=intruder
        )
    return out


def with_ssim_floor(
    protections: Mapping[str, Mapping[str, Protection]], faces: Mapping[str, FaceSet], min_ssim: float
) -> tuple[dict[str, dict[str, Protection]], dict[str, dict[str, torch.Tensor]]]:
    """Every method's protected canvases under the same per-canvas SSIM floor: each canvas's perturbation is
    scaled down by the largest factor that meets ``min_ssim`` (:func:`protego_nb.protect.ssim_floor.enforce_ssim_floor`;
    canvases already meeting it are unchanged). Returns ``({method: {user: Protection}}, {method: {user: factors}})``;
    scoring the first instead of ``protections`` reports each method's strength under the guarantee."""
    out: dict[str, dict[str, Protection]] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for method, prots in protections.items():
        for u, p in prots.items():
            x, a = ssim_floor.enforce_ssim_floor(faces[u].take(p.ids).x, p.protected, min_ssim)
            out.setdefault(method, {})[u] = replace(p, protected=x)
            factors.setdefault(method, {})[u] = a
    return out, factors
