"""The faces of a study split: canvases, landmarks and UV maps of every image, with what could not be read.

Detection and meshes are cached on disk (:mod:`protego_nb.faces.pipeline`, :mod:`protego_nb.faces.mesh`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..data import FaceDataset, Split
from ..faces.canvas import canvases_to_tensor
from ..faces.pipeline import build_canvases
from ..protect import texture


@dataclass
class FaceSet:
    """Canvases of a list of image ids (split ids ``Name/Name_0001.jpg``), with UV maps when asked.

    ``x`` float32 ``[N, 3, 224, 224]`` in [0, 1] and ``lm`` ``[N, 5, 2]`` on the CPU; ``uv`` a
    :class:`protego_nb.faces.uv.UVMap` or None; ``missing`` maps ids that gave no canvas to the reason;
    ``no_mesh`` lists ids whose canvas has no face mesh (their UV texture is empty).
    """

    ids: list[str]
    x: torch.Tensor
    lm: torch.Tensor
    uv: object | None = None
    canvases: dict = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    no_mesh: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, ids: Sequence[str]) -> list[int]:
        pos = {i: k for k, i in enumerate(self.ids)}
        return [pos[i] for i in ids if i in pos]

    def take(self, ids: Sequence[str]) -> FaceSet:
        idx = self.index(ids)
        sel = torch.as_tensor(idx, dtype=torch.long)
        return FaceSet(
            ids=[self.ids[k] for k in idx],
            x=self.x[sel],
            lm=self.lm[sel],
            uv=None if self.uv is None else self.uv[idx],
            canvases={self.ids[k]: self.canvases[self.ids[k]] for k in idx},
            missing={i: r for i, r in self.missing.items() if i in set(ids)},
            no_mesh=[i for i in self.no_mesh if i in set(ids)],
        )

    def warp(self, mode: str) -> texture.Warp:
        if mode == "uv":
            if self.uv is None:
                raise ValueError("this FaceSet was loaded without UV maps (load_faces(..., uv=True))")
            return texture.UVWarp.from_uvmap(self.uv)
        if mode == "flat":
            return texture.FlatWarp.for_canvases(self.x)
        raise ValueError(f"unknown warp mode {mode!r}")


def load_faces(ds: FaceDataset, ids: Sequence[str], with_uv: bool = True, progress: bool = False) -> FaceSet:
    """Detect (cached), canvas and, with ``with_uv``, mesh (cached) + rasterise the UV maps of ``ids``."""
    ids = list(ids)
    rep = build_canvases([ds.path(i) for i in ids], progress=progress)
    by_path = {c.path: c for c in rep.canvases}
    fail = {f.path: f"{f.reason}: {f.message}" for f in rep.failures}
    kept, canv, missing = [], {}, {}
    for i in ids:
        key = str(ds.path(i))
        if key in by_path:
            kept.append(i)
            canv[i] = by_path[key]
        else:
            missing[i] = fail.get(key, "no canvas")
    x, lm = canvases_to_tensor([canv[i] for i in kept])
    fs = FaceSet(kept, x, lm, None, canv, missing)
    if with_uv and kept:
        from ..faces import uv as uvmod

        mesh_res, uvmap = uvmod.canvas_uv([canv[i].canvas for i in kept], progress=progress)
        fs.uv = uvmap
        fs.no_mesh = [i for i, ok in zip(kept, mesh_res.ok) if not ok]
    return fs




def user_images(split: Split, user: str) -> list[str]:
    u = split.users[user]
    return sorted(set(u.train) | set(u.queries) | set(u.gallery_seen) | set(u.gallery_unseen))


def load_study_faces(
    ds: FaceDataset, split: Split, users: Sequence[str] | None = None, progress: bool = False
):
    """``({user: FaceSet with UV}, distractors FaceSet)`` for a split."""
    users = list(users or split.user_names)
    faces = {u: load_faces(ds, user_images(split, u), with_uv=True, progress=progress) for u in users}
    distractors = load_faces(ds, split.distractors, with_uv=False, progress=progress)
    return faces, distractors


def missing_faces(faces: Mapping[str, FaceSet], distractors: FaceSet) -> dict:
    """Images of the split that gave no canvas (users' and distractors'), by id with the reason; these are
    not scored (``retrieval`` drops them and counts them in ``n_missing``)."""
    users = {i: r for fs in faces.values() for i, r in fs.missing.items()}
    return {
        "users": dict(sorted(users.items())),
        "distractors": dict(sorted(distractors.missing.items())),
        "n_user_images": sum(len(fs) + len(fs.missing) for fs in faces.values()),
        "n_user_images_scored": sum(len(fs) for fs in faces.values()),
        "n_distractors": len(distractors) + len(distractors.missing),
        "n_distractors_scored": len(distractors),
        "no_mesh": sorted(i for fs in faces.values() for i in fs.no_mesh),
    }

