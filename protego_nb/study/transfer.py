"""Black-box transfer diagnostics: the 2x2 of carrier x loss, the shift decomposition, the SSIM floor.

The 2x2 (diagnostic 1a) separates "a universal texture cannot transfer" from "this loss does not transfer".
Every cell has the same surrogates, L-inf bound ``cfg.eps`` and SSIM floor ``cfg.min_ssim``:

================== ============================================ ==============================================
cell               carrier                                      loss
================== ============================================ ==============================================
``ppt_protego``    one UV texture per user (the study's         Protego: log-det + cosine + SSIM hinge
                   ``protego``; ``cfg`` epochs, batch, step)
``ppt_lowkey``     one UV texture per user, trained exactly as  LowKey-style: maximise the ensemble mean of
                   ``ppt_protego`` (same init, batches, signed   ``||f(x') - f(x)||^2 / ||f(x)||^2`` on the canvas
                   steps, SSIM hinge schedule)                  and a Gaussian-smoothed copy (kernel 7, sigma 3)
``image_protego``  a perturbation per photo (every photo of     Protego, over batches of ``cfg.batch_size`` photos
                   the user, queries and gallery alike)         in order (the log-det spreads a batch); per-photo
                                                                SSIM hinge (LowKey's per-image dynamic weight)
``image_lowkey``   a perturbation per photo                     LowKey-style (:func:`~protego_nb.protect.methods.lowkey.lowkey_protect`)
================== ============================================ ==============================================

The per-photo cells take ``steps`` signed steps of ``lr`` (LowKey's 0.0025 by default) from Gaussian noise of
std 0.005, inside the L-inf box. ``image_lowkey`` keeps each photo's best iterate meeting the floor (LowKey's
rule); ``image_protego`` keeps each photo's last iterate meeting the floor (the joint log-det has no per-photo
"best"). Textures train on the user's training photos and protect all of them, as in the study.
Budget caveat (measured): with few large steps (2 steps of 0.0315) every iterate after the noise start falls
below the floor, so both per-photo cells return their (identical, same-seed) init noise and score alike; the
per-photo cells need many small steps (LowKey's 0.0025, >= 20 steps) to say anything.

Scoring (:func:`score_cells`) follows :func:`protego_nb.study.ablations.ablation_rows`: each user's gallery is their own
entries plus the distractors (other users left out), so per-user values pair across cells; scenarios 1b/1a/2b/2a
with each model's native similarity. Every cell is scored twice: as produced (``raw``) and with the SSIM floor
enforced on every protected canvas (``floor``: :func:`protego_nb.protect.ssim_floor.enforce_ssim_floor`).
:func:`protego_nb.evaluate.transfer.shift_decomposition` gives the common vs per-image shift per user and model.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..evaluate import transfer
from ..protect import losses
from ..protect import train as tr
from ..protect.methods import METHODS, Method, lowkey
from ..protect.methods.common import check_budget, check_faces, linf_box
from ..protect.ssim import per_image_ssim
from ..protect.texture import init_texture
from .faces import FaceSet
from .protections import Protection, run_method, with_ssim_floor
from .roles import load_surrogates
from .scoring import features_for

__all__ = [
    "CELLS",
    "CONTRASTS",
    "cell_methods",
    "diagnose",
    "diagnostic_keys",
    "lowkey_texture",
    "paired_summary",
    "protego_per_image",
    "refine_ppt",
    "run_cells",
    "score_cells",
]

CELLS = ("ppt_protego", "ppt_lowkey", "image_protego", "image_lowkey")
#: Paired contrasts ``name: (a, b)`` reported as ``a - b``: carrier within each loss, loss within each carrier.
CONTRASTS = {
    "image_vs_ppt|protego": ("image_protego", "ppt_protego"),
    "image_vs_ppt|lowkey": ("image_lowkey", "ppt_lowkey"),
    "lowkey_vs_protego|ppt": ("ppt_lowkey", "ppt_protego"),
    "lowkey_vs_protego|image": ("image_lowkey", "image_protego"),
}
LOWKEY_BLUR = (7, 3.0)


def _blur(x: torch.Tensor) -> torch.Tensor:
    import kornia.filters

    k, s = LOWKEY_BLUR
    return kornia.filters.gaussian_blur2d(x, (k, k), (s, s))


# ---------------------------------------------------------------------------------------- the two new cells
def lowkey_texture(train_faces, surrogates, cfg: tr.TrainConfig, device="cpu", generator=None,
                   progress: bool = False) -> torch.Tensor:
    """A UV texture trained with the LowKey-style loss (``study`` ``kind="texture_fn"``, ``mode="uv"``).

    The loop is :func:`protego_nb.protect.train.train_ppt`'s with the default options: texture init
    ``U(-eps, eps)`` from ``generator``, batches of ``cfg.batch_size`` in order for ``cfg.epochs``, loss
    ``-d + w * max(floor - SSIM, 0)`` with ``d`` the batch mean of LowKey's ensemble distance and ``w`` the
    dynamic SSIM weight, step ``texture <- clip(texture - cfg.lr * sign(grad / batch), -eps, eps)``.
    """
    cfg.validate()
    models = tr.as_model_dict(surrogates)
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    x_all, lm_all = train_faces.x, train_faces.lm
    warps = train_faces.warp("uv")
    n = len(train_faces)
    with torch.no_grad():
        clean = {}
        for name, mdl in models.items():
            a, b = [], []
            for s in range(0, n, cfg.batch_size):
                x = x_all[s : s + cfg.batch_size].to(device)
                lm = lm_all[s : s + cfg.batch_size].to(device=device, dtype=torch.float32)
                a.append(mdl(x, lm).float())
                b.append(mdl(_blur(x), lm).float())
            clean[name] = (torch.cat(a), torch.cat(b))
    texture = init_texture(cfg.eps, gen, cfg.texture_size, device)
    ssim_w = losses.DynamicSSIMWeight(floor=cfg.min_ssim)
    steps_per_epoch = -(-n // cfg.batch_size)
    from tqdm.auto import tqdm

    for _ in tqdm(range(cfg.epochs * steps_per_epoch), disable=not progress, leave=False, desc="LowKey PPT"):
        k = _ % steps_per_epoch
        idx = torch.arange(k * cfg.batch_size, min((k + 1) * cfg.batch_size, n))
        x = x_all[idx].to(device)
        lm = lm_all[idx].to(device=device, dtype=torch.float32)
        tex = texture.detach().clone().requires_grad_(True)
        x_prot = torch.clamp(x + warps.select(idx).to(device).perturbation(tex, cfg.eps), 0.0, 1.0)
        ref = [(mdl, clean[name][0][idx.to(device)], clean[name][1][idx.to(device)]) for name, mdl in models.items()]
        d = lowkey.lowkey_distance(x_prot, lm, ref, _blur).mean()
        with torch.no_grad():
            s = losses.ssim(x_prot, x)
        loss = -d
        if float(s) <= cfg.min_ssim:
            hinge, _s = losses.ssim_hinge(x_prot, x, cfg.min_ssim)
            loss = loss + ssim_w.weight * hinge
        (grad,) = torch.autograd.grad(loss, tex)
        with torch.no_grad():
            texture = torch.clamp(texture - cfg.lr * torch.sign(grad / len(idx)), -cfg.eps, cfg.eps)
        ssim_w.update(float(s))
    return texture.detach().cpu()


def protego_per_image(
    faces,
    surrogates: Mapping[str, torch.nn.Module],
    eps: float = 16 / 255,
    min_ssim: float = 0.95,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    *,
    steps: int = 30,
    lr: float = lowkey.LOWKEY_DEFAULTS["lr"],
    init_noise: float = lowkey.LOWKEY_DEFAULTS["init_noise"],
    batch_size: int = 4,
    use_logdet: bool = True,
    start: torch.Tensor | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Per-photo perturbations trained with the Protego loss (``study`` ``kind="per_image"``).

    ``start``: protected canvases ``[N, 3, H, W]`` to start from instead of Gaussian noise (lever 8a: a few
    per-photo steps refine the PPT's protection; ``steps=0`` returns ``start`` where it meets the floor).

    Photos in order, in batches of ``batch_size`` (the log-det is over a batch, as in training the PPT);
    per step the loss is :func:`losses.protego_loss`'s feature terms (log-det + cosine to the clean embedding,
    ensemble mean) plus each photo's SSIM hinge with its own dynamic weight (as :func:`~protego_nb.protect.methods.lowkey.lowkey_protect`),
    signed steps of ``lr`` kept in the L-inf box. Each photo's last iterate meeting ``min_ssim`` is returned
    (the clean photo when none does).
    """
    check_budget(eps, min_ssim)
    x_all, lm_all = faces.x, faces.lm
    check_faces(x_all, lm_all, "Protego per image")
    models = tr.as_model_dict(surrogates)
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = int(x_all.shape[0])
    out = torch.empty_like(x_all)
    for s0 in range(0, n, batch_size):
        sl = slice(s0, min(s0 + batch_size, n))
        x = x_all[sl].to(device)
        lm = lm_all[sl].to(device=device, dtype=torch.float32)
        b = x.shape[0]
        lo, hi = linf_box(x, eps)
        with torch.no_grad():
            clean = {k: mdl(x, lm).float() for k, mdl in models.items()}
        if start is None:
            x0 = x + init_noise * torch.randn(x.shape, generator=gen).to(device)
        else:
            x0 = start[sl].to(device)
        x_adv = torch.minimum(torch.maximum(x0, lo), hi)
        weights = [losses.DynamicSSIMWeight(floor=min_ssim) for _ in range(b)]
        best = x.clone()
        for it in range(steps + 1):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.no_grad():
                s = per_image_ssim(x_adv, x)
                ok = s >= min_ssim
                best[ok] = x_adv[ok].detach()
            if it == steps:
                break
            prot = {k: mdl(x_adv, lm) for k, mdl in models.items()}
            loss, _ = losses.protego_loss(prot, clean, use_logdet=use_logdet)
            below = s <= min_ssim
            if bool(below.any()):
                sel = below.nonzero().flatten()
                w = torch.tensor([weights[int(i)].weight for i in sel], device=device, dtype=x.dtype)
                loss = loss + (w * torch.clamp(min_ssim - per_image_ssim(x_adv[sel], x[sel]), min=0)).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            for i in range(b):
                weights[i].update(float(s[i]))
            with torch.no_grad():
                x_adv = torch.minimum(torch.maximum(x_adv - lr * torch.sign(grad), lo), hi)
        out[sl] = best.detach().cpu()
    return out


