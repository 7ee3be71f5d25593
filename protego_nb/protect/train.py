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
step is logged (:func:`_log_step`) and the SSIM weight updated; :class:`_Checkpointer` saves and restores
the loop's state (:class:`_State`) with the generator's.

Named presets (:data:`PRESETS`): ``release`` - the released code's config (100 epochs, batch 16,
step ``0.01 eps``, SSIM floor 0.95, eps 16/255, init seed 114); ``paper`` - the paper's stated
hyper-parameters (omega 0.063 = 16/255, alpha = omega/10, batch 4, SSIM threshold 0.025 on the
``(1 - SSIM)/2`` scale = SSIM >= 0.95); the paper text at hand gives no epoch count, so ``paper`` uses
50 epochs, Chameleon's (the peer method the paper's protocol and SSIM rule come from; also batch 4);
``ci`` - a tiny run for tests and the CI profile.

Transfer-enhancing options (all off by default, because none has been measured to help yet; notebook 04
measures them): ``momentum`` (MI-FGSM, Dong et al. CVPR 2018: ``m <- mu m + g / mean|g|``, step on
``sign(m)``), ``input_diversity`` (DI-FGSM, Xie et al. CVPR 2019: with probability ``p`` per image a random
resize/shift/rotation of the protected canvas and its landmarks - the perturbation is added before the
transform, so canvas, UV warp and landmarks move together - plus Gaussian jitter of each model's
alignment landmarks), ``term_weights`` / ``model_weights``, ``grad_balance="per_term"`` (each
(model, term) gradient w.r.t. the texture normalised to unit L1 or L2 before the weighted sum: with a
signed step a scalar weight barely acts otherwise), ``grad_smooth`` (TI-FGSM, Dong et al. CVPR 2019: the
texture gradient Gaussian-smoothed before the signed step), ``blur_view`` (LowKey, Cherepanova et al. ICLR
2021: the loss also on a Gaussian-blurred copy of each protected canvas), ``consistent_clean`` (on: under input
diversity and the smoothed view the clean reference of the cosine term is the clean canvas under the same
draw, transform, landmark jitter and blur, embedded without autograd; off: the untransformed clean features;
without those options it changes nothing, bit for bit), ``logdet_form``,
``use_logdet=False`` (the Chameleon-style baseline: cosine + SSIM only) and ``mode`` (``"uv"`` 3D warp or
``"flat"`` 2D mask). Measured effects on black-box transfer: notebook 04 and the README's transfer sweep.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..io import atomic_write_bytes
from ..models.embed import embed_all
from . import losses
from .texture import DEFAULT_EPS, DEFAULT_TEXTURE_SIZE, FlatWarp, UVWarp, Warp, init_texture, save_ppt

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainResult",
    "as_model_dict",
    "surrogate_names",
    "train_ppt",
]

_CKPT_FORMAT = "protego_nb.train-checkpoint/1"
#: Config fields that may change between an interrupted run and its resumption.
_RESUME_FREE = {"checkpoint_every"}
#: Options added after the first release: left out of :meth:`TrainConfig.key_dict` while at their (off) defaults,
#: so cached textures and checkpoints of configs that do not use them keep their keys.
_LATER_OPTIONS = ("grad_smooth", "blur_view")


