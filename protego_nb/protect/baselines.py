"""Peer baselines in the study harness: OPOM, Fawkes-style and LowKey-style protection.

Every method runs under Protego's budget: the L-inf bound ``eps`` (default 16/255) and the SSIM floor
(0.95; SSIM as :func:`protego_nb.protect.losses.ssim`, kornia's Gaussian-window SSIM) - the peers' own
constraints are replaced by these two so that the recall tables compare methods at equal visibility.
The objectives, update rules and hyper-parameters follow ``reference/protego_method.md`` section 5.

* **OPOM** (Zhong & Deng, "OPOM: Customized Invisible Cloak towards Face Privacy Protection", TPAMI 2022),
  :func:`opom_train`: one universal additive 2D mask per user. Each protected embedding ``z'_i`` (L2-normed)
  is pushed away from the user's clean feature subspace: maximise ``||z'_i - X^T a_i||^2`` where ``X`` holds
  the user's clean L2-normed embeddings and ``a_i`` is ``z'_i``'s projection coefficient onto the *affine
  hull* (least squares with ``sum(a) = 1``; closed form through a pseudo-inverse, :func:`affine_hull_coefficients`)
  or the *convex hull* (also ``a >= 0``; accelerated projected gradient onto the simplex,
  :func:`convex_hull_coefficients`); ``a_i`` is a constant of the step (solved without autograd, as the
  authors' cvxpy call). The first ``n_init`` rounds use the class centre ``a = 1/n`` (OPOM's ``nter = 5``).
  The FI-UAP variant (``hull="feature"``: away from the image's own clean embedding) is included.
  Update, as the authors' ``FIM.process``: ``U <- clamp(U + lr * sign(mean_batch grad), -eps, eps)``.
  Differences: ``U`` starts from Chameleon's init ``U(-lr, lr)`` (OPOM starts from 0, where the FI-UAP
  gradient and, for clean embeddings inside the hull, the hull gradient vanish, so a signed step never
  leaves 0); the squared distance is summed over the embedding dimensions (OPOM's MSE times
  ``D``, so it is on the scale of the SSIM hinge; a signed step ignores the scale otherwise), and the
  SSIM hinge with the dynamic weight (:class:`~protego_nb.protect.losses.DynamicSSIMWeight`) is added so
  that the SSIM floor matches the Protego-family methods. Epochs, batch size and step size come from the
  study's :class:`~protego_nb.protect.train.TrainConfig`, as for the Chameleon-style baseline.
* **Fawkes-style** (Shan et al., "Fawkes: Protecting Privacy against Unauthorized Deep Learning Models",
  USENIX Security 2020), :func:`fawkes_protect`: a per-image targeted cloak. The target identity is the
  candidate of a public pool (:class:`TargetPool`, set with :func:`set_target_pool`) whose minimum
  distance to the user's images is largest (:func:`select_target_label`); each image gets one of the
  target's images. Loss per image ``mean_f ||f(x') - f(x_T)||_2 / ||f(x_T)||_2 + sd * max(DSSIM - th, 0)^2``
  with ``DSSIM = (1 - SSIM) / 2``, ``sd = 1e9``, minimised with Adadelta (rho 0.95, eps 1e-7, Keras'
  defaults as Fawkes) on a modifier ``m`` in a tanh reparameterisation of the L-inf box
  ``[lo, hi] = [max(0, x - eps), min(1, x + eps)]``: ``x' = lo + (hi - lo) (tanh(atanh(x~) + m / (hi - lo)) + 1) / 2``
  with ``x~`` the clean pixel's place in the box, so every iterate is within the bound and ``dx'/dm`` is
  Fawkes' ``(1 - tanh^2) / 2`` (their tanh spans [0, 1]), which keeps the modes' learning rates meaningful. Modes (:data:`FAWKES_MODES`, ``fawkes/protection.py``) give the
  step count and learning rate; the DSSIM threshold defaults to the study's floor, ``th = (1 - min_ssim) / 2``
  (0.025), not the mode's (pass ``dssim_threshold`` for it). The ensemble average replaces Fawkes' sum.
* **LowKey-style** (Cherepanova et al., "LowKey: Leveraging Adversarial Attacks to Protect Social Media
  Users from Facial Recognition", ICLR 2021), :func:`lowkey_protect`: a per-image untargeted attack
  maximising the mean over the ensemble of ``||f(x') - f(x)||^2 / ||f(x)||^2``, each model also fed a
  Gaussian-smoothed copy (``kornia.filters.gaussian_blur2d``, kernel 7, sigma 3; its clean target is the
  model's embedding of the smoothed clean image, as LowKey's ``get_ensemble(..., combination=True)``).
  Signed steps of 0.0025 for 50 iterations from Gaussian init noise of std 0.005. **LPIPS is not available
  offline here, so LowKey's ``- c_sim * LPIPS`` penalty is replaced by the per-image SSIM hinge with the
  dynamic weight**, and the L-inf bound ``eps`` (which LowKey's ``lpips`` mode does not use) is enforced.

Both per-image methods work in batches (``batch_size`` 16) and return, for each image, the best iterate
(closest to the target / farthest from clean) among those meeting the SSIM floor; the clean image itself
counts, so the floor holds for every returned image. :func:`register_all` registers the methods in
:data:`protego_nb.study.METHODS`; ``steps`` there sets the per-image step budget (the CI profile's seconds).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import losses
from .texture import FlatWarp, init_texture
from .train import TrainConfig, clean_features
from .train import _as_dict as _models

__all__ = [
    "BASELINES",
    "DEFAULT_FAWKES_MODE",
    "FAWKES_MODES",
    "LOWKEY_DEFAULTS",
    "OPOMResult",
    "FawkesMode",
    "FeatureHull",
    "TargetPool",
    "affine_hull_coefficients",
    "convex_hull_coefficients",
    "fawkes_protect",
    "get_target_pool",
    "lowkey_protect",
    "opom_texture",
    "opom_train",
    "per_image_ssim",
    "project_simplex",
    "register_all",
    "select_target_label",
    "set_target_pool",
]

#: The baselines :func:`register_all` adds to ``study.METHODS`` (plus the ``opom_affine`` variant).
BASELINES = ("opom", "fawkes", "lowkey")
#: OPOM hull types: class centre (``a = 1/n``), affine hull, convex hull, FI-UAP (own clean embedding).
HULLS = ("centre", "affine", "convex", "feature")


# ---------------------------------------------------------------------------------------- small helpers
def per_image_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of each image pair ``[B]`` (the quantity :func:`losses.ssim` averages; differentiable)."""
    import kornia.metrics

    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(
            f"SSIM needs two [B, C, H, W] batches of one shape; got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    smap = kornia.metrics.ssim(x, y.to(x.dtype), window_size=11, max_val=1.0, eps=0.0, padding="valid")
    return smap.mean((1, 2, 3))


def _check_faces(x: torch.Tensor, lm: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{what}: canvases must be [N, 3, H, W], got {tuple(x.shape)}")
    if x.shape[0] < 1:
        raise ValueError(f"{what}: no canvases")
    if lm.shape != (x.shape[0], 5, 2):
        raise ValueError(f"{what}: landmarks must be [N, 5, 2] = {(x.shape[0], 5, 2)}, got {tuple(lm.shape)}")
    if not torch.is_floating_point(x) or float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError(f"{what}: canvases must be float tensors in [0, 1]")
    if min(x.shape[-2:]) < 11:
        raise ValueError(
            f"{what}: the SSIM floor needs canvases of at least 11x11, got {tuple(x.shape[-2:])}"
        )


def _check_budget(eps: float, min_ssim: float) -> None:
    if not 0 < eps < 1:
        raise ValueError(f"eps {eps} must be in (0, 1)")
    if not 0 < min_ssim <= 1:
        raise ValueError(f"min_ssim {min_ssim} must be in (0, 1]")


def _identity(image_id: str) -> str:
    """The identity of a split id ``Name/Name_0001.jpg`` (the folder), else the id itself."""
    return image_id.split("/", 1)[0] if "/" in image_id else image_id


def _tqdm(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)


# ---------------------------------------------------------------------------------------- hulls (OPOM)
def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` ``[..., n]`` onto the probability simplex.

    The sort-based algorithm (Held, Wolfe & Crowder 1974; Duchi et al., ICML 2008): with ``u`` sorted
    descending, ``rho`` the largest ``k`` with ``u_k > (sum_{j<=k} u_j - 1) / k`` and
    ``theta = (sum_{j<=rho} u_j - 1) / rho``, the projection is ``max(v - theta, 0)``.
    """
    if v.shape[-1] < 1:
        raise ValueError("cannot project an empty vector onto the simplex")
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1
    k = torch.arange(1, v.shape[-1] + 1, dtype=v.dtype, device=v.device)
    rho = (u - css / k > 0).sum(-1, keepdim=True).clamp_min(1)
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return torch.clamp(v - theta, min=0)


class FeatureHull:
    """The affine / convex hull of a user's clean embeddings ``points`` ``[n, D]`` (rows as given).

    :meth:`coefficients` returns, for query embeddings ``z`` ``[B, D]``, the weights ``a`` ``[B, n]``
    (``sum(a) = 1``) of the nearest hull point ``a @ points``. Everything is solved in float64.
    """

    def __init__(self, points: torch.Tensor) -> None:
        if points.dim() != 2 or points.shape[0] < 1:
            raise ValueError(f"hull points must be [n >= 1, D], got {tuple(points.shape)}")
        if not bool(torch.isfinite(points).all()):
            raise ValueError("hull points must be finite")
        self.points = points.detach().to(torch.float64)
        self.n = int(points.shape[0])
        self.centre = self.points.mean(0)
        # affine hull: centre + row space of the centred points; pinv gives the least-squares coordinates
        self._pinv = torch.linalg.pinv(self.points - self.centre)  # [D, n]
        # Lipschitz constant of grad ||a X - z||^2 = 2 (a X - z) X^T: 2 * largest eigenvalue of X X^T
        self._lip = float(2 * torch.linalg.matrix_norm(self.points, ord=2) ** 2) or 1.0

    def affine(self, z: torch.Tensor) -> torch.Tensor:
        """Weights of the nearest point of the affine hull (least squares with ``sum(a) = 1``, minimum norm)."""
        z = self._query(z)
        b = (z - self.centre) @ self._pinv  # [B, n]: centred coordinates, sum(b) arbitrary
        return b - b.mean(-1, keepdim=True) + 1.0 / self.n

    def convex(self, z: torch.Tensor, iters: int = 100) -> torch.Tensor:
        """Weights of the nearest point of the convex hull (``a >= 0``, ``sum(a) = 1``).

        FISTA (Beck & Teboulle 2009) with step ``1 / L`` and :func:`project_simplex`, warm-started from the
        affine solution projected onto the simplex; ``iters`` iterations.
        """
        z = self._query(z)
        a = project_simplex(self.affine(z))
        y, t = a, 1.0
        for _ in range(int(iters)):
            grad = 2 * (y @ self.points - z) @ self.points.T
            a_next = project_simplex(y - grad / self._lip)
            t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
            y = a_next + ((t - 1) / t_next) * (a_next - a)
            a, t = a_next, t_next
        return a

    def coefficients(self, z: torch.Tensor, kind: str, iters: int = 100) -> torch.Tensor:
        """``kind`` ``"centre"`` (``a = 1/n``), ``"affine"`` or ``"convex"``."""
        if kind == "centre":
            z = self._query(z)
            return torch.full((z.shape[0], self.n), 1.0 / self.n, dtype=torch.float64, device=z.device)
        if kind == "affine":
            return self.affine(z)
        if kind == "convex":
            return self.convex(z, iters)
        raise ValueError(f"unknown hull kind {kind!r}; choose 'centre', 'affine' or 'convex'")

    def project(self, z: torch.Tensor, kind: str, iters: int = 100) -> torch.Tensor:
        """The nearest hull points ``[B, D]`` (in ``z``'s dtype)."""
        return (self.coefficients(z, kind, iters) @ self.points).to(z.dtype)

    def distance2(self, z: torch.Tensor, kind: str, iters: int = 100) -> torch.Tensor:
        """Squared Euclidean distance ``[B]`` of each row of ``z`` to the hull."""
        return ((z.detach().to(torch.float64) - self.project(z, kind, iters).to(torch.float64)) ** 2).sum(-1)

    def _query(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() != 2 or z.shape[1] != self.points.shape[1]:
            raise ValueError(f"queries must be [B, {self.points.shape[1]}], got {tuple(z.shape)}")
        return z.detach().to(device=self.points.device, dtype=torch.float64)


def affine_hull_coefficients(points: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``argmin_a ||a @ points - z_i||`` s.t. ``sum(a) = 1`` for each row of ``z`` (``[B, n]``, float64)."""
    return FeatureHull(points).affine(z)


def convex_hull_coefficients(points: torch.Tensor, z: torch.Tensor, iters: int = 100) -> torch.Tensor:
    """As :func:`affine_hull_coefficients` with ``a >= 0`` too (the convex hull)."""
    return FeatureHull(points).convex(z, iters)


# ---------------------------------------------------------------------------------------- OPOM
@dataclass
class OPOMResult:
    """OPOM's mask ``[1, 3, T, T]`` in ``[-eps, eps]`` and per-step history (``distance``, ``ssim``, ...)."""

    texture: torch.Tensor
    history: dict[str, list[float]]
    steps: int


def opom_train(
    canvases: torch.Tensor,
    landmarks: torch.Tensor,
    surrogates: Mapping[str, nn.Module] | Sequence[nn.Module],
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    hull: str = "convex",
    n_init: int = 5,
    hull_iters: int = 100,
    progress: bool = False,
) -> OPOMResult:
    """Train one user's OPOM mask on their canvases (see the module docstring).

    ``cfg`` gives ``epochs``, ``batch_size``, the step ``cfg.lr`` (``lr_rel * eps``), ``eps``, ``min_ssim``,
    ``texture_size`` and ``shuffle`` (with ``generator``). ``hull`` is ``"convex"`` (OPOM type 9),
    ``"affine"`` (type 8), ``"centre"`` (type 7 throughout) or ``"feature"`` (FI-UAP). The first
    ``min(n_init, epochs // 2)`` epochs use the class centre (for ``affine``/``convex``), so a short run
    still reaches the hull stage. The history's ``distance`` is the ensemble-mean squared distance of the
    batch's protected embeddings to the current target point (before the step).
    """
    cfg.validate()
    if hull not in HULLS:
        raise ValueError(f"unknown OPOM hull {hull!r}; choose one of {HULLS}")
    if n_init < 0 or hull_iters < 1:
        raise ValueError(f"n_init {n_init} must be >= 0 and hull_iters {hull_iters} >= 1")
    _check_faces(canvases, landmarks, "OPOM")
    models = _models(surrogates)
    device = torch.device(device)
    n = int(canvases.shape[0])
    warps = FlatWarp.for_canvases(canvases)
    clean = {
        k: F.normalize(v, dim=1)
        for k, v in clean_features(models, canvases, landmarks, cfg.batch_size, device).items()
    }
    hulls = {k: FeatureHull(v) for k, v in clean.items()}
    gen = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)
    # Chameleon's init U(-step, step): breaks OPOM's zero start (where gradients vanish) without the SSIM
    # cost of U(-eps, eps) (SSIM about 0.64 on LFW canvases at eps 16/255)
    texture = init_texture(cfg.lr, gen, cfg.texture_size, device)
    ssim_w = losses.DynamicSSIMWeight(floor=cfg.min_ssim)
    n_centre = min(int(n_init), cfg.epochs // 2) if hull in ("affine", "convex") else 0
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    history: dict[str, list[float]] = {}
    pbar = _tqdm(cfg.epochs * steps_per_epoch, "OPOM", progress)
    step = 0
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen) if cfg.shuffle else torch.arange(n)
        kind = "centre" if epoch < n_centre else hull
        for k in range(steps_per_epoch):
            idx = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            x = canvases[idx].to(device)
            lm = landmarks[idx].to(device=device, dtype=torch.float32)
            tex = texture.detach().clone().requires_grad_(True)
            x_prot = torch.clamp(x + warps.select(idx).to(device).perturbation(tex, cfg.eps), 0.0, 1.0)
            with torch.no_grad():
                s = losses.ssim(x_prot, x)
            hinge = (
                losses.ssim_hinge(x_prot, x, cfg.min_ssim)[0] if float(s) <= cfg.min_ssim else x.new_zeros(())
            )
            dist = x.new_zeros(())
            for name, model in models.items():
                z = F.normalize(model(x_prot, lm), dim=1)
                with torch.no_grad():
                    if kind == "feature":
                        target = clean[name][idx.to(clean[name].device)]
                    else:
                        target = hulls[name].project(z, kind, hull_iters)
                dist = dist + ((z - target.to(z)) ** 2).sum(1).mean() / len(models)
            total = -dist + ssim_w.weight * hinge
            (grad,) = torch.autograd.grad(total, tex)
            with torch.no_grad():
                texture = torch.clamp(texture - cfg.lr * torch.sign(grad / len(idx)), -cfg.eps, cfg.eps)
            for key, val in (
                ("step", step),
                ("epoch", epoch),
                ("distance", float(dist.detach())),
                ("ssim", float(s)),
                ("ssim_weight", ssim_w.weight),
                ("total", float(total.detach())),
            ):
                history.setdefault(key, []).append(float(val))
            history.setdefault("hull", []).append(float(HULLS.index(kind)))
            ssim_w.update(float(s))
            step += 1
            pbar.update(1)
    pbar.close()
    return OPOMResult(texture.detach().cpu(), history, step)


def opom_texture(
    faces,
    surrogates: Mapping[str, nn.Module],
    cfg: TrainConfig,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    hull: str = "convex",
    n_init: int = 5,
    hull_iters: int = 100,
) -> torch.Tensor:
    """``study`` ``kind="texture_fn"`` entry point: the OPOM mask ``[1, 3, T, T]`` of a FaceSet's canvases."""
    return opom_train(
        faces.x, faces.lm, surrogates, cfg, device, generator, hull=hull, n_init=n_init, hull_iters=hull_iters
    ).texture


# ---------------------------------------------------------------------------------------- target pool (Fawkes)
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
            _check_faces(self.x, self.lm, "target pool")
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
        labels = [_identity(i) for i in faces.ids] if labels is None else list(labels)
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
            self.features[name] = clean_features({name: model}, self.x, self.lm, batch_size, device)[
                name
            ].cpu()
        return self.features[name]


_TARGET_POOL: TargetPool | None = None


def set_target_pool(pool: TargetPool | None) -> None:
    """Set (or clear, with None) the pool :func:`fawkes_protect` uses when none is passed."""
    global _TARGET_POOL
    if pool is not None and not isinstance(pool, TargetPool):
        raise TypeError(f"expected a TargetPool, got {type(pool).__name__}")
    _TARGET_POOL = pool


def get_target_pool() -> TargetPool | None:
    """The module-level target pool (None until :func:`set_target_pool`)."""
    return _TARGET_POOL


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


def _box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf box ``[max(0, x - eps), min(1, x + eps)]`` of each pixel (width ``>= eps``)."""
    return torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)


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
    pool: TargetPool | None = None,
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

    ``study`` ``kind="per_image"`` entry point. ``pool`` defaults to the module's (:func:`set_target_pool`);
    the user's own identity (the ids' folder) is excluded. ``mode`` picks steps and lr unless ``steps`` /
    ``lr`` are given; ``dssim_threshold`` defaults to ``(1 - min_ssim) / 2``. With ``return_info`` returns
    ``(protected, info)`` with the target label, per-image target index into the pool, and the normalised
    target distance of the clean and returned images (``dist_clean``, ``dist``, ``[N]``) and their SSIM.
    """
    _check_budget(eps, min_ssim)
    if mode not in FAWKES_MODES:
        raise ValueError(f"unknown Fawkes mode {mode!r}; choose one of {sorted(FAWKES_MODES)}")
    pool = pool if pool is not None else _TARGET_POOL
    if pool is None:
        raise ValueError(
            "Fawkes needs a target pool: pass pool= or call baselines.set_target_pool(TargetPool.from_faces(...))"
        )
    x_all, lm_all = faces.x, faces.lm
    _check_faces(x_all, lm_all, "Fawkes")
    m = FAWKES_MODES[mode]
    steps = m.steps if steps is None else int(steps)
    lr = m.lr if lr is None else float(lr)
    th = (1 - min_ssim) / 2 if dssim_threshold is None else float(dssim_threshold)
    if steps < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"steps {steps} must be >= 0, lr {lr} > 0 and batch_size {batch_size} >= 1")
    models = _models(surrogates)
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = int(x_all.shape[0])

    user_feats = clean_features(models, x_all, lm_all, batch_size, device)
    pool_feats = {k: pool.features_for(k, mdl, device) for k, mdl in models.items()}
    ids = list(getattr(faces, "ids", []))
    label = select_target_label(
        user_feats, pool_feats, pool.labels, exclude={_identity(i) for i in ids}, top_k=top_k, generator=gen
    )
    entries = torch.tensor([i for i, v in enumerate(pool.labels) if v == label])
    entries = entries[torch.randperm(len(entries), generator=gen)]
    target_idx = entries[torch.arange(n) % len(entries)]  # Fawkes: the target's images, shuffled, cycled
    targets = {k: v[target_idx].to(device) for k, v in pool_feats.items()}

    out = torch.empty_like(x_all)
    dist_clean, dist_best, ssim_best = torch.empty(n), torch.empty(n), torch.empty(n)
    pbar = _tqdm(n, "Fawkes", progress)
    for s0 in range(0, n, batch_size):
        sl = slice(s0, min(s0 + batch_size, n))
        x = x_all[sl].to(device)
        lm = lm_all[sl].to(device=device, dtype=torch.float32)
        tgt = {k: v[sl] for k, v in targets.items()}
        lo, hi = _box(x, eps)
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


# ---------------------------------------------------------------------------------------- LowKey
#: LowKey's published settings (``util/attack_utils.py``, ``app.py``).
LOWKEY_DEFAULTS = {"steps": 50, "lr": 0.0025, "init_noise": 0.005, "blur_kernel": 7, "blur_sigma": 3.0}


def _lowkey_distance(x_adv: torch.Tensor, lm: torch.Tensor, clean: list, blur: Callable) -> torch.Tensor:
    """``[B]`` mean over (model, plain/smoothed) of ``||f(x') - t||^2 / ||t||^2``; ``clean`` holds ``(f, t, t_blur)``."""
    xa_b = blur(x_adv)
    d = x_adv.new_zeros(x_adv.shape[0])
    for mdl, t, tb in clean:
        d = d + ((mdl(x_adv, lm) - t) ** 2).sum(1) / (t**2).sum(1).clamp_min(1e-12)
        d = d + ((mdl(xa_b, lm) - tb) ** 2).sum(1) / (tb**2).sum(1).clamp_min(1e-12)
    return d / (2 * len(clean))


def lowkey_protect(
    faces,
    surrogates: Mapping[str, nn.Module],
    eps: float = 16 / 255,
    min_ssim: float = 0.95,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    *,
    steps: int = LOWKEY_DEFAULTS["steps"],
    lr: float = LOWKEY_DEFAULTS["lr"],
    init_noise: float = LOWKEY_DEFAULTS["init_noise"],
    blur_kernel: int = LOWKEY_DEFAULTS["blur_kernel"],
    blur_sigma: float = LOWKEY_DEFAULTS["blur_sigma"],
    batch_size: int = 16,
    progress: bool = False,
    return_info: bool = False,
):
    """LowKey-style protected canvases ``[N, 3, H, W]`` (CPU; see the module docstring).

    ``study`` ``kind="per_image"`` entry point. LPIPS is replaced by the per-image SSIM hinge
    ``w_i * max(min_ssim - SSIM_i, 0)`` (``w_i`` per image by the dynamic rule), and ``x'`` is kept in the
    L-inf box. With ``return_info`` returns ``(protected, info)`` with the ensemble distance of the
    returned images (``dist``, ``[N]``, 0 for clean) and their SSIM.
    """
    import kornia.filters

    _check_budget(eps, min_ssim)
    if steps < 0 or lr <= 0 or init_noise < 0 or batch_size < 1:
        raise ValueError(
            f"steps {steps} must be >= 0, lr {lr} > 0, init_noise {init_noise} >= 0, batch_size {batch_size} >= 1"
        )
    x_all, lm_all = faces.x, faces.lm
    _check_faces(x_all, lm_all, "LowKey")
    models = _models(surrogates)
    device = torch.device(device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = int(x_all.shape[0])
    ksize, sig = (int(blur_kernel), int(blur_kernel)), (float(blur_sigma), float(blur_sigma))

    def blur(t: torch.Tensor) -> torch.Tensor:
        return kornia.filters.gaussian_blur2d(t, ksize, sig)

    out = torch.empty_like(x_all)
    dist_best, ssim_best = torch.empty(n), torch.empty(n)
    pbar = _tqdm(n, "LowKey", progress)
    for s0 in range(0, n, batch_size):
        sl = slice(s0, min(s0 + batch_size, n))
        x = x_all[sl].to(device)
        lm = lm_all[sl].to(device=device, dtype=torch.float32)
        b = x.shape[0]
        lo, hi = _box(x, eps)
        with torch.no_grad():
            xb = blur(x)
            clean = [(mdl, mdl(x, lm), mdl(xb, lm)) for mdl in models.values()]

        x_adv = torch.minimum(
            torch.maximum(x + init_noise * torch.randn(x.shape, generator=gen).to(device), lo), hi
        )
        weights = [losses.DynamicSSIMWeight(floor=min_ssim) for _ in range(b)]
        best, best_d = x.clone(), torch.zeros(b, device=device)
        for it in range(steps + 1):
            x_adv = x_adv.detach().requires_grad_(True)
            d = _lowkey_distance(x_adv, lm, clean, blur)
            with torch.no_grad():
                s = per_image_ssim(x_adv, x)
                ok = (s >= min_ssim) & (d > best_d)
                best[ok] = x_adv[ok].detach()
                best_d = torch.where(ok, d.detach(), best_d)
            if it == steps:
                break
            loss = -d.sum()
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
        dist_best[sl] = best_d.detach().cpu()
        ssim_best[sl] = per_image_ssim(best, x).detach().cpu()
        pbar.update(b)
    pbar.close()
    if return_info:
        return out, {"dist": dist_best, "ssim": ssim_best, "steps": steps, "lr": lr}
    return out


# ---------------------------------------------------------------------------------------- registration
def _bind(fn: Callable, **kwargs) -> Callable:
    bound = functools.partial(fn, **kwargs)
    functools.update_wrapper(bound, fn)
    return bound


def register_all(
    steps: int | None = None,
    fawkes_mode: str = DEFAULT_FAWKES_MODE,
    batch_size: int = 16,
    pool: TargetPool | None = None,
    opom_n_init: int = 5,
) -> list[str]:
    """Register ``opom`` (convex hull), ``opom_affine``, ``fawkes`` and ``lowkey`` in ``study.METHODS``.

    Idempotent (re-registering replaces the entries). ``steps`` overrides the per-image step budget of
    both per-image methods (full profile: ``None`` = Fawkes' mode steps, 500 for ``high``, and LowKey's 50);
    OPOM's budget is the study config's ``epochs``. ``pool`` is passed to :func:`set_target_pool`.
    Returns the registered names.
    """
    from .. import study

    if fawkes_mode not in FAWKES_MODES:
        raise ValueError(f"unknown Fawkes mode {fawkes_mode!r}; choose one of {sorted(FAWKES_MODES)}")
    if steps is not None and steps < 0:
        raise ValueError(f"steps {steps} must be >= 0")
    if pool is not None:
        set_target_pool(pool)
    f_steps = FAWKES_MODES[fawkes_mode].steps if steps is None else int(steps)
    l_steps = LOWKEY_DEFAULTS["steps"] if steps is None else int(steps)
    methods = [
        study.Method(
            "opom",
            kind="texture_fn",
            mode="flat",
            fn=_bind(opom_texture, hull="convex", n_init=opom_n_init),
            title=f"OPOM (convex hull, {opom_n_init} centre rounds)",
        ),
        study.Method(
            "opom_affine",
            kind="texture_fn",
            mode="flat",
            fn=_bind(opom_texture, hull="affine", n_init=opom_n_init),
            title=f"OPOM (affine hull, {opom_n_init} centre rounds)",
        ),
        study.Method(
            "fawkes",
            kind="per_image",
            mode="flat",
            config={"mode": fawkes_mode, "steps": f_steps, "batch_size": batch_size},
            fn=_bind(fawkes_protect, mode=fawkes_mode, steps=f_steps, batch_size=batch_size),
            title=f"Fawkes-style cloak ({fawkes_mode}, {f_steps} steps)",
        ),
        study.Method(
            "lowkey",
            kind="per_image",
            mode="flat",
            config={"steps": l_steps, "batch_size": batch_size},
            fn=_bind(lowkey_protect, steps=l_steps, batch_size=batch_size),
            title=f"LowKey-style attack ({l_steps} steps, SSIM hinge for LPIPS)",
        ),
    ]
    for m in methods:
        study.register_method(m)
    return [m.name for m in methods]
