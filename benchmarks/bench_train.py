"""Time of one PPT training step, and the projected training time per user for each preset.

One step = warp the texture onto a batch of 224x224 canvases (UV mode, random smooth UV grids), SSIM,
forward + backward through every surrogate, signed update: exactly ``train_ppt``'s loop. Measured for

* ``tiny``: ``--tiny N`` small random conv nets (the unit tests' stand-ins; the loop's own overhead), and
* ``zoo``: the real surrogates (``--zoo``, default ``dlib_resnet,mobilefacenet,faceres``) when
  ``protego_nb.models.zoo`` is importable and the models load.

at every batch size the presets use (16 for ``release``, 4 for ``paper`` and ``ci``). Step time =
(wall time of one ``train_ppt`` run of ``--steps`` steps - its own clean-feature pass) / steps, after a
one-step warm-up. The 1-minute load average before and after is recorded: on a shared machine, judge the
numbers by it. Projection per user: ``epochs * ceil(n_train / batch) * s_per_step`` plus the
clean-feature pass, with ``--train-images`` training photos per user (24: 60 % of a 40-photo LFW user).

    python benchmarks/bench_train.py --steps 3 --out bench_train.json      # CPU, 2 threads
    python benchmarks/bench_train.py --device cuda --steps 5               # GPU, when present
    python benchmarks/bench_train.py --levers base textures4 spectrum5 --out lever_cost.json

``--levers``: instead, the step time of each named ablation (:data:`protego_nb.study.ABLATIONS`, over the
``paper`` preset and the surrogates ``dlib_resnet,mobilefacenet`` as in ``benchmarks/transfer_levers.py``; an
ablation's extra surrogates are loaded too), in one process one after another, with its ratio to ``base``:
the warm-cache cost of each transfer lever.

Output: a JSON report on stdout (and written atomically to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from protego_nb.faces import align  # noqa: E402
from protego_nb.protect import texture as X  # noqa: E402
from protego_nb.protect import train as T  # noqa: E402


class TinyFR(torch.nn.Module):
    """A small random conv net with the zoo's forward signature (canvas, landmarks) -> [B, 128]."""

    def __init__(self, seed: int, dim: int = 128) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.c1 = torch.nn.Conv2d(3, 16, 5, stride=4)
        self.c2 = torch.nn.Conv2d(16, dim, 3, stride=2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.1
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x - 0.5))).mean((2, 3))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _data(n: int, device: str) -> tuple[torch.Tensor, torch.Tensor, X.UVWarp]:
    s = align.CANVAS_SIZE
    g = torch.Generator().manual_seed(0)
    canvases = torch.rand(n, 3, s, s, generator=g)
    landmarks = torch.tensor(align.CANVAS_TEMPLATE, dtype=torch.float32).expand(n, 5, 2).contiguous()
    uv = torch.nn.functional.avg_pool2d(torch.rand(n, 2, s // 8, s // 8, generator=g) * 2 - 1, 3, 1, 1)
    uv = torch.nn.functional.interpolate(uv, size=(s, s), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    vis = torch.zeros(n, 1, s, s)
    vis[:, :, s // 8 : -s // 8, s // 6 : -s // 6] = 1
    return canvases, landmarks, X.UVWarp(uv.contiguous(), vis)


def time_steps(models: dict, batch: int, steps: int, device: str, cfg: T.TrainConfig | None = None) -> dict:
    """Seconds per training step and per image of the clean-feature pass, from one run of ``steps`` steps
    (``cfg``: the training options, default the ``release`` preset; its epochs and batch are replaced)."""
    n = batch * steps
    canvases, landmarks, warps = _data(n, device)
    cfg = (cfg or T.TrainConfig.from_preset("release")).replace(epochs=1, batch_size=batch)
    # warm-up: one step (allocator, kernels, lazy init)
    T.train_ppt(canvases[:batch], landmarks[:batch], warps.select(slice(0, batch)), models, cfg, device, progress=False)
    _sync(device)
    res = T.train_ppt(canvases, landmarks, warps, models, cfg, device, progress=False)
    _sync(device)
    assert res.steps == steps
    return {
        "batch": batch,
        "steps": steps,
        "clean_features_s": res.clean_seconds,
        "s_per_step": (res.seconds - res.clean_seconds) / steps,
        "clean_s_per_image": res.clean_seconds / n,
    }


def project(timing_by_batch: dict[int, dict], n_train: int) -> dict:
    """Projected wall time per user (seconds) for each preset."""
    out = {}
    for name, cfg in T.PRESETS.items():
        t = timing_by_batch[cfg.batch_size]
        steps = cfg.epochs * math.ceil(n_train / cfg.batch_size)
        seconds = steps * t["s_per_step"] + n_train * t["clean_s_per_image"]
        out[name] = {"epochs": cfg.epochs, "batch": cfg.batch_size, "steps": steps, "seconds": round(seconds, 2),
                     "minutes": round(seconds / 60, 2)}
    return out


def lever_costs(names: list[str], steps: int, device: str, surrogates: list[str]) -> dict:
    """Step time of each ablation in ``names`` (batch 4, the ``paper`` preset under it) and its ratio to the
    first one's; every model any of them needs is loaded once, before timing."""
    from protego_nb import study
    from protego_nb.models import zoo

    base = T.TrainConfig.from_preset("paper")
    setups = {n: study.ablation_setup(n, base, surrogates) for n in names}
    loaded = {m: zoo.load(m, device) for m in dict.fromkeys(m for _, _, ms in setups.values() for m in ms)}
    out: dict = {}
    for name, (_, cfg, models) in setups.items():
        t = time_steps({m: loaded[m] for m in models}, cfg.batch_size, steps, device, cfg)
        out[name] = {"surrogates": models, "s_per_step": round(t["s_per_step"], 4), "steps": steps,
                     "batch": cfg.batch_size}
    first = out[names[0]]["s_per_step"]
    for rec in out.values():
        rec["x_" + names[0]] = round(rec["s_per_step"] / first, 2)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration")
    ap.add_argument("--tiny", type=int, default=3, help="number of tiny stand-in surrogates (0: skip)")
    ap.add_argument("--zoo", default="dlib_resnet,mobilefacenet,faceres", help="zoo surrogates ('' to skip)")
    ap.add_argument("--train-images", type=int, default=24, help="training photos per user for the projection")
    ap.add_argument("--levers", nargs="+", help="time these ablations instead (the first is the reference)")
    ap.add_argument("--surrogates", default="dlib_resnet,mobilefacenet", help="the levers' base surrogates")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    batches = sorted({cfg.batch_size for cfg in T.PRESETS.values()}, reverse=True)

    report: dict = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"cpu ({platform.processor()})",
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "canvas": align.CANVAS_SIZE,
        "mode": "uv",
        "train_images_per_user": args.train_images,
        "load_average_before": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "runs": {},
    }
    suites: dict[str, dict] = {}
    if args.levers:
        from protego_nb import runtime

        report["command"] = " ".join(["python", *sys.argv])
        report["git"] = runtime.git_info()
        report["levers"] = lever_costs(args.levers, args.steps, args.device, args.surrogates.split(","))
        args.tiny, args.zoo = 0, ""
    if args.tiny > 0:
        suites[f"tiny_x{args.tiny}"] = {f"tiny{i}": TinyFR(i).to(args.device) for i in range(args.tiny)}
    names = [n for n in args.zoo.split(",") if n]
    if names:
        try:
            from protego_nb.models import zoo

            suites["zoo:" + "+".join(names)] = {n: zoo.load(n, args.device) for n in names}
        except Exception as exc:  # the zoo may be missing or a model unavailable: report why, keep going
            report["zoo_skipped"] = f"{type(exc).__name__}: {exc}"
    for label, models in suites.items():
        timing = {b: time_steps(models, b, args.steps, args.device) for b in batches}
        report["runs"][label] = {
            "timing": {str(b): {k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()}
                       for b, t in timing.items()},
            "projected_per_user": project(timing, args.train_images),
        }
    report["load_average_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{args.out.name}.", dir=args.out.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        os.replace(tmp, args.out)
    return report


if __name__ == "__main__":
    main()
