"""Paired comparison of two ``benchmarks/real_loop.py`` runs on the same test images (session 5).

E.g. mosaics blended (the paper's) against copy-paste (``--no-blend``): per test set and condition, the mean 2D
error over the paper's 13 joints (px of the 220 box) of both runs and their paired difference ``B − A``, with a
bootstrap over test instants (the crops of one instant seen by several cameras are one unit), as
:func:`gpumosaic.evaluate.paired_bootstrap`. The two runs must use the same selectors (same test images).

    python benchmarks/real_loop_compare.py OUT_A/results.json OUT_B/results.json --labels blended copy-paste \
        --conditions M "M (expected)" M+R "M+R (expected)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gpumosaic.evaluate import bootstrap_ci, paired_bootstrap
from gpumosaic.sources.real import load_real_pool
from gpumosaic.sources.select import select_pool

TEST_KEYS = {"held-out camera": "test", "seen cameras": "test_seen_cameras"}


def compare(a: dict, b: dict, conditions: list[str], labels: tuple[str, str], n_boot: int = 2000) -> str:
    if a["selectors"] != b["selectors"]:
        raise ValueError(f"the runs used different selectors: {a['selectors']} vs {b['selectors']}")
    pool = load_real_pool()
    lines = [f"| test set | condition | {labels[0]} | {labels[1]} | {labels[1]} − {labels[0]} (paired) | p |",
             "|---|---|---|---|---|---:|"]
    for name, key in TEST_KEYS.items():
        instants = select_pool(pool, a["selectors"][key]).ids % 100000
        ea, eb = (r["tests"][name]["errors"]["13"]["per_image"] for r in (a, b))
        for cond in conditions:
            if cond not in ea or cond not in eb:
                continue
            x, y = torch.tensor(ea[cond], dtype=torch.float64), torch.tensor(eb[cond], dtype=torch.float64)
            if x.shape != y.shape or x.shape != instants.shape:
                raise ValueError(f"{name}/{cond}: {x.shape} vs {y.shape} errors for {instants.shape} images")
            g = torch.Generator().manual_seed(0)
            ca, cb = (bootstrap_ci(v, instants, n_boot, generator=g) for v in (x, y))
            d = paired_bootstrap(y, x, instants, n_boot, generator=g)
            lines.append(f"| {name} | {cond} | {ca.mean:.1f} [{ca.low:.1f}, {ca.high:.1f}] | "
                         f"{cb.mean:.1f} [{cb.low:.1f}, {cb.high:.1f}] | {d.difference.mean:+.1f} "
                         f"[{d.difference.low:+.1f}, {d.difference.high:+.1f}] | {d.p_value:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--labels", nargs=2, default=["A", "B"])
    ap.add_argument("--conditions", nargs="+", default=["M", "M (expected)", "M+R", "M+R (expected)"])
    ap.add_argument("--bootstrap", type=int, default=2000)
    args = ap.parse_args(argv)
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    print(compare(a, b, args.conditions, tuple(args.labels), args.bootstrap))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
