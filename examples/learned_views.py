"""Learn a distribution over camera views that a frozen pose classifier finds hard (adversarial views).

The paper draws every training view uniformly (azimuth U[0°, 360°), elevation U[-45°, 45°]). With the soft
engine (:mod:`gpumosaic.soft`) a mosaic is differentiable with respect to the camera through
:func:`gpumosaic.camera.render_views`, so a *view distribution* can be trained by gradient ascent on a
classifier's loss:

1. Pose classes: k-means (K = ``--classes``) over oriented 3D poses of demo mocap poses seen from uniform
   views (:class:`gpumosaic.classes.PoseClasses`).
2. Classifier: a :class:`gpumosaic.models.PoseClassifier` (AlexNet, K-way, random initialisation)
   **trained briefly** (``--train-steps`` = 200 Adam steps of batch 32 on ``--train-mosaics`` = 512
   hard-engine mosaics of uniform views, about 2 minutes on a 2-core CPU), then **frozen** (``eval()``, no
   parameter gradients). That is far too little to learn the task: the classes (k-means over *oriented*
   poses) are mostly the facing direction, and the network ends up overfitted, barely above chance on
   fresh views, and confidently wrong on some views: a weak but structured target, enough to show the
   mechanism (nothing here is a statement about a well-trained model). ``--train-steps 0`` freezes the
   randomly initialised network instead (its logits are nearly constant: the loss barely varies over views).
3. View distribution: a mixture of M components; component c draws
   ``azimuth = μ_a,c + σ_a,c·ε`` (a wrapped normal, the reparameterisable stand-in for a von Mises: only
   ``cos``/``sin`` of the angle are used) and ``elevation = 45°·tanh(μ_e,c + σ_e,c·ε')`` (a squashed
   Gaussian, always inside the paper's [-45°, 45°]). Samples are stratified over components (n per
   component) so the mixture weights get an exact gradient: the objective is
   ``Σ_c π_c · mean_i CE(classifier(mosaic_ci), label_ci) + λ·(H(π) + Σ_c π_c (log σ_a,c + log σ_e,c))``,
   the entropy bonus ``λ`` (``--entropy``) keeping the distribution from collapsing onto a single view.
   Gradients flow through the soft mosaic (τ = ``--temperature``) and ``render_views``; labels (the pose
   class of the oriented pose) and retrieval are discrete and carry none. τ = 0.1 keeps the soft mosaics
   close to the hard ones the classifier was trained on (at τ = 0.5 the blurrier soft mosaics mislead the
   ascent towards views that are hard only in soft mode).
4. Evaluation: the frozen classifier's loss and accuracy on **hard-engine** mosaics (what a training set
   would contain) of fresh views drawn uniformly vs from the learned distribution, same poses.

Example (CPU, about 4 minutes with the defaults; ``MALLOC_MMAP_MAX_=0`` saves page faults)::

    python examples/learned_views.py --out docs/figures/learned_views.png

The demo data is synthetic: the learned views show the mechanism works, not which views are hard on real
images.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

from gpumosaic import LSP14, MosaicEngine
from gpumosaic.camera import render_views
from gpumosaic.classes import PoseClasses
from gpumosaic.models import PoseClassifier

from common import add_common_arguments, setup

EL_MAX = 45.0  # degrees: elevation = EL_MAX * tanh(z)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", type=int, default=4, help="pose classes K")
    ap.add_argument("--train-mosaics", type=int, default=512, help="uniform-view mosaics to train on")
    ap.add_argument("--train-steps", type=int, default=200,
                    help="classifier Adam steps (batch 32) before freezing; 0 = random initialisation")
    ap.add_argument("--train-lr", type=float, default=3e-4, help="classifier Adam learning rate")
    ap.add_argument("--components", type=int, default=4, help="mixture components M")
    ap.add_argument("--per-component", type=int, default=4, help="views per component and step")
    ap.add_argument("--steps", type=int, default=60, help="gradient-ascent steps on the view distribution")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--entropy", type=float, default=0.01, help="entropy bonus λ")
    ap.add_argument("--eval-views", type=int, default=384, help="views per distribution in the evaluation")
    add_common_arguments(ap, 64, "mosaic side S (AlexNet needs >= 63)", 0.1,
                         "soft-engine temperature τ (low: soft mosaics close to the hard ones the classifier saw)",
                         "docs/figures/learned_views.png")
    return ap.parse_args(argv)


class ViewMixture(torch.nn.Module):
    """Mixture of M (wrapped normal azimuth) × (squashed Gaussian elevation) components, reparameterised."""

    def __init__(self, m: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.zeros(m))
        self.mu_az = torch.nn.Parameter(torch.arange(m) * (2 * math.pi / m) + math.pi / m)  # radians
        self.log_sigma_az = torch.nn.Parameter(torch.full((m,), math.log(math.radians(40.0))))
        self.mu_el = torch.nn.Parameter(torch.zeros(m))
        self.log_sigma_el = torch.nn.Parameter(torch.full((m,), math.log(0.6)))

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, 0)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n views per component, stratified: ``(azimuth (M, n), elevation (M, n))`` in degrees."""
        m = self.logits.shape[0]
        dev = self.logits.device
        eps = torch.randn(2, m, n, generator=generator).to(dev)
        az = self.mu_az[:, None] + self.log_sigma_az.exp()[:, None] * eps[0]
        z = self.mu_el[:, None] + self.log_sigma_el.exp()[:, None] * eps[1]
        return torch.rad2deg(az), EL_MAX * torch.tanh(z)

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """n views from the mixture (components drawn by weight): azimuth in [0, 360), elevation, component."""
        with torch.no_grad():
            comp = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
            eps = torch.randn(2, n, generator=generator)
            az = self.mu_az.cpu()[comp] + self.log_sigma_az.exp().cpu()[comp] * eps[0]
            el = EL_MAX * torch.tanh(self.mu_el.cpu()[comp] + self.log_sigma_el.exp().cpu()[comp] * eps[1])
        return torch.rad2deg(az) % 360.0, el, comp

    def entropy_bonus(self) -> torch.Tensor:
        w = self.weights
        return -(w * w.clamp_min(1e-12).log()).sum() + (w * (self.log_sigma_az + self.log_sigma_el)).sum()


