"""ipywidgets viewers for JupyterLab (the notebooks show them when ``INTERACTIVE`` is true).

Each function returns a widget (display it) or shows one; nothing here runs under papermill's
non-interactive profiles.
"""

from __future__ import annotations

import numpy as np
import torch

from .faces import uv as _uv


def uv_viewer(canvases: np.ndarray, uvmap: _uv.UVMap, textures: dict[str, torch.Tensor], titles=None):
    """ipywidgets viewer: an image slider, a texture choice and a blend slider over :func:`composite`."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from .plots_uv import composite, uv_to_rgb

    slider = W.IntSlider(min=0, max=len(uvmap) - 1, value=0, description="image")
    choice = W.Dropdown(options=list(textures), description="texture")
    alpha = W.FloatSlider(min=0, max=1, step=0.05, value=0.7, description="blend")

    def show(i: int, name: str, a: float) -> None:
        sub = uvmap[i]
        w = _uv.warp_texture(textures[name].to(sub.uv.device), sub)[0]
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.1))
        axes[0].imshow(canvases[i])
        axes[1].imshow(uv_to_rgb(uvmap, i))
        axes[2].imshow(composite(canvases[i], w, sub.vis[0], a))
        axes[0].set_title(titles[i] if titles is not None else f"#{i}", fontsize=8)
        for ax in axes:
            ax.axis("off")
        plt.show()

    return W.interactive(show, i=slider, name=choice, a=alpha)


def texture_viewer(fs, texture: torch.Tensor, eps_255: float):
    """A user's canvases with their texture applied, with an L-inf bound slider (texture clamped to it)."""
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from .protect.texture import apply_texture

    def show(eps255=eps_255, image=0):
        e = eps255 / 255
        xp = apply_texture(fs.x[image:image + 1], fs.warp("uv").select([image]), texture.clamp(-e, e), e)
        plt.figure(figsize=(6, 3))
        plt.subplot(1, 2, 1)
        plt.imshow(fs.x[image].permute(1, 2, 0))
        plt.axis("off")
        plt.subplot(1, 2, 2)
        plt.imshow(xp[0].permute(1, 2, 0))
        plt.axis("off")
        plt.show()

    return W.interact(show, eps255=W.FloatSlider(min=0, max=eps_255, step=1, value=eps_255),
                      image=W.IntSlider(min=0, max=len(fs) - 1, value=0))
