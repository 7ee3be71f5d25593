"""The pose study (notebook 06): does the protection hold as the head turns?

Per image, the head pose from its 468-point mesh (:mod:`protego_nb.evaluate.pose` for the convention);
per query, its retrieval result (``retrieval.evaluate_users(..., per_query=True)``) joined with its pose;
then recall per ``|yaw|`` bin with user-bootstrap intervals, paired differences between methods on the
same queries, and the PPT trained on near-frontal photos only against the PPT trained on all poses.
Per protected *gallery photo* (:func:`entry_table`), the share of its owner's queries that find it,
binned by that photo's own pose (whether a turned protected photo stays hidden); both come from one
embedding pass (:func:`pose_rows`).

Same split, methods, configuration and surrogates as notebook 05, so the trained textures are the
cached ones (``run_method``'s cache) and the numbers of both notebooks describe the same PPTs.

Pose variants of Protego (:func:`protect_pose_variants`), each trained on a subset of the user's
training images and applied to all of the user's images:

``protego_frontal``  only the training images with ``|yaw| < max_abs_yaw`` (selfies train, candid
                     photos leak);
``protego_sized``    a seeded random subset of *all* the training images of the same size as the
                     frontal one (separates "fewer training images" from "only frontal ones").
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..data import Split
from ..evaluate import pose as P
from ..protect import train as tr
from .faces import FaceSet
from .protections import Protection, run_method
from .scoring import features_for

ROLES = ("train", "queries", "gallery_unseen")
FRONTAL, SIZED = "protego_frontal", "protego_sized"


# ---------------------------------------------------------------------------------------- poses
def mesh_vertices(faces: FaceSet) -> np.ndarray:
    """``[N, 468, 3]`` mesh vertices of a FaceSet's canvases (the disk-cached meshes; NaN without a mesh)."""
    from ..faces import mesh

    if not len(faces):
        return np.zeros((0, mesh.N_VERTICES, 3), np.float32)
    return mesh.mesh_canvases([faces.canvases[i].canvas for i in faces.ids]).vertices


def image_poses(split: Split, faces: Mapping[str, FaceSet]) -> pd.DataFrame:
    """One row per user image: ``id``, ``user``, ``role`` (train, queries, gallery_unseen), ``yaw``,
    ``pitch``, ``roll``, ``abs_yaw`` (:mod:`protego_nb.evaluate.pose`) and ``yaw_axis``
    (:func:`protego_nb.faces.mesh.estimate_yaw`, the yaw of notebook 01; equal to ``yaw`` at roll 0)."""
    from ..faces import mesh

    frames = []
    for user, fs in faces.items():
        u = split.users[user]
        role = {i: r for r in reversed(ROLES) for i in getattr(u, r)}
        v = mesh_vertices(fs)
        df = P.pose_frame(fs.ids, v, user=user, role=[role.get(i, "other") for i in fs.ids])
        df["yaw_axis"] = np.asarray(mesh.estimate_yaw(v), dtype=np.float64).reshape(-1)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ---------------------------------------------------------------------------------------- frontal-only PPT
def frontal_train_ids(split: Split, poses: pd.DataFrame, user: str, max_abs_yaw: float) -> list[str]:
    """The user's training images with a mesh and ``|yaw| < max_abs_yaw``, in training order."""
    p = poses.set_index("id")["abs_yaw"]
    return [i for i in split.users[user].train if i in p.index and np.isfinite(p[i]) and p[i] < max_abs_yaw]


def size_matched_ids(train_ids: Sequence[str], n: int, seed: int, user: str) -> list[str]:
    """A seeded random ``n`` of ``train_ids`` (any pose), in training order; the seed mixes in the user."""
    if n > len(train_ids):
        raise ValueError(f"{user}: cannot draw {n} of {len(train_ids)} training images")
    sub = int.from_bytes(hashlib.sha256(f"pose-sized:{seed}:{user}".encode()).digest()[:8], "little")
    pick = set(np.random.default_rng(sub).choice(len(train_ids), size=n, replace=False).tolist())
    return [i for k, i in enumerate(train_ids) if k in pick]


@dataclass
class PoseVariants:
    """Protections of the pose variants: ``{variant: {user: Protection}}``, the training ids per variant
    and user, and the users left out (too few frontal training images) with the reason."""

    protections: dict[str, dict[str, Protection]]
    train_ids: dict[str, dict[str, list[str]]]
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def users(self) -> list[str]:
        return sorted(next(iter(self.train_ids.values()), {}))


