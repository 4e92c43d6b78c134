"""Small-scale reproduction on the real default data (issue 10, item 5): do mosaics help on real images?

One command (``docs/reproduction.md``)::

    python benchmarks/real_loop.py --out out/real_loop --figure docs/figures/real_loop.png

Held-out split (nothing of the test set is in the pool or in the motion source):

- **test**: Pose2Sim camera ``--test-camera`` (default cam04) at frames ``--test-from``..99 (default 50–99),
  scored against the package's own OpenPose keypoints of those frames (the pool's labels). A secondary
  test set holds the same instants seen by the other cameras (cameras seen in training, instants not).
- **pool** (mosaics and real crops): the other Pose2Sim cameras at frames 0..test_from-1, and Sports2D.
- **motion source**: Pose2Sim's balancing TRC at frames 0..test_from-1 (the same trial: later frames are
  the test instants), the standing TRC and the DeepMimic clips of ``--motion`` (default: the 9 upright ones).
- ``--protocol validation`` carves the same design out of the training side (camera ``--val-camera`` at
  frames ``--val-from``..test_from-1): every default below (64 px, batch 32, 400 steps, 64 views, roll ±30°,
  upright motion, top-1 decoding) was chosen there, never on the test split (docs/reproduction.md).

Conditions: **R** (real crops alone), **M** (mosaics alone), **M+R** (alternating batch by batch), all with
the same network, K, steps, batch and seed; the trivial baselines **most frequent class** (the most
frequent class of the training crops' labels) and **mean 2D pose** (the mean box pose of the training
crops); and the **class lower bound** (the class whose mean 2D pose is nearest the ground truth).

Metric (:mod:`gpumosaic.evaluate`, the LSP protocol): mean 2D joint error over the paper's 13 joints (and
all 14), on the box normalised to 220×220 px (errors in the S-px box times 220/S: ``fit_to_box`` is a
similarity). Bootstrap over test instants (``--bootstrap`` resamples, percentile 95 % intervals) for the
means, paired bootstrap for their differences. Also measured: the class prior of the mosaics against
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

from gpumosaic.evaluate import (
    bootstrap_ci,
    class_lower_bound,
    joint_errors,
    mean_error,
    paired_bootstrap,
    paper_joints,
    per_joint_table,
)
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
    p.add_argument("--protocol", choices=("test", "validation"), default="test",
                   help="test: the held-out camera --test-camera at frames --test-from..99; validation: camera "
                        "--val-camera at frames --val-from..test_from-1, trained on frames 0..val_from-1 of the "
                        "other training cameras (never touches the test camera or test instants: choices are "
                        "made here)")
    p.add_argument("--motion", choices=sorted(MOTIONS), default="upright",
                   help="motion source besides the balancing trial's training frames and the standing trial: "
                        "all 15 DeepMimic clips, the upright ones (the person stays on their feet), or none")
    p.add_argument("--val-camera", type=int, default=1)
    p.add_argument("--val-from", type=int, default=25)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--classes", type=int, default=30)
    p.add_argument("--views", type=int, default=64)
    p.add_argument("--roll", type=float, default=30.0,
                   help="camera roll range +-deg for mosaics, class fitting and real crops (0: the paper's level cameras)")
    p.add_argument("--decode", choices=("top1", "expected"), default="top1",
                   help="the decoding whose paired differences decide the verdict (both are always reported)")
    p.add_argument("--mosaic-cache", type=int, default=0, help="mosaic batches synthesised once and reused")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-camera", type=int, default=4)
    p.add_argument("--test-from", type=int, default=50)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--conditions", default="R,M,M+R")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-realism", action="store_true",
                   help="skip the classifiers' top-1 on the mosaic bank (it re-synthesises the bank on a rerun)")
    p.add_argument("--markdown", default=None, help="write the result tables (markdown) here")
    p.add_argument("--multiband", type=int, default=0, metavar="N",
                   help="train M and M+R on multi-band blended mosaics (beyond the paper; gpumosaic.multiband)")
    p.add_argument("--no-blend", action="store_true",
                   help="train M and M+R on copy-paste mosaics (Eq. 6, no blending): an option to compare with the "
                        "paper's blended mosaics (docs/fidelity.md)")
    return p


MOTIONS = {
    "all": "|clip=10-24",
    # DeepMimic clips in which the person stays on their feet (docs/data.md order): dance_a, dance_b, jump,
    # kick, punch, run, spin, spinkick, walk; left out: backflip, cartwheel, crawl, getup x2, roll
    "upright": "|clip=13+14+17+18+19+21+22+23+24",
    "trc": "",
}
"""Motion sources (besides the Pose2Sim trials) compared on the validation split."""


def splits(test_camera: int, test_from: int, protocol: str = "test", val_camera: int = 1,
           val_from: int = 25, motion: str = "all") -> dict[str, str]:
    """Selector texts of the held-out protocol (docs/data.md codes: pool cameras 1-4, Sports2D 5; mocap clip
    1 = the balancing TRC, 2 = standing, 10-24 = DeepMimic).

    ``protocol="validation"`` carves the same design out of the training side only: camera ``val_camera``
    at frames ``val_from..test_from-1`` is held out, the pool is the other training cameras at frames
    ``0..val_from-1`` (and Sports2D), the motion source the balancing TRC at those frames (and the rest).
    """
    train_cams = [c for c in range(1, 5) if c != test_camera]
    if protocol == "validation":
        if val_camera not in train_cams or not 0 < val_from < test_from:
            raise ValueError(f"Expected a training camera {train_cams} and 0 < val_from < {test_from}, got "
                             f"{val_camera}, {val_from}")
        others = "+".join(str(c) for c in train_cams if c != val_camera)
        return {
            "pool": f"camera={others},frame=0-{val_from - 1}|camera=5",
            "test": f"camera={val_camera},frame={val_from}-{test_from - 1}",
            "test_seen_cameras": f"camera={others},frame={val_from}-{test_from - 1}",
            "mocap": f"clip=1,frame=0-{val_from - 1}|clip=2{MOTIONS[motion]}",
        }
    others = "+".join(str(c) for c in train_cams)
    return {
        "pool": f"camera={others},frame=0-{test_from - 1}|camera=5",
        "test": f"camera={test_camera},frame={test_from}-",
        "test_seen_cameras": f"camera={others},frame={test_from}-",
        "mocap": f"clip=1,frame=0-{test_from - 1}|clip=2{MOTIONS[motion]}",
    }


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sel = splits(args.test_camera, args.test_from, args.protocol, args.val_camera, args.val_from, args.motion)
    full_pool, full_mocap = load_real_pool(), load_real_mocap()
    pool, mocap = select_pool(full_pool, sel["pool"]), select_mocap(full_mocap, sel["mocap"])
    tests = {"held-out camera": select_pool(full_pool, sel["test"]),
             "seen cameras": select_pool(full_pool, sel["test_seen_cameras"])}
    # The protocol itself: no test instant anywhere in training.
    test_frames = set((tests["held-out camera"].ids % 100000).tolist())
    assert not (set((pool.ids[pool.ids // 100000 <= 4] % 100000).tolist()) & test_frames)
    assert not (set((mocap.ids[mocap.ids // 100000 == 1] % 100000).tolist()) & test_frames)
    if args.protocol == "validation":  # nothing of the test protocol's camera or instants is even looked at
        for part in (pool, tests["held-out camera"], tests["seen cameras"]):
            p2s = part.ids[part.ids // 100000 <= 4]
            assert bool((p2s % 100000 < args.test_from).all()) and not bool((p2s // 100000 == args.test_camera).any())
        assert bool((mocap.ids[mocap.ids // 100000 == 1] % 100000 < args.test_from).all())
    print(f"pool {len(pool)} images, mocap {len(mocap)} poses, test {len(tests['held-out camera'])} "
          f"(+{len(tests['seen cameras'])} seen-camera) images; selectors {sel}", flush=True)

    base = preset("cpu", size=args.size, classes=args.classes, views=args.views, class_views=args.views,
                  batch_size=args.batch_size, steps=args.steps, backbone=args.backbone, lr=args.lr,
                  mosaic_cache=args.mosaic_cache, seed=args.seed, roll=args.roll, blend=not args.no_blend,
                  multiband_levels=args.multiband,
                  checkpoint_every=50,
                  log_every=5)
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

    # Evaluation (gpumosaic.evaluate): 2D error on the normalised 220 box over the paper's 13 joints (and all
    # 14), paired bootstrap over test instants.
    S = args.size
    scale = BOX / S  # fit_to_box is a similarity: S-box distances times 220/S are 220-box distances
    j13 = paper_joints(pool.skeleton)
    box, valid = class_box_poses(classes, S)
    class_poses = box[valid] * scale
    _, train_pose = real_crops(pool, torch.arange(len(pool)), S)
    train_labels = real_labels(train_pose, classes, S, box_poses=(box, valid))
    most_frequent = int(torch.bincount(train_labels, minlength=classes.num_classes).argmax())
    mean_pose = train_pose.mean(0)
    k = classes.num_classes
    # Class prior: share of samples per class. The mosaic stream's is the k-means count of each class over
    # the M x V (pose, view) pairs (class_views = views: the stream's pairs are exactly the fitted ones).
    prior = {"mosaics": classes.counts.double() / classes.counts.sum(),
             "real train crops": torch.bincount(train_labels, minlength=k).double() / len(train_labels)}

    results = {"args": vars(args), "selectors": sel, "config": asdict(base), "pool": len(pool), "mocap": len(mocap),
               "seconds": seconds, "most_frequent_class": most_frequent, "tests": {}}
    for name, test in tests.items():
        imgs, gt = real_crops(test, torch.arange(len(test)), S)
        gt220 = gt * scale
        instants = test.ids % 100000
        nearest = real_labels(gt, classes, S, box_poses=(box, valid))
        preds, top1 = {}, {}
        for cond, model in models.items():
            logits = predict_logits(model, imgs)
            label = logits.argmax(-1)
            preds[cond] = box[label] * scale
            top1[cond] = float((label == nearest).float().mean())
            # expected decoding: the softmax-weighted mean of the (non-empty) classes' box poses
            prob = torch.softmax(logits.float(), -1) * valid.float()
            prob = prob / prob.sum(-1, keepdim=True)
            preds[f"{cond} (expected)"] = torch.einsum("bk,kjc->bjc", prob, torch.nan_to_num(box)) * scale
        preds["most frequent class"] = (box[most_frequent] * scale).expand_as(gt220)
        preds["mean 2D pose"] = (mean_pose * scale).expand_as(gt220)
        rows = {}
        for joints, tag in ((j13, "13"), (None, "14")):
            errors = {c: mean_error(joint_errors(p, gt220), joints) for c, p in preds.items()}
            errors["class lower bound"] = class_lower_bound(gt220, class_poses, joints).error
            ci = {c: bootstrap_ci(e, instants, args.bootstrap).as_dict() for c, e in errors.items()}
            pairs = []
            for tag_ in ("", " (expected)"):
                pairs += [("M+R" + tag_, o) for o in ("R" + tag_, "M" + tag_, "most frequent class", "mean 2D pose")]
                pairs += [("M" + tag_, "R" + tag_)]
            diff = {f"{a} - {b}": paired_bootstrap(errors[a], errors[b], instants, args.bootstrap).as_dict()
                    for a, b in pairs if a in errors and b in errors}
            rows[tag] = {"mean": ci, "paired": diff, "per_image": {c: e.tolist() for c, e in errors.items()}}
        per_joint = {c: per_joint_table(joint_errors(p, gt220), pool.skeleton) for c, p in preds.items()}
        prior_test = torch.bincount(nearest, minlength=k).double() / len(nearest)
        tv = {n: 0.5 * float((p - prior_test).abs().sum()) for n, p in prior.items()}
        results["tests"][name] = {"n": len(test), "instants": int(torch.unique(instants).numel()), "errors": rows,
                                  "per_joint_px": per_joint, "top1_vs_nearest_class": top1,
                                  "class_prior_total_variation_to_test": tv,
                                  "test_classes": torch.unique(nearest).tolist(),
                                  "mosaic_share_in_test_classes": float(prior["mosaics"][torch.unique(nearest)].sum())}
        print(f"\n{name}: {len(test)} images, {results['tests'][name]['instants']} instants; mean 2D error over the "
              f"paper's 13 joints, px of the 220 box [95% CI]")
        for c, v in rows["13"]["mean"].items():
            print(f"  {c:24s} {v['mean']:7.2f}  [{v['low']:7.2f}, {v['high']:7.2f}]")
        for c, v in rows["13"]["paired"].items():
            d = v["difference"]
            print(f"  {c:32s} {d['mean']:+7.2f}  [{d['low']:+7.2f}, {d['high']:+7.2f}]  p={v['p_value']:.3f}")
        print(f"  top-1 = nearest class: {top1}; class-prior TV distance to the test classes: {tv}; "
              f"share of mosaics in the test's classes: {results['tests'][name]['mosaic_share_in_test_classes']:.3f}")
    # Mosaic realism: the classifiers' top-1 on the mosaic bank (labels: the class of each mosaic's 3D pose)
    # against their top-1 on the test crops (labels: nearest mean 2D pose). A network trained on real crops
    # that does as well on mosaics as on real images sees no domain gap; M's drop from mosaics to real is
    # the gap the other way.
    if ("M" in conditions or "M+R" in conditions) and not args.no_realism:
        bank = [mosaic_batch(shared, i) for i in range(max(args.mosaic_cache, 4))]
        images = torch.cat([b["image"] for b in bank])
        labels = torch.cat([b["label"] for b in bank])
        results["top1_on_mosaic_bank"] = {c: float((predict_logits(m, images).argmax(-1) == labels).float().mean())
                                          for c, m in models.items()}
        print(f"top-1 on the {len(labels)} bank mosaics: {results['top1_on_mosaic_bank']}")
    results["curves"] = curves
    results["wall_seconds"] = time.perf_counter() - t_start
    results["loadavg_start"], results["loadavg_end"] = load0, os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(results))
    print(f"\nwall {results['wall_seconds']:.0f} s; load average at start {load0}, at end {os.getloadavg()}")
    if args.figure:
        figure(results, Path(args.figure), shared, pool, S)
    return results


def markdown(results: dict) -> str:
    """The result tables of ``results.json`` in markdown (13 and 14 joints, paired differences)."""
    lines = []
    for name, r in results["tests"].items():
        lines += [f"**{name}** ({r['n']} images, {r['instants']} instants): mean 2D error, px of the 220 box "
                  f"[95 % CI]", "", "| predictor | 13 joints | 14 joints |", "|---|---|---|"]
        m13, m14 = r["errors"]["13"]["mean"], r["errors"]["14"]["mean"]
        for c in m13:
            lines.append(f"| {c} | {m13[c]['mean']:.1f} [{m13[c]['low']:.1f}, {m13[c]['high']:.1f}] | "
                         f"{m14[c]['mean']:.1f} [{m14[c]['low']:.1f}, {m14[c]['high']:.1f}] |")
        lines += ["", "| difference (13 joints) | mean [95 % CI] | bootstrap p |", "|---|---|---|"]
        for c, v in r["errors"]["13"]["paired"].items():
            d = v["difference"]
            lines.append(f"| {c} | {d['mean']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] | {v['p_value']:.3f} |")
        top1 = ", ".join(f"{c} {v:.2f}" for c, v in r["top1_vs_nearest_class"].items())
        tv = ", ".join(f"{c} {v:.2f}" for c, v in r["class_prior_total_variation_to_test"].items())
        lines += ["", f"Top-1 (predicted class = the test pose's nearest class): {top1}. Class-prior total "
                      f"variation distance to the test poses' classes: {tv}; share of the mosaic stream in the "
                      f"{len(r['test_classes'])} classes the test poses fall in: "
                      f"{r['mosaic_share_in_test_classes']:.2f}.", ""]
    return "\n".join(lines)


def figure(results: dict, path: Path, shared, pool, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    stats = results["tests"]["held-out camera"]["errors"]["13"]["mean"]
    names = list(stats)
    means = [stats[n]["mean"] for n in names]
    lo = [stats[n]["mean"] - stats[n]["low"] for n in names]
    hi = [stats[n]["high"] - stats[n]["mean"] for n in names]
    ax.barh(names, means, xerr=[lo, hi], color=["C0" if n in ("R", "M", "M+R") else "C1" if n.endswith("(expected)") else "0.6" for n in names])
    ax.invert_yaxis()
    ax.set_xlabel("mean 2D error, 13 joints (px of the 220 box), 95% CI")
    ax.set_title(f"held-out camera, held-out instants ({results['args']['protocol']}); blue top-1, orange expected",
                 fontsize=9)
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
    imgs.append(mosaic_batch(shared, 0)["image"][:4])
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
