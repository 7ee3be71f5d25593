"""Tap points inside the zoo's networks: where training may read or perturb intermediate features.

Two transfer levers of the black-box program need the inside of a surrogate, not just its embedding:

- **Model augmentation** (lever 1, Ghost Networks: Li et al., AAAI 2020): each step sees a randomly perturbed copy
  of every surrogate, here dropout at its residual joins, so the texture cannot over-fit one network's exact
  features.
- **Mid-layer features** (lever 2, after ILA, Huang et al. ICCV 2019, and FIA, Wang et al. ICCV 2021): intermediate
  feature maps are more alike across networks than final embeddings, so pushing them apart transfers better.

A *tap point* is a place in a forward pass where :func:`point` is called with the tensor that flows on. Two kinds:
``"join"``, the output of a residual join (dlib's ``_Block``; facenet-pytorch's ``Block35/17/8`` through forward
hooks; an ``Add`` of two computed 4-D tensors in the ONNX, TFLite and TFJS interpreters), and ``"act"``, the
output of an activation on a 4-D tensor (``Relu``/``PRelu``/``LeakyRelu`` ops; TFLite's fused activations too),
used for nets without joins (a plain conv chain such as SFace). :func:`prepare` counts a model's points once and
picks ``"join"`` when it has any.

Outside :func:`tapped` a point returns its tensor untouched (one list check), so models run exactly as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn

KINDS = ("join", "act")

#: Module classes whose forward output is a residual join (facenet-pytorch's Inception-ResNet blocks).
_JOIN_MODULES = ("Block35", "Block17", "Block8")

_ACTIVE: list = []


def point(y: torch.Tensor, kind: str) -> torch.Tensor:
    """A tap point: the active tap's view of ``y`` (``y`` itself when none is active)."""
    if not _ACTIVE:
        return y
    return _ACTIVE[-1](y, kind)


@contextlib.contextmanager
def tapped(tap) -> Iterator:
    """Make ``tap`` (a callable ``(tensor, kind) -> tensor``) see every tap point of the forward passes inside."""
    _ACTIVE.append(tap)
    try:
        yield tap
    finally:
        _ACTIVE.pop()


class _Counter:
    def __init__(self) -> None:
        self.counts = {k: 0 for k in KINDS}

    def __call__(self, y: torch.Tensor, kind: str) -> torch.Tensor:
        self.counts[kind] += 1
        return y


def _hook(module: nn.Module, args, output):
    return point(output, "join")


def install_hooks(model: nn.Module) -> int:
    """Register a ``"join"`` forward hook on every facenet-pytorch block of ``model`` (once); returns how many
    blocks carry one."""
    n = 0
    for m in model.modules():
        if type(m).__name__ in _JOIN_MODULES:
            if not m.__dict__.get("_tap_hooked"):
                m.register_forward_hook(_hook)
                m.__dict__["_tap_hooked"] = True
            n += 1
    return n


@torch.no_grad()
def count_points(model: nn.Module, x: torch.Tensor, lm: torch.Tensor) -> dict[str, int]:
    """How many tap points of each kind one forward pass of ``model(x, lm)`` goes through."""
    install_hooks(model)
    counter = _Counter()
    with tapped(counter):
        model(x, lm)
    return counter.counts


def prepare(model: nn.Module, x: torch.Tensor, lm: torch.Tensor) -> tuple[str, int]:
    """``(kind, count)`` of the points the levers use in ``model``: its joins, else its activations. Counted on
    the first call with one canvas of ``x`` and cached on the model; ``ValueError`` for a model without any."""
    cached = model.__dict__.get("_tap_points")
    if cached is not None:
        return cached
    counts = count_points(model, x[:1], lm[:1])
    kind = "join" if counts["join"] else "act"
    if counts[kind] == 0:
        name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        raise ValueError(f"{name}: no tap points (no residual joins or activations seen): it cannot take "
                         "feature_dropout or mid_weight")
    model.__dict__["_tap_points"] = (kind, counts[kind])
    return kind, counts[kind]


def mid_index(count: int, depth: float) -> int:
    """The point at relative ``depth`` (0 first, 1 last) of ``count`` points."""
    return int(round(depth * (count - 1)))


class JoinTap:
    """Dropout and/or recording at one model's tap points of kind ``kind``, for one training step.

    The first pass draws a dropout mask per point (keep probability ``1 - dropout``, kept features scaled by
    ``1 / (1 - dropout)``, from ``generator``); after :meth:`rewind` later passes (the clean reference, the
    smoothed view) replay the same masks, so that every pass of the step sees the same perturbed network (batch
    shapes must match). ``record``: the index of the point whose tensor (after dropout) is kept in
    :attr:`recorded` on every pass."""

    def __init__(self, kind: str, dropout: float = 0.0, record: int | None = None,
                 generator: torch.Generator | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind {kind!r} must be one of {KINDS}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout {dropout} must be in [0, 1)")
        self.kind, self.dropout, self.record, self.generator = kind, dropout, record, generator
        self.masks: list[torch.Tensor] = []
        self.replay = False
        self.index = 0
        self.recorded: torch.Tensor | None = None

    def rewind(self) -> None:
        """Start another pass over the same network: replay the masks, record afresh."""
        self.index, self.replay, self.recorded = 0, True, None

    def __call__(self, y: torch.Tensor, kind: str) -> torch.Tensor:
        if kind != self.kind:
            return y
        i = self.index
        self.index += 1
        if self.dropout > 0:
            if self.replay:
                if i >= len(self.masks) or self.masks[i].shape != y.shape:
                    raise RuntimeError(f"tap point {i}: the replayed pass differs from the drawn one "
                                       f"({tuple(y.shape)})")
                mask = self.masks[i]
            else:
                keep = torch.rand(y.shape, generator=self.generator) >= self.dropout
                mask = keep.to(device=y.device, dtype=y.dtype) / (1 - self.dropout)
                self.masks.append(mask)
            y = y * mask
        if self.record is not None and i == self.record:
            self.recorded = y
        return y
