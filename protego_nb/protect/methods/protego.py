"""Protego (Wang et al., CVPR 2026): the Privacy Protection Texture in UV space, trained by
:func:`protego_nb.protect.train.train_ppt` with the log-det (hypersensitivity) + cosine + SSIM loss
(:func:`protego_nb.protect.losses.protego_loss`).

``protego``          the PPT in UV space, warped onto each photo by its UV map;
``protego_2d``       the same loss with a flat 2D texture on the canvas (the "UV vs 2D" ablation);
``protego_nologdet`` the UV texture without the log-det term (isolates the loss from the warp);
``protego_transfer`` the ``transfer`` preset's change (beyond the paper): 4 UV textures per user, one per photo.
"""

from __future__ import annotations

from .registry import Method, register

PROTEGO = register(Method("protego", mode="uv", config={"use_logdet": True}, title="Protego (UV PPT, log-det)"))
PROTEGO_2D = register(
    Method("protego_2d", mode="flat", config={"use_logdet": True}, title="Protego loss, flat 2D mask")
)
PROTEGO_NOLOGDET = register(
    Method("protego_nologdet", mode="uv", config={"use_logdet": False}, title="UV PPT without log-det")
)
PROTEGO_TRANSFER = register(
    Method(
        "protego_transfer",
        mode="uv",
        config={"use_logdet": True, "n_textures": 4},
        title="Protego + 4 textures per user (the transfer preset; beyond the paper)",
    )
)
