"""The configuration of a PPT training run (:class:`TrainConfig`), its named presets and its result.

Named presets (:data:`PRESETS`): ``transfer`` - ``paper`` with 4 textures per user (lever 8b, measured in the
README's transfer levers; beyond the paper); ``release`` - the released code's config (100 epochs, batch 16,
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
without those options it changes nothing, bit for bit), ``logdet_form``, ``feature_dropout`` (model
augmentation: dropout at the surrogates' residual joins), ``mid_weight`` / ``mid_depth`` (a mid-layer feature
push), ``use_logdet=False`` (the Chameleon-style baseline: cosine + SSIM only) and ``mode`` (``"uv"`` 3D warp or
``"flat"`` 2D mask). Measured effects on black-box transfer: notebook 04 and the README's transfer sweep.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import losses
from .texture import DEFAULT_EPS, DEFAULT_TEXTURE_SIZE, save_ppt

#: Options that enter :meth:`TrainConfig.key_dict` only when switched on, so that the cache keys and checkpoints
#: of configurations that leave them off do not depend on them.
#: Targets of the cosine push (:attr:`TrainConfig.push_target`).
PUSH_TARGETS = ("own", "centre")

KEYED_WHEN_ON = (
    "grad_smooth", "blur_view", "push_target", "logdet_relative", "n_textures", "texture_diversity", "grad_vote",
    "spectrum_copies", "spectrum_rho", "spectrum_sigma", "neighbour_samples", "neighbour_radius",
    "feature_dropout", "mid_weight", "mid_depth",
)
#: How per-canvas texture gradients are aggregated (:attr:`TrainConfig.grad_vote`).
GRAD_VOTES = ("none", "sign", "l1")


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
    #: What the cosine term pushes each protected embedding away from: ``"own"`` (its own clean embedding, the
    #: authors' loss) or ``"centre"`` (the user's clean class centre: per model, the mean of the L2-normalised
    #: clean embeddings of all training canvases; OPOM's class-centre target, Zhong & Deng TPAMI 2022).
    push_target: str = "own"
    #: The log-det term on embeddings measured from the user's clean centre (L2-normalised embedding minus the
    #: centre, per model), so that scattering the protected photos cannot pull them back toward the user.
    logdet_relative: bool = False
    #: Several textures per user (lever 8b of the transfer program, beyond the paper): ``K`` textures trained
    #: together, each step's canvases spread evenly over them at random, each photo protected by one of them at
    #: protect time (:func:`~protego_nb.protect.texture.texture_choice`), so that protected photos of a user do not
    #: all share one embedding shift. 1: the paper's single texture.
    n_textures: int = 1
    #: Weight of the shift-diversity term (with ``n_textures > 1``): the mean cosine similarity between the
    #: embedding shifts (normalised protected minus normalised clean) of canvases that carry different textures,
    #: minimised so that the textures move a user's photos in different directions (0 disables).
    texture_diversity: float = 0.0
    #: Equal vote per image (lever 5 of the transfer program): the texture gradient is the sum over the batch's
    #: canvases of each canvas's own gradient replaced by its sign (``"sign"``) or scaled to unit L1 norm
    #: (``"l1"``), so that no few canvases with large gradients decide the step; ``"none"``: the gradient of the
    #: batch loss (the authors').
    grad_vote: str = "none"
    #: Spectrum simulation (SSA, Long et al. ECCV 2022; lever 3 of the transfer program): each step averages the
    #: texture gradient over this many random views ``IDCT(DCT(x + xi) * M)`` of the protected canvases, ``xi``
    #: Gaussian noise of std ``spectrum_sigma``, ``M`` uniform in ``[1 - rho, 1 + rho]`` per DCT coefficient and
    #: channel; the clean reference takes the same draw (0 disables).
    spectrum_copies: int = 0
    spectrum_rho: float = 0.5
    spectrum_sigma: float = 16 / 255
    #: Neighbourhood gradient averaging (VMI-style, Wang & He CVPR 2021; lever 4): each step's gradient also
    #: averages the gradients at this many textures drawn uniformly within ``neighbour_radius * eps`` of the
    #: current one (0 disables).
    neighbour_samples: int = 0
    neighbour_radius: float = 1.5
    #: Model augmentation (lever 1 of the transfer program; Ghost Networks, Li et al. AAAI 2020): dropout with this
    #: probability at every surrogate's residual joins (at its activations when it has no joins; the tap points of
    #: :mod:`protego_nb.models.taps`), a fresh mask per model and step, so that each step attacks a slightly different
    #: network; the step's clean reference is re-embedded through the same perturbed network (0 disables).
    feature_dropout: float = 0.0
    #: Mid-layer feature push (lever 2; after ILA, Huang et al. ICCV 2019, and FIA, Wang et al. ICCV 2021): weight of
    #: a ``mid/<model>`` term, the mean cosine similarity between the protected and clean feature maps at the tap
    #: point at relative depth ``mid_depth`` (0 first, 1 last) of each surrogate, minimised beside the embedding
    #: terms (weighted by the model's share, like them); the clean maps come from the same view (0 disables).
    mid_weight: float = 0.0
    mid_depth: float = 0.5
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
        :data:`KEYED_WHEN_ON` options that are off."""
        d = self.to_dict()
        for name in KEYED_WHEN_ON:
            if d[name] == _FIELD_DEFAULTS[name]:
                del d[name]
        # consistent_clean changes training only with a random/smoothed view: it enters the key only where it
        # acts and is on, so configs where it makes no difference share their keys
        if not (self.uses_consistent_clean):
            del d["consistent_clean"]
        return d

    @property
    def uses_taps(self) -> bool:
        """Whether training reads or perturbs the surrogates' insides (:mod:`protego_nb.models.taps`)."""
        return self.feature_dropout > 0 or self.mid_weight > 0

    @property
    def uses_consistent_clean(self) -> bool:
        """Whether the clean reference is transformed with the protected canvas in this config."""
        return bool(self.consistent_clean and (self.input_diversity > 0 or self.blur_view > 0
                                               or self.spectrum_copies > 0))

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
        if self.push_target not in PUSH_TARGETS:
            problems.append(f"push_target {self.push_target!r} must be one of {PUSH_TARGETS}")
        if self.n_textures < 1:
            problems.append(f"n_textures {self.n_textures} must be >= 1")
        if self.texture_diversity < 0 or (self.texture_diversity > 0 and self.n_textures < 2):
            problems.append(f"texture_diversity {self.texture_diversity} must be >= 0, and > 0 only with n_textures >= 2")
        if self.grad_vote not in GRAD_VOTES:
            problems.append(f"grad_vote {self.grad_vote!r} must be one of {GRAD_VOTES}")
        if self.spectrum_copies < 0 or not 0 <= self.spectrum_rho < 1 or self.spectrum_sigma < 0:
            problems.append(f"spectrum_copies {self.spectrum_copies} must be >= 0, spectrum_rho {self.spectrum_rho} "
                            f"in [0, 1), spectrum_sigma {self.spectrum_sigma} >= 0")
        if self.neighbour_samples < 0 or self.neighbour_radius < 0:
            problems.append(f"neighbour_samples {self.neighbour_samples} and neighbour_radius {self.neighbour_radius} "
                            "must be >= 0")
        if not 0 <= self.feature_dropout < 0.5:
            problems.append(f"feature_dropout {self.feature_dropout} must be in [0, 0.5)")
        if self.mid_weight < 0 or not 0 <= self.mid_depth <= 1:
            problems.append(f"mid_weight {self.mid_weight} must be >= 0 and mid_depth {self.mid_depth} in [0, 1]")
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
    # Beyond the paper (README "Transfer levers"): the paper preset with 4 textures per user, one per photo. With the
    # CLI's five-model ensemble it lowered black-box sface 2a by 42.9 points on 10 users (8 epochs, paired).
    # spectrum_copies=5 lowers 2a by 6.3 points more at 6.9x the training time: an opt-in (--set), not part of
    # the preset, which notebook 05 measures in every leave-one-out row (README "Transfer levers").
    "transfer": TrainConfig(preset="transfer", epochs=50, batch_size=4, eps=16 / 255, lr_rel=0.1, min_ssim=0.95,
                            n_textures=4),
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
