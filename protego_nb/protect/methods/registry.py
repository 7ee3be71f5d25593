"""The method interface: what a protection method is, and the registry the study layer reads.

A :class:`Method` is one of three kinds, all run under the same budget (L-inf bound ``eps``, SSIM floor),
data and surrogates by :func:`protego_nb.study.protections.run_method`:

``texture``     a per-user texture trained by :func:`protego_nb.protect.train.train_ppt` with ``config``
                (``TrainConfig`` overrides) and warped by ``mode`` (``"uv"``: the face's UV map; ``"flat"``:
                a 2D mask on the canvas);
``texture_fn``  a per-user texture trained by the method's own ``fn(train_faces, surrogates, cfg, device,
                generator) -> [1, 3, T, T]`` and applied like a PPT (OPOM's mask);
``per_image``   a perturbation per photo, ``fn(faces, surrogates, eps, min_ssim, device, generator) ->
                protected [N, 3, H, W]`` (Fawkes-, LowKey-style).

``faces`` arguments are face sets with ``ids``, ``x`` (canvases ``[N, 3, H, W]`` in [0, 1]) and ``lm``
(landmarks ``[N, 5, 2]``). Everything a method reads besides its arguments (e.g. Fawkes' target pool) is
bound into ``fn`` when it is built and named in ``context``, which joins the cache key of its results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

KINDS = ("texture", "texture_fn", "per_image")
WARP_MODES = ("uv", "flat")


@dataclass(frozen=True)
class Method:
    """A protection method (see the module docstring for ``kind``, ``mode``, ``config`` and ``fn``)."""

    name: str
    kind: str = "texture"
    mode: str = "uv"
    config: Mapping = field(default_factory=dict)
    fn: Callable | None = None
    title: str = ""
    #: what the method reads besides its arguments (e.g. the target pool's identities): part of cache keys
    context: tuple = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.mode not in WARP_MODES:
            raise ValueError(f"method {self.name!r}: mode {self.mode!r} is not one of {WARP_MODES}")
        if self.kind != "texture" and self.fn is None:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} needs fn")


#: Every registered method by name; :func:`register` adds (or replaces) one.
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to :data:`METHODS` (an existing entry of the same name is replaced)."""
    if not isinstance(method, Method):
        raise TypeError(f"expected a Method, got {type(method).__name__}")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The registered method ``name`` (KeyError naming the registered ones otherwise)."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"method {name!r} is not registered (registered: {sorted(METHODS)})") from None
