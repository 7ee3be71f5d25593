"""Checkpoints of an interrupted PPT training: the texture, the loop's state (:class:`TrainState`) and the generator, keyed by the exact
training canvases and surrogates (safetensors + JSON state, written atomically)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_bytes
from . import losses
from .train_config import TrainConfig

#: Format tag of a checkpoint's state.
CKPT_FORMAT = "protego_nb.train-checkpoint/1"
#: Config fields that may change between an interrupted run and its resumption.
RESUME_FREE = {"checkpoint_every"}


def fingerprint(canvases: torch.Tensor, landmarks: torch.Tensor, names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([list(canvases.shape), names]).encode())
    h.update(canvases.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(landmarks.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    from safetensors.torch import save

    meta = {"format": CKPT_FORMAT, "state": json.dumps(state)}
    data = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=meta)
    atomic_write_bytes(path, data)


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if meta.get("format") != CKPT_FORMAT or "state" not in meta:
        raise ValueError(f"{path}: not a protego_nb training checkpoint (format {meta.get('format')!r})")
    return tensors, json.loads(meta["state"])


@dataclass
class TrainState:
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


class Checkpointer:
    """Writes the training state to ``path`` and restores it, for the same data, surrogates and config only."""

    def __init__(
        self, path: Path, cfg: TrainConfig, canvases: torch.Tensor, landmarks: torch.Tensor, names: list[str]
    ) -> None:
        self.path = path
        self.names = names
        self.config = {k: v for k, v in cfg.key_dict().items() if k not in RESUME_FREE}
        self.fingerprint = fingerprint(canvases, landmarks, names)

    def restore(self, state: TrainState, gen: torch.Generator, device: torch.device) -> None:
        """Load the saved state into ``state`` and ``gen``; refuses a checkpoint of other inputs or config."""
        tensors, saved = load_checkpoint(self.path)
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

    def write(self, state: TrainState, gen: torch.Generator, seconds: float) -> None:
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
        save_checkpoint(self.path, tensors, saved)