def refine_ppt(
    ppt: Protection,
    faces,
    surrogates: Mapping[str, torch.nn.Module],
    cfg: tr.TrainConfig,
    k: int,
    lr: float,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, float]:
    """Lever 8a: the PPT-protected canvases of ``faces`` refined by ``k`` per-photo Protego-loss steps of ``lr``
    (:func:`protego_per_image`, same bound and floor). The steps start from the PPT canvases with the SSIM floor
    enforced (:func:`protego_nb.protect.ssim_floor.enforce_ssim_floor`), so the start itself is a valid
    protection and ``k = 0`` returns it. Returns ``(canvases, seconds)``."""
    from ..protect.ssim_floor import enforce_ssim_floor

    if list(ppt.ids) != list(faces.ids):
        raise ValueError("the PPT protection and the faces must list the same photos in the same order")
    t0 = time.perf_counter()
    start, _ = enforce_ssim_floor(faces.x, ppt.protected, cfg.min_ssim)
    out = protego_per_image(faces, surrogates, cfg.eps, cfg.min_ssim, device, steps=int(k), lr=lr,
                            batch_size=cfg.batch_size, start=start)
    return out, time.perf_counter() - t0


def cell_methods(steps: int = 30, lr: float = lowkey.LOWKEY_DEFAULTS["lr"]) -> dict[str, Method]:
    """The four cells as :class:`~protego_nb.protect.methods.Method` objects (not registered)."""
    pi = {"steps": int(steps), "lr": float(lr)}
    return {
        # the study's own protego method (same name, so its cached textures are reused)
        "ppt_protego": METHODS["protego"],
        "ppt_lowkey": Method("ppt_lowkey", kind="texture_fn", mode="uv", fn=lowkey_texture,
                                   title="UV PPT, LowKey-style loss"),
        "image_protego": Method("image_protego", kind="per_image", mode="flat", config=pi,
                                      fn=functools.partial(protego_per_image, **pi),
                                      title=f"per-image Protego loss ({steps} steps, lr {lr})"),
        "image_lowkey": Method("image_lowkey", kind="per_image", mode="flat", config=pi,
                                     fn=functools.partial(lowkey.lowkey_protect, **pi),
                                     title=f"per-image LowKey-style ({steps} steps, lr {lr})"),
    }


