"""Protection methods, one module each, behind one interface (:mod:`.registry`).

Importing this package registers the texture methods trained by :func:`protego_nb.protect.train.train_ppt`
(:mod:`.protego`: ``protego``, ``protego_2d``, ``protego_nologdet``; :mod:`.chameleon`: ``chameleon``).
The peers with their own optimisers (:mod:`.opom`, :mod:`.fawkes`, :mod:`.lowkey`) are registered by
:func:`register_baselines`, which binds their settings and Fawkes' explicit target pool.

Every method runs under Protego's budget: the L-inf bound ``eps`` (default 16/255) and the SSIM floor
(0.95; SSIM as :func:`protego_nb.protect.losses.ssim`, kornia's Gaussian-window SSIM) - the peers' own
constraints are replaced by these two so that the recall tables compare methods at equal visibility.
The objectives, update rules and hyper-parameters follow ``reference/protego_method.md`` section 5.

The per-image methods (Fawkes-, LowKey-style) work in batches (``batch_size`` 16) and return, for each image, the best iterate
(closest to the target / farthest from clean) among those meeting the SSIM floor; the clean image itself
counts, so the floor holds for every returned image. :func:`register_baselines` registers them; its ``steps`` sets the per-image step budget.

To add a method: write ``protect/methods/<name>.py`` with its function and a :class:`Method`, register it
(here, or from the caller), and list its name in a profile's ``METHODS``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from . import chameleon, protego  # noqa: F401  (registers the built-in texture methods)
from .fawkes import DEFAULT_FAWKES_MODE, FAWKES_MODES, TargetPool, fawkes_protect
from .lowkey import LOWKEY_DEFAULTS, lowkey_protect
from .opom import opom_texture
from .registry import METHODS, Method, get, register

__all__ = ["BASELINES", "METHODS", "Method", "TargetPool", "get", "register", "register_baselines"]

#: The peers :func:`register_baselines` adds (plus the ``opom_affine`` variant).
BASELINES = ("opom", "fawkes", "lowkey")


def _bind(fn: Callable, **kwargs) -> Callable:
    bound = functools.partial(fn, **kwargs)
    functools.update_wrapper(bound, fn)
    return bound


def register_baselines(
    pool: TargetPool | None = None,
    steps: int | None = None,
    fawkes_mode: str = DEFAULT_FAWKES_MODE,
    batch_size: int = 16,
    opom_n_init: int = 5,
) -> list[str]:
    """Register ``opom`` (convex hull), ``opom_affine``, ``lowkey`` and, given a target ``pool``, ``fawkes``.

    Re-registering replaces the entries. ``steps`` overrides the per-image step budget of both per-image
    methods (``None``: Fawkes' mode steps, 500 for ``high``, and LowKey's 50); OPOM's budget is the study
    config's ``epochs``. ``pool``: Fawkes' candidate target identities (e.g. ``TargetPool.from_faces(
    distractors)``), bound into the method and named in its cache context; without one ``fawkes`` is not
    registered (a run that asks for it then fails by name). Returns the registered names.
    """
    if fawkes_mode not in FAWKES_MODES:
        raise ValueError(f"unknown Fawkes mode {fawkes_mode!r}; choose one of {sorted(FAWKES_MODES)}")
    if steps is not None and steps < 0:
        raise ValueError(f"steps {steps} must be >= 0")
    if pool is not None and not isinstance(pool, TargetPool):
        raise TypeError(f"expected a TargetPool, got {type(pool).__name__}")
    f_steps = FAWKES_MODES[fawkes_mode].steps if steps is None else int(steps)
    l_steps = LOWKEY_DEFAULTS["steps"] if steps is None else int(steps)
    methods = [
        Method("opom", kind="texture_fn", mode="flat", fn=_bind(opom_texture, hull="convex", n_init=opom_n_init),
               title=f"OPOM (convex hull, {opom_n_init} centre rounds)"),
        Method("opom_affine", kind="texture_fn", mode="flat",
               fn=_bind(opom_texture, hull="affine", n_init=opom_n_init),
               title=f"OPOM (affine hull, {opom_n_init} centre rounds)"),
        Method("lowkey", kind="per_image", mode="flat", config={"steps": l_steps, "batch_size": batch_size},
               fn=_bind(lowkey_protect, steps=l_steps, batch_size=batch_size),
               title=f"LowKey-style attack ({l_steps} steps, SSIM hinge for LPIPS)"),
    ]
    if pool is not None:
        methods.append(Method(
            "fawkes", kind="per_image", mode="flat",
            config={"mode": fawkes_mode, "steps": f_steps, "batch_size": batch_size},
            fn=_bind(fawkes_protect, pool=pool, mode=fawkes_mode, steps=f_steps, batch_size=batch_size),
            title=f"Fawkes-style cloak ({fawkes_mode}, {f_steps} steps)",
            context=("target_pool", *sorted(pool.labels)),
        ))
    else:
        METHODS.pop("fawkes", None)
    for m in methods:
        register(m)
    return [m.name for m in methods]
