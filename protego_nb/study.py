"""The protection study, end to end: faces of a split -> PPTs per user and method -> embeddings -> tables.

Notebooks 02-05 call these functions; each step is cached where it is deterministic (canvases,
meshes and clean embeddings on disk, see :mod:`protego_nb.faces.detect`, :mod:`protego_nb.faces.mesh`,
:mod:`protego_nb.evaluate.features`); trained textures are written as PPT files under the run folder.

Methods (:data:`METHODS`), all under the same budget (``eps``, SSIM floor), data and surrogates:

``protego``      the PPT in UV space with the log-det (hypersensitivity) + cosine + SSIM loss;
``protego_2d``   the same loss with a flat 2D texture in canvas space (the "UV vs 2D" ablation);
``chameleon``    Chameleon-style per-user 2D mask: cosine + SSIM, no log-det (Chow et al., ECCV 2024, as
                 the Protego authors re-implemented it: ``reference/protego_method.md`` section 5);
``protego_nologdet`` UV texture without the log-det term (isolates the loss from the warp).

Per-image baselines (Fawkes-, LowKey-style) and OPOM plug in through :func:`register_method`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import FaceDataset, Split
from .evaluate import features as feats
from .evaluate import retrieval
from .faces import detect
from .protect import texture as tex
from .protect import train as tr


# ---------------------------------------------------------------------------------------- faces
@dataclass
class FaceSet:
    """Canvases of a list of image ids (split ids ``Name/Name_0001.jpg``), with UV maps when asked.

    ``x`` float32 ``[N, 3, 224, 224]`` in [0, 1] and ``lm`` ``[N, 5, 2]`` on the CPU; ``uv`` a
    :class:`protego_nb.faces.uv.UVMap` or None; ``missing`` maps ids that gave no canvas to the reason;
    ``no_mesh`` lists ids whose canvas has no face mesh (their UV texture is empty).
    """

    ids: list[str]
    x: torch.Tensor
    lm: torch.Tensor
    uv: object | None = None
    canvases: dict = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    no_mesh: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids: Sequence[str]) -> list[int]:
        pos = {i: k for k, i in enumerate(self.ids)}
        return [pos[i] for i in ids if i in pos]

    def take(self, ids: Sequence[str]) -> FaceSet:
        idx = self.index(ids)
        sel = torch.as_tensor(idx, dtype=torch.long)
        return FaceSet(
            ids=[self.ids[k] for k in idx],
            x=self.x[sel],
            lm=self.lm[sel],
            uv=None if self.uv is None else self.uv[idx],
            canvases={self.ids[k]: self.canvases[self.ids[k]] for k in idx},
            missing={i: r for i, r in self.missing.items() if i in set(ids)},
            no_mesh=[i for i in self.no_mesh if i in set(ids)],
        )

    def warp(self, mode: str) -> tex.Warp:
        if mode == "uv":
            if self.uv is None:
                raise ValueError("this FaceSet was loaded without UV maps (load_faces(..., uv=True))")
            return tex.UVWarp.from_uvmap(self.uv)
        if mode == "flat":
            return tex.FlatWarp.for_canvases(self.x)
        raise ValueError(f"unknown warp mode {mode!r}")


def load_faces(ds: FaceDataset, ids: Sequence[str], with_uv: bool = True, progress: bool = False) -> FaceSet:
    """Detect (cached), canvas and, with ``with_uv``, mesh (cached) + rasterise the UV maps of ``ids``."""
    ids = list(ids)
    rep = detect.build_canvases([ds.path(i) for i in ids], progress=progress)
    by_path = {c.path: c for c in rep.canvases}
    fail = {f.path: f"{f.reason}: {f.message}" for f in rep.failures}
    kept, canv, missing = [], {}, {}
    for i in ids:
        key = str(ds.path(i))
        if key in by_path:
            kept.append(i)
            canv[i] = by_path[key]
        else:
            missing[i] = fail.get(key, "no canvas")
    x, lm = detect.canvases_to_tensor([canv[i] for i in kept])
    fs = FaceSet(kept, x, lm, None, canv, missing)
    if with_uv and kept:
        from .faces import uv as uvmod

        mesh_res, uvmap = uvmod.canvas_uv([canv[i].canvas for i in kept], progress=progress)
        fs.uv = uvmap
        fs.no_mesh = [i for i, ok in zip(kept, mesh_res.ok) if not ok]
    return fs


# ---------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class Method:
    """A per-user texture method (``kind="texture"``) or a per-image method (``kind="per_image"``)."""

    name: str
    kind: str = "texture"
    mode: str = "uv"
    config: Mapping = field(default_factory=dict)  # TrainConfig overrides
    #: ``kind="per_image"``: ``fn(faces, surrogates, eps, min_ssim, device, generator) -> protected x [N,3,H,W]``;
    #: ``kind="texture_fn"``: ``fn(train_faces, surrogates, cfg, device, generator) -> texture [1,3,T,T]``,
    #: applied with ``mode`` like a PPT (e.g. OPOM's per-user mask, trained with its own loss).
    fn: Callable | None = None
    title: str = ""


METHODS: dict[str, Method] = {
    "protego": Method("protego", mode="uv", config={"use_logdet": True}, title="Protego (UV PPT, log-det)"),
    "protego_2d": Method(
        "protego_2d", mode="flat", config={"use_logdet": True}, title="Protego loss, flat 2D mask"
    ),
    "chameleon": Method(
        "chameleon", mode="flat", config={"use_logdet": False}, title="Chameleon-style 2D mask"
    ),
    "protego_nologdet": Method(
        "protego_nologdet", mode="uv", config={"use_logdet": False}, title="UV PPT without log-det"
    ),
}


def register_method(method: Method) -> None:
    METHODS[method.name] = method


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
    """Protected canvases of a FaceSet with a trained texture (exactly the training warp)."""
    out = []
    warp = faces.warp(mode)
    for s in range(0, len(faces), batch):
        sel = list(range(s, min(s + batch, len(faces))))
        out.append(tex.apply_texture(faces.x[sel], warp.select(sel), texture.cpu(), eps).detach())
    return torch.cat(out) if out else faces.x.clone()


def _fingerprint(*parts) -> str:
    import hashlib
    import json

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
    m = METHODS[method] if isinstance(method, str) else method
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
            ppt = tex.save_ppt(
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
            texture, meta = tex.load_ppt(target)
            train_seconds = float(meta.get("train_seconds", "nan"))
        else:
            t_train = time.perf_counter()
            gen = torch.Generator().manual_seed(mcfg.seed)
            texture = m.fn(train_faces, surrogates, mcfg, device=device, generator=gen).detach().cpu()
            train_seconds = time.perf_counter() - t_train
            if cache:
                meta = {"epsilon": mcfg.eps, "method": m.name, "surrogates": names,
                        "train_seconds": f"{train_seconds:.3f}"}
                tex.save_ppt(target, texture, meta)
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
            _method_context(),
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


def _method_context() -> list:
    """State outside the arguments that a per-image method reads (Fawkes' target pool), for cache keys."""
    try:
        from .protect import baselines
    except ImportError:
        return []
    pool = getattr(baselines, "_TARGET_POOL", None)
    return [] if pool is None else sorted(pool.labels)


def _cache_path(key: str, ext: str) -> Path:
    from . import paths

    return paths.cache_dir("protections", key[:2]) / f"{key}.{ext}"


def _save_tensor(target: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    from safetensors.torch import save

    from .report import atomic_write_bytes

    data = save({k: v.contiguous() for k, v in tensors.items()}, metadata={k: str(v) for k, v in (meta or {}).items()})
    atomic_write_bytes(target, data)


def _from_delta(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Protected canvases ``clamp(x + clamp(delta, -eps, eps), 0, 1)`` in float32 from a stored perturbation."""
    return torch.clamp(x + torch.clamp(delta.float(), -eps, eps), 0.0, 1.0)


def _save_cached_ppt(key: str, result: tr.TrainResult) -> None:
    import json

    meta = result.meta(history=json.dumps(result.history), clean_seconds=f"{result.clean_seconds:.3f}")
    tex.save_ppt(_cache_path(key, "ppt"), result.texture.detach().cpu(), meta)


def _load_cached_ppt(key: str, cfg: tr.TrainConfig, names: list[str]) -> tr.TrainResult | None:
    import json

    target = _cache_path(key, "ppt")
    if not target.exists():
        return None
    try:
        texture, meta = tex.load_ppt(target)
        history = json.loads(meta["history"])
        return tr.TrainResult(
            texture=texture,
            history=history,
            seconds=float(meta["train_seconds"]),
            steps=int(meta["steps"]),
            config=cfg,
            surrogates=names,
        )
    except (tex.PPTFileError, KeyError, ValueError):
        return None  # unreadable or old cache entry: train again


# ---------------------------------------------------------------------------------------- embeddings
def embed(
    model: torch.nn.Module, x: torch.Tensor, lm: torch.Tensor, device: str = "cpu", batch: int = 32
) -> np.ndarray:
    model = model.to(device)
    return feats.extract(model, x, lm, batch_size=batch, device=device, progress=False).numpy()


def clean_embeddings(model, name: str, faces: FaceSet, device: str = "cpu") -> dict[str, np.ndarray]:
    """Clean embeddings (disk-cached by canvas content) ``id -> [D]``."""
    return feats.clean_features(
        model.to(device), faces.canvases, batch_size=32, device=device, model_name=name, progress=False
    )


def features_for(
    model,
    name: str,
    users_faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    protections: Mapping[str, Protection],
    device: str = "cpu",
    method: str = "",
) -> retrieval.Features:
    """Features of one model under one method: clean (users + distractors, cached) and protected (users)."""
    clean: dict[str, np.ndarray] = {}
    for fs in list(users_faces.values()) + [distractors]:
        clean.update(clean_embeddings(model, name, fs, device))
    protected: dict[str, np.ndarray] = {}
    for user, p in protections.items():
        fs = users_faces[user]
        emb = embed(model, p.protected, fs.take(p.ids).lm, device)
        protected.update(dict(zip(p.ids, emb)))
    return retrieval.Features.from_model(model, clean, protected, method=method)


def user_images(split: Split, user: str) -> list[str]:
    u = split.users[user]
    return sorted(set(u.train) | set(u.queries) | set(u.gallery_seen) | set(u.gallery_unseen))


def per_user(df, keys: Sequence[str] = ("model", "method", "scenario"), value: str = "recall",
             scale: float = 100.0, metric: str = "native") -> dict:
    """Nested ``{key1: {key2: ... {user: value * scale}}}`` of ``evaluate`` rows (one metric): the per-user
    numbers a run JSON keeps so that tables and paired comparisons can be regenerated from it."""
    sub = df[df["native"]] if metric == "native" else df[df["metric"] == metric]
    out: dict = {}
    for _, row in sub.iterrows():
        node = out
        for k in keys:
            node = node.setdefault(str(row[k]), {})
        v = row[value]
        node[str(row["user"])] = None if v != v else float(v) * scale
    return out


def missing_faces(faces: Mapping[str, FaceSet], distractors: FaceSet) -> dict:
    """Images of the split that gave no canvas (users' and distractors'), by id with the reason; these are
    not scored (``retrieval`` drops them and counts them in ``n_missing``)."""
    users = {i: r for fs in faces.values() for i, r in fs.missing.items()}
    return {
        "users": dict(sorted(users.items())),
        "distractors": dict(sorted(distractors.missing.items())),
        "n_user_images": sum(len(fs) + len(fs.missing) for fs in faces.values()),
        "n_user_images_scored": sum(len(fs) for fs in faces.values()),
        "n_distractors": len(distractors) + len(distractors.missing),
        "n_distractors_scored": len(distractors),
        "no_mesh": sorted(i for fs in faces.values() for i in fs.no_mesh),
    }


def check_methods(methods: Sequence[str], optional: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """``(available, skipped)``: a method that is not registered is an error unless ``optional`` lists it."""
    unknown = [m for m in methods if m not in METHODS]
    required = [m for m in unknown if m not in set(optional)]
    if required:
        raise KeyError(
            f"methods {required} are not registered (registered: {sorted(METHODS)}); list them under "
            "OPTIONAL_METHODS in the profile to run without them"
        )
    return [m for m in methods if m in METHODS], unknown


def recall_table(df, metric: str = "native"):
    """Pivot ``evaluate_users`` output to mean recall (%) per (model, method) x scenario."""
    sub = df[df["native"]] if metric == "native" else df[df["metric"] == metric]
    return (sub.groupby(["model", "method", "scenario"])["recall"].mean() * 100).unstack("scenario")


# ---------------------------------------------------------------------------------------- whole runs
def load_study_faces(
    ds: FaceDataset, split: Split, users: Sequence[str] | None = None, progress: bool = False
):
    """``({user: FaceSet with UV}, distractors FaceSet)`` for a split."""
    users = list(users or split.user_names)
    faces = {u: load_faces(ds, user_images(split, u), with_uv=True, progress=progress) for u in users}
    distractors = load_faces(ds, split.distractors, with_uv=False, progress=progress)
    return faces, distractors


def load_surrogates(names: Sequence[str], intruder: str | None, device: str = "cpu") -> dict:
    from .models import zoo

    if intruder is not None and intruder in names:
        raise ValueError(
            f"the black-box intruder {intruder!r} must not be a training surrogate ({list(names)})"
        )
    return {n: zoo.load(n, device) for n in names}


# --- leave-one-out plan (issue 10): rows from the zoo's strong models, plus a paper-like row ---------

#: The paper-like held-out setting: FaceNet CASIA-WebFace held out while the same architecture trained
#: on other data (FaceNet MS-Celeb-1M) is among the surrogates, as the paper holds out IR-50 AdaFace CASIA
#: while IR-50 models on other data/losses train.
PAPER_LIKE = {"held_out": "facenet_casia", "sibling": "facenet_msceleb"}


def loo_plan(
    entries: Sequence[str], surrogates: Sequence[str] = (), pool: Sequence[str] = ()
) -> list[tuple[str, str, list[str]]]:
    """Rows ``(label, held-out model, surrogates)`` of the leave-one-out table.

    ``entries``: a model name (held out; its surrogates are every *other* model of ``pool``),
    ``"all"`` (one such row per ``pool`` model) or ``"paper_like"`` (:data:`PAPER_LIKE`: the
    profile's ``surrogates`` without the held-out model, plus its sibling). ``pool`` defaults to
    :func:`zoo.strong_models`. Labels are the held-out model's name, or ``paper_like:<name>``.
    """
    from .models import zoo

    pool = list(pool) or zoo.strong_models()
    rows: list[tuple[str, str, list[str]]] = []
    for entry in entries:
        if entry == "all":
            rows += [(m, m, [s for s in pool if s != m]) for m in pool]
        elif entry == "paper_like":
            held, sib = PAPER_LIKE["held_out"], PAPER_LIKE["sibling"]
            sur = [s for s in surrogates if s != held]
            rows.append((f"paper_like:{held}", held, sur + ([sib] if sib not in sur else [])))
        elif entry in zoo.MODELS:
            rows.append((entry, entry, [s for s in pool if s != entry]))
        else:
            raise KeyError(f"leave-one-out entry {entry!r}: expected a zoo model, 'all' or 'paper_like'")
    seen: dict[str, list[str]] = {}
    for label, held, sur in rows:
        if held in sur or not sur:
            raise ValueError(f"leave-one-out row {label!r}: surrogates {sur} must be non-empty and exclude {held!r}")
        seen.setdefault(label, sur)
    return [(label, held, sur) for label, held, sur in rows if seen.pop(label, None) is not None]


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


def evaluate(
    model_names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    protections: Mapping[str, Mapping[str, Protection]],
    scenarios: Sequence[str] = retrieval.DEFAULT_SCENARIOS,
    metric=("native", "cosine"),
    device: str = "cpu",
    protect_others: bool = True,
    include_others: bool = True,
):
    """Retrieval rows for every (model, method, user, scenario, metric); see ``retrieval.evaluate_users``.

    ``include_others``: the other users' gallery entries are in each user's gallery (False: only the
    user's own entries and the distractors); ``protect_others``: those entries follow the gallery's
    protection state.
    """
    import pandas as pd

    from .models import zoo

    users = list(faces)
    rows = []
    for name in model_names:
        model = zoo.load(name, device)
        for method, prots in protections.items():
            f = features_for(model, name, faces, distractors, prots, device=device, method=method)
            rows.append(
                retrieval.evaluate_users(
                    f,
                    split,
                    scenarios=scenarios,
                    metric=metric,
                    users=users,
                    protect_others=protect_others,
                    include_others=include_others,
                )
            )
    return pd.concat(rows, ignore_index=True)


def quality_table(
    faces: Mapping[str, FaceSet], protections: Mapping[str, Mapping[str, Protection]], eps: float
):
    """SSIM / PSNR / norms per canvas for every method and user (``evaluate.quality.canvas_quality``)."""
    import pandas as pd

    from .evaluate import quality

    rows = []
    for method, prots in protections.items():
        for u, p in prots.items():
            clean = faces[u].take(p.ids).x
            q = quality.canvas_quality(clean, p.protected, eps=eps, names=p.ids)
            q["method"], q["user"] = method, u
            rows.append(q)
    return pd.concat(rows, ignore_index=True)


# ---------------------------------------------------------------------------------------- robustness
TRANSFORMS = ("jpeg75", "jpeg90", "resize0.5", "blur")


def transform_canvases(x: torch.Tensor, kind: str) -> torch.Tensor:
    """What a platform may do to an uploaded (protected) photo before the intruder sees it.

    ``jpegQ``: real JPEG encode/decode at quality Q (OpenCV, 8-bit); ``resizeS``: down by S (area) and back
    up (bilinear); ``blur``: Gaussian blur, kernel 5, sigma 1 (kornia). Input/output ``[N,3,H,W]`` in [0,1].
    """
    import cv2
    import kornia
    import torch.nn.functional as F

    if kind.startswith("jpeg"):
        q = int(kind[4:])
        out = []
        for img in (x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy():
            ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
            out.append(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy())
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255
    if kind.startswith("resize"):
        s = float(kind[6:])
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(round(h * s), round(w * s)), mode="area")
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)
    if kind == "blur":
        return kornia.filters.gaussian_blur2d(x, (5, 5), (1.0, 1.0)).clamp(0, 1)
    raise ValueError(f"unknown transform {kind!r}; choose one of {TRANSFORMS}")


def transformed(protections: Mapping[str, Mapping[str, Protection]], kind: str) -> dict:
    """The same protections with ``transform_canvases(kind)`` applied to every protected canvas."""
    import dataclasses

    return {
        m: {
            u: dataclasses.replace(p, protected=transform_canvases(p.protected, kind))
            for u, p in prots.items()
        }
        for m, prots in protections.items()
    }


# ---------------------------------------------------------------------------------------- dense cluster
def cohesion(emb_by_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """How tightly a user's embeddings cluster: mean pairwise cosine *within* each user (off-diagonal),
    averaged over users, and mean cosine *between* different users' embeddings.

    The "dense cluster" of earlier protections is a high within-user cosine among protected images
    (they still match each other); Protego's log-det term aims to lower it.
    """
    within, normed = [], {}
    for u, e in emb_by_user.items():
        z = np.asarray(e, dtype=np.float64)
        z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
        normed[u] = z
        if len(z) > 1:
            g = z @ z.T
            within.append((g.sum() - np.trace(g)) / (len(z) * (len(z) - 1)))
    users = list(normed)
    between = [float((normed[a] @ normed[b].T).mean()) for i, a in enumerate(users) for b in users[i + 1 :]]
    return {
        "within": float(np.mean(within)) if within else float("nan"),
        "between": float(np.mean(between)) if between else float("nan"),
    }


def within_cosine(emb_by_user: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per user, the mean pairwise cosine between two different images of theirs (NaN for one image):
    the per-user numbers behind :func:`cohesion`'s ``within``, for paired comparisons across methods."""
    out = {}
    for u, e in emb_by_user.items():
        z = np.asarray(e, dtype=np.float64)
        z = z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)
        g = z @ z.T
        out[u] = float((g.sum() - np.trace(g)) / (len(z) * (len(z) - 1))) if len(z) > 1 else float("nan")
    return out


# ---------------------------------------------------------------------------------------- ablations
#: name -> (method, TrainConfig overrides, what it tests). ``surrogates`` in overrides is handled by
#: :func:`run_ablation` (a prefix length of the surrogate list), everything else goes to the config.
ABLATIONS: dict[str, tuple[str, dict, str]] = {
    "base": ("protego", {}, "Protego as configured (UV, log-det + cosine + SSIM hinge)"),
    "no_logdet": ("protego_nologdet", {}, "log-det term off (UV warp kept)"),
    "logdet_w0.1": ("protego", {"term_weights": {"logdet": 0.1, "cosine": 1.0}}, "log-det weight 0.1"),
    "logdet_w10": ("protego", {"term_weights": {"logdet": 10.0, "cosine": 1.0}}, "log-det weight 10"),
    "logdet_plain": (
        "protego",
        {"logdet_form": "logdet"},
        "plain -logdet(G+cI) instead of the authors' form",
    ),
    "per_term": ("protego", {"grad_balance": "per_term"}, "per-term gradient normalisation"),
    "flat_2d": ("protego_2d", {}, "flat 2D mask instead of the UV texture"),
    "momentum": ("protego", {"momentum": 0.9}, "MI-FGSM momentum 0.9"),
    "input_diversity": ("protego", {"input_diversity": 0.5}, "input diversity p=0.5"),
    "eps8": ("protego", {"eps": 8 / 255}, "epsilon 8/255"),
    "ssim0.90": ("protego", {"min_ssim": 0.90}, "SSIM floor 0.90"),
    "batch16": ("protego", {"batch_size": 16}, "batch size 16"),
    "batch2": ("protego", {"batch_size": 2}, "batch size 2"),
    "one_surrogate": ("protego", {"surrogates": 1}, "only the first surrogate"),
    "plus_faceres": ("protego", {"extra_surrogates": ["faceres"]}, "faceres added to the surrogates"),
    "epochs_x4": ("protego", {"epochs_x": 4}, "4x the epochs"),
    "ti_smooth3": ("protego", {"grad_smooth": 3.0}, "TI-FGSM: texture gradient smoothed, sigma 3 px"),
    "blur_view": ("protego", {"blur_view": 1.5}, "LowKey-style smoothed view, sigma 1.5 px"),
    "texture64": ("protego", {"texture_size": 64}, "64x64 texture (low-frequency PPT)"),
    "texture32": ("protego", {"texture_size": 32}, "32x32 texture (low-frequency PPT)"),
    "transfer_mix": (
        "protego",
        {"texture_size": 64, "blur_view": 1.5, "input_diversity": 0.5, "epochs_x": 2},
        "64x64 texture + smoothed view + input diversity 0.5, 2x epochs",
    ),
    "transfer_max": (
        "protego",
        {"extra_surrogates": ["faceres"], "blur_view": 1.5, "input_diversity": 0.5, "epochs_x": 4},
        "faceres added + smoothed view + input diversity 0.5, 4x epochs",
    ),
}


def ablation_setup(
    name: str, cfg: tr.TrainConfig, surrogate_names: Sequence[str]
) -> tuple[str, tr.TrainConfig, list[str]]:
    """``(method, config, surrogates)`` of the ablation ``name`` over the base ``cfg`` and surrogates.

    Besides :class:`~protego_nb.protect.train.TrainConfig` fields an ablation may set ``surrogates`` (keep the
    first k), ``extra_surrogates`` (names appended) and ``epochs_x`` (multiply the base epochs).
    """
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
    method, over, _ = ABLATIONS[name]
    over = dict(over)
    k = over.pop("surrogates", len(surrogate_names))
    extra = [m for m in over.pop("extra_surrogates", []) if m not in surrogate_names]
    if "epochs_x" in over:
        over["epochs"] = cfg.epochs * over.pop("epochs_x")
    c = cfg.replace(**over)
    c.validate()
    return method, c, list(surrogate_names)[:k] + extra


def ablation_rows(
    names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    surrogate_names: Sequence[str],
    intruder: str,
    cfg: tr.TrainConfig,
    device: str = "cpu",
):
    """Per-user numbers of every ablation: one row per (ablation, user) with black-box recall
    ``bb_1b/1a/2b/2a``, white-box (first surrogate) ``wb_1b/2a``, mean SSIM and training seconds.

    Each user's gallery is their own entries and the distractors (the other users are left out), so a
    user's numbers depend only on their own protection and the rows pair across ablations."""
    import pandas as pd

    rows = []
    for name in names:
        method, c, sur_names = ablation_setup(name, cfg, surrogate_names)
        sur = load_surrogates(sur_names, intruder, device)
        prots = protect_users(
            [method], split, faces, sur, c, device=device, intruder=intruder, progress=False
        )
        white = list(surrogate_names)[0]
        d = evaluate(
            [intruder, white],
            split,
            faces,
            distractors,
            prots,
            scenarios=["1b", "1a", "2b", "2a"],
            metric=("native",),
            device=device,
            protect_others=False,
            include_others=False,
        )
        d = d[d["native"]].set_index(["model", "scenario", "user"])["recall"] * 100
        q = quality_table(faces, prots, c.eps).groupby("user")["ssim"].mean()
        for u in faces:
            row = {"ablation": name, "user": u, "method": method}
            for s_ in ("1b", "1a", "2b", "2a"):
                row[f"bb_{s_}"] = float(d.loc[(intruder, s_, u)])
            row["wb_1b"] = float(d.loc[(white, "1b", u)])
            row["wb_2a"] = float(d.loc[(white, "2a", u)])
            row["ssim"] = float(q.loc[u])
            row["train_s"] = float(prots[method][u].train_seconds)
            rows.append(row)
    return pd.DataFrame(rows)


ABLATION_VALUES = ("bb_1b", "bb_1a", "bb_2b", "bb_2a", "wb_1b", "wb_2a", "ssim", "train_s")


def ablation_per_user(rows) -> dict:
    """:func:`ablation_rows` as the run JSON keeps it: ``{ablation: {"what", "method", column: {user: v}}}``."""
    out = {}
    for name, g in rows.groupby("ablation", sort=False):
        out[name] = {"what": ABLATIONS[name][2], "method": str(g["method"].iloc[0])}
        for c in ABLATION_VALUES:
            out[name][c] = {str(u): float(v) for u, v in zip(g["user"], g[c])}
    return out


def run_ablation(
    names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    surrogate_names: Sequence[str],
    intruder: str,
    cfg: tr.TrainConfig,
    device: str = "cpu",
):
    """One row per ablation: mean over users of :func:`ablation_rows` (recall in %, SSIM, train time)."""
    rows = ablation_rows(names, split, faces, distractors, surrogate_names, intruder, cfg, device)
    cols = ["bb_1b", "bb_1a", "bb_2b", "bb_2a", "wb_2a", "wb_1b", "ssim", "train_s"]
    t = rows.groupby("ablation", sort=False)[cols].mean().rename(columns={"train_s": "train_s_per_user"})
    t.insert(0, "method", rows.groupby("ablation", sort=False)["method"].first())
    t.insert(0, "what", [ABLATIONS[n][2] for n in t.index])
    return t


# ---------------------------------------------------------------------------------------- SSIM floor (issue 13)
def with_ssim_floor(
    protections: Mapping[str, Mapping[str, Protection]], faces: Mapping[str, FaceSet], min_ssim: float
) -> tuple[dict[str, dict[str, Protection]], dict[str, dict[str, torch.Tensor]]]:
    """Every method's protected canvases under the same per-canvas SSIM floor: each canvas's perturbation is
    scaled down by the largest factor that meets ``min_ssim`` (:func:`protego_nb.protect.ssim_floor.enforce_ssim_floor`;
    canvases already meeting it are unchanged). Returns ``({method: {user: Protection}}, {method: {user: factors}})``;
    scoring the first instead of ``protections`` reports each method's strength under the guarantee."""
    import dataclasses

    from .protect import ssim_floor

    out: dict[str, dict[str, Protection]] = {}
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for method, prots in protections.items():
        for u, p in prots.items():
            x, a = ssim_floor.enforce_ssim_floor(faces[u].take(p.ids).x, p.protected, min_ssim)
            out.setdefault(method, {})[u] = dataclasses.replace(p, protected=x)
            factors.setdefault(method, {})[u] = a
    return out, factors
