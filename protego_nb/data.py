"""Face datasets as ``<root>/<identity>/<image files>`` and seeded, documented splits.

A dataset is any folder tree with one sub-folder per identity (LFW's
``lfw-deepfunneled`` is one; a user's own photos of people are another), plus
LFW's ``pairs.txt`` when present.

Two split protocols (see ``../shared/reference/protego_method.md``):

``paper``   per user, images shuffled with the seed: 20% intruder *queries*,
            60% *gallery* entries that also train the PPT (``train`` =
            ``gallery_seen``), 20% *unseen* gallery entries (protected with the
            PPT but never used in training).
``release`` the authors' released code: images in file-name order, first
            ``floor(0.6 n)`` train the PPT; of the remaining ``m`` images the
            first ``int(0.5 m)`` are queries and the rest the gallery
            (``gallery_unseen``); no training image is in the gallery.

User selection (``select_users``): identities with at least ``min_images``
images, sorted by name, then ``n`` drawn without replacement by
``numpy.random.default_rng(seed)``; the result is sorted by name. A user with
more than ``max_images`` images keeps a seeded subset of ``max_images``; the
rest of that user's images are *excluded* from the experiment altogether (they
are neither gallery entries nor distractors, since a distractor must be of
another identity). Distractors are every image of every other identity
(optionally a seeded subset of ``max_distractors`` for quick profiles).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import paths
from .io import atomic_write_text

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
PROTOCOLS = ("paper", "release")


@dataclass
class FaceDataset:
    """An identity-folder dataset. Image paths are kept relative to ``root`` (``Name/file.jpg``)."""

    root: Path
    identities: dict[str, list[str]]
    pairs_file: Path | None = None
    name: str = "dataset"

    @classmethod
    def from_folder(
        cls, root: str | Path, extensions: tuple[str, ...] = IMAGE_EXTENSIONS, name: str | None = None
    ) -> FaceDataset:
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        identities: dict[str, list[str]] = {}
        for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(
                f"{sub.name}/{f.name}"
                for f in sub.iterdir()
                if f.is_file() and f.suffix.lower() in extensions and not f.name.startswith(".")
            )
            if files:
                identities[sub.name] = files
        if not identities:
            raise ValueError(
                f"dataset folder {root} holds no <identity>/<image> files (extensions {', '.join(extensions)})"
            )
        pairs = root.parent / "pairs.txt"
        return cls(
            root=root,
            identities=identities,
            pairs_file=pairs if pairs.exists() else None,
            name=name or root.name,
        )

    # ------------------------------------------------------------------ queries
    @property
    def n_images(self) -> int:
        return sum(len(v) for v in self.identities.values())

    def path(self, rel: str) -> Path:
        return self.root / rel

    def paths_of(self, identity: str) -> list[Path]:
        return [self.root / r for r in self.identities[identity]]

    def all_images(self) -> list[str]:
        return [r for name in sorted(self.identities) for r in self.identities[name]]

    def identity_of(self, rel: str) -> str:
        return rel.split("/", 1)[0]

    def fingerprint(self) -> str:
        """sha256 of the sorted relative file list: identifies the dataset's content layout."""
        h = hashlib.sha256()
        for rel in self.all_images():
            h.update(rel.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]

    def stats(self) -> dict:
        counts = np.array([len(v) for v in self.identities.values()])
        top = sorted(self.identities.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:5]
        return {
            "name": self.name,
            "n_identities": int(len(counts)),
            "n_images": int(counts.sum()),
            "identities_with_1": int((counts == 1).sum()),
            "identities_with_ge2": int((counts >= 2).sum()),
            "identities_with_ge15": int((counts >= 15).sum()),
            "identities_with_ge20": int((counts >= 20).sum()),
            "identities_with_ge30": int((counts >= 30).sum()),
            "largest": {k: len(v) for k, v in top},
            "fingerprint": self.fingerprint(),
        }

    def images_per_identity(self) -> np.ndarray:
        return np.array([len(v) for v in self.identities.values()])


def lfw() -> FaceDataset:
    """LFW deep-funneled from ``$PROTEGO_DATA_DIR/lfw`` (clear error when missing)."""
    return FaceDataset.from_folder(paths.lfw_images_dir(), extensions=(".jpg",), name="lfw-deepfunneled")


