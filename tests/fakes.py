"""Small stand-ins shared by the unit tests."""

from types import SimpleNamespace

import torch

from protego_nb.models import taps


class TinyFR(torch.nn.Module):
    """Stand-in FR model with the zoo's forward signature: (canvas [B,3,H,W], landmarks [B,5,2]) -> [B, D]."""

    def __init__(self, seed: int, name: str | None = None, dim: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(3, 8, 5, stride=2)
        self.c2 = torch.nn.Conv2d(8, dim, 3, stride=2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
            p.requires_grad_(False)
        if name:
            self.spec = SimpleNamespace(name=name, metric="cosine")

    def forward(self, x, lm):
        h = self.c2(taps.point(torch.tanh(self.c1(x - 0.5)), "act"))  # one tap point (models.taps)
        return h.mean((2, 3)) + 0.01 * (lm.flatten(1)[:, :1] / x.shape[-1])
