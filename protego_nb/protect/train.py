"""Training one user's Privacy Protection Texture (PPT).

``train_ppt`` follows the authors' loop (``protego/protego_train.py``, ``reference/protego_method.md`` section 1):
the PPT ``U`` ``[1, 3, T, T]`` starts ``U(-eps, eps)``; for each mini-batch of the user's canvases (in order,
the last partial batch kept) the texture is warped onto the canvases, the Protego loss is averaged over the
surrogate models, and ``U <- clamp(U - lr * sign(g), -eps, eps)`` with ``g`` the batch-mean gradient; the
SSIM hinge weight follows the halve/double/reset schedule. Differences, none of which change the
optimisation of the default configuration: clean features are computed once (no autograd) and cached, the
log-det is evaluated stably (see :mod:`.losses`), the SSIM hinge's graph is built only for batches at or
below the floor (above it the hinge and its gradient are zero, and a no-grad SSIM is cheaper than SSIM
forward+backward), and random numbers come from one explicit generator.

One step (:func:`_train_step`): the texture is warped onto the batch and the random views are drawn
(:func:`_protected_views`), each surrogate embeds them (:func:`_surrogate_features`), the loss is
:func:`losses.protego_loss` (:func:`_batch_loss`), its batch-mean gradient w.r.t. the texture is aggregated
(:func:`_texture_gradient`), the signed step is projected onto the L-inf bound (:func:`_signed_step`), the
step is logged (:func:`_log_step`) and the SSIM weight updated; :class:`Checkpointer` saves and restores
the loop's state (:class:`TrainState`) with the generator's.

The configuration, its presets and the transfer-enhancing options: :mod:`.train_config`; the random views
(input diversity, smoothed view): :mod:`.views`; checkpoints: :mod:`.checkpoint`.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models import taps
from ..models.embed import embed_all
from . import losses
from .checkpoint import Checkpointer, TrainState
from .texture import FlatWarp, UVWarp, Warp, init_texture
from .train_config import PRESETS, TrainConfig, TrainResult
from .views import (
    diversity_apply,
    diversity_draw,
    gaussian_blur,
    normalise_gradient,
    spectrum_apply,
    spectrum_draw,
)

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "as_model_dict",
    "surrogate_names",
    "train_ppt",
]

def surrogate_names(surrogates: Mapping[str, nn.Module] | Sequence[nn.Module]) -> list[str]:
    """Names of the surrogate models: the mapping keys, else ``model.spec.name``, else ``model<i>``."""
    if isinstance(surrogates, Mapping):
        names = [str(k) for k in surrogates]
    else:
        names = []
        for i, m in enumerate(surrogates):
            spec = getattr(m, "spec", None)
            names.append(str(getattr(spec, "name", None) or f"model{i}"))
    if len(set(names)) != len(names):
        raise ValueError(f"surrogate names must be unique, got {names}")
    return names


def as_model_dict(surrogates: Mapping[str, nn.Module] | Sequence[nn.Module]) -> dict[str, nn.Module]:
    """The surrogates as ``{name: model}`` (names by :func:`surrogate_names`); at least one is needed."""
    names = surrogate_names(surrogates)
    models = list(surrogates.values()) if isinstance(surrogates, Mapping) else list(surrogates)
    if not models:
        raise ValueError("at least one surrogate model is needed")
    return dict(zip(names, models))


# ----------------------------------------------------------------------------------------- the training loop


def _check_inputs(
    canvases: torch.Tensor,
    landmarks: torch.Tensor,
    warps: Warp | None,
    names: list[str],
    cfg: TrainConfig,
    intruder: str | None,
) -> Warp:
    """Raise ``ValueError`` for inconsistent training inputs; returns the warps (``None`` -> the canvases'
    :class:`FlatWarp`, for ``mode="flat"``)."""
    if intruder is not None and intruder in names:
        raise ValueError(f"the intruder model {intruder!r} must not be a surrogate (surrogates: {names})")
    if canvases.dim() != 4 or canvases.shape[1] != 3:
        raise ValueError(f"canvases must be [N, 3, H, W], got {tuple(canvases.shape)}")
    n = int(canvases.shape[0])
    if n < 1:
        raise ValueError("no training canvases")
    if landmarks.shape != (n, 5, 2):
        raise ValueError(f"landmarks must be [N, 5, 2] = {(n, 5, 2)}, got {tuple(landmarks.shape)}")
    if not torch.is_floating_point(canvases) or float(canvases.min()) < 0 or float(canvases.max()) > 1:
        raise ValueError("canvases must be float tensors in [0, 1]")
    if warps is None:
        if cfg.mode != "flat":
            raise ValueError("mode 'uv' needs UV warps (UVWarp.from_uvmap(uv.rasterize_uv(...)))")
        warps = FlatWarp.for_canvases(canvases)
    if len(warps) != n:
        raise ValueError(f"the warps serve {len(warps)} canvases but {n} canvases were given")
    if cfg.mode == "uv" and isinstance(warps, FlatWarp):
        raise ValueError("mode 'uv' was asked for but the warps are flat (FlatWarp); set cfg.mode='flat'")
    if cfg.mode == "flat" and isinstance(warps, UVWarp):
        raise ValueError("mode 'flat' was asked for but the warps are UV warps; set cfg.mode='uv'")
    return warps


@dataclass
class _Views:
    """The canvases of one step: what the surrogates see, and the clean canvases they are compared with."""

    #: Protected canvases ``clamp(x + perturbation, 0, 1)`` (the SSIM term compares them with the clean ones).
    x_prot: torch.Tensor
    #: The protected canvases and landmarks the surrogates see (moved by input diversity, when on).
    x_in: torch.Tensor
    lm_in: torch.Tensor
    #: ``[B]`` bool, the canvases input diversity moved; None without input diversity.
    applied: torch.Tensor | None
    #: The clean canvases under the same draw (consistent clean reference), else the clean canvases.
    x_clean_in: torch.Tensor
    #: The smoothed view of ``x_in`` and, for the consistent clean reference, of ``x_clean_in`` (None when off).
    x_blur: torch.Tensor | None
    x_clean_blur: torch.Tensor | None
    #: ``[B]`` bool, the canvases whose clean reference ``x_clean_in`` differs from the clean canvas (moved by
    #: input diversity or seen through the spectrum view); None: none do.
    recompute: torch.Tensor | None = None


def _protected_views(
    tex: torch.Tensor, x: torch.Tensor, lm: torch.Tensor, warp: Warp, cfg: TrainConfig, gen: torch.Generator
) -> _Views:
    """Warp the texture onto the clean canvases ``x``, then apply input diversity and the smoothed view.

    The perturbation is added before the input-diversity transform, so canvas, UV warp and landmarks move
    together; with the consistent clean reference the clean canvases take the same draw and blur."""
    consistent = cfg.uses_consistent_clean
    x_prot = torch.clamp(x + warp.perturbation(tex, cfg.eps), 0.0, 1.0)
    x_clean_in = x
    if cfg.input_diversity > 0:
        applied, dmat = diversity_draw(x.shape[0], x.shape[-2], x.shape[-1], cfg, gen)
        x_in, lm_in = diversity_apply(x_prot, lm, applied, dmat)
        if consistent:
            x_clean_in, _ = diversity_apply(x, lm, applied, dmat)
    else:
        x_in, lm_in, applied = x_prot, lm, None
    recompute = applied
    if cfg.spectrum_copies > 0:  # SSA: every canvas through one random spectrum view, the clean ones likewise
        noise, mask = spectrum_draw(tuple(x_in.shape), cfg, gen)
        x_in = spectrum_apply(x_in, noise, mask)
        if consistent:
            x_clean_in = spectrum_apply(x_clean_in, noise, mask)
            recompute = torch.ones(x.shape[0], dtype=torch.bool)
    x_blur = gaussian_blur(x_in, cfg.blur_view) if cfg.blur_view > 0 else None
    x_clean_blur = gaussian_blur(x_clean_in, cfg.blur_view) if x_blur is not None and consistent else None
    return _Views(x_prot, x_in, lm_in, applied, x_clean_in, x_blur, x_clean_blur, recompute)


def _tapped_forward(model: nn.Module, x: torch.Tensor, lm: torch.Tensor, tap: taps.JoinTap | None, rewind: bool):
    """``model(x, lm)`` seen through ``tap`` (None: plainly); ``rewind`` replays the step's network for another
    pass. Returns ``(embedding, recorded mid-layer map or None)``."""
    if tap is None:
        return model(x, lm), None
    if rewind:
        tap.rewind()
    with taps.tapped(tap):
        z = model(x, lm)
    return z, tap.recorded


def _step_tap(model: nn.Module, views: _Views, cfg: TrainConfig, gen: torch.Generator) -> taps.JoinTap | None:
    """One model's tap for this step (:mod:`protego_nb.models.taps`): dropout at its tap points and/or recording
    of the point at ``mid_depth``; None when neither lever is on."""
    if not cfg.uses_taps:
        return None
    kind, count = taps.prepare(model, views.x_in, views.lm_in)
    record = taps.mid_index(count, cfg.mid_depth) if cfg.mid_weight > 0 else None
    return taps.JoinTap(kind, cfg.feature_dropout, record, gen)


def _surrogate_features(
    models: Mapping[str, nn.Module],
    views: _Views,
    clean_b: Mapping[str, torch.Tensor],
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor],
           dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Each surrogate's embeddings of the protected canvases, in model order.

    Returns ``(prot, prot_blur, clean, clean_blur, mids)``: the protected canvases' and their smoothed view's
    embeddings (with autograd), and the clean references: ``clean_b`` (the cached clean features of the batch)
    with, for the consistent clean reference, the moved canvases' features replaced by those of the clean
    canvases under the same draw and landmark jitter, and the smoothed clean view's (both without autograd).
    Under input diversity each model's landmarks get their own Gaussian jitter. With ``feature_dropout`` or
    ``mid_weight`` every pass of a model goes through the step's tap (:func:`_step_tap`: one perturbed network
    for all of them) and the clean reference of the whole batch is re-embedded through it; ``mids[name]`` is
    then ``(protected, clean)`` mid-layer maps (with ``mid_weight``)."""
    consistent = cfg.uses_consistent_clean
    applied = views.applied
    moved = views.recompute.nonzero().flatten().to(device) if views.recompute is not None else None
    clean = dict(clean_b)
    prot: dict[str, torch.Tensor] = {}
    prot_blur: dict[str, torch.Tensor] = {}
    clean_blur: dict[str, torch.Tensor] = {}
    mids: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, model in models.items():
        lm_m = views.lm_in
        if applied is not None and cfg.di_landmark_jitter > 0:
            noise = torch.randn(lm_m.shape, generator=gen) * cfg.di_landmark_jitter
            lm_m = lm_m + (noise * applied.view(-1, 1, 1)).to(device=device, dtype=lm_m.dtype)
        tap = _step_tap(model, views, cfg, gen)
        prot[name], mid_prot = _tapped_forward(model, views.x_in, lm_m, tap, False)
        if views.x_blur is not None:
            prot_blur[name], _ = _tapped_forward(model, views.x_blur, lm_m, tap, True)
        if tap is not None:  # the perturbed network's (or the mid layer's) clean reference: the whole batch anew
            with torch.no_grad():
                c_all, mid_clean = _tapped_forward(model, views.x_clean_in, lm_m, tap, True)
            clean[name] = c_all.detach().float()
            if mid_prot is not None:
                mids[name] = (mid_prot, mid_clean.detach())
        if consistent:
            with torch.no_grad():
                if tap is None and moved is not None and len(moved):  # unmoved canvases keep their cached features
                    c_moved = model(views.x_clean_in[moved], lm_m[moved]).detach().float()
                    clean[name] = clean[name].index_copy(0, moved.to(clean[name].device), c_moved)
                if views.x_clean_blur is not None:
                    clean_blur[name] = _tapped_forward(model, views.x_clean_blur, lm_m, tap, True)[0].detach().float()
    return prot, prot_blur, clean, clean_blur, mids