@dataclass
class TrainConfig:
    """Hyper-parameters of one PPT training run (use :meth:`preset` for the named presets)."""

    preset: str = "release"
    #: Passes over the user's training canvases.
    epochs: int = 100
    batch_size: int = 16
    #: L-inf bound of the texture (and of the perturbation).
    eps: float = DEFAULT_EPS
    #: Per-step L-inf step as a fraction of ``eps`` (release 0.01, paper 0.1).
    lr_rel: float = 0.01
    #: SSIM floor of the hinge (SSIM over the whole canvas, as the authors).
    min_ssim: float = 0.95
    texture_size: int = DEFAULT_TEXTURE_SIZE
    #: Seed of the generator for the texture init (the authors' 114), shuffling and input diversity.
    seed: int = 114
    #: Reshuffle the canvases every epoch (the authors keep file order: False).
    shuffle: bool = False
    #: ``"uv"`` (3D warp through UV maps) or ``"flat"`` (2D mask in canvas space).
    mode: str = "uv"
    #: ``"authors"`` ``-log(det(G + cI) + c)`` or ``"logdet"`` ``-logdet(G + cI)``.
    logdet_form: str = "authors"
    #: False drops the log-det term: the Chameleon-style baseline.
    use_logdet: bool = True
    #: Weights of the ``"logdet"`` and ``"cosine"`` terms.
    term_weights: dict[str, float] = field(default_factory=lambda: {"logdet": 1.0, "cosine": 1.0})
    #: Per-surrogate weights by model name (missing names weigh 1); the ensemble mean is weighted.
    model_weights: dict[str, float] | None = None
    #: ``"none"`` (gradient of the weighted loss) or ``"per_term"`` (unit-norm gradient per model and term).
    grad_balance: str = "none"
    #: Norm used by ``grad_balance="per_term"``: ``"l1"`` or ``"l2"``.
    grad_norm: str = "l1"
    #: MI-FGSM decay ``mu``; 0 disables momentum.
    momentum: float = 0.0
    #: Probability per image and step of a random resize/shift/rotation (0 disables input diversity).
    input_diversity: float = 0.0
    #: Input-diversity ranges: relative scale +-, shift +- (fraction of the canvas side), rotation +- degrees.
    di_scale: float = 0.1
    di_shift: float = 0.05
    di_rotate: float = 10.0
    #: Std (canvas pixels) of the per-model jitter of the alignment landmarks, applied with input diversity.
    di_landmark_jitter: float = 2.0
    #: TI-FGSM (Dong et al. CVPR 2019): std, in texture pixels, of a Gaussian that smooths the texture
    #: gradient before the signed step (0 disables); favours low-frequency, translation-robust textures.
    grad_smooth: float = 0.0
    #: LowKey-style smoothed view (Cherepanova et al. ICLR 2021): std, in canvas pixels, of a Gaussian blur of the
    #: protected canvas whose features enter the loss beside the unblurred ones (mean of both; 0 disables).
    blur_view: float = 0.0
    #: The clean reference of the cosine term goes through the same random view as the protected canvas: the
    #: same input-diversity transform and landmark jitter (the clean canvas is transformed with the same draw and
    #: embedded without autograd) and, for the smoothed view, the same blur. Acts only with
    #: ``input_diversity > 0`` or ``blur_view > 0``; False compares with the clean features of the untransformed
    #: canvas (cached once), which mixes the transform's own feature change into the push.
    consistent_clean: bool = True
    #: Write a checkpoint every this many steps (and at the end), when a checkpoint path is given.
    checkpoint_every: int = 50

    @property
    def lr(self) -> float:
        """Per-step L-inf step size ``lr_rel * eps``."""
        return self.lr_rel * self.eps

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TrainConfig:
        """A named preset (``release``, ``paper``, ``ci``) with fields overridden by keyword."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The fields that identify a training run (cache keys, checkpoints): :meth:`to_dict` without the
        later-added options that are at their off default."""
        d = self.to_dict()
        for name in _LATER_OPTIONS:
            if d[name] == _FIELD_DEFAULTS[name]:
                del d[name]
        # consistent_clean changes training only with a random/smoothed view: it enters the key only where it
        # acts and is on, so configs where it makes no difference share their keys
        if not (self.uses_consistent_clean):
            del d["consistent_clean"]
        return d

    @property
    def uses_consistent_clean(self) -> bool:
        """Whether the clean reference is transformed with the protected canvas in this config."""
        return bool(self.consistent_clean and (self.input_diversity > 0 or self.blur_view > 0))

    def validate(self) -> None:
        """Raise ``ValueError`` with the offending field for an inconsistent config."""
        problems = []
        if self.epochs < 0 or self.batch_size < 1:
            problems.append(f"epochs {self.epochs} must be >= 0 and batch_size {self.batch_size} >= 1")
        if not 0 < self.eps < 1:
            problems.append(f"eps {self.eps} must be in (0, 1)")
        if not self.lr_rel > 0:
            problems.append(f"lr_rel {self.lr_rel} must be > 0")
        if not 0 < self.min_ssim <= 1:
            problems.append(f"min_ssim {self.min_ssim} must be in (0, 1]")
        if self.mode not in ("uv", "flat"):
            problems.append(f"mode {self.mode!r} must be 'uv' or 'flat'")
        if self.logdet_form not in losses.LOGDET_FORMS:
            problems.append(f"logdet_form {self.logdet_form!r} must be one of {losses.LOGDET_FORMS}")
        if set(self.term_weights) - {"logdet", "cosine"}:
            problems.append(f"term_weights keys {sorted(self.term_weights)} must be 'logdet' and/or 'cosine'")
        if self.grad_balance not in ("none", "per_term"):
            problems.append(f"grad_balance {self.grad_balance!r} must be 'none' or 'per_term'")
        if self.grad_norm not in ("l1", "l2"):
            problems.append(f"grad_norm {self.grad_norm!r} must be 'l1' or 'l2'")
        if not 0 <= self.momentum:
            problems.append(f"momentum {self.momentum} must be >= 0")
        if not 0 <= self.input_diversity <= 1:
            problems.append(f"input_diversity {self.input_diversity} is a probability, must be in [0, 1]")
        if self.grad_smooth < 0 or self.blur_view < 0:
            problems.append(f"grad_smooth {self.grad_smooth} and blur_view {self.blur_view} must be >= 0")
        if self.checkpoint_every < 1:
            problems.append(f"checkpoint_every {self.checkpoint_every} must be >= 1")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}

