"""Protego's training loss: hypersensitivity (log-det), feature (cosine) and SSIM terms.

The authors' loss (``protego/protego_train.py`` of the release, see ``reference/protego_method.md`` section 1),
for each surrogate FR model ``f`` and a batch of ``N`` protected canvases ``x'`` of one user::

    Z = normalize(f(x'))                       # [N, D], L2-normalised rows
    G = Z Z^T                                  # [N, N] Gram matrix
    L_hyper = -log(det(G + c I) + c)           # c = 1e-4
    L_feat  = mean_i cos(f(x_i), f(x'_i))      # to the clean embedding
    L_f     = L_hyper + L_feat + w * max(0.95 - SSIM(x', x), 0)
    L       = mean_f L_f

Minimising ``-log det`` maximises the volume spanned by the protected embeddings ("hypersensitivity":
protected photos of the same person no longer match each other); the cosine term pushes each protected
photo away from its own clean embedding; ``w`` follows Chameleon's halve/double/reset schedule
(:class:`DynamicSSIMWeight`).

Differences from the authors' code, all numerical: ``det`` is never formed (a Cholesky factor in float64
gives ``log det``, and the authors' ``-log(det + c)`` is evaluated as ``-logaddexp(log det, log c)``), so
the value is finite for any batch (identical rows, ``N = 1``, ``N > D``), and the plain form
``-logdet(G + cI)`` is offered as a named option. SSIM is the project's one SSIM (:mod:`.ssim`: kornia's,
Gaussian window 11, sigma 1.5, data range 1, valid convolution, no denominator epsilon), which is the quantity
``pytorch_msssim.ssim`` computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .ssim import batch_ssim

__all__ = [
    "GRAM_C",
    "LOGDET_FORMS",
    "DynamicSSIMWeight",
    "LossTerms",
    "cosine_term",
    "ensemble_terms",
    "gram_logdet",
    "logdet_term",
    "protego_loss",
    "shift_diversity_term",
    "ssim",
    "ssim_hinge",
]

#: Jitter ``c`` the authors add to the Gram matrix's diagonal and to its determinant.
GRAM_C = 1e-4
#: ``"authors"``: ``-log(det(G + cI) + c)``; ``"logdet"``: ``-logdet(G + cI)``.
LOGDET_FORMS = ("authors", "logdet")


def gram_logdet(z: torch.Tensor, c: float = GRAM_C) -> torch.Tensor:
    """``log det(Z Z^T + c I)`` of the rows of ``z`` ``[N, D]`` (rows are L2-normalised first).

    Computed in float64 through a Cholesky factor (``G + cI`` is symmetric positive definite with every
    eigenvalue ``>= c``), so it is finite for identical rows, ``N = 1`` and ``N > D``; differentiable.
    """
    if z.dim() != 2:
        raise ValueError(f"embeddings must be [N, D], got {tuple(z.shape)}")
    if c <= 0:
        raise ValueError(f"the Gram jitter c must be > 0, got {c}")
    zn = F.normalize(z.to(torch.float64), p=2, dim=1)
    n = zn.shape[0]
    gram = zn @ zn.T
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    a = 0.5 * (gram + gram.T) + c * eye
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info.max()) == 0:
        out = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum()
    else:  # pragma: no cover - G + cI is PD in exact arithmetic; guard against round-off anyway
        out = torch.log(torch.linalg.eigvalsh(a).clamp_min(c)).sum()
    return out.to(z.dtype)


def logdet_term(z: torch.Tensor, form: str = "authors", c: float = GRAM_C) -> torch.Tensor:
    """The hypersensitivity loss of a batch of embeddings ``z`` ``[N, D]`` (to be minimised).

    ``form="authors"``: ``-log(det(G + cI) + c)``, bounded above by ``-log(c)`` (9.21 for ``c = 1e-4``);
    its gradient is the plain form's scaled by ``det / (det + c)``, i.e. vanishing while the embeddings are
    tight. ``form="logdet"``: ``-log det(G + cI)``, unbounded above (``-(N - 1) log c`` for identical rows).
    ``G = Z Z^T`` of the L2-normalised rows (normalising again is harmless).
    """
    if form not in LOGDET_FORMS:
        raise ValueError(f"unknown log-det form {form!r}; choose one of {LOGDET_FORMS}")
    ld = gram_logdet(z, c)
    if form == "logdet":
        return -ld
    return -torch.logaddexp(ld, ld.new_tensor(math.log(c)))


def cosine_term(prot: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between protected and clean embeddings (rows); in ``[-1, 1]``.

    ``clean`` is treated as a constant (detached): compute it once, without autograd.
    """
    if prot.shape != clean.shape or prot.dim() != 2:
        raise ValueError(f"embeddings must both be [N, D]; got {tuple(prot.shape)} and {tuple(clean.shape)}")
    return F.cosine_similarity(prot, clean.detach().to(prot.dtype), dim=1).mean()


