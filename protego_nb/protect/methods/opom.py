"""**OPOM** (Zhong & Deng, "OPOM: Customized Invisible Cloak towards Face Privacy Protection", TPAMI 2022),
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

The common budget (L-inf bound and SSIM floor): see
:mod:`protego_nb.protect.methods`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.embed import embed_all
from .. import losses
from ..texture import FlatWarp, init_texture
from ..train import TrainConfig, as_model_dict
from .common import check_faces, progress_bar

#: OPOM hull types: class centre (``a = 1/n``), affine hull, convex hull, FI-UAP (own clean embedding).
HULLS = ("centre", "affine", "convex", "feature")


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
    check_faces(canvases, landmarks, "OPOM")
    models = as_model_dict(surrogates)
    device = torch.device(device)
    n = int(canvases.shape[0])
    warps = FlatWarp.for_canvases(canvases)
    clean = {
        k: F.normalize(v, dim=1)
        for k, v in embed_all(models, canvases, landmarks, cfg.batch_size, device).items()
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
    pbar = progress_bar(cfg.epochs * steps_per_epoch, "OPOM", progress)
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
    """``kind="texture_fn"`` method entry point: the OPOM mask ``[1, 3, T, T]`` of a FaceSet's canvases."""
    return opom_train(
        faces.x, faces.lm, surrogates, cfg, device, generator, hull=hull, n_init=n_init, hull_iters=hull_iters
    ).texture