def uniform_views(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.rand(2, n, generator=generator)
    return u[0] * 360.0, u[1] * 2 * EL_MAX - EL_MAX


def render(mocap, idx, az, el):
    """Views (one per pose) of mocap rows ``idx`` (n,) at angles (n,): (pose2d, occluded, pose3d)."""
    v = render_views(mocap.poses[idx], LSP14, az[:, None], el[:, None])
    return v.pose2d[:, 0], v.occluded[:, 0], v.pose3d[:, 0]


@torch.no_grad()
def hard_mosaics(engine, mocap, idx, az, el, chunk=64):
    images, poses3d = [], []
    for s in range(0, len(idx), chunk):
        p2, occ, p3 = render(mocap, idx[s:s + chunk], az[s:s + chunk], el[s:s + chunk])
        images.append(engine(p2, occ).images)
        poses3d.append(p3)
    return torch.cat(images), torch.cat(poses3d)


@torch.no_grad()
def evaluate(net, images, labels, chunk=64):
    ce, correct = [], []
    for s in range(0, len(images), chunk):
        logits = net(images[s:s + chunk])
        ce.append(F.cross_entropy(logits, labels[s:s + chunk], reduction="none"))
        correct.append(logits.argmax(1) == labels[s:s + chunk])
    return torch.cat(ce), torch.cat(correct).float()


def main(argv=None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    dev, g, pool, mocap = setup(args)
    torch.manual_seed(args.seed)  # AlexNet's initialisation and dropout
    hard = MosaicEngine(pool, size=args.size, device=dev)
    soft = MosaicEngine(pool, size=args.size, soft=True, temperature=args.temperature, device=dev)

    # 1. Pose classes over oriented poses of uniform views.
    n_fit = 2000
    idx = torch.randint(0, len(mocap), (n_fit,), generator=g).to(dev)
    az, el = uniform_views(n_fit, g)
    _, _, p3 = render(mocap, idx, az.to(dev), el.to(dev))
    classes = PoseClasses.fit(p3, k=args.classes, generator=torch.Generator(dev).manual_seed(args.seed),
                              progress=False)

    # 2. Classifier trained briefly on hard-engine mosaics of uniform views, then frozen.
    net = PoseClassifier(num_classes=args.classes).to(dev)
    if args.train_steps > 0:
        idx = torch.randint(0, len(mocap), (args.train_mosaics,), generator=g).to(dev)
        az, el = uniform_views(args.train_mosaics, g)
        images, p3 = hard_mosaics(hard, mocap, idx, az.to(dev), el.to(dev))
        labels = classes.encode(p3)
        opt = torch.optim.Adam(net.parameters(), lr=args.train_lr)
        net.train()
        for step in range(args.train_steps):
            batch = torch.randint(0, len(images), (32,), generator=g).to(dev)
            loss = F.cross_entropy(net(images[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 25 == 0 or step == args.train_steps - 1:
                print(f"classifier step {step:4d}  loss {loss.item():.3f}", flush=True)
    net.eval()
    net.requires_grad_(False)
    print(f"classifier ready ({'trained' if args.train_steps else 'random init'}, frozen) "
          f"after {time.perf_counter() - t_start:.0f} s")

    # 3. Gradient ascent on the view distribution through the soft engine.
    mix = ViewMixture(args.components).to(dev)
    opt = torch.optim.Adam(mix.parameters(), lr=args.lr)
    m, n = args.components, args.per_component
    history = {"objective": [], "ce": [], "mu_az": [], "mu_el": []}
    for step in range(args.steps):
        az, el = mix.sample(n, g)  # (M, n) degrees, differentiable
        idx = torch.randint(0, len(mocap), (m * n,), generator=g).to(dev)
        p2, occ, p3 = render(mocap, idx, az.reshape(-1), el.reshape(-1))
        labels = classes.encode(p3.detach())
        logits = net(soft(p2, occ).images)
        ce = F.cross_entropy(logits, labels, reduction="none").view(m, n).mean(1)  # per component
        objective = (mix.weights * ce).sum() + args.entropy * mix.entropy_bonus()
        opt.zero_grad()
        (-objective).backward()  # ascent
        opt.step()
        history["objective"].append(objective.item())
        history["ce"].append((mix.weights * ce).sum().item())
        history["mu_az"].append((torch.rad2deg(mix.mu_az.detach()) % 360).tolist())
        history["mu_el"].append((EL_MAX * torch.tanh(mix.mu_el.detach())).tolist())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"views step {step:4d}  expected CE {history['ce'][-1]:.3f}  weights "
                  f"{[round(w, 2) for w in mix.weights.tolist()]}", flush=True)

    # 4. Evaluation on hard mosaics: uniform vs learned views, same poses.
    k = args.eval_views
    idx = torch.randint(0, len(mocap), (k,), generator=g).to(dev)
    az_u, el_u = uniform_views(k, g)
    az_l, el_l, comp = mix.draw(k, g)
    out = {}
    for name, (a, e) in {"uniform": (az_u, el_u), "learned": (az_l, el_l)}.items():
        images, p3 = hard_mosaics(hard, mocap, idx, a.to(dev), e.to(dev))
        ce, acc = evaluate(net, images, classes.encode(p3))
        out[name] = {"ce": ce.cpu(), "acc": acc.cpu(), "az": a, "el": e, "images": images[:6].cpu()}
        print(f"{name:8s} views: classifier CE {ce.mean():.3f}, accuracy {100 * acc.mean():.1f} % "
              f"(hard-engine mosaics, {k} views)")
    summary = {
        "settings": {kk: v for kk, v in vars(args).items() if kk != "out"},
        "classifier": (f"AlexNet trained {args.train_steps} steps on {args.train_mosaics} uniform-view mosaics, "
                       "frozen") if args.train_steps else "AlexNet, random initialisation, frozen",
        **{name: {"ce": out[name]["ce"].mean().item(),
                  "ce_std_err": (out[name]["ce"].std() / math.sqrt(k)).item(),
                  "accuracy": out[name]["acc"].mean().item()} for name in ("uniform", "learned")},
        "mixture": {"weights": mix.weights.tolist(), "mu_az_deg": history["mu_az"][-1],
                    "sigma_az_deg": torch.rad2deg(mix.log_sigma_az.exp()).tolist(),
                    "mu_el_deg": history["mu_el"][-1]},
        "seconds": time.perf_counter() - t_start,
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        plot(args, history, out, comp, summary)
    return summary


def plot(args, history, out, comp, summary) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 7.8))
    grid = fig.add_gridspec(2, 4, height_ratios=[1.25, 1])
    uni, lea = out["uniform"], out["learned"]
    cmap = plt.get_cmap("tab10")
    vmax = float(torch.quantile(uni["ce"], 0.95))

    ax = fig.add_subplot(grid[0, :2])
    sc = ax.scatter(uni["az"], uni["el"], c=uni["ce"], cmap="Greys", s=14, vmin=0, vmax=vmax, label="uniform")
    ax.scatter(lea["az"], lea["el"], color=[cmap(int(c)) for c in comp], s=14, marker="^", alpha=0.8,
               label="learned (colour = component)")
    mu_az = torch.tensor(history["mu_az"])
    mu_el = torch.tensor(history["mu_el"])
    for c in range(mu_az.shape[1]):
        ax.plot(mu_az[0, c], mu_el[0, c], "o", ms=6, color=cmap(c), mec="k")
        ax.plot(mu_az[-1, c], mu_el[-1, c], "*", ms=15, color=cmap(c), mec="k")
    fig.colorbar(sc, ax=ax, label="classifier CE of a uniform view (grey dots)")
    ax.set_xlim(0, 360)
    ax.set_ylim(-47, 47)
    ax.set_xlabel("azimuth (deg)")
    ax.set_ylabel("elevation (deg)")
    ax.set_title("fresh views: uniform (dots) vs learned (triangles); component means: o start, * end",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")

    # Independent check: where is the classifier bad on *uniform* views, and where did the learned mass go?
    ax = fig.add_subplot(grid[0, 2])
    edges = torch.linspace(0, 360, 13)
    centres = 0.5 * (edges[1:] + edges[:-1])
    bin_u = torch.bucketize(uni["az"], edges[1:-1])
    mean_ce = torch.stack([uni["ce"][bin_u == k].mean() for k in range(12)])
    share = torch.bincount(torch.bucketize(lea["az"], edges[1:-1]), minlength=12).float() / len(lea["az"])
    ax.bar(centres, share, width=28, color="C3", alpha=0.6, label="learned views (share)")
    ax.axhline(1 / 12, color="C3", ls=":", lw=1, label="uniform share")
    ax.set_xlabel("azimuth (deg)")
    ax.set_ylabel("share of learned views")
    ax.set_xlim(0, 360)
    ax2 = ax.twinx()
    ax2.plot(centres, mean_ce, "k.-", label="mean CE of uniform views")
    ax2.set_ylabel("classifier CE (uniform views, hard mosaics)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    ax.set_title("learned mass vs the classifier's loss by azimuth", fontsize=9)

    ax = fig.add_subplot(grid[0, 3])
    names = ["uniform", "learned"]
    ce = [summary[nm]["ce"] for nm in names]
    se = [summary[nm]["ce_std_err"] for nm in names]
    acc = [100 * summary[nm]["accuracy"] for nm in names]
    ax.bar([0, 1], ce, yerr=se, capsize=4, color=["grey", "C3"])
    ax.set_xticks([0, 1], [f"{nm}\naccuracy {a:.0f} %" for nm, a in zip(names, acc)])
    ax.set_ylabel("frozen classifier CE (hard mosaics), ± s.e.")
    ax.set_title(f"{args.eval_views} fresh views each, same poses", fontsize=9)
    for i, v in enumerate(ce):
        ax.text(i + 0.2, v, f"{v:.2f}", ha="left", va="bottom", fontsize=9)

    ax = fig.add_subplot(grid[1, 0])
    raw = torch.tensor(history["ce"])
    smooth = torch.tensor([raw[max(0, i - 9):i + 1].mean() for i in range(len(raw))])
    ax.plot(raw, color="C0", alpha=0.35, label="expected CE (soft mosaics), per step")
    ax.plot(smooth, color="C0", label="10-step mean")
    ax.set_xlabel("ascent step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(f"view-distribution ascent ({args.components} components, τ = {args.temperature})", fontsize=9)

    inner = grid[1, 1:].subgridspec(2, 6)
    for r, name in enumerate(names):
        for c in range(6):
            ax = fig.add_subplot(inner[r, c])
            ax.imshow(out[name]["images"][c].clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_axis_off()
            ax.set_title(f"{name}: az {out[name]['az'][c]:.0f}°, el {out[name]['el'][c]:.0f}°", fontsize=6)
    fig.suptitle(f"Adversarial view sampling through the soft engine. Classifier: {summary['classifier']}",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
