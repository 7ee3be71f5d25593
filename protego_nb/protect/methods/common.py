"""Shared pieces of the peer methods: argument checks, identities, the L-inf box, progress bars."""

from __future__ import annotations

import torch


def check_faces(x: torch.Tensor, lm: torch.Tensor, what: str) -> None:
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


def check_budget(eps: float, min_ssim: float) -> None:
    if not 0 < eps < 1:
        raise ValueError(f"eps {eps} must be in (0, 1)")
    if not 0 < min_ssim <= 1:
        raise ValueError(f"min_ssim {min_ssim} must be in (0, 1]")


def identity_of(image_id: str) -> str:
    """The identity of a split id ``Name/Name_0001.jpg`` (the folder), else the id itself."""
    return image_id.split("/", 1)[0] if "/" in image_id else image_id


def progress_bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False)



def linf_box(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The L-inf box ``[max(0, x - eps), min(1, x + eps)]`` of each pixel (width ``>= eps``)."""
    return torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)