# ---------------------------------------------------------------------- splits
def select_users(ds: FaceDataset, n: int = 20, min_images: int = 15, seed: int = 0) -> list[str]:
    """``n`` identities with >= ``min_images`` images, drawn by a seeded rule (module docstring)."""
    eligible = sorted(k for k, v in ds.identities.items() if len(v) >= min_images)
    if len(eligible) < n:
        raise ValueError(
            f"only {len(eligible)} identities in {ds.name} have >= {min_images} images; asked for {n}"
        )
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(eligible), size=n, replace=False)
    return sorted(eligible[i] for i in picked)


@dataclass
class UserSplit:
    identity: str
    train: list[str]
    queries: list[str]
    gallery_seen: list[str]
    gallery_unseen: list[str]
    excluded: list[str] = field(default_factory=list)

    @property
    def gallery(self) -> list[str]:
        return self.gallery_seen + self.gallery_unseen

    def all_used(self) -> list[str]:
        return sorted(set(self.train) | set(self.queries) | set(self.gallery_seen) | set(self.gallery_unseen))


@dataclass
class Split:
    protocol: str
    seed: int
    params: dict
    dataset: dict
    users: dict[str, UserSplit]
    distractors: list[str]

    @property
    def user_names(self) -> list[str]:
        return sorted(self.users)

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "seed": self.seed,
            "params": self.params,
            "dataset": self.dataset,
            "users": {k: asdict(v) for k, v in sorted(self.users.items())},
            "distractors": self.distractors,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Split:
        return cls(
            protocol=d["protocol"],
            seed=d["seed"],
            params=d["params"],
            dataset=d["dataset"],
            users={k: UserSplit(**v) for k, v in d["users"].items()},
            distractors=list(d["distractors"]),
        )

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Split:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def check_disjoint(self) -> None:
        """Raise if any image is used twice where it must not be."""
        seen: Counter = Counter()
        for u in self.users.values():
            roles = {
                "queries": set(u.queries),
                "gallery_seen": set(u.gallery_seen),
                "gallery_unseen": set(u.gallery_unseen),
                "excluded": set(u.excluded),
            }
            names = list(roles)
            for i, a in enumerate(names):
                for b in names[i + 1 :]:
                    both = roles[a] & roles[b]
                    if both:
                        raise AssertionError(f"{u.identity}: {len(both)} images both in {a} and {b}")
            if self.protocol == "paper" and set(u.train) != set(u.gallery_seen):
                raise AssertionError(f"{u.identity}: paper protocol trains on exactly the seen gallery")
            if set(u.train) & (set(u.queries) | set(u.gallery_unseen)):
                raise AssertionError(f"{u.identity}: training images leak into queries or the unseen gallery")
            for r in u.all_used() + u.excluded:
                seen[r] += 1
        user_ids = set(self.users)
        bad = [r for r in self.distractors if r.split("/", 1)[0] in user_ids]
        if bad:
            raise AssertionError(f"{len(bad)} distractors belong to users, e.g. {bad[0]}")
        dup = [r for r, c in seen.items() if c > 1]
        if dup:
            raise AssertionError(f"{len(dup)} images appear under two users, e.g. {dup[0]}")

    def summary_rows(self) -> list[dict]:
        return [
            {
                "user": u.identity,
                "train": len(u.train),
                "queries": len(u.queries),
                "gallery_seen": len(u.gallery_seen),
                "gallery_unseen": len(u.gallery_unseen),
                "excluded": len(u.excluded),
            }
            for u in (self.users[k] for k in sorted(self.users))
        ]


def _split_user(
    files: list[str], protocol: str, rng: np.random.Generator, max_images: int | None
) -> UserSplit:
    files = sorted(files)
    excluded: list[str] = []
    if max_images is not None and len(files) > max_images:
        keep = set(rng.choice(len(files), size=max_images, replace=False).tolist())
        excluded = [f for i, f in enumerate(files) if i not in keep]
        files = [f for i, f in enumerate(files) if i in keep]
    n = len(files)
    identity = files[0].split("/", 1)[0]
    if protocol == "paper":
        order = [files[i] for i in rng.permutation(n)]
        n_q = max(1, int(round(0.2 * n)))
        n_u = max(1, int(round(0.2 * n)))
        queries, unseen, seen = order[:n_q], order[n_q : n_q + n_u], order[n_q + n_u :]
        if not seen:
            raise ValueError(f"{identity}: {n} images are too few for the paper protocol (need >= 3)")
        return UserSplit(
            identity,
            train=sorted(seen),
            queries=sorted(queries),
            gallery_seen=sorted(seen),
            gallery_unseen=sorted(unseen),
            excluded=excluded,
        )
    if protocol == "release":
        n_train = int(np.floor(0.6 * n))
        rest = files[n_train:]
        n_q = int(0.5 * len(rest))
        if n_train == 0 or n_q == 0 or len(rest) - n_q == 0:
            raise ValueError(f"{identity}: {n} images are too few for the release protocol (need >= 3)")
        return UserSplit(
            identity,
            train=files[:n_train],
            queries=rest[:n_q],
            gallery_seen=[],
            gallery_unseen=rest[n_q:],
            excluded=excluded,
        )
    raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")