def protect_pose_variants(
    split: Split,
    faces: Mapping[str, FaceSet],
    poses: pd.DataFrame,
    surrogates: Mapping,
    cfg: tr.TrainConfig,
    max_abs_yaw: float,
    min_train: int = 3,
    seed: int = 0,
    device: str = "cpu",
    intruder: str | None = None,
    base: Mapping[str, Protection] | None = None,
    progress: bool = True,
) -> PoseVariants:
    """Protego trained on all training images (``protego``; taken from ``base`` when given), on the
    frontal ones only (``protego_frontal``) and on a same-size random subset (``protego_sized``).

    A user with fewer than ``min_train`` frontal training images, or with no non-frontal one (the
    variants would equal ``protego``), is left out of all three, with the reason in ``skipped``.
    """
    from tqdm.auto import tqdm

    out: dict[str, dict[str, Protection]] = {"protego": {}, FRONTAL: {}, SIZED: {}}
    ids: dict[str, dict[str, list[str]]] = {"protego": {}, FRONTAL: {}, SIZED: {}}
    skipped: dict[str, str] = {}
    for user in tqdm(list(faces), desc="pose variants", disable=not progress):
        fs = faces[user]
        train = [i for i in split.users[user].train if i in set(fs.ids)]
        front = frontal_train_ids(split, poses, user, max_abs_yaw)
        if len(front) < min_train:
            skipped[user] = f"{len(front)} training images with |yaw| < {max_abs_yaw:g} (< {min_train})"
            continue
        if len(front) == len(train):
            skipped[user] = f"all {len(train)} training images have |yaw| < {max_abs_yaw:g}"
            continue
        sized = size_matched_ids(train, len(front), seed, user)
        for name, sub in (("protego", train), (FRONTAL, front), (SIZED, sized)):
            ids[name][user] = list(sub)
            if name == "protego" and base is not None and user in base:
                out[name][user] = base[user]
                continue
            p = run_method("protego", user, fs.take(sub), fs, surrogates, cfg, device=device,
                                 intruder=intruder)
            out[name][user] = dataclasses.replace(p, method=name)
    return PoseVariants(out, ids, skipped)