PRESETS: dict[str, TrainConfig] = {
    # The released code (train.py L31-67): 100 epochs, batch 16, lr 0.01 * 16/255, SSIM 0.95, seed 114.
    "release": TrainConfig(preset="release", epochs=100, batch_size=16, eps=16 / 255, lr_rel=0.01, min_ssim=0.95),
    # The paper: omega 0.063 (= 16/255), alpha = omega / 10, batch 4, (1 - SSIM)/2 <= 0.025; epochs not
    # stated in the text at hand -> Chameleon's 50.
    "paper": TrainConfig(preset="paper", epochs=50, batch_size=4, eps=16 / 255, lr_rel=0.1, min_ssim=0.95),
    # Tiny: a smoke run for tests and the CI notebooks.
    "ci": TrainConfig(preset="ci", epochs=2, batch_size=4, eps=16 / 255, lr_rel=0.1, min_ssim=0.95, checkpoint_every=5),
}


@dataclass
class TrainResult:
    """The trained texture and what happened while training it."""

    texture: torch.Tensor
    #: Per-step lists: ``step``, ``epoch``, ``total``, ``ssim``, ``ssim_weight``, ``logdet/<m>``, ``cosine/<m>``.
    history: dict[str, list[float]]
    #: Training wall time in seconds (summed over resumed sessions).
    seconds: float
    steps: int
    config: TrainConfig
    surrogates: list[str]
    checkpoint: Path | None = None
    #: Wall time of this session's clean-feature pass (part of ``seconds``).
    clean_seconds: float = 0.0

    def meta(self, **extra: Any) -> dict[str, Any]:
        """Metadata for :func:`protego_nb.protect.texture.save_ppt`."""
        cfg = self.config
        meta = {
            "epsilon": cfg.eps,
            "surrogates": list(self.surrogates),
            "preset": cfg.preset,
            "seed": cfg.seed,
            "mode": cfg.mode,
            "steps": self.steps,
            "train_seconds": f"{self.seconds:.3f}",
            "config": json.dumps(cfg.to_dict(), sort_keys=True),
        }
        meta.update(extra)
        return meta

    def save(self, path: str | os.PathLike, **extra: Any) -> Path:
        """Write the PPT with its metadata (safetensors, atomic)."""
        return save_ppt(path, self.texture, self.meta(**extra))


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