def _batch_loss(
    models: Mapping[str, nn.Module],
    clean_b: Mapping[str, torch.Tensor],
    tex: torch.Tensor,
    x: torch.Tensor,
    lm: torch.Tensor,
    warp: Warp,
    cfg: TrainConfig,
    ssim_weight: float,
    gen: torch.Generator,
    device: torch.device,
    centres: Mapping[str, torch.Tensor] | None = None,
    assign: torch.Tensor | None = None,
) -> losses.LossTerms:
    """The Protego loss of one batch as a function of the texture ``tex`` (:func:`losses.protego_loss`, the one
    loss definition; the smoothed view, when on, enters as a second view). ``tex``: one texture for the batch, or
    one texture copy per canvas; ``assign`` (``[B]``, several textures): which texture each canvas carries."""
    views = _protected_views(tex, x, lm, warp, cfg, gen)
    prot, prot_blur, clean, clean_blur, mids = _surrogate_features(models, views, clean_b, cfg, gen, device)
    if cfg.push_target == "centre":  # every photo pushed from the user's clean centre, whatever its view
        clean = {m: centres[m].to(prot[m]).expand_as(prot[m]) for m in prot}
        clean_blur = {}
    tw = cfg.term_weights
    return losses.protego_loss(
        prot,
        clean,
        views.x_prot,
        x,
        ssim_weight=ssim_weight,
        min_ssim=cfg.min_ssim,
        logdet_form=cfg.logdet_form,
        use_logdet=cfg.use_logdet,
        logdet_weight=tw.get("logdet", 1.0),
        cosine_weight=tw.get("cosine", 1.0),
        model_weights=cfg.model_weights,
        views={"blur": prot_blur} if views.x_blur is not None else None,
        view_clean={"blur": clean_blur} if clean_blur else None,
        logdet_offsets=centres if cfg.logdet_relative else None,
        texture_ids=assign,
        diversity_weight=cfg.texture_diversity,
        lazy_ssim=True,
        return_terms=True,
        extra_terms=losses.mid_feature_terms({m: p for m, (p, _) in mids.items()}, {m: c for m, (_, c) in mids.items()},
                                             cfg.mid_weight, cfg.model_weights) if mids else (),
    )