def make_split(
    ds: FaceDataset,
    users: list[str] | None = None,
    protocol: str = "paper",
    seed: int = 0,
    n_users: int = 20,
    min_images: int = 15,
    max_images: int | None = 60,
    max_distractors: int | None = None,
) -> Split:
    """Build a seeded split (module docstring); deterministic for a given dataset and arguments."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS}")
    if users is None:
        users = select_users(ds, n=n_users, min_images=min_images, seed=seed)
    missing = [u for u in users if u not in ds.identities]
    if missing:
        raise KeyError(f"users not in {ds.name}: {missing}")
    user_splits = {}
    for u in sorted(users):
        # one generator per user, derived from (seed, name): adding a user never changes another's split
        sub_seed = int.from_bytes(hashlib.sha256(f"{seed}:{u}".encode()).digest()[:8], "little")
        user_splits[u] = _split_user(ds.identities[u], protocol, np.random.default_rng(sub_seed), max_images)
    distractors = [
        r for name in sorted(ds.identities) if name not in user_splits for r in ds.identities[name]
    ]
    n_all_distractors = len(distractors)
    if max_distractors is not None and max_distractors < len(distractors):
        rng = np.random.default_rng(seed + 1)
        idx = np.sort(rng.choice(len(distractors), size=max_distractors, replace=False))
        distractors = [distractors[i] for i in idx]
    split = Split(
        protocol=protocol,
        seed=seed,
        params={
            "n_users": len(users),
            "min_images": min_images,
            "max_images": max_images,
            "max_distractors": max_distractors,
            "n_distractors_available": n_all_distractors,
        },
        dataset={
            "name": ds.name,
            "n_images": ds.n_images,
            "n_identities": len(ds.identities),
            "fingerprint": ds.fingerprint(),
        },
        users=user_splits,
        distractors=distractors,
    )
    split.check_disjoint()
    return split


def split_manifest_path(name: str) -> Path:
    return paths.manifests_dir() / "splits" / f"{name}.json"


def get_split(ds: FaceDataset, name: str, write: bool = True, **kwargs) -> Split:
    """Make the split and compare it with the committed manifest ``data/splits/<name>.json``.

    If the manifest exists and differs (other dataset or arguments), raise: runs stay
    comparable only if everybody uses the same split. If it does not exist, write it.
    """
    split = make_split(ds, **kwargs)
    target = split_manifest_path(name)
    if target.exists():
        stored = Split.load(target)
        if stored.to_dict() != split.to_dict():
            raise ValueError(
                f"split {name!r} differs from the committed manifest {target}: dataset fingerprint "
                f"{split.dataset['fingerprint']} vs {stored.dataset['fingerprint']}, params {split.params} vs "
                f"{stored.params}. Use another split name or delete the manifest on purpose."
            )
        return stored
    if write:
        split.save(target)
    return split


# ---------------------------------------------------------------------- LFW pairs
@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    same: bool
    fold: int


def read_pairs(path: str | Path | None = None) -> list[Pair]:
    """Parse LFW ``pairs.txt`` (first line: ``folds pairs_per_class``; then per fold the matched then the
    mismatched pairs). Returns relative image paths ``Name/Name_NNNN.jpg``."""
    path = Path(path) if path is not None else paths.lfw_dir() / "pairs.txt"
    lines = [ln.split() for ln in Path(path).read_text().splitlines() if ln.strip()]
    n_folds, per = int(lines[0][0]), int(lines[0][1])
    pairs, i = [], 1
    name = lambda who, k: f"{who}/{who}_{int(k):04d}.jpg"  # noqa: E731
    for fold in range(n_folds):
        for _ in range(per):
            who, k1, k2 = lines[i]
            pairs.append(Pair(name(who, k1), name(who, k2), True, fold))
            i += 1
        for _ in range(per):
            w1, k1, w2, k2 = lines[i]
            pairs.append(Pair(name(w1, k1), name(w2, k2), False, fold))
            i += 1
    if i != len(lines):
        raise ValueError(f"{path}: {len(lines) - i} unexpected trailing lines")
    return pairs
