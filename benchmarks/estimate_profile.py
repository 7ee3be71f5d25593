"""How long a profile's notebooks 02-05 take on this machine: measured unit costs x the profile's work counts.

A full-profile run on a 2-core CPU takes longer than a session, so its time is *estimated*: each unit of work
is timed here with the project's own code on one user of the profile's split, at a reduced step count, and
multiplied by how many such units the profile's parameters ask for:

- texture training (Protego, Chameleon-style, flat Protego, leave-one-out sets, ablations): seconds per
  (training image x epoch) for each surrogate set and warp mode, from one epoch over one user's images;
- OPOM: seconds per epoch of its per-user optimisation (its budget is the config's epochs);
- per-image attacks (Fawkes-style, LowKey-style): seconds per (image x step), the difference of a 1-step and a
  (1 + n)-step run on a few images, plus the per-image rest;
- embeddings: images per second of each evaluation model (forward, no gradient), for every protected set that
  notebooks 03-05 embed (methods x users' images x models, robustness transforms, coverage, leave-one-out,
  ablations) and the clean gallery + distractors once per model.

Notebooks 00 (full: 6,000-pair verification) and 01 are small next to these; their measured times are passed
in with ``--fixed`` (seconds). Detection of a cold cache is reported separately (``--detect-rate``).
Textures trained in notebook 03 are re-used by 05 through the protection cache and counted once.

    python benchmarks/estimate_profile.py --profile full --out papermill_runs/bench/estimate_full.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import Counter

import torch

from protego_nb import data, io, run, runtime, study
from protego_nb.protect import methods
from protego_nb.protect import train as tr


def params_for(profile: str, stem: str) -> dict:
    nb = next(p for p in run.list_notebooks() if p.stem == stem)
    merged = {k: v["default"] for k, v in run.declared_parameters(nb).items()}
    merged.update(run.parameters_for(nb, profile))
    return merged


def _eval_default(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text.strip("\"'")


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--per-image-images", type=int, default=4, help="images timed for the per-image attacks")
    ap.add_argument("--per-image-steps", type=int, default=3, help="steps timed for the per-image attacks")
    ap.add_argument("--fixed", nargs="*", default=[], metavar="NB=SECONDS",
                    help="measured times of notebooks not estimated here, e.g. 00=452 01=60")
    ap.add_argument("--detect-rate", type=float, default=18.1, help="images/s of a cold detection (make bench)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, torch.get_num_threads()))
    p05 = {k: _eval_default(v) if isinstance(v, str) else v for k, v in params_for(args.profile, "05_recall_tables").items()}
    p04 = {k: _eval_default(v) if isinstance(v, str) else v for k, v in params_for(args.profile, "04_gram_volume_ablations").items()}
    p03 = {k: _eval_default(v) if isinstance(v, str) else v for k, v in params_for(args.profile, "03_dense_cluster_umap").items()}
    device = runtime.resolve_device(p05["DEVICE"])
    ds = data.lfw()
    split = data.get_split(ds, p05["SPLIT_NAME"], protocol=p05["PROTOCOL"], seed=p05["SEED"], n_users=p05["N_USERS"],
                           min_images=p05["MIN_IMAGES"], max_images=p05["MAX_IMAGES"],
                           max_distractors=None if p05["MAX_DISTRACTORS"] <= 0 else p05["MAX_DISTRACTORS"])
    eps = p05["EPSILON_255"] / 255
    cfg = tr.TrainConfig.from_preset(p05["PRESET"], eps=eps, **({"epochs": p05["EPOCHS"]} if p05["EPOCHS"] > 0 else {}))
    pool = methods.TargetPool.from_faces(study.load_faces(ds, split.distractors[:64], with_uv=False))
    methods.register_baselines(pool, steps=p05["PER_IMAGE_STEPS"] or None, fawkes_mode=p05["FAWKES_MODE"])

    users = split.user_names
    n_img = {u: len(study.user_images(split, u)) for u in users}
    n_train = {u: len(split.users[u].train) for u in users}
    n_dis = len(split.distractors)
    u0 = users[0]
    faces0 = study.load_faces(ds, study.user_images(split, u0), with_uv=True)
    train0 = faces0.take(split.users[u0].train)
    unit: dict[str, float] = {}

    # --- texture training: seconds per (training image x epoch), per surrogate set and warp mode
    one = cfg.replace(epochs=1)

    def train_unit(sur_names: tuple[str, ...], mode: str, intruder: str, **over) -> float:
        key = f"train/{mode}/{'+'.join(sur_names)}" + "".join(f"/{k}={v}" for k, v in sorted(over.items()))
        if key not in unit:
            sur = study.load_surrogates(list(sur_names), intruder, device)
            c = one.replace(mode=mode, **over)
            warp = train0.warp(mode)
            s = _time(lambda: tr.train_ppt(train0.x, train0.lm, warp, sur, c, device=device, progress=False,
                                           intruder=intruder))
            unit[key] = s / len(train0)
            print(f"{key}: {unit[key]:.4f} s per image-epoch")
        return unit[key]

    surs = tuple(p05["SURROGATES"])
    intr = p05["INTRUDER"]
    counts: Counter = Counter()  # seconds by part
    sum_train = sum(n_train.values())
    sum_img = sum(n_img.values())

    # notebook 03 + 05 main: each texture method once per user (cache shared between 03 and 05)
    methods05 = [m for m in p05["METHODS"] if m in study.METHODS]
    main_methods = list(dict.fromkeys(methods05 + [m for m in p03["METHODS"] if m in study.METHODS]))
    for name in main_methods:
        m = study.METHODS[name]
        if m.kind == "texture":
            counts["05 train " + name] = train_unit(surs, m.mode, intr, **dict(m.config)) * sum_train * cfg.epochs
        elif m.kind == "texture_fn":
            key = f"{name}/epoch"
            sur = study.load_surrogates(list(surs), intr, device)
            gen = torch.Generator().manual_seed(0)
            c = one.replace(mode=m.mode, **dict(m.config))
            unit[key] = _time(lambda m=m, c=c, sur=sur, gen=gen: m.fn(train0, sur, c, device=device, generator=gen))
            print(f"{key}: {unit[key]:.3f} s per user-epoch ({len(train0)} training images)")
            counts["05 train " + name] = unit[key] * cfg.epochs * sum_train / len(train0)
        elif m.kind == "per_image":
            steps = int(m.config.get("steps", 0)) or 1
            k = min(args.per_image_images, len(faces0))
            sub = faces0.take(faces0.ids[:k])
            sur = study.load_surrogates(list(surs), intr, device)
            timed = {}
            # a warm-up call (Fawkes embeds its target pool once), then the difference of the two timed runs
            # is the marginal cost of the steps
            for n_steps in (1, 1, 1 + args.per_image_steps):
                methods.register_baselines(pool, steps=n_steps, fawkes_mode=p05["FAWKES_MODE"])
                quick_fn = study.METHODS[name].fn
                gen = torch.Generator().manual_seed(0)
                t0 = time.perf_counter()
                quick_fn(sub, sur, eps=eps, min_ssim=cfg.min_ssim, device=device, generator=gen)
                timed[n_steps] = time.perf_counter() - t0
            methods.register_baselines(pool, steps=p05["PER_IMAGE_STEPS"] or None, fawkes_mode=p05["FAWKES_MODE"])
            per_step = max(timed[1 + args.per_image_steps] - timed[1], 0.0) / (k * args.per_image_steps)
            per_image = max(timed[1] / k - per_step, 0.0)
            unit[f"{name}/image-step"], unit[f"{name}/image-fixed"] = per_step, per_image
            print(f"{name}: {per_step:.4f} s per image-step + {per_image:.4f} s per image ({steps} steps in the profile)")
            counts["05 protect " + name] = (per_step * steps + per_image) * sum_img

    # leave-one-out: LOO_METHODS trained against the rows' surrogates (study.loo_plan), per held-out row
    loo_rows = study.loo_plan(p05["LOO_INTRUDERS"], surs, p05.get("LOO_POOL") or ())
    for label, held, loo_sur in loo_rows:
        loo_sur = tuple(loo_sur)
        if held == intr and sorted(loo_sur) == sorted(surs):
            continue  # the main table's textures (same surrogates, same users): a cache hit
        for name in p05["LOO_METHODS"]:
            m = study.METHODS.get(name)
            if m is not None and m.kind == "texture":
                counts[f"05 loo {label} train {name}"] = (
                    train_unit(loo_sur, m.mode, held, **dict(m.config)) * sum_train * cfg.epochs)

    # notebook 04: every ablation trains its users
    abl_users = users[: p04["ABLATION_USERS"]]
    abl_train = sum(n_train[u] for u in abl_users)
    for name in p04["ABLATIONS"]:
        method, c, sset = study.ablation_setup(name, cfg, surs)
        m = study.METHODS[method]
        over = {f: v for f, v in c.to_dict().items() if v != cfg.to_dict()[f] and f != "epochs"}
        over.update(m.config)
        over.pop("mode", None)
        per = train_unit(tuple(sset), m.mode, intr, **over)
        counts[f"04 train {name}"] = per * abl_train * c.epochs

    # embeddings: forward rate per evaluation model
    from protego_nb.models import zoo

    rate = {}
    x = faces0.x[:32].to(device)
    lm = faces0.lm[:32].to(device)
    loo_held = [held for _, held, _ in loo_rows]
    for name in dict.fromkeys(list(p05["EVAL_MODELS"]) + list(p03["MODELS"]) + loo_held + [intr]):
        model = zoo.load(name, device)
        with torch.no_grad():
            model(x, lm)  # warm-up at the timed batch shape (oneDNN builds its kernels per shape)
            s = _time(lambda model=model: model(x, lm))
        rate[name] = len(x) / s
        unit[f"embed/{name}"] = 1 / rate[name]
        print(f"embed/{name}: {rate[name]:.1f} images/s")
    n_m = len(methods05)
    emb = Counter()
    for name in p05["EVAL_MODELS"]:
        emb[name] += n_dis + sum_img  # clean gallery + distractors (cached on disk afterwards)
        emb[name] += n_m * sum_img  # protected sets, main table
    emb[intr] += len(p05["TRANSFORMS"]) * n_m * sum_img + n_m * sum_img  # robustness + coverage
    for held in dict.fromkeys(loo_held):
        n_rows = loo_held.count(held)
        emb[held] += n_rows * len(p05["LOO_METHODS"]) * sum_img + (0 if held in p05["EVAL_MODELS"] else n_dis + sum_img)
    n_abl_img = sum(n_img[u] for u in abl_users)
    emb[intr] += len(p04["ABLATIONS"]) * n_abl_img
    emb[list(surs)[0]] += len(p04["ABLATIONS"]) * n_abl_img
    for name in p03["MODELS"]:
        emb[name] += len(p03["METHODS"]) * sum_img + (0 if name in p05["EVAL_MODELS"] else n_dis + sum_img)
    if "fawkes" in methods05:  # Fawkes' target pool (the distractors) is embedded by every surrogate
        for name in surs:
            emb[name] += n_dis
    for name, n in emb.items():
        if f"embed/{name}" not in unit:
            model = zoo.load(name, device)
            with torch.no_grad():
                model(x, lm)  # warm-up at the timed batch shape (oneDNN builds its kernels per shape)
                unit[f"embed/{name}"] = _time(lambda model=model: model(x, lm)) / len(x)
        counts[f"embed {name}"] = n * unit[f"embed/{name}"]

    fixed = {}
    for item in args.fixed:
        nb, _, sec = item.partition("=")
        fixed[f"notebook {nb} (measured)"] = float(sec)
    total = sum(counts.values()) + sum(fixed.values())
    n_detect = n_dis + sum_img
    rec = {
        "profile": args.profile,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "split": p05["SPLIT_NAME"],
        "users": len(users),
        "user_images": sum_img,
        "training_images": sum_train,
        "distractors": n_dis,
        "epochs": cfg.epochs,
        "surrogates": list(surs),
        "per_image_steps": {n: int(study.METHODS[n].config.get("steps", 0)) for n in methods05
                            if study.METHODS[n].kind == "per_image"},
        "units_seconds": unit,
        "parts_seconds": dict(counts),
        "fixed_seconds": fixed,
        "total_hours": total / 3600,
        "cold_detection_hours": n_detect / args.detect_rate / 3600,
    }
    width = max(len(k) for k in list(counts) + list(fixed))
    for k, v in sorted({**counts, **fixed}.items(), key=lambda kv: -kv[1]):
        print(f"{k:<{width}}  {v / 3600:7.2f} h")
    print(f"{'total':<{width}}  {total / 3600:7.2f} h  (+ {rec['cold_detection_hours']:.2f} h detection on a cold cache)")
    text = json.dumps(rec, indent=1, default=str)
    if args.out:
        io.atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