def _texture_gradient(
    loss: losses.LossTerms, tex: torch.Tensor, cfg: TrainConfig, batch: int, reduce=None
) -> torch.Tensor:
    """The batch-mean gradient of the loss w.r.t. the texture (shared by the ``batch`` canvases).

    ``grad_balance="none"``: the gradient of the weighted total. ``"per_term"``: the weighted sum of each
    active term's gradient normalised to unit ``grad_norm`` (with a signed step a scalar weight barely acts
    otherwise); the SSIM hinge counts while it is positive. With ``grad_smooth`` the result is Gaussian-smoothed
    in texture space (TI-FGSM). ``reduce``: maps the gradient w.r.t. ``tex`` (per-canvas texture copies, see
    :func:`_per_canvas_reduce`) to the gradient w.r.t. the trained textures, before any normalisation."""
    reduce = reduce or (lambda g: g)
    if cfg.grad_balance == "none":
        (grad,) = torch.autograd.grad(loss.total, tex)
        grad = reduce(grad)
    else:
        grad = None
        active = [(w, v) for _, w, v in loss.feature_terms if w != 0]
        if float(loss.hinge.detach()) > 0:
            active.append((loss.ssim_weight, loss.hinge))
        for i, (w, v) in enumerate(active):
            (g,) = torch.autograd.grad(v, tex, retain_graph=i < len(active) - 1)
            g = w * normalise_gradient(reduce(g), cfg.grad_norm)
            grad = g if grad is None else grad + g
    grad = grad / batch
    if cfg.grad_smooth > 0:
        grad = gaussian_blur(grad, cfg.grad_smooth)
    return grad


