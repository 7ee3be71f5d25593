"""**Fawkes-style** (Shan et al., "Fawkes: Protecting Privacy against Unauthorized Deep Learning Models",
USENIX Security 2020), :func:`fawkes_protect`: a per-image targeted cloak. The target identity is the
candidate of a public pool (:class:`TargetPool`, an explicit argument) whose minimum
distance to the user's images is largest (:func:`select_target_label`); each image gets one of the
target's images. Loss per image ``mean_f ||f(x') - f(x_T)||_2 / ||f(x_T)||_2 + sd * max(DSSIM - th, 0)^2``
with ``DSSIM = (1 - SSIM) / 2``, ``sd = 1e9``, minimised with Adadelta (rho 0.95, eps 1e-7, Keras'
defaults as Fawkes) on a modifier ``m`` in a tanh reparameterisation of the L-inf box
``[lo, hi] = [max(0, x - eps), min(1, x + eps)]``: ``x' = lo + (hi - lo) (tanh(atanh(x~) + m / (hi - lo)) + 1) / 2``
with ``x~`` the clean pixel's place in the box, so every iterate is within the bound and ``dx'/dm`` is
Fawkes' ``(1 - tanh^2) / 2`` (their tanh spans [0, 1]), which keeps the modes' learning rates meaningful. Modes (:data:`FAWKES_MODES`, ``fawkes/protection.py``) give the
step count and learning rate; the DSSIM threshold defaults to the study's floor, ``th = (1 - min_ssim) / 2``
(0.025), not the mode's (pass ``dssim_threshold`` for it). The ensemble average replaces Fawkes' sum.

The common budget (L-inf bound and SSIM floor) and the per-image methods' "best iterate at the floor" rule: see
:mod:`protego_nb.protect.methods`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.embed import embed_all
from ..ssim import per_image_ssim
from ..train import as_model_dict
from .common import check_budget, check_faces, identity_of, linf_box, progress_bar


# ---------------------------------------------------------------------------------------- target pool
@dataclass
class TargetPool:
    """Candidate target identities for Fawkes: canvases of other people with their identity labels.

    ``labels[i]`` is the identity of entry ``i``; ``x`` ``[M, 3, H, W]`` / ``lm`` ``[M, 5, 2]`` its canvas
    and landmarks. Embeddings are computed per surrogate on first use and kept (CPU) in ``features``; a pool
    may also be given as precomputed ``features`` (``{model name: [M, D]}``) without canvases.
    """

    labels: list[str]
    x: torch.Tensor | None = None
    lm: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = [str(v) for v in self.labels]
        m = len(self.labels)
        if m == 0:
            raise ValueError("a target pool needs at least one entry")
        if (self.x is None) != (self.lm is None):
            raise ValueError("a target pool needs both canvases and landmarks, or neither")
        if self.x is not None:
            check_faces(self.x, self.lm, "target pool")
            if self.x.shape[0] != m:
                raise ValueError(f"target pool: {m} labels but {self.x.shape[0]} canvases")
        for name, f in self.features.items():
            if f.dim() != 2 or f.shape[0] != m:
                raise ValueError(f"target pool: features of {name!r} must be [{m}, D], got {tuple(f.shape)}")
        if self.x is None and not self.features:
            raise ValueError("a target pool needs canvases or precomputed features")

    @classmethod
    def from_faces(cls, faces, labels: Sequence[str] | None = None) -> TargetPool:
        """A pool from a FaceSet (e.g. the split's distractors); labels default to the ids' identity folder."""
        labels = [identity_of(i) for i in faces.ids] if labels is None else list(labels)
        return cls(labels, faces.x, faces.lm)

    def __len__(self) -> int:
        return len(self.labels)

    def features_for(
        self, name: str, model: nn.Module, device: str | torch.device = "cpu", batch_size: int = 32
    ) -> torch.Tensor:
        """The pool's embeddings ``[M, D]`` by surrogate ``name`` (computed once with ``model``)."""
        if name not in self.features:
            if self.x is None:
                raise ValueError(
                    f"target pool has no canvases and no precomputed features for model {name!r}"
                )
            self.features[name] = embed_all({name: model}, self.x, self.lm, batch_size, device)[
                name
            ].cpu()
        return self.features[name]


def select_target_label(
    user_features: Mapping[str, torch.Tensor],
    pool_features: Mapping[str, torch.Tensor],
    pool_labels: Sequence[str],
    exclude: Sequence[str] = (),
    top_k: int = 1,
    generator: torch.Generator | None = None,
) -> str:
    """Fawkes' ``select_target_label``: the candidate identity farthest from the user.

    Per model the embeddings are L2-normalised and concatenated over models (equal weight per model);
    each candidate identity is represented by the mean of its entries; its score is the minimum L2
    distance to the user's images, and the identity with the largest score wins. ``top_k > 1`` picks
    uniformly among the ``top_k`` best with ``generator`` (the released Fawkes uses 20). Identities in
    ``exclude`` (the user's own) are never chosen.
    """
    names = sorted(user_features)
    if not names or set(names) != set(pool_features):
        raise ValueError(
            f"user and pool features must name the same models: {sorted(user_features)} vs {sorted(pool_features)}"
        )
    labels = [str(v) for v in pool_labels]
    cands = sorted(set(labels) - {str(e) for e in exclude})
    if not cands:
        raise ValueError("no candidate target identity left in the pool after excluding the user's own")

    def cat(feats: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([F.normalize(feats[n].detach().cpu().double(), dim=1) for n in names], 1)

    u, p = cat(user_features), cat(pool_features)
    if p.shape[0] != len(labels):
        raise ValueError(f"{len(labels)} pool labels but {p.shape[0]} pool embeddings")
    lab_idx = {c: [i for i, v in enumerate(labels) if v == c] for c in cands}
    centroids = torch.stack([p[lab_idx[c]].mean(0) for c in cands])
    score = torch.cdist(u, centroids).min(0).values  # [K]: min distance to the user's images
    order = torch.argsort(score, descending=True)
    if top_k <= 1:
        return cands[int(order[0])]
    top = order[: int(top_k)]
    pick = int(torch.randint(len(top), (1,), generator=generator))
    return cands[int(top[pick])]


# ---------------------------------------------------------------------------------------- Fawkes
@dataclass(frozen=True)
class FawkesMode:
    """A Fawkes protection mode (``fawkes/protection.py`` @e2d4625): DSSIM threshold, steps, Adadelta lr."""

    threshold: float
    steps: int
    lr: float


FAWKES_MODES: dict[str, FawkesMode] = {
    "min": FawkesMode(0.002, 20, 40.0),
    "low": FawkesMode(0.003, 50, 35.0),
    "mid": FawkesMode(0.005, 200, 20.0),
    "high": FawkesMode(0.008, 500, 10.0),
    "ultra": FawkesMode(0.01, 1000, 8.0),
}
#: The mode of the full profile: ``high``, the one FaceCure evaluated Fawkes v1.0 with.
DEFAULT_FAWKES_MODE = "high"
#: Fawkes' DSSIM penalty weight ``sd``.
FAWKES_SD = 1e9


def _target_distance(
    models: Mapping[str, nn.Module], x: torch.Tensor, lm: torch.Tensor, targets: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """``[B]`` Fawkes' ``||f(x) - f(x_T)||_2 / ||f(x_T)||_2``, averaged over the ensemble."""
    d = x.new_zeros(x.shape[0])
    for k, mdl in models.items():
        t = targets[k]
        d = d + (mdl(x, lm) - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)
    return d / len(models)


def fawkes_protect(
    faces,
    surrogates: Mapping[str, nn.Module],
    eps: float = 16 / 255,
    min_ssim: float = 0.95,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    *,
    pool: TargetPool,
    mode: str = DEFAULT_FAWKES_MODE,
    steps: int | None = None,
    lr: float | None = None,
    dssim_threshold: float | None = None,
    top_k: int = 1,
    batch_size: int = 16,
    progress: bool = False,
    return_info: bool = False,
):
    """Fawkes-style cloaks of a FaceSet's canvases ``[N, 3, H, W]`` (CPU; see the module docstring).

    ``kind="per_image"`` method entry point. ``pool`` holds the candidate targets;
    the user's own identity (the ids' folder) is excluded. ``mode`` picks steps and lr unless ``steps`` /
    ``lr`` are given; ``dssim_threshold`` defaults to ``(1 - min_ssim) / 2``. With ``return_info`` returns
    ``(protected, info)`` with the target label, per-image target index into the pool, and the normalised
    target distance of the clean and returned images (``dist_clean``, ``dist``, ``[N]``) and their SSIM.
    """
    check_budget(eps, min_ssim)
    if mode not in FAWKES_MODES:
        raise ValueError(f"unknown Fawkes mode {mode!r}; choose one of {sorted(FAWKES_MODES)}")
    if not isinstance(pool, TargetPool):
        raise TypeError(f"Fawkes needs a TargetPool of candidate targets (e.g. TargetPool.from_faces(distractors)), got {type(pool).__name__}")
    x_all, lm_all = faces.x, faces.lm
    check_faces(x_all, lm_all, "Fawkes")
    m = FAWKES_MODES[mode]
    steps = m.steps if steps is None else int(steps)
    lr = m.lr if lr is None else float(lr)
    th = (1 - min_ssim) / 2 if dssim_threshold is None else float(dssim_threshold)
    if steps < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"steps {steps} must be >= 0, lr {lr} > 0 and batch_size {batch_size} >= 1")
    models = as_model_dict(surrogates)
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = int(x_all.shape[0])

    user_feats = embed_all(models, x_all, lm_all, batch_size, device)
    pool_feats = {k: pool.features_for(k, mdl, device) for k, mdl in models.items()}
    ids = list(getattr(faces, "ids", []))
    label = select_target_label(
        user_feats, pool_feats, pool.labels, exclude={identity_of(i) for i in ids}, top_k=top_k, generator=gen
    )
    entries = torch.tensor([i for i, v in enumerate(pool.labels) if v == label])
    entries = entries[torch.randperm(len(entries), generator=gen)]
    target_idx = entries[torch.arange(n) % len(entries)]  # Fawkes: the target's images, shuffled, cycled
    targets = {k: v[target_idx].to(device) for k, v in pool_feats.items()}

    out = torch.empty_like(x_all)
    dist_clean, dist_best, ssim_best = torch.empty(n), torch.empty(n), torch.empty(n)
    pbar = progress_bar(n, "Fawkes", progress)
    for s0 in range(0, n, batch_size):
        sl = slice(s0, min(s0 + batch_size, n))
        x = x_all[sl].to(device)
        lm = lm_all[sl].to(device=device, dtype=torch.float32)
        tgt = {k: v[sl] for k, v in targets.items()}
        lo, hi = linf_box(x, eps)
        base = torch.atanh(((x - lo) / (hi - lo) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        scale = 1.0 / (hi - lo)  # a unit modifier step moves a pixel as in Fawkes' tanh over [0, 1]
        # Fawkes' modifier init U(-1, 1) * 1e-4
        w = ((torch.rand(x.shape, generator=gen) * 2 - 1) * 1e-4).to(device).requires_grad_(True)
        opt = torch.optim.Adadelta([w], lr=lr, rho=0.95, eps=1e-7)
        best = x.clone()
        best_d = torch.full((x.shape[0],), float("inf"), device=device)
        for it in range(steps + 1):  # the last pass only evaluates the final iterate
            x_adv = lo + (hi - lo) * (torch.tanh(base + w * scale) + 1) / 2
            d = _target_distance(models, x_adv, lm, tgt)
            with torch.no_grad():
                s = per_image_ssim(x_adv, x)
                if it == 0:
                    dist_clean[sl] = _target_distance(models, x, lm, tgt).cpu()
                ok = (s >= min_ssim) & (d < best_d)
                best[ok] = x_adv[ok].detach()
                best_d = torch.where(ok, d.detach(), best_d)
            if it == steps:
                break
            loss = d.sum()
            over = (1 - s) / 2 > th
            if bool(over.any()):
                sel = over.nonzero().flatten()
                dssim = (1 - per_image_ssim(x_adv[sel], x[sel])) / 2
                loss = loss + FAWKES_SD * torch.clamp(dssim - th, min=0).pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        # images never feasible beyond the clean one stay clean (SSIM 1); exact bound despite float round-off
        best = torch.minimum(torch.maximum(best, lo), hi).detach()
        out[sl] = best.cpu()
        with torch.no_grad():
            ssim_best[sl] = per_image_ssim(best, x).cpu()
            dist_best[sl] = _target_distance(models, best, lm, tgt).cpu()
        pbar.update(x.shape[0])
    pbar.close()
    if return_info:
        info = {
            "target": label,
            "target_index": target_idx.tolist(),
            "dist_clean": dist_clean,
            "dist": dist_best,
            "ssim": ssim_best,
            "steps": steps,
            "lr": lr,
            "dssim_threshold": th,
        }
        return out, info
    return out
