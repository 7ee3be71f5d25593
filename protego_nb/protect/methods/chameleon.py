"""Chameleon-style per-user 2D mask (Chow et al., ECCV 2024), as the Protego authors re-implemented it
(``reference/protego_method.md`` section 5): the cosine push from the clean embedding + the SSIM hinge, no
log-det term, one flat mask per user trained by :func:`protego_nb.protect.train.train_ppt`."""

from __future__ import annotations

from .registry import Method, register

CHAMELEON = register(
    Method("chameleon", mode="flat", config={"use_logdet": False}, title="Chameleon-style 2D mask")
)