def _per_canvas_reduce(assign: torch.Tensor, count: int, vote: str):
    """The gradient w.r.t. per-canvas copies of the textures ``[B, 3, T, T]`` summed into the ``count`` trained
    textures (canvas ``i`` carries texture ``assign[i]``), each canvas's gradient first replaced by its sign
    (``vote="sign"``: every canvas one equal vote per texel) or scaled to unit L1 norm (``"l1"``); ``"none"``:
    the plain sum, the same gradient as indexing the textures directly."""

    def reduce(g: torch.Tensor) -> torch.Tensor:
        if vote == "sign":
            g = torch.sign(g)
        elif vote == "l1":
            g = g / g.abs().flatten(1).sum(1).clamp_min(1e-30).view(-1, 1, 1, 1)
        out = torch.zeros((count, *g.shape[1:]), dtype=g.dtype, device=g.device)
        return out.index_add_(0, assign.to(g.device), g)

    return reduce


@torch.no_grad()
def _signed_step(
    texture: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor, cfg: TrainConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """One signed L-inf step projected onto the bound: ``U <- clamp(U - lr * sign(d), -eps, eps)``.

    ``d`` is the gradient, or with ``momentum`` ``mu`` the MI-FGSM buffer ``m <- mu m + g / mean|g|``.
    Returns ``(texture, momentum buffer)``."""
    if cfg.momentum > 0:
        momentum = cfg.momentum * momentum + grad / grad.abs().mean().clamp_min(1e-30)
        direction = momentum
    else:
        direction = grad
    return torch.clamp(texture - cfg.lr * torch.sign(direction), -cfg.eps, cfg.eps), momentum


def _log_step(
    history: dict[str, list[float]], step: int, epoch: int, loss: losses.LossTerms, ssim_weight: float
) -> dict[str, float]:
    """Append one step's record to ``history`` (``step``, ``epoch``, ``total``, ``ssim``, ``ssim_weight``, then
    the ``logdet/<m>``, ``cosine/<m>`` and, with several textures, ``diversity/<m>`` terms, and with the mid-layer
    push ``mid/<m>``); returns the record."""
    record = {"step": step, "epoch": epoch, "total": float(loss.total.detach()), "ssim": float(loss.parts["ssim"])}
    record["ssim_weight"] = ssim_weight
    record.update({k: v for k, v in loss.parts.items() if k.startswith(("logdet/", "cosine/", "diversity/", "mid/"))})
    for key, val in record.items():
        history.setdefault(key, []).append(float(val))
    return record


def clean_centres(clean: Mapping[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor] | None:
    """Per model, the user's clean centre: the mean of the L2-normalised clean embeddings of all training canvases
    (``[D]``), when :attr:`TrainConfig.push_target` or :attr:`TrainConfig.logdet_relative` needs it."""
    if cfg.push_target != "centre" and not cfg.logdet_relative:
        return None
    return {m: F.normalize(c.float(), dim=1).mean(0) for m, c in clean.items()}


def texture_assignment(batch: int, count: int, gen: torch.Generator) -> torch.Tensor | None:
    """Which of ``count`` textures each of a step's ``batch`` canvases carries: a random permutation of the
    canvases dealt round-robin from a random first texture (every texture gets ``batch // count`` or one more
    canvas); ``None`` for one texture, which draws nothing from ``gen`` (so the single-texture run is unchanged)."""
    if count == 1:
        return None
    start = torch.randint(count, (1,), generator=gen)
    return (torch.randperm(batch, generator=gen) + start) % count


def _gradient_points(texture: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> list[torch.Tensor]:
    """Where the step's gradient is taken: the current textures, then ``neighbour_samples`` points drawn
    uniformly within ``neighbour_radius * eps`` of them (VMI-style neighbourhood averaging)."""
    points = [texture]
    for _ in range(cfg.neighbour_samples):
        u = (torch.rand(texture.shape, generator=gen) * 2 - 1) * (cfg.neighbour_radius * cfg.eps)
        points.append(texture + u.to(texture))
    return points


def _point_gradient(texture, assign, models, clean_b, x, lm, warp, cfg, weight, gen, device, centres):
    """``(gradient w.r.t. the trained textures, loss terms)`` of one batch at ``texture`` (one random view)."""
    if assign is None and cfg.grad_vote == "none":  # the paper's step: one texture, the gradient of the batch loss
        tex = texture.clone().requires_grad_(True)
        loss = _batch_loss(models, clean_b, tex, x, lm, warp, cfg, weight, gen, device, centres)
        return _texture_gradient(loss, tex, cfg, x.shape[0]), loss
    # one texture copy per canvas: per-canvas gradients (equal vote) and/or several textures
    pick = assign if assign is not None else torch.zeros(x.shape[0], dtype=torch.long)
    copies = texture[pick.to(texture.device)].clone().requires_grad_(True)
    loss = _batch_loss(models, clean_b, copies, x, lm, warp, cfg, weight, gen, device, centres, assign)
    reduce = _per_canvas_reduce(pick, cfg.n_textures, cfg.grad_vote)
    return _texture_gradient(loss, copies, cfg, x.shape[0], reduce), loss


def _train_step(
    state: TrainState,
    idx: torch.Tensor,
    epoch: int,
    models: Mapping[str, nn.Module],
    clean: Mapping[str, torch.Tensor],
    canvases: torch.Tensor,
    landmarks: torch.Tensor,
    warps: Warp,
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
    centres: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """One optimisation step on the canvases ``idx``: loss, gradient, signed step, history record, then the
    SSIM weight's update from the batch SSIM. Updates ``state``; returns the step's record."""
    x = canvases[idx].to(device)
    lm = landmarks[idx].to(device=device, dtype=torch.float32)
    warp = warps.select(idx).to(device)
    clean_b = {m: clean[m][idx.to(clean[m].device)] for m in models}
    weight = state.ssim_weight.weight
    assign = texture_assignment(len(idx), cfg.n_textures, gen)
    grad, loss = None, None
    for tex0 in _gradient_points(state.texture.detach(), cfg, gen):  # one point unless neighbour_samples > 0
        for _ in range(max(1, cfg.spectrum_copies)):  # one view unless spectrum_copies > 0
            g, term = _point_gradient(tex0, assign, models, clean_b, x, lm, warp, cfg, weight, gen, device, centres)
            grad = g if grad is None else grad + g
            if loss is None:  # the history records the loss of the first view at the current textures
                loss = term
    grad = grad / (max(1, cfg.spectrum_copies) * (1 + cfg.neighbour_samples))
    state.texture, state.momentum = _signed_step(state.texture, state.momentum, grad, cfg)
    record = _log_step(state.history, state.step, epoch, loss, weight)
    state.ssim_weight.update(record["ssim"])
    state.step += 1
    return record


def train_ppt(
    canvases: torch.Tensor,
    landmarks: torch.Tensor,
    warps: Warp | None,
    surrogates: Mapping[str, nn.Module] | Sequence[nn.Module],
    cfg: TrainConfig | None = None,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    intruder: str | None = None,
) -> TrainResult:
    """Train one user's PPT on their canvases.

    ``canvases`` ``[N, 3, H, W]`` float in ``[0, 1]``, ``landmarks`` ``[N, 5, 2]`` canvas pixels (MTCNN order),
    ``warps`` a :class:`~protego_nb.protect.texture.Warp` serving the ``N`` canvases (``UVWarp`` for
    ``mode="uv"``; ``None`` or a ``FlatWarp`` for ``mode="flat"``), ``surrogates`` the FR models
    (``model(canvas, landmarks) -> [B, D]``, frozen, in eval mode) as a list or ``{name: model}``.
    ``generator`` (CPU) drives init, shuffling and input diversity; default ``Generator().manual_seed(cfg.seed)``.
    ``checkpoint``: a file written every ``cfg.checkpoint_every`` steps and at the end (atomically); with
    ``resume`` an existing one for the same data, surrogates and config is continued, giving the same
    texture as an uninterrupted run. ``intruder``: the black-box model's name, refused among the surrogates.
    """
    cfg = cfg or TrainConfig.from_preset("release")
    cfg.validate()
    models = as_model_dict(surrogates)
    names = list(models)
    warps = _check_inputs(canvases, landmarks, warps, names, cfg, intruder)
    n = int(canvases.shape[0])
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    ckpt = Checkpointer(Path(checkpoint), cfg, canvases, landmarks, names) if checkpoint is not None else None

    texture = init_texture(cfg.eps, gen, cfg.texture_size, device, count=cfg.n_textures)
    state = TrainState(texture, torch.zeros_like(texture), torch.arange(n), losses.DynamicSSIMWeight(floor=cfg.min_ssim), {})
    if ckpt is not None and resume and ckpt.path.exists():
        ckpt.restore(state, gen, device)

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    clean = embed_all(models, canvases, landmarks, cfg.batch_size, device) if state.step < total_steps else {}
    centres = clean_centres(clean, cfg) if clean else None  # once per run, from every training canvas
    clean_seconds = time.perf_counter() - t0
    pbar = tqdm(total=total_steps, initial=state.step, disable=not progress, desc="PPT", leave=False)
    while state.step < total_steps:
        epoch, k = divmod(state.step, steps_per_epoch)
        if k == 0:  # a new epoch: file order, or a fresh shuffle
            state.perm = torch.randperm(n, generator=gen) if cfg.shuffle else torch.arange(n)
        idx = state.perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        record = _train_step(state, idx, epoch, models, clean, canvases, landmarks, warps, cfg, gen, device, centres)
        pbar.update(1)
        pbar.set_postfix(loss=f"{record['total']:.3f}", ssim=f"{record['ssim']:.3f}", refresh=False)
        if ckpt is not None and state.step % cfg.checkpoint_every == 0 and state.step < total_steps:
            ckpt.write(state, gen, state.seconds_before + time.perf_counter() - t0)
    pbar.close()
    seconds = state.seconds_before + time.perf_counter() - t0
    if ckpt is not None:
        ckpt.write(state, gen, seconds)
    return TrainResult(
        texture=state.texture.detach().to("cpu"),
        history=state.history,
        seconds=seconds,
        steps=state.step,
        config=cfg,
        surrogates=names,
        checkpoint=ckpt.path if ckpt is not None else None,
        clean_seconds=clean_seconds,
    )