def shift_diversity_term(prot: torch.Tensor, clean: torch.Tensor, texture_ids: torch.Tensor) -> torch.Tensor | None:
    """Mean cosine similarity between the embedding shifts of canvases that carry *different* textures.

    The shift of canvas ``i`` is ``normalize(prot_i) - normalize(clean_i)`` (``clean`` constant). Minimising the
    term turns the shifts of photos protected by different textures apart, so that a user's protected photos do
    not all move the same way (a shared shift leaves them matching each other). ``None`` when no two canvases
    carry different textures (nothing to compare)."""
    if prot.shape != clean.shape or prot.dim() != 2 or texture_ids.shape != (prot.shape[0],):
        raise ValueError(
            f"need [N, D] embeddings and [N] texture ids; got {tuple(prot.shape)}, {tuple(clean.shape)}, "
            f"{tuple(texture_ids.shape)}"
        )
    ids = texture_ids.to(prot.device)
    pairs = ids[:, None] != ids[None, :]
    if not bool(pairs.any()):
        return None
    shift = F.normalize(prot, dim=1) - F.normalize(clean.detach().to(prot.dtype), dim=1)
    shift = F.normalize(shift, dim=1, eps=1e-12)
    return (shift @ shift.T)[pairs].mean()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two image batches ``[B, C, H, W]`` in ``[0, 1]`` (pytorch_msssim's defaults), a scalar.

    :func:`protego_nb.protect.ssim.batch_ssim`: the SSIM map (11-tap Gaussian window, sigma 1.5, data range 1,
    ``valid`` convolution, no denominator epsilon) averaged over pixels, channels and images
    (``size_average=True``).
    """
    return batch_ssim(x, y)


def ssim_hinge(x_prot: torch.Tensor, x_clean: torch.Tensor, floor: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max(floor - SSIM, 0), SSIM)`` for a batch of protected and clean canvases."""
    s = ssim(x_prot, x_clean.detach())
    return torch.clamp(floor - s, min=0.0), s


@dataclass
class DynamicSSIMWeight:
    """Chameleon's / Protego's schedule for the SSIM hinge weight ``w`` (starts at 1).

    After each batch, with ``s`` its SSIM and ``floor`` the SSIM floor (0.95):
    ``s >= 1.01 floor`` and ``w > 1/129`` -> ``w / 2``; else ``s <= 0.99 floor`` and ``w <= 129`` -> ``2 w``;
    else ``0.99 floor < s < 1.01 floor`` -> ``w = 1``; otherwise (at a bound) unchanged. So
    ``w`` stays in ``{2^-8, ..., 2^8}``. Exactly the authors' rule (``protego_train.py``), which is
    Chameleon's (``core/chameleon.py``).
    """

    floor: float = 0.95
    weight: float = 1.0
    history: list[float] = field(default_factory=list)

    def update(self, s: float | torch.Tensor) -> float:
        """Apply the rule for a batch SSIM ``s``; returns the new weight."""
        s = float(s)
        hi, lo = 1.01 * self.floor, 0.99 * self.floor
        if s >= hi and self.weight > 1.0 / 129:
            self.weight /= 2
        elif s <= lo and self.weight <= 129.0:
            self.weight *= 2
        elif lo < s < hi:
            self.weight = 1.0
        self.history.append(self.weight)
        return self.weight

    def state_dict(self) -> dict:
        return {"floor": self.floor, "weight": self.weight}

    def load_state_dict(self, state: Mapping) -> None:
        self.floor = float(state["floor"])
        self.weight = float(state["weight"])


def model_shares(names: Sequence[str], model_weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """Each model's share of the ensemble mean: ``model_weights[name] / sum`` (missing names weigh 1).
    ``ValueError`` for weights of unknown models, negative weights or a zero sum."""
    unknown = set(model_weights or {}) - set(names)
    if unknown:
        raise ValueError(f"model weights name unknown models {sorted(unknown)}; models are {sorted(names)}")
    weights = {name: float((model_weights or {}).get(name, 1.0)) for name in names}
    wsum = sum(weights.values())
    if wsum <= 0 or min(weights.values()) < 0:
        raise ValueError(f"model weights must be >= 0 with a positive sum, got {weights}")
    return {name: w / wsum for name, w in weights.items()}


def ensemble_terms(
    prot_feats: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    clean_feats: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    *,
    logdet_form: str = "authors",
    use_logdet: bool = True,
    logdet_weight: float = 1.0,
    cosine_weight: float = 1.0,
    model_weights: Mapping[str, float] | None = None,
    c: float = GRAM_C,
    logdet_offsets: Mapping[str, torch.Tensor] | None = None,
    texture_ids: torch.Tensor | None = None,
    diversity_weight: float = 0.0,
) -> tuple[list[tuple[str, float, torch.Tensor]], dict[str, float]]:
    """The feature terms of the Protego loss, one per model and kind, with their weights.

    Returns ``(terms, values)``: ``terms`` a list of ``(key, weight, value)`` with ``key`` ``logdet/<name>``
    or ``cosine/<name>`` and ``weight`` the term weight times the model's share
    ``model_weights[name] / sum(model_weights)`` (the weighted loss is ``sum(weight * value)``); the log-det
    terms are left out when ``use_logdet`` is False. ``values`` holds every term's value as a float,
    the log-det ones too when they are not used (so a baseline's spread can still be logged).
    ``logdet_offsets[name]`` (``[D]``): the log-det is taken of ``normalize(z) - offset`` (the embeddings seen
    from that point, e.g. the user's clean centre) instead of ``z``. ``texture_ids`` (``[N]``, which texture each
    canvas carries) with ``diversity_weight > 0``: a ``diversity/<name>`` term per model
    (:func:`shift_diversity_term`), left out when every canvas carries the same texture.
    """
    if not isinstance(prot_feats, Mapping):
        prot_feats = {f"model{i}": v for i, v in enumerate(prot_feats)}
    if not isinstance(clean_feats, Mapping):
        clean_feats = {f"model{i}": v for i, v in enumerate(clean_feats)}
    if set(prot_feats) != set(clean_feats):
        raise ValueError(f"protected and clean features name different models: {sorted(prot_feats)} vs {sorted(clean_feats)}")
    if not prot_feats:
        raise ValueError("at least one surrogate model's features are needed")
    shares = model_shares(list(prot_feats), model_weights)
    terms: list[tuple[str, float, torch.Tensor]] = []
    values: dict[str, float] = {}
    for name, zp in prot_feats.items():
        share = shares[name]
        cos = cosine_term(zp, clean_feats[name])
        terms.append((f"cosine/{name}", cosine_weight * share, cos))
        values[f"cosine/{name}"] = float(cos.detach())
        zl = zp if logdet_offsets is None else F.normalize(zp, dim=1) - logdet_offsets[name].to(zp).detach()
        if use_logdet:
            ld = logdet_term(zl, form=logdet_form, c=c)
            terms.append((f"logdet/{name}", logdet_weight * share, ld))
        else:
            with torch.no_grad():
                ld = logdet_term(zl.detach(), form=logdet_form, c=c)
        values[f"logdet/{name}"] = float(ld.detach())
        if diversity_weight > 0 and texture_ids is not None:
            div = shift_diversity_term(zp, clean_feats[name], texture_ids)
            if div is not None:
                terms.append((f"diversity/{name}", diversity_weight * share, div))
                values[f"diversity/{name}"] = float(div.detach())
    return terms, values


def mid_feature_term(prot: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity between protected and clean intermediate feature maps (``[N, ...]``, each row
    flattened; ``clean`` constant), in ``[-1, 1]``: minimised, it pushes the protected photos' mid-layer features
    away from the clean ones (the transfer program's lever 2)."""
    if prot.shape != clean.shape or prot.dim() < 2:
        raise ValueError(f"feature maps must share a shape [N, ...]; got {tuple(prot.shape)} and {tuple(clean.shape)}")
    return F.cosine_similarity(prot.flatten(1), clean.detach().to(prot.dtype).flatten(1), dim=1).mean()


def mid_feature_terms(
    prot_maps: Mapping[str, torch.Tensor],
    clean_maps: Mapping[str, torch.Tensor],
    weight: float,
    model_weights: Mapping[str, float] | None = None,
) -> list[tuple[str, float, torch.Tensor]]:
    """``(mid/<name>, weight * model share, value)`` per model (:func:`mid_feature_term`), the shares of
    :func:`model_shares` as in :func:`ensemble_terms`; the terms go to :func:`protego_loss` as ``extra_terms``."""
    shares = model_shares(list(prot_maps), model_weights)
    return [(f"mid/{name}", weight * shares[name], mid_feature_term(prot_maps[name], clean_maps[name]))
            for name in prot_maps]


@dataclass
class LossTerms:
    """What :func:`protego_loss` computed, for callers that need more than the total (the training loop).

    ``feature_terms``: ``(key, weight, value)`` of every feature term that enters the total (the smoothed
    views' keys end in ``/<view>``); ``hinge``: the SSIM hinge ``max(floor - SSIM, 0)`` (a zero tensor
    without images, or, with ``lazy_ssim``, above the floor); ``ssim_weight`` its weight. The total is
    ``sum(w * v for feature_terms) + ssim_weight * hinge``, summed in that order.
    """

    total: torch.Tensor
    feature_terms: list[tuple[str, float, torch.Tensor]]
    hinge: torch.Tensor
    ssim_weight: float
    parts: dict[str, float]


def protego_loss(
    prot_feats: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    clean_feats: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    x_prot: torch.Tensor | None = None,
    x_clean: torch.Tensor | None = None,
    *,
    ssim_weight: float = 1.0,
    min_ssim: float = 0.95,
    logdet_form: str = "authors",
    use_logdet: bool = True,
    logdet_weight: float = 1.0,
    cosine_weight: float = 1.0,
    model_weights: Mapping[str, float] | None = None,
    c: float = GRAM_C,
    views: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    view_clean: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    logdet_offsets: Mapping[str, torch.Tensor] | None = None,
    texture_ids: torch.Tensor | None = None,
    diversity_weight: float = 0.0,
    lazy_ssim: bool = False,
    return_terms: bool = False,
    extra_terms: Sequence[tuple[str, float, torch.Tensor]] = (),
) -> tuple[torch.Tensor, dict[str, float]] | LossTerms:
    """The Protego loss over a surrogate ensemble, and its parts. The one definition: ``train_ppt`` calls it.

    ``prot_feats[name]`` / ``clean_feats[name]`` are one model's ``[N, D]`` embeddings of the protected and
    clean canvases (clean ones constant). With the defaults this is the authors' loss
    ``mean_f(L_hyper + L_feat) + w * hinge`` (the SSIM term is model independent, so averaging it over
    ``f`` as the authors do leaves it unchanged). ``use_logdet=False`` gives the Chameleon-style baseline
    (cosine + SSIM). ``model_weights`` (default 1 each) give a weighted mean over models.

    ``views``: features of transformed copies of the protected canvases (``{"blur": {name: [N, D]}}``, the
    LowKey-style smoothed view); the feature loss is then the mean over the canvas and every view.
    ``view_clean``: the clean reference of a view (``{"blur": {name: [N, D]}}``, the clean canvas under the same
    view); a view without one is compared with ``clean_feats``.
    ``lazy_ssim``: compute SSIM without autograd first and build the hinge's graph only at or below the
    floor (above it the hinge and its gradient are exactly zero, and a no-grad SSIM is cheaper than SSIM
    forward+backward); the value and gradient are the same. ``extra_terms``: more ``(key, weight, value)`` feature
    terms added to the total and logged under their keys (the mid-layer push, :func:`mid_feature_terms`).
    ``logdet_offsets``, ``texture_ids`` and
    ``diversity_weight`` (several textures per user): see :func:`ensemble_terms`.

    Without ``x_prot``/``x_clean`` the SSIM term is omitted. Returns ``(total, parts)`` with ``parts``
    holding floats: ``logdet/<name>`` (logged even when unused), ``cosine/<name>`` (of the canvas, not the
    views), ``ssim``, ``ssim_hinge``, ``ssim_weight``, ``total``; with ``return_terms`` a :class:`LossTerms`.
    """
    kw = dict(
        logdet_form=logdet_form,
        use_logdet=use_logdet,
        logdet_weight=logdet_weight,
        cosine_weight=cosine_weight,
        model_weights=model_weights,
        c=c,
        logdet_offsets=logdet_offsets,
        texture_ids=texture_ids,
        diversity_weight=diversity_weight,
    )
    terms, parts = ensemble_terms(prot_feats, clean_feats, **kw)
    if views:
        share = 1.0 / (1 + len(views))
        terms = [(k, w * share, v) for k, w, v in terms]
        for view, feats in views.items():
            ref = (view_clean or {}).get(view) or clean_feats
            terms_v, _ = ensemble_terms(feats, ref, **kw)
            terms += [(f"{k}/{view}", w * share, v) for k, w, v in terms_v]
    for key, w, v in extra_terms:
        terms.append((key, w, v))
        parts[key] = float(v.detach())
    total = sum(w * v for _, w, v in terms)
    hinge = torch.zeros((), dtype=terms[0][2].dtype, device=terms[0][2].device)
    if x_prot is not None and x_clean is not None:
        if lazy_ssim:
            with torch.no_grad():
                s = ssim(x_prot, x_clean)
            if float(s) <= min_ssim:
                hinge, _ = ssim_hinge(x_prot, x_clean, min_ssim)
            else:
                hinge = torch.zeros((), device=x_prot.device)
        else:
            hinge, s = ssim_hinge(x_prot, x_clean, min_ssim)
        parts["ssim"] = float(s.detach())
        parts["ssim_hinge"] = float(hinge.detach())
        parts["ssim_weight"] = float(ssim_weight)
        total = total + ssim_weight * hinge
    parts["total"] = float(total.detach())
    if return_terms:
        return LossTerms(total, terms, hinge, float(ssim_weight), parts)
    return total, parts