# ---------------------------------------------------------------------------------------- evaluation
def pose_rows(
    model_names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    protections: Mapping[str, Mapping[str, Protection]],
    poses: pd.DataFrame,
    edges: Sequence[float],
    scenarios: Sequence[str] = ("1a", "2b", "2a"),
    entry_edges: Sequence[float] | None = None,
    entry_scenarios: Sequence[str] = (),
    device: str = "cpu",
) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Per-query rows and, with ``entry_scenarios``, per-gallery-photo rows, from one embedding pass.

    Queries: ``retrieval.evaluate_users(..., per_query=True)`` with native similarity and notebook 05's
    galleries (the same call as ``evaluate``), joined with the query's pose and ``|yaw|`` bin
    (``edges``). Gallery photos: :func:`entry_table`'s rows, binned with ``entry_edges``.
    Only the users in ``faces`` are evaluated, and their galleries hold only those users' entries (plus
    the distractors), so pass the same ``faces`` to compare methods on the same galleries.
    """
    from ..evaluate import retrieval
    from ..models import zoo

    qs, es = [], []
    for name in model_names:
        model = zoo.load(name, device)
        for method, prots in protections.items():
            f = features_for(model, name, faces, distractors, prots, device=device, method=method)
            if scenarios:
                qs.append(retrieval.evaluate_users(f, split, scenarios=scenarios, metric=("native",),
                                                   users=list(faces), per_query=True))
            metric = f.resolve_metric("native")
            for user in faces:
                for sc in entry_scenarios:
                    e = P.entry_rows(retrieval.build_gallery(f, split, user, sc), metric)
                    e["model"], e["method"] = name, method
                    es.append(e)
    rows = P.attach_pose(pd.concat(qs, ignore_index=True), poses, edges) if qs else None
    if not es:
        return rows, None
    ent = pd.concat(es, ignore_index=True).rename(columns={"entry": "query"})
    return rows, P.attach_pose(ent, poses, edges if entry_edges is None else entry_edges)


def query_rows(
    model_names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    protections: Mapping[str, Mapping[str, Protection]],
    poses: pd.DataFrame,
    edges: Sequence[float],
    scenarios: Sequence[str] = ("1a", "2b", "2a"),
    device: str = "cpu",
) -> pd.DataFrame:
    """Per-query rows only (:func:`pose_rows`)."""
    return pose_rows(model_names, split, faces, distractors, protections, poses, edges, scenarios, device=device)[0]


def query_edges(poses: pd.DataFrame, edges: Sequence[float], min_count: int) -> list[float]:
    """``edges`` with sparse bins merged so that every bin holds at least ``min_count`` queries."""
    q = poses[poses["role"] == "queries"]
    return P.merge_sparse_bins(q["abs_yaw"].to_numpy(float), edges, min_count)


def frontal_summary(variants: PoseVariants, poses: pd.DataFrame) -> pd.DataFrame:
    """Per user and variant: training images, their max and mean ``|yaw|``."""
    ay = poses.set_index("id")["abs_yaw"]
    rows = []
    for name, per_user in variants.train_ids.items():
        for user, ids in per_user.items():
            y = ay.reindex(ids).to_numpy(float)
            rows.append({"variant": name, "user": user, "n_train": len(ids),
                         "max_abs_yaw": float(np.nanmax(y)) if len(y) else float("nan"),
                         "mean_abs_yaw": float(np.nanmean(y)) if len(y) else float("nan")})
    return pd.DataFrame(rows)


def canvases_and_vertices(faces: Mapping[str, FaceSet]) -> tuple[list[np.ndarray], np.ndarray]:
    """Canvases (``uint8 [224, 224, 3]``) and mesh vertices of every user image, in :func:`image_poses` order."""
    canv = [fs.canvases[i].canvas for fs in faces.values() for i in fs.ids]
    verts = [mesh_vertices(fs) for fs in faces.values()]
    return canv, (np.concatenate(verts) if verts else np.zeros((0, 468, 3), np.float32))


def headline(
    diffs: pd.DataFrame, model: str, scenario: str, a: str, b: str, bin_label: str | None = None
) -> dict:
    """One paired difference (``a - b``, points) of :func:`protego_nb.evaluate.pose.paired_difference` output,
    for the given model, scenario and bin (default: the last, largest-|yaw| bin), as a dict."""
    d = diffs[(diffs["model"] == model) & (diffs["scenario"] == scenario) & (diffs["a"] == a) & (diffs["b"] == b)]
    bins = d[d["bin"] != "all"]
    if d.empty or bins.empty:
        raise KeyError(f"no paired difference {a} - {b} for {model} / {scenario}")
    row = bins.iloc[-1] if bin_label is None else d[d["bin"] == bin_label].iloc[0]
    return {k: (float(row[k]) if k in ("diff", "ci_lo", "ci_hi") else row[k])
            for k in ("model", "scenario", "a", "b", "bin", "diff", "ci_lo", "ci_hi", "n_queries", "n_users", "effect")}


def entry_table(
    model_names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    protections: Mapping[str, Mapping[str, Protection]],
    poses: pd.DataFrame,
    edges: Sequence[float],
    scenarios: Sequence[str] = ("1a", "2a"),
    device: str = "cpu",
) -> pd.DataFrame:
    """Per *protected gallery photo*: the fraction of its owner's queries that find it in their top K
    (native similarity, notebook 05's galleries), with that photo's pose and ``|yaw|`` bin.

    Binned by the gallery photo's pose, this asks whether a *turned protected photo* stays hidden; the
    per-query tables bin by the query's pose. Columns as :func:`query_rows`, with ``query`` holding the
    gallery entry's id (so the tables of :mod:`protego_nb.evaluate.pose` apply unchanged).
    """
    return pose_rows(model_names, split, faces, distractors, protections, poses, edges, scenarios=(),
                     entry_edges=edges, entry_scenarios=scenarios, device=device)[1]


def entry_edges(poses: pd.DataFrame, edges: Sequence[float], min_count: int) -> list[float]:
    """``edges`` with sparse bins merged so that every bin holds at least ``min_count`` gallery photos."""
    g = poses[poses["role"].isin(["train", "gallery_unseen"])]
    return P.merge_sparse_bins(g["abs_yaw"].to_numpy(float), edges, min_count)