# ---------------------------------------------------------------------------------------- running and scoring
def run_cells(
    cells: Sequence[str],
    split,
    faces: Mapping[str, FaceSet],
    surrogates: Mapping[str, torch.nn.Module],
    cfg: tr.TrainConfig,
    intruder: str,
    device: str = "cpu",
    steps: int = 30,
    lr: float = lowkey.LOWKEY_DEFAULTS["lr"],
    log=None,
) -> dict[str, dict[str, Protection]]:
    """``{cell: {user: Protection}}`` through :func:`protego_nb.study.protections.run_method` (cached like the study's)."""
    methods = cell_methods(steps, lr)
    out: dict[str, dict[str, Protection]] = {cell: {} for cell in cells}
    for u, fs in faces.items():  # user by user, so that an interrupted run leaves whole users in the cache
        for cell in cells:
            t0 = time.perf_counter()
            p = run_method(methods[cell], u, fs.take(split.users[u].train), fs, surrogates, cfg,
                                 device=device, intruder=intruder)
            out[cell][u] = p
            if log:
                log(f"{cell} {u}: {len(fs)} photos, {p.train_seconds:.1f} s recorded, {time.perf_counter() - t0:.1f} s now")
    return out


def floored(prots: Mapping[str, Mapping[str, Protection]], faces: Mapping[str, FaceSet],
            min_ssim: float) -> tuple[dict, dict]:
    """The protections with the SSIM floor enforced on every canvas (:func:`protego_nb.study.protections.with_ssim_floor`)."""
    return with_ssim_floor(prots, faces, min_ssim)


