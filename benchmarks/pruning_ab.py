"""The pruned exact retrieval of this checkout against an older commit's, alternating in one process.

Same index (the side-by-side benchmark's pool: ``make_pool`` with ``--fill-images base``, mirrored), same
queries (``make_queries``, fitted to the box as the engine does), one CPU thread, CPU time per batch. The older
``gpumosaic/pruning.py`` is read with ``git show COMMIT:gpumosaic/pruning.py`` and imported on its own (it needs
only torch and the index); its ``PrunedSearch(index, radial, pair, cp, wp, rp, scale, step)`` is driven the way
that commit's ``RetrievalIndex._pruned`` did (``--old-step rows`` per chunk: the scan's chunk rule). Matches and
D are checked equal for every batch. Prints medians, the median of the paired (same batch, same round) ratios
with a bootstrap 95 % interval, and the load average.

    python benchmarks/pruning_ab.py --old-commit 7399cab --pool-size 80000 --rounds 5
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from side_by_side import make_pool, make_queries  # noqa: E402

from gpumosaic import LSP14, MosaicEngine, load_demo_mocap, load_demo_pool  # noqa: E402
from gpumosaic.geometry import fit_to_box  # noqa: E402
from gpumosaic.pruning import radial_table  # noqa: E402


def load_old(commit: str):
    repo = Path(__file__).resolve().parents[1]
    src = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:gpumosaic/pruning.py"], check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_pruning.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_pruning", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def bootstrap_median(values: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(reps))
    return meds[int(0.025 * reps)], meds[int(0.975 * reps) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-commit", required=True)
    ap.add_argument("--pool-size", type=int, default=80_000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=5, help="query batches per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    old = load_old(args.old_commit)
    base, mocap = load_demo_pool(), load_demo_mocap()
    pool, _ = make_pool(base, args.pool_size, "base", args.seed)
    engine = MosaicEngine(pool, LSP14, size=220)
    idx, budget, s = engine.index, engine.retrieval_budget, engine.settings
    queries = []
    for q, o in make_queries(mocap.poses, args.batches + 1, args.batch, args.seed):
        p, _ = fit_to_box(q, s.size, s.margin)
        searched = ~o
        queries.append((p, searched | ~searched.any(dim=1, keepdim=True)))
    radial = idx.radial() if hasattr(idx, "radial") else radial_table(idx.joints, idx.weights)
    scale0 = idx.joints.abs().amax()

    def run_old(p, searched):
        pair, cp, wp = idx._query_side(p)
        ps = old.PrunedSearch(idx, radial, pair, cp, wp, torch.cdist(p, p), torch.maximum(scale0, p.abs().amax()),
                              idx._chunk_size(*pair.shape, budget))
        bi, bd = ps.run()
        return bi.masked_fill(~searched, -1), bd.masked_fill(~searched, float("inf"))

    def run_new(p, searched):
        return idx.best(p, searched, budget_bytes=budget, pruned=True)

    variants = {"old": run_old, "new": run_new}
    for p, searched in queries[:1]:  # warm-up
        for f in variants.values():
            f(p, searched)
    ms = {k: [] for k in variants}
    ratios, survivors, loads = [], [], []
    for r in range(args.rounds):
        for p, searched in queries[1:]:
            order = list(variants) if r % 2 == 0 else list(variants)[::-1]
            got = {}
            for name in order:
                c = time.process_time()
                got[name] = variants[name](p, searched)
                ms[name].append((time.process_time() - c) / p.shape[0] * 1e3)
            assert torch.equal(got["old"][0], got["new"][0]) and torch.equal(got["old"][1], got["new"][1])
            ratios.append(ms["new"][-1] / ms["old"][-1])
            survivors.append(idx.cache["last_survivors"] / (p.shape[0] * p.shape[1] * len(idx)))
        loads.append(os.getloadavg()[0])
        print(f"round {r}: old {statistics.median(ms['old'][-args.batches:]):.1f}, new "
              f"{statistics.median(ms['new'][-args.batches:]):.1f} ms of CPU per mosaic (median of the round's "
              f"batches), load {loads[-1]:.2f}", flush=True)
    lo, hi = bootstrap_median(ratios)
    print(f"N = {args.pool_size} ({len(idx)} index rows), B = {args.batch}: old {statistics.median(ms['old']):.1f} "
          f"[{min(ms['old']):.1f}-{max(ms['old']):.1f}], new {statistics.median(ms['new']):.1f} "
          f"[{min(ms['new']):.1f}-{max(ms['new']):.1f}] ms of CPU per mosaic; paired ratio new/old "
          f"{statistics.median(ratios):.2f} (95 % bootstrap interval {lo:.2f}-{hi:.2f}); exact D on "
          f"{min(survivors):.3f}-{max(survivors):.3f} of the pairs; load {min(loads):.2f}-{max(loads):.2f}")


if __name__ == "__main__":
    main()
