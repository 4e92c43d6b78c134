"""Small-scale reproduction on the real default data (issue 10, item 5): do mosaics help on real images?

One command (``docs/reproduction.md``)::

    nice -n 10 python benchmarks/real_loop.py --out out/real_loop --figure docs/figures/real_loop.png

Held-out split (nothing of the test set is in the pool or in the motion source):

- **test**: Pose2Sim camera ``--test-camera`` (default cam04) at frames ``--test-from``..99 (default 50–99),
  scored against the package's own OpenPose keypoints of those frames (the pool's labels). A secondary
  test set holds the same instants seen by the other cameras (cameras seen in training, instants not).
- **pool** (mosaics and real crops): the other Pose2Sim cameras at frames 0..test_from-1, and Sports2D.
- **motion source**: Pose2Sim's balancing TRC at frames 0..test_from-1 (the same trial: later frames are
  the test instants), the standing TRC and the 15 DeepMimic clips.

Conditions: **R** (real crops alone), **M** (mosaics alone), **M+R** (alternating batch by batch), all with
the same network, K, steps, batch and seed; the trivial baselines **most frequent class** (the most
frequent class of the training crops' labels) and **mean 2D pose** (the mean box pose of the training
crops); and the **class lower bound** (the class whose mean 2D pose is nearest the ground truth).

Metric: mean 2D joint error over the 14 LSP joints, on the box normalised to 220×220 px (errors in the
S-px box times 220/S). Paired bootstrap over test instants (``--bootstrap`` resamples, percentile 95 %
intervals) for the mean errors and their differences. Also measured: the class prior of the mosaics against
the test poses' classes, and the classifiers' training curves. Everything goes to ``OUT/results.json``; the
table is printed. Rerunning the same command resumes unfinished training (checkpoints under ``OUT``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from gpumosaic.realcrops import class_box_poses, real_crops, real_labels
from gpumosaic.sources.real import load_real_mocap, load_real_pool
from gpumosaic.sources.select import select_mocap, select_pool
from gpumosaic.train import mosaic_batch, predict_logits, prepare_data, preset, train

BOX = 220.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="out/real_loop")
    p.add_argument("--figure", default=None, help="write the figure (PNG) here")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=30)
    p.add_argument("--views", type=int, default=16)
    p.add_argument("--mosaic-cache", type=int, default=12, help="mosaic batches synthesised once and reused")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-camera", type=int, default=4)
    p.add_argument("--test-from", type=int, default=50)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--conditions", default="R,M,M+R")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    return p


def splits(test_camera: int, test_from: int) -> dict[str, str]:
    """Selector texts of the held-out protocol (docs/data.md codes: pool cameras 1-4, Sports2D 5; mocap clip
    1 = the balancing TRC, 2 = standing, 10-24 = DeepMimic)."""
    others = "+".join(str(c) for c in range(1, 5) if c != test_camera)
    return {
        "pool": f"camera={others},frame=0-{test_from - 1}|camera=5",
        "test": f"camera={test_camera},frame={test_from}-",
        "test_seen_cameras": f"camera={others},frame={test_from}-",
        "mocap": f"clip=1,frame=0-{test_from - 1}|clip=2|clip=10-24",
    }


def bootstrap(errors: dict[str, torch.Tensor], instants: torch.Tensor, pairs: list[tuple[str, str]], n: int,
              seed: int) -> dict:
    """Paired bootstrap over instants: resample instants with replacement; every row's mean error and every
    pair's mean difference on the same resamples. Returns ``{name: {mean, lo, hi}}``."""
    ids, inv = torch.unique(instants, return_inverse=True)
    u = ids.numel()
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(u, (n, u), generator=gen)  # (n, U) instant indices
    weights = torch.zeros(n, u).scatter_add_(1, draws, torch.ones(n, u))  # (n, U) multiplicities
    per_img = weights[:, inv]  # (n, I): each image weighted by its instant's multiplicity
    per_img = per_img / per_img.sum(1, keepdim=True)

    def stats(v: torch.Tensor) -> dict:
        b = per_img @ v.double().float()
        return {"mean": float(v.mean()), "lo": float(b.quantile(0.025)), "hi": float(b.quantile(0.975))}

    out = {k: stats(v) for k, v in errors.items()}
    for a, b in pairs:
        out[f"{a} - {b}"] = stats(errors[a] - errors[b])
    return out


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sel = splits(args.test_camera, args.test_from)
    full_pool, full_mocap = load_real_pool(), load_real_mocap()
    pool, mocap = select_pool(full_pool, sel["pool"]), select_mocap(full_mocap, sel["mocap"])
    tests = {"held-out camera": select_pool(full_pool, sel["test"]),
             "seen cameras": select_pool(full_pool, sel["test_seen_cameras"])}
    # The protocol itself: no test instant anywhere in training.
    test_frames = set((tests["held-out camera"].ids % 100000).tolist())
    assert not (set((pool.ids[pool.ids // 100000 <= 4] % 100000).tolist()) & test_frames)
    assert not (set((mocap.ids[mocap.ids // 100000 == 1] % 100000).tolist()) & test_frames)
    print(f"pool {len(pool)} images, mocap {len(mocap)} poses, test {len(tests['held-out camera'])} "
          f"(+{len(tests['seen cameras'])} seen-camera) images; selectors {sel}", flush=True)

    base = preset("cpu", size=args.size, classes=args.classes, views=args.views, class_views=args.views,
                  batch_size=args.batch_size, steps=args.steps, backbone=args.backbone, lr=args.lr,
                  mosaic_cache=args.mosaic_cache, seed=args.seed, checkpoint_every=25, log_every=5)
    t0 = time.perf_counter()
    shared = prepare_data(replace(base, mode="M+R"), pool, mocap)
    classes = shared.classes
    print(f"pose classes K={classes.num_classes} fitted in {time.perf_counter() - t0:.0f} s", flush=True)

    conditions = [c.strip() for c in args.conditions.split(",")]
    models, curves, seconds = {}, {}, {}
    for cond in conditions:
        cfg = replace(base, mode=cond)
        data = prepare_data(cfg, pool, mocap, classes=classes)
        data.mosaic_store = shared.mosaic_store  # one mosaic bank for M and M+R
        t0 = time.perf_counter()
        res = train(cfg, data, out / cond.replace("+", "_"), progress=True, log=print)
        seconds[cond] = time.perf_counter() - t0
        models[cond] = res.model
        curves[cond] = res.history
        print(f"{cond}: trained {res.step} steps ({seconds[cond]:.0f} s this run)", flush=True)

    # Evaluation.
    S = args.size
    scale = BOX / S
    box, valid = class_box_poses(classes, S)
    train_imgs, train_pose = real_crops(pool, torch.arange(len(pool)), S)
    train_labels = real_labels(train_pose, classes, S, box_poses=(box, valid))
    most_frequent = int(torch.bincount(train_labels, minlength=classes.num_classes).argmax())
    mean_pose = train_pose.mean(0)
    bank = torch.cat([b["label"] for b in shared.mosaic_store.values()]) if shared.mosaic_store else None

    def err(pred, gt):  # (I, J, 2) box px -> (I,) mean joint error, px of the 220 box
        return (pred - gt).norm(dim=-1).mean(-1) * scale

    results = {"args": vars(args), "selectors": sel, "config": asdict(base), "pool": len(pool), "mocap": len(mocap),
               "seconds": seconds, "tests": {}}
    for name, test in tests.items():
        imgs, gt = real_crops(test, torch.arange(len(test)), S)
        nearest = real_labels(gt, classes, S, box_poses=(box, valid))
        errors = {}
        top1 = {}
        for cond, model in models.items():
            pred = predict_logits(model, imgs).argmax(-1)
            errors[cond] = err(box[pred], gt)
            top1[cond] = float((pred == nearest).float().mean())
        errors["most frequent class"] = err(box[most_frequent].expand_as(gt), gt)
        errors["mean 2D pose"] = err(mean_pose.expand_as(gt), gt)
        errors["class lower bound"] = err(box[nearest], gt)
        pairs = [(c, o) for c in ("M+R",) if c in models for o in ("R", "most frequent class", "mean 2D pose")
                 if o in errors] + ([("M", "R")] if "M" in models and "R" in models else [])
        stats = bootstrap(errors, test.ids % 100000, pairs, args.bootstrap, args.seed)
        # Class prior: share of samples in each class, mosaics vs real training crops vs this test set.
        k = classes.num_classes
        hist = lambda lab: torch.bincount(lab, minlength=k).double() / max(lab.numel(), 1)  # noqa: E731
        prior = {"test": hist(nearest)}
        prior["real train crops"] = hist(train_labels)
        if bank is not None:
            prior["mosaics"] = hist(bank)
        tv = {n: 0.5 * float((p - prior["test"]).abs().sum()) for n, p in prior.items() if n != "test"}
        results["tests"][name] = {"n": len(test), "instants": int(torch.unique(test.ids % 100000).numel()),
                                  "stats": stats, "top1_vs_nearest_class": top1,
                                  "class_prior_total_variation_to_test": tv,
                                  "per_image": {c: e.tolist() for c, e in errors.items()}}
        print(f"\n{name}: {len(test)} images, {results['tests'][name]['instants']} instants; mean 2D error, px of "
              f"the 220 box [95% CI]")
        for key, v in stats.items():
            print(f"  {key:32s} {v['mean']:7.2f}  [{v['lo']:7.2f}, {v['hi']:7.2f}]")
        print(f"  top-1 vs nearest class: {top1}; class-prior TV distance to test: {tv}")
    results["curves"] = curves
    results["wall_seconds"] = time.perf_counter() - t_start
    results["loadavg_start"], results["loadavg_end"] = load0, os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nwall {results['wall_seconds']:.0f} s; load average at start {load0}, at end {os.getloadavg()}")
    if args.figure:
        figure(results, Path(args.figure), shared, pool, S)
    return results


def figure(results: dict, path: Path, shared, pool, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    stats = results["tests"]["held-out camera"]["stats"]
    names = [n for n in stats if " - " not in n]
    means = [stats[n]["mean"] for n in names]
    lo = [stats[n]["mean"] - stats[n]["lo"] for n in names]
    hi = [stats[n]["hi"] - stats[n]["mean"] for n in names]
    ax.barh(names, means, xerr=[lo, hi], color=["C0" if n in ("R", "M", "M+R") else "0.6" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("mean 2D error (px of the 220 box), 95% bootstrap CI")
    ax.set_title("held-out camera, held-out instants", fontsize=10)
    ax = axes[1]
    for cond, hist in results["curves"].items():
        steps = [h[0] for h in hist]
        loss = [h[2] for h in hist]
        k = 10
        smooth = [sum(loss[max(0, i - k):i + 1]) / len(loss[max(0, i - k):i + 1]) for i in range(len(loss))]
        ax.plot(steps, smooth, label=cond)
    ax.set_xlabel("step")
    ax.set_ylabel("training cross-entropy (running mean)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax = axes[2]
    imgs = []
    if shared.mosaic_store:
        imgs.append(next(iter(shared.mosaic_store.values()))["image"][:4])
    crops, _ = real_crops(pool, torch.arange(0, len(pool), max(1, len(pool) // 4))[:4], size)
    imgs.append(crops)
    grid = torch.cat([torch.cat(list(row), dim=-1) for row in imgs], dim=-2)
    ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_title("top: mosaics; bottom: real training crops", fontsize=10)
    ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
