"""Ablations of the Protego loss and its levers: one named change each over the base configuration, every
number per user so that each ablation pairs with the base over the same users."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..data import Split
from ..protect import train as tr
from .faces import FaceSet
from .protections import protect_users
from .roles import load_surrogates
from .scoring import evaluate, quality_table

#: name -> (method, TrainConfig overrides, what it tests). ``surrogates`` in overrides is handled by
#: :func:`run_ablation` (a prefix length of the surrogate list), everything else goes to the config.
ABLATIONS: dict[str, tuple[str, dict, str]] = {
    "base": ("protego", {}, "Protego as configured (UV, log-det + cosine + SSIM hinge)"),
    "no_logdet": ("protego_nologdet", {}, "log-det term off (UV warp kept)"),
    "logdet_w0.1": ("protego", {"term_weights": {"logdet": 0.1, "cosine": 1.0}}, "log-det weight 0.1"),
    "logdet_w10": ("protego", {"term_weights": {"logdet": 10.0, "cosine": 1.0}}, "log-det weight 10"),
    "logdet_plain": (
        "protego",
        {"logdet_form": "logdet"},
        "plain -logdet(G+cI) instead of the authors' form",
    ),
    "per_term": ("protego", {"grad_balance": "per_term"}, "per-term gradient normalisation"),
    "flat_2d": ("protego_2d", {}, "flat 2D mask instead of the UV texture"),
    "momentum": ("protego", {"momentum": 0.9}, "MI-FGSM momentum 0.9"),
    "input_diversity": ("protego", {"input_diversity": 0.5}, "input diversity p=0.5"),
    "eps8": ("protego", {"eps": 8 / 255}, "epsilon 8/255"),
    "ssim0.90": ("protego", {"min_ssim": 0.90}, "SSIM floor 0.90"),
    "batch16": ("protego", {"batch_size": 16}, "batch size 16"),
    "batch2": ("protego", {"batch_size": 2}, "batch size 2"),
    "one_surrogate": ("protego", {"surrogates": 1}, "only the first surrogate"),
    "plus_faceres": ("protego", {"extra_surrogates": ["faceres"]}, "faceres added to the surrogates"),
    "epochs_x4": ("protego", {"epochs_x": 4}, "4x the epochs"),
    "ti_smooth3": ("protego", {"grad_smooth": 3.0}, "TI-FGSM: texture gradient smoothed, sigma 3 px"),
    "blur_view": ("protego", {"blur_view": 1.5}, "LowKey-style smoothed view, sigma 1.5 px"),
    "texture64": ("protego", {"texture_size": 64}, "64x64 texture (low-frequency PPT)"),
    "texture32": ("protego", {"texture_size": 32}, "32x32 texture (low-frequency PPT)"),
    "push_centre": ("protego", {"push_target": "centre"}, "cosine push from the user's clean centre (OPOM-style)"),
    "logdet_relative": ("protego", {"logdet_relative": True}, "log-det of embeddings seen from the clean centre"),
    "centre_both": (
        "protego",
        {"push_target": "centre", "logdet_relative": True},
        "push from the clean centre + log-det seen from it",
    ),
    "vote_sign": ("protego", {"grad_vote": "sign"}, "equal vote per image: sum of per-image gradient signs"),
    "textures2": ("protego", {"n_textures": 2}, "2 textures per user, one per photo"),
    "textures4": ("protego", {"n_textures": 4}, "4 textures per user, one per photo (spread at random in training)"),
    "textures4_seed1": ("protego", {"n_textures": 4, "seed": 1}, "4 textures per user, another training seed"),
    "textures8": ("protego", {"n_textures": 8}, "8 textures per user, one per photo"),
    "epochs_x2": ("protego", {"epochs_x": 2}, "2x the epochs"),
    "textures8_x2": ("protego", {"n_textures": 8, "epochs_x": 2}, "8 textures per user, 2x the epochs"),
    "textures16": ("protego", {"n_textures": 16}, "16 textures per user, one per photo"),
    "ens5": (
        "protego",
        {"extra_surrogates": ["facenet_casia", "facenet_msceleb", "mobilefacenet512"]},
        "every strong model but sface trains (5 surrogates)",
    ),
    "ens5_textures4": (
        "protego",
        {"extra_surrogates": ["facenet_casia", "facenet_msceleb", "mobilefacenet512"], "n_textures": 4},
        "5 surrogates + 4 textures per user",
    ),
    "ens5_textures8": (
        "protego",
        {"extra_surrogates": ["facenet_casia", "facenet_msceleb", "mobilefacenet512"], "n_textures": 8},
        "5 surrogates + 8 textures per user",
    ),
    "textures4_div": (
        "protego",
        {"n_textures": 4, "texture_diversity": 1.0},
        "4 textures per user + shift-diversity term (weight 1)",
    ),
    "spectrum5": ("protego", {"spectrum_copies": 5}, "spectrum simulation (SSA): gradient over 5 random spectrum views"),
    "neighbour4": ("protego", {"neighbour_samples": 4}, "gradient averaged with 4 neighbours within 1.5 eps (VMI-style)"),
    "textures4_spectrum5": (
        "protego",
        {"n_textures": 4, "spectrum_copies": 5},
        "4 textures per user + spectrum simulation (5 views)",
    ),
    "ens5_textures4_spectrum5": (
        "protego",
        {"extra_surrogates": ["facenet_casia", "facenet_msceleb", "mobilefacenet512"], "n_textures": 4,
         "spectrum_copies": 5},
        "5 surrogates + 4 textures per user + spectrum simulation (5 views)",
    ),
    "dropout5": ("protego", {"feature_dropout": 0.05},
                 "model augmentation: dropout 0.05 at the surrogates' residual joins (Ghost-network style)"),
    "dropout10": ("protego", {"feature_dropout": 0.1}, "model augmentation: dropout 0.1 at the residual joins"),
    "mid": ("protego", {"mid_weight": 1.0}, "mid-layer push: cosine of the feature maps at half depth, weight 1"),
    "mid_w10": ("protego", {"mid_weight": 10.0}, "mid-layer push at half depth, weight 10"),
    "mid_late": ("protego", {"mid_weight": 1.0, "mid_depth": 0.75}, "mid-layer push at three-quarter depth"),
    "textures4_dropout5": ("protego", {"n_textures": 4, "feature_dropout": 0.05}, "4 textures per user + dropout 0.05"),
    "textures4_mid": ("protego", {"n_textures": 4, "mid_weight": 1.0}, "4 textures per user + mid-layer push"),
    "textures4_spectrum5_mid_w10": (
        "protego",
        {"n_textures": 4, "spectrum_copies": 5, "mid_weight": 10.0},
        "4 textures per user + spectrum simulation (5 views) + mid-layer push at half depth, weight 10",
    ),
    "transfer_mix": (
        "protego",
        {"texture_size": 64, "blur_view": 1.5, "input_diversity": 0.5, "epochs_x": 2},
        "64x64 texture + smoothed view + input diversity 0.5, 2x epochs",
    ),
    "transfer_max": (
        "protego",
        {"extra_surrogates": ["faceres"], "blur_view": 1.5, "input_diversity": 0.5, "epochs_x": 4},
        "faceres added + smoothed view + input diversity 0.5, 4x epochs",
    ),
}


def ablation_setup(
    name: str, cfg: tr.TrainConfig, surrogate_names: Sequence[str]
) -> tuple[str, tr.TrainConfig, list[str]]:
    """``(method, config, surrogates)`` of the ablation ``name`` over the base ``cfg`` and surrogates.

    Besides :class:`~protego_nb.protect.train.TrainConfig` fields an ablation may set ``surrogates`` (keep the
    first k), ``extra_surrogates`` (names appended) and ``epochs_x`` (multiply the base epochs).
    """
    if name not in ABLATIONS:
        raise ValueError(f"unknown ablation {name!r}; choose from {sorted(ABLATIONS)}")
    method, over, _ = ABLATIONS[name]
    over = dict(over)
    k = over.pop("surrogates", len(surrogate_names))
    extra = [m for m in over.pop("extra_surrogates", []) if m not in surrogate_names]
    if "epochs_x" in over:
        over["epochs"] = cfg.epochs * over.pop("epochs_x")
    c = cfg.replace(**over)
    c.validate()
    return method, c, list(surrogate_names)[:k] + extra


def ablation_rows(
    names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    surrogate_names: Sequence[str],
    intruder: str,
    cfg: tr.TrainConfig,
    device: str = "cpu",
):
    """Per-user numbers of every ablation: one row per (ablation, user) with black-box recall
    ``bb_1b/1a/2b/2a``, white-box (first surrogate) ``wb_1b/2a``, mean SSIM and training seconds.

    Each user's gallery is their own entries and the distractors (the other users are left out), so a
    user's numbers depend only on their own protection and the rows pair across ablations."""
    import pandas as pd

    rows = []
    for name in names:
        method, c, sur_names = ablation_setup(name, cfg, surrogate_names)
        sur = load_surrogates(sur_names, intruder, device)
        prots = protect_users(
            [method], split, faces, sur, c, device=device, intruder=intruder, progress=False
        )
        white = list(surrogate_names)[0]
        d = evaluate(
            [intruder, white],
            split,
            faces,
            distractors,
            prots,
            scenarios=["1b", "1a", "2b", "2a"],
            metric=("native",),
            device=device,
            protect_others=False,
            include_others=False,
        )
        d = d[d["native"]].set_index(["model", "scenario", "user"])["recall"] * 100
        q = quality_table(faces, prots, c.eps).groupby("user")["ssim"].mean()
        for u in faces:
            row = {"ablation": name, "user": u, "method": method}
            for s_ in ("1b", "1a", "2b", "2a"):
                row[f"bb_{s_}"] = float(d.loc[(intruder, s_, u)])
            row["wb_1b"] = float(d.loc[(white, "1b", u)])
            row["wb_2a"] = float(d.loc[(white, "2a", u)])
            row["ssim"] = float(q.loc[u])
            row["train_s"] = float(prots[method][u].train_seconds)
            rows.append(row)
    return pd.DataFrame(rows)