def _diversity_draw(
    b: int, h: int, w: int, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One input-diversity draw for a batch of ``b`` canvases ``h x w``: ``(applied [B] bool, M [B, 2, 3])``,
    ``M`` the similarity transform ``p' = s R (p - c) + c + t`` in canvas pixels (float64). Draws a fixed
    number of random numbers per call, so the generator's stream does not depend on which images were picked."""
    u = torch.rand((b, 5), generator=gen, dtype=torch.float64)
    applied = u[:, 0] < cfg.input_diversity
    scale = 1.0 + (2 * u[:, 1] - 1) * cfg.di_scale
    angle = torch.deg2rad((2 * u[:, 2] - 1) * cfg.di_rotate)
    tx = (2 * u[:, 3] - 1) * cfg.di_shift * w
    ty = (2 * u[:, 4] - 1) * cfg.di_shift * h
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = scale * torch.cos(angle), scale * torch.sin(angle)
    m = torch.stack(
        [
            torch.stack([cos, -sin, cx - cos * cx + sin * cy + tx], 1),
            torch.stack([sin, cos, cy - sin * cx - cos * cy + ty], 1),
        ],
        1,
    )
    return applied, m


def _diversity_apply(
    x: torch.Tensor, lm: torch.Tensor, applied: torch.Tensor, m: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp the canvases ``x`` and landmarks ``lm`` picked by ``applied`` with the draw's matrices ``m``."""
    from protego_nb.faces.align import warp_affine_torch

    if not bool(applied.any()):
        return x, lm
    h, w = x.shape[-2:]
    m = m.to(device=x.device, dtype=x.dtype)
    idx = applied.nonzero().flatten().to(x.device)
    warped = warp_affine_torch(x[idx], m[idx], (h, w))
    x_out = x.index_copy(0, idx, warped)
    lm_w = lm[idx] @ m[idx, :, :2].transpose(1, 2).to(lm.dtype) + m[idx, :, 2].unsqueeze(1).to(lm.dtype)
    lm_out = lm.index_copy(0, idx, lm_w)
    return x_out, lm_out


def _diversity(
    x: torch.Tensor, lm: torch.Tensor, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random similarity transforms of protected canvases and their landmarks (per image, prob. ``p``).

    Returns ``(x', landmarks', applied [B] bool)``: :func:`_diversity_draw` then :func:`_diversity_apply`.
    """
    b, _, h, w = x.shape
    applied, m = _diversity_draw(b, h, w, cfg, gen)
    x_out, lm_out = _diversity_apply(x, lm, applied, m)
    return x_out, lm_out, applied


def _fingerprint(canvases: torch.Tensor, landmarks: torch.Tensor, names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(canvases.shape), names]).encode())
    h.update(canvases.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(landmarks.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    from safetensors.torch import save

    meta = {"format": _CKPT_FORMAT, "state": json.dumps(state)}
    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def _load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if meta.get("format") != _CKPT_FORMAT or "state" not in meta:
        raise ValueError(f"{path}: not a protego_nb training checkpoint (format {meta.get('format')!r})")
    return tensors, json.loads(meta["state"])


def _gaussian(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``[B, C, H, W]`` with std ``sigma`` pixels (kernel 2*ceil(3 sigma)+1, reflect border)."""
    import kornia

    k = 2 * math.ceil(3 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def _norm(g: torch.Tensor, kind: str) -> torch.Tensor:
    n = g.abs().sum() if kind == "l1" else g.pow(2).sum().sqrt()
    return g / n if float(n) > 0 else g


# ----------------------------------------------------------------------------------------- the training loop


@dataclass
class _State:
    """What changes while training, and what a checkpoint saves (with the generator's state)."""

    texture: torch.Tensor
    #: MI-FGSM momentum buffer (zeros while ``momentum`` is 0).
    momentum: torch.Tensor
    #: The current epoch's order of the canvases.
    perm: torch.Tensor
    ssim_weight: losses.DynamicSSIMWeight
    history: dict[str, list[float]]
    step: int = 0
    #: Training seconds of earlier (interrupted) sessions.
    seconds_before: float = 0.0


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


class _Checkpointer:
    """Writes the training state to ``path`` and restores it, for the same data, surrogates and config only."""

    def __init__(
        self, path: Path, cfg: TrainConfig, canvases: torch.Tensor, landmarks: torch.Tensor, names: list[str]
    ) -> None:
        self.path = path
        self.names = names
        self.config = {k: v for k, v in cfg.key_dict().items() if k not in _RESUME_FREE}
        self.fingerprint = _fingerprint(canvases, landmarks, names)

    def restore(self, state: _State, gen: torch.Generator, device: torch.device) -> None:
        """Load the saved state into ``state`` and ``gen``; refuses a checkpoint of other inputs or config."""
        tensors, saved = _load_checkpoint(self.path)
        if saved.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self.path}: checkpoint was written for other canvases/landmarks/surrogates")
        config = json.loads(json.dumps(self.config))
        if saved.get("config") != config:
            diff = sorted(k for k in config if saved.get("config", {}).get(k) != config[k])
            raise ValueError(f"{self.path}: checkpoint was written with another config (differs in {diff})")
        state.texture = tensors["texture"].to(device)
        state.momentum = tensors["momentum"].to(device)
        state.perm = tensors["perm"].to(torch.int64)
        gen.set_state(tensors["rng"].to(torch.uint8))
        state.ssim_weight.load_state_dict(saved["ssim_weight"])
        state.history = saved["history"]
        state.step, state.seconds_before = int(saved["step"]), float(saved["seconds"])

    def write(self, state: _State, gen: torch.Generator, seconds: float) -> None:
        """Save ``state`` and the generator's state (atomically); ``seconds``: training time so far."""
        saved = {
            "step": state.step,
            "seconds": seconds,
            "ssim_weight": state.ssim_weight.state_dict(),
            "history": state.history,
            "config": self.config,
            "fingerprint": self.fingerprint,
            "surrogates": self.names,
        }
        tensors = {"texture": state.texture, "momentum": state.momentum, "perm": state.perm, "rng": gen.get_state()}
        _save_checkpoint(self.path, tensors, saved)


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
        applied, dmat = _diversity_draw(x.shape[0], x.shape[-2], x.shape[-1], cfg, gen)
        x_in, lm_in = _diversity_apply(x_prot, lm, applied, dmat)
        if consistent:
            x_clean_in, _ = _diversity_apply(x, lm, applied, dmat)
    else:
        x_in, lm_in, applied = x_prot, lm, None
    x_blur = _gaussian(x_in, cfg.blur_view) if cfg.blur_view > 0 else None
    x_clean_blur = _gaussian(x_clean_in, cfg.blur_view) if x_blur is not None and consistent else None
    return _Views(x_prot, x_in, lm_in, applied, x_clean_in, x_blur, x_clean_blur)


def _surrogate_features(
    models: Mapping[str, nn.Module],
    views: _Views,
    clean_b: Mapping[str, torch.Tensor],
    cfg: TrainConfig,
    gen: torch.Generator,
    device: torch.device,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Each surrogate's embeddings of the protected canvases, in model order.

    Returns ``(prot, prot_blur, clean, clean_blur)``: the protected canvases' and their smoothed view's
    embeddings (with autograd), and the clean references: ``clean_b`` (the cached clean features of the batch)
    with, for the consistent clean reference, the moved canvases' features replaced by those of the clean
    canvases under the same draw and landmark jitter, and the smoothed clean view's (both without autograd).
    Under input diversity each model's landmarks get their own Gaussian jitter."""
    consistent = cfg.uses_consistent_clean
    applied = views.applied
    moved = applied.nonzero().flatten().to(device) if applied is not None else None
    clean = dict(clean_b)
    prot: dict[str, torch.Tensor] = {}
    prot_blur: dict[str, torch.Tensor] = {}
    clean_blur: dict[str, torch.Tensor] = {}
    for name, model in models.items():
        lm_m = views.lm_in
        if applied is not None and cfg.di_landmark_jitter > 0:
            noise = torch.randn(lm_m.shape, generator=gen) * cfg.di_landmark_jitter
            lm_m = lm_m + (noise * applied.view(-1, 1, 1)).to(device=device, dtype=lm_m.dtype)
        prot[name] = model(views.x_in, lm_m)
        if views.x_blur is not None:
            prot_blur[name] = model(views.x_blur, lm_m)
        if consistent:
            with torch.no_grad():
                if moved is not None and len(moved):  # unmoved canvases keep their cached clean features
                    c_moved = model(views.x_clean_in[moved], lm_m[moved]).detach().float()
                    clean[name] = clean[name].index_copy(0, moved.to(clean[name].device), c_moved)
                if views.x_clean_blur is not None:
                    clean_blur[name] = model(views.x_clean_blur, lm_m).detach().float()
    return prot, prot_blur, clean, clean_blur


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
) -> losses.LossTerms:
    """The Protego loss of one batch as a function of the texture ``tex`` (:func:`losses.protego_loss`, the one
    loss definition; the smoothed view, when on, enters as a second view)."""
    views = _protected_views(tex, x, lm, warp, cfg, gen)
    prot, prot_blur, clean, clean_blur = _surrogate_features(models, views, clean_b, cfg, gen, device)
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
        lazy_ssim=True,
        return_terms=True,
    )


def _texture_gradient(loss: losses.LossTerms, tex: torch.Tensor, cfg: TrainConfig, batch: int) -> torch.Tensor:
    """The batch-mean gradient of the loss w.r.t. the texture (shared by the ``batch`` canvases).

    ``grad_balance="none"``: the gradient of the weighted total. ``"per_term"``: the weighted sum of each
    active term's gradient normalised to unit ``grad_norm`` (with a signed step a scalar weight barely acts
    otherwise); the SSIM hinge counts while it is positive. With ``grad_smooth`` the result is Gaussian-smoothed
    in texture space (TI-FGSM)."""
    if cfg.grad_balance == "none":
        (grad,) = torch.autograd.grad(loss.total, tex)
    else:
        grad = torch.zeros_like(tex)
        active = [(w, v) for _, w, v in loss.feature_terms if w != 0]
        if float(loss.hinge.detach()) > 0:
            active.append((loss.ssim_weight, loss.hinge))
        for i, (w, v) in enumerate(active):
            (g,) = torch.autograd.grad(v, tex, retain_graph=i < len(active) - 1)
            grad = grad + w * _norm(g, cfg.grad_norm)
    grad = grad / batch
    if cfg.grad_smooth > 0:
        grad = _gaussian(grad, cfg.grad_smooth)
    return grad


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
    the ``logdet/<m>`` and ``cosine/<m>`` terms); returns the record."""
    record = {"step": step, "epoch": epoch, "total": float(loss.total.detach()), "ssim": float(loss.parts["ssim"])}
    record["ssim_weight"] = ssim_weight
    record.update({k: v for k, v in loss.parts.items() if k.startswith(("logdet/", "cosine/"))})
    for key, val in record.items():
        history.setdefault(key, []).append(float(val))
    return record


def _train_step(
    state: _State,
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
) -> dict[str, float]:
    """One optimisation step on the canvases ``idx``: loss, gradient, signed step, history record, then the
    SSIM weight's update from the batch SSIM. Updates ``state``; returns the step's record."""
    x = canvases[idx].to(device)
    lm = landmarks[idx].to(device=device, dtype=torch.float32)
    warp = warps.select(idx).to(device)
    clean_b = {m: clean[m][idx.to(clean[m].device)] for m in models}
    tex = state.texture.detach().clone().requires_grad_(True)
    weight = state.ssim_weight.weight
    loss = _batch_loss(models, clean_b, tex, x, lm, warp, cfg, weight, gen, device)
    grad = _texture_gradient(loss, tex, cfg, len(idx))
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
    ckpt = _Checkpointer(Path(checkpoint), cfg, canvases, landmarks, names) if checkpoint is not None else None

    texture = init_texture(cfg.eps, gen, cfg.texture_size, device)
    state = _State(texture, torch.zeros_like(texture), torch.arange(n), losses.DynamicSSIMWeight(floor=cfg.min_ssim), {})
    if ckpt is not None and resume and ckpt.path.exists():
        ckpt.restore(state, gen, device)

    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    clean = embed_all(models, canvases, landmarks, cfg.batch_size, device) if state.step < total_steps else {}
    clean_seconds = time.perf_counter() - t0
    pbar = tqdm(total=total_steps, initial=state.step, disable=not progress, desc="PPT", leave=False)
    while state.step < total_steps:
        epoch, k = divmod(state.step, steps_per_epoch)
        if k == 0:  # a new epoch: file order, or a fresh shuffle
            state.perm = torch.randperm(n, generator=gen) if cfg.shuffle else torch.arange(n)
        idx = state.perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        record = _train_step(state, idx, epoch, models, clean, canvases, landmarks, warps, cfg, gen, device)
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
