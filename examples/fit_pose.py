"""Recover a 2D pose by gradient descent through the soft engine (analysis by synthesis).

For each of B targets, a known 2D query pose ``p*`` (a demo mocap pose seen from a random camera, fitted into
the S×S box) is turned into a target mosaic by the soft engine. The fit starts from ``p* + noise`` and
minimises the mean squared difference between (lightly box-blurred) soft mosaics by Adam on the 2D joints,
the gradient flowing through blending windows, skeleton distance, soft index map, probability maps, warps
and rigid alignments (:mod:`gpumosaic.soft`).

Retrieval (Eq. 4) is an argmin: no gradient flows through the *choice* of the matched images. Two fits are
run from the same start:

* ``fixed``: the matches of the target are held (``soft_mosaic(..., matches=target.matches)``), so the
  mosaic is a piecewise-smooth function of the pose: the descent recovers ``p*``;
* ``free``: matches are re-retrieved at every step (the engine as it is): a perturbed pose retrieves other
  images (other textures and backgrounds), the target is no longer reachable and the fit stalls.

The joint error is measured in px of the S×S box after ``fit_to_box`` (the engine normalises the query's
scale and position, so they are not observable from the mosaic).

Example (CPU, about a minute with the defaults)::

    python examples/fit_pose.py --out docs/figures/fit_pose.png

The demo data is synthetic (rendered figures): this shows that the gradients are usable, not how well pose
fitting works on real images.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from gpumosaic import LSP14, MosaicEngine
from gpumosaic.camera import render_views
from gpumosaic.soft import soft_mosaic

from common import add_common_arguments, setup


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", type=int, default=6, help="number of target poses B (fitted as one batch)")
    ap.add_argument("--noise", type=float, default=3.0, help="std of the start perturbation, px of the box")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=0.5, help="Adam step in px (cosine-decayed to lr/10)")
    ap.add_argument("--blur", type=int, default=3, help="box blur of both mosaics in the loss (odd, 1 = none)")
    add_common_arguments(ap, 64, "mosaic side S in px", 1.0, "soft-mode temperature τ", "docs/figures/fit_pose.png",
                         threads_help="torch CPU threads (1 is fastest on small kernels)")
    return ap.parse_args(argv)


def joint_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean joint distance (px) per pose, (B, J, 2) x 2 -> (B,)."""
    return (a - b).norm(dim=-1).mean(-1)