ABLATION_VALUES = ("bb_1b", "bb_1a", "bb_2b", "bb_2a", "wb_1b", "wb_2a", "ssim", "train_s")


def ablation_per_user(rows) -> dict:
    """:func:`ablation_rows` as the run JSON keeps it: ``{ablation: {"what", "method", column: {user: v}}}``."""
    out = {}
    for name, g in rows.groupby("ablation", sort=False):
        out[name] = {"what": ABLATIONS[name][2], "method": str(g["method"].iloc[0])}
        for c in ABLATION_VALUES:
            out[name][c] = {str(u): float(v) for u, v in zip(g["user"], g[c])}
    return out


def run_ablation(
    names: Sequence[str],
    split: Split,
    faces: Mapping[str, FaceSet],
    distractors: FaceSet,
    surrogate_names: Sequence[str],
    intruder: str,
    cfg: tr.TrainConfig,
    device: str = "cpu",
):
    """One row per ablation: mean over users of :func:`ablation_rows` (recall in %, SSIM, train time)."""
    rows = ablation_rows(names, split, faces, distractors, surrogate_names, intruder, cfg, device)
    cols = ["bb_1b", "bb_1a", "bb_2b", "bb_2a", "wb_2a", "wb_1b", "ssim", "train_s"]
    t = rows.groupby("ablation", sort=False)[cols].mean().rename(columns={"train_s": "train_s_per_user"})
    t.insert(0, "method", rows.groupby("ablation", sort=False)["method"].first())
    t.insert(0, "what", [ABLATIONS[n][2] for n in t.index])
    return t