def score_cells(
    prots: Mapping[str, Mapping[str, Protection]],
    split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    models: Sequence[str],
    device: str = "cpu",
) -> dict:
    """Per-user values ``{cell: {key: {user: value}}}``: ``<model>_<scenario>`` recall (%) for 1b/1a/2b/2a,
    ``<model>_<shift key>`` of :func:`transfer.shift_decomposition` (all photos of the user), ``ssim`` (mean over
    the user's canvases), ``ssim_min`` (the user's lowest), ``seconds`` (the user's training time, or the time
    the per-photo method took for all their photos) and ``seconds_per_photo`` (``seconds`` over their photos)."""
    from ..evaluate import quality, retrieval
    from ..models import zoo

    users = list(faces)
    res: dict = {cell: {} for cell in prots}
    for name in models:
        model = zoo.load(name, device)
        for cell, by_user in prots.items():
            f = features_for(model, name, faces, distractors, by_user, device=device, method=cell)
            d = retrieval.evaluate_users(f, split, scenarios=["1b", "1a", "2b", "2a"], metric=("native",),
                                               users=users, protect_others=False, include_others=False)
            d = d[d["native"]]
            for _, row in d.iterrows():
                res[cell].setdefault(f"{name}_{row['scenario']}", {})[str(row["user"])] = float(row["recall"]) * 100
            for u, p in by_user.items():
                clean = f.table(False).take(p.ids).numpy()
                prot = f.table(True).take(p.ids).numpy()
                for k, v in transfer.shift_decomposition(clean, prot).items():
                    if k != "n":
                        res[cell].setdefault(f"{name}_{k}", {})[u] = float(v)
    for cell, by_user in prots.items():
        for u, p in by_user.items():
            s = quality.canvas_quality(faces[u].take(p.ids).x, p.protected, names=p.ids)["ssim"].to_numpy()
            res[cell].setdefault("ssim", {})[u] = float(np.mean(s))
            res[cell].setdefault("ssim_min", {})[u] = float(np.min(s))
            res[cell].setdefault("seconds", {})[u] = float(p.train_seconds)
            res[cell].setdefault("seconds_per_photo", {})[u] = float(p.train_seconds) / max(1, len(p.ids))
    return res