def fit(engine, start, target_images, target_query, matches, args, log_every=20, name=""):
    """Adam on the 2D joints; returns (final query in the box, final result, error history (steps+1, B))."""
    x = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps, eta_min=args.lr / 10)
    blur = (lambda im: F.avg_pool2d(im, args.blur, stride=1, padding=args.blur // 2)) if args.blur > 1 else (
        lambda im: im)
    target = blur(target_images)
    history = []
    for step in range(args.steps + 1):
        res = soft_mosaic(engine, x, matches=matches)
        history.append(joint_error(res.query.detach(), target_query))
        if step == args.steps:
            break
        # Sum over the batch of per-target mean squared errors: each target gets its own gradient scale.
        loss = F.mse_loss(blur(res.images), target, reduction="none").mean((1, 2, 3)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0:
            print(f"  [{name}] step {step:4d}  loss {loss.item() / len(x):.5f}  "
                  f"joint error {history[-1].mean().item():.2f} px", flush=True)
    return res.query.detach(), res, torch.stack(history)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, g, pool, mocap = setup(args)
    engine = MosaicEngine(pool, size=args.size, soft=True, temperature=args.temperature, device=device)

    # Known target poses: random mocap poses from random cameras, fitted into the box by the engine.
    b = args.targets
    idx = torch.randint(0, len(mocap), (b,), generator=g)
    az = torch.rand(b, 1, generator=g) * 360.0
    el = torch.rand(b, 1, generator=g) * 60.0 - 30.0
    views = render_views(mocap.poses[idx.to(device)], LSP14, az.to(device), el.to(device))
    with torch.no_grad():
        target = engine(views.pose2d[:, 0])
    target_query = target.query
    start = target_query + torch.randn(target_query.shape, generator=g).to(device) * args.noise
    with torch.no_grad():
        start_res = soft_mosaic(engine, start)
    err0 = joint_error(start_res.query, target_query)
    print(f"{b} targets, S={args.size}, τ={args.temperature}: start joint error {err0.mean():.2f} px "
          f"(per target {[round(v, 2) for v in err0.tolist()]})")

    results = {}
    for name, matches in (("fixed", target.matches), ("free", None)):
        t0 = time.perf_counter()
        final_q, final_res, hist = fit(engine, start, target.images, target_query, matches, args, name=name)
        err = hist[-1]
        same = (final_res.matches == target.matches).float().mean().item()
        results[name] = {
            "final_error_px": err.mean().item(),
            "final_error_per_target_px": [round(v, 3) for v in err.tolist()],
            "median_final_error_px": err.median().item(),
            "matches_equal_to_target": same,
            "seconds": time.perf_counter() - t0,
            "history": hist.mean(1).tolist(),
            "query": final_q,
            "images": final_res.images.detach(),
        }
        print(f"[{name}] joint error {err0.mean():.2f} -> {err.mean():.2f} px (median {err.median():.2f}); "
              f"matches equal to the target's: {100 * same:.0f} %; {results[name]['seconds']:.0f} s")

    summary = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "start_error_px": err0.mean().item(),
        "start_error_per_target_px": [round(v, 3) for v in err0.tolist()],
        **{name: {k: v for k, v in r.items() if k not in ("history", "query", "images")}
           for name, r in results.items()},
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        plot(args, target, start_res, results, err0, summary)
    return summary


def plot(args, target, start_res, results, err0, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpumosaic.viz import draw_skeleton

    def img(x):
        return x.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy()

    rows = min(3, len(err0))
    fig = plt.figure(figsize=(13, 2.6 * rows + 0.4))
    grid = fig.add_gridspec(rows, 5, width_ratios=[1, 1, 1, 1, 1.9])
    cols = [("target mosaic, p*", target.images, target.query),
            ("start: p* + noise", start_res.images, start_res.query),
            ("fit, matches fixed", results["fixed"]["images"], results["fixed"]["query"]),
            ("fit, matches re-retrieved", results["free"]["images"], results["free"]["query"])]
    for r in range(rows):
        for c, (title, images, query) in enumerate(cols):
            ax = fig.add_subplot(grid[r, c])
            ax.imshow(img(images[r]))
            draw_skeleton(ax, target.query[r], LSP14, lw=0.8)  # the target pose on every panel
            if c:
                q = query[r].cpu()
                t = target.query[r].cpu()
                ax.plot(q[:, 0], q[:, 1], "o", ms=3, mfc="none", mec="yellow")
                for j in range(len(q)):
                    ax.plot([q[j, 0], t[j, 0]], [q[j, 1], t[j, 1]], color="yellow", lw=0.8)
                e = joint_error(query[r:r + 1].cpu(), target.query[r:r + 1].cpu()).item()
                ax.set_title(f"{title}\nerror {e:.2f} px", fontsize=8)
            else:
                ax.set_title(title, fontsize=8)
            ax.set_axis_off()
    ax = fig.add_subplot(grid[:, 4])
    steps = range(args.steps + 1)
    ax.plot(steps, results["fixed"]["history"], label="matches fixed (target's)")
    ax.plot(steps, results["free"]["history"], label="matches re-retrieved each step")
    ax.axhline(summary["start_error_px"], color="grey", ls=":", lw=1, label="start")
    ax.set_xlabel("Adam step")
    ax.set_ylabel(f"mean joint error (px of the {args.size}-px box)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"{len(err0)} targets, τ = {args.temperature}, start noise {args.noise} px", fontsize=9)
    fig.suptitle("Fitting a 2D pose through the soft engine: target skeleton drawn, yellow = fitted joints "
                 "→ target joints", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
