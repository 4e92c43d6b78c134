"""Ablation that chose the default σ of Eq. 5 (``gpumosaic.DEFAULT_SIGMA``).

σ sets how fast a match's probability falls off with the misalignment ``||p_k - q'_k||`` of its joints.
Metric (limb agreement): for every pixel within ``--radius`` px of a query bone, does the image that fills
it in the copy-paste mosaic have *the same bone* within ``--radius`` px there, after its rigid alignment
``T``? The share of such pixels, averaged over queries, measures how often the mosaic shows the right body
part at the right place; seams counts index changes between 4-neighbours (fewer is cleaner).

    python benchmarks/sigma_ablation.py --n 96 --sigmas 5 10 20 40 80 160
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpumosaic.threads import configure_threads, prefer_passive_wait  # noqa: E402

prefer_passive_wait()  # before torch loads OpenMP (gpumosaic.threads)

import torch  # noqa: E402

from gpumosaic import MosaicEngine, load_demo_mocap, load_demo_pool  # noqa: E402
from gpumosaic.camera import render_views, sample_views  # noqa: E402


def _segment_distance(px, a, b):
    """Distance from points px (..., 2) to segments a-b (..., 2)."""
    ab = b - a
    t = ((px - a) * ab).sum(-1) / ab.square().sum(-1).clamp_min(1e-12)
    closest = a + t.clamp(0, 1)[..., None] * ab
    return (px - closest).norm(dim=-1)


def limb_agreement(res, skeleton, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    b, num_j = res.matches.shape
    size = res.images.shape[-1]
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij")
    px = torch.stack([u, v], -1)  # (S, S, 2)
    bones = torch.tensor(skeleton.bones)
    # Query distance to each bone: (B, nb, S, S)
    qa, qb = res.query[:, bones[:, 0]], res.query[:, bones[:, 1]]
    dq = _segment_distance(px[None, None], qa[:, :, None, None], qb[:, :, None, None])
    near = dq <= radius
    # Aligned pose of the source filling each pixel: aligned (B, J, J, 2) gathered by index map.
    idx = res.index_map  # (B, S, S)
    src = res.aligned[torch.arange(b)[:, None, None], idx]  # (B, S, S, J, 2)
    sa, sb = src[..., bones[:, 0], :], src[..., bones[:, 1], :]  # (B, S, S, nb, 2)
    ds = _segment_distance(px[None, :, :, None], sa, sb).permute(0, 3, 1, 2)  # (B, nb, S, S)
    agree = (near & (ds <= radius)).flatten(1).sum(1) / near.flatten(1).sum(1).clamp_min(1)
    seams = (idx[:, 1:] != idx[:, :-1]).flatten(1).sum(1) + (idx[:, :, 1:] != idx[:, :, :-1]).flatten(1).sum(1)
    top2 = res.probability.topk(2, dim=1).values  # (B, 2, S, S)
    ties = (top2[:, 0] == top2[:, 1]).flatten(1).float().mean(1)
    return agree, seams.float(), ties


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=96)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[5, 10, 20, 40, 80, 160])
    ap.add_argument("--radius", type=float, default=6.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: the cores this process may use; gpumosaic.threads)")
    args = ap.parse_args()
    print(configure_threads(args.threads).describe())
    pool, mocap = load_demo_pool(), load_demo_mocap()
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(len(mocap), (args.n,), generator=g)
    az, el = sample_views(args.n, 1, generator=g)
    views = render_views(mocap.poses[idx], mocap.skeleton, az, el)
    print(f"{'sigma':>6} {'limb agreement':>15} {'seams/mosaic':>13} {'tied pixels':>12}")
    for sigma in args.sigmas:
        eng = MosaicEngine(pool, sigma=sigma, blend=False)
        agree, seams, ties = [], [], []
        for s in range(0, args.n, 16):
            res = eng(views.pose2d[s:s + 16, 0], views.occluded[s:s + 16, 0])
            a, k, t = limb_agreement(res, pool.skeleton, args.radius)
            agree.append(a)
            seams.append(k)
            ties.append(t)
        a, k, t = torch.cat(agree), torch.cat(seams), torch.cat(ties)
        print(f"{sigma:6.1f} {a.mean():15.3f} {k.mean():13.0f} {t.mean():12.3f}")


if __name__ == "__main__":
    main()