def paired_summary(values: Mapping[str, Mapping[str, Mapping[str, float]]], keys: Sequence[str],
                   contrasts: Mapping[str, tuple[str, str]], seed: int = 0) -> dict:
    """``{contrast: {key: PairedDiff dict}}`` over the users both cells scored (``evaluate.stats``)."""
    from ..evaluate import stats

    out: dict = {}
    for cname, (a, b) in contrasts.items():
        if a not in values or b not in values:
            continue
        for k in keys:
            if k in values[a] and k in values[b]:
                out.setdefault(cname, {})[k] = stats.paired_bootstrap(values[a][k], values[b][k], seed=seed).to_dict()
    return out


def diagnostic_keys(intruder: str, white: Sequence[str]) -> list[str]:
    """The per-user values each contrast is paired on: the intruder's 1a/2b/2a, white-box 2a, SSIM, seconds and
    the intruder's shift decomposition (share common to a user's photos, residual, within-user cosine)."""
    return ([f"{intruder}_{s}" for s in ("1a", "2b", "2a")] + [f"{m}_2a" for m in white]
            + ["ssim", "seconds", f"{intruder}_common_fraction", f"{intruder}_residual_rms",
               f"{intruder}_within_cos_protected"])


def diagnose(
    cells: Sequence[str],
    split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    surrogates: Sequence[str],
    intruder: str,
    cfg: tr.TrainConfig,
    device: str = "cpu",
    steps: int = 30,
    lr: float = lowkey.LOWKEY_DEFAULTS["lr"],
) -> dict:
    """The 2x2 diagnostic {shared UV texture, per-image perturbation} x {Protego loss, LowKey-style loss} on
    ``faces``' users: every cell protected (cached like the study's), scored as produced (``raw``) and with every
    canvas under the SSIM floor (``floor``) by the intruder and the surrogates, and the :data:`CONTRASTS` paired
    over users. The record has the layout of ``benchmarks/transfer_diagnostics.py``'s JSON (``values``,
    ``paired``), so :func:`protego_nb.evaluate.tables.transfer_cells_table` renders either."""
    sur = load_surrogates(surrogates, intruder, device)
    prots = run_cells(cells, split, faces, sur, cfg, intruder, device=device, steps=steps, lr=lr)
    fl, factors = floored(prots, faces, cfg.min_ssim)
    models = [intruder, *surrogates]
    values = {"raw": score_cells(prots, split, faces, distractors, models, device=device),
              "floor": score_cells(fl, split, faces, distractors, models, device=device)}
    for cell, by_user in factors.items():
        values["floor"][cell]["floor_factor_mean"] = {u: float(a.float().mean()) for u, a in by_user.items()}
    keys = diagnostic_keys(intruder, surrogates)
    return {"cells": list(cells), "intruder": intruder, "white": list(surrogates), "users": list(faces),
            "steps": int(steps), "lr": float(lr), "values": values,
            "paired": {v: paired_summary(values[v], keys, CONTRASTS) for v in values}}
