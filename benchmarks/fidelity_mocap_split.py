"""Where does the mocap set lose recognisability? Splits of saved ``fidelity.py sets`` results (issue 13).

Reads the ``mocap`` rows of two groups of results files (all motion, and motion restricted with
``sets --mocap SELECTOR``) and prints, with 95 % percentile bootstrap intervals over images:

- the unpaired difference restricted − all motion (PCK@0.2 and detection, blended and copy-paste);
- inside the all-motion rows: images of the upright clips against the ground / inverted ones;
- PCK by |elevation| of the view (both groups pooled) and per clip.

Usage::

    python benchmarks/fidelity_mocap_split.py --all 'benchmarks/results/fidelity_mocap_all_current*.json' \\
        --restricted 'benchmarks/results/fidelity_mocap_upright_current*.json' [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import glob
import json

import numpy as np

GROUND = (10, 11, 12, 15, 16, 20)
"""Real-mocap clips on the ground or inverted: backflip, cartwheel, crawl, getup ×2, roll."""
MODES = ("blended", "copy_paste")


def load(pattern: str, seeds: list[int] | None) -> dict:
    """Per-image arrays (n,) of the mocap rows of the files matching ``pattern``."""
    rows = [r for f in sorted(glob.glob(pattern)) for r in json.loads(open(f).read())["rows"]
            if r["set"] == "mocap" and (seeds is None or r["seed"] in seeds)]
    if not rows:
        raise SystemExit(f"error: no mocap rows in {pattern!r} (seeds {seeds})")
    out = {(m, k): np.concatenate([np.asarray(r[m]["per_image"][k], float) for r in rows])
           for m in MODES for k in ("pck", "detected")}
    out["clip"] = np.concatenate([np.asarray(r["info"]["mocap_ids"]) // 100000 for r in rows])
    out["elevation"] = np.abs(np.concatenate([np.asarray(r["info"]["elevation"], float) for r in rows]))
    out["seeds"] = sorted(r["seed"] for r in rows)
    return out


def interval(a: np.ndarray, b: np.ndarray | None = None, draws: int = 2000, seed: int = 0) -> str:
    """``mean [lo, hi]`` of ``a``, or of ``mean(a) − mean(b)`` resampling both independently."""
    g = np.random.default_rng(seed)
    ra = a[g.integers(0, len(a), (draws, len(a)))].mean(1)
    rb = 0.0 if b is None else b[g.integers(0, len(b), (draws, len(b)))].mean(1)
    value = a.mean() - (0.0 if b is None else b.mean())
    lo, hi = np.percentile(ra - rb, [2.5, 97.5])
    n = f"n={len(a)}" + ("" if b is None else f"/{len(b)}")
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}] ({n})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", required=True, help="glob of the all-motion results files")
    ap.add_argument("--restricted", required=True, help="glob of the --mocap SELECTOR results files")
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    args = ap.parse_args(argv)
    a, r = load(args.all, args.seeds), load(args.restricted, args.seeds)
    print(f"seeds: all {a['seeds']}, restricted {r['seeds']}")
    for m in MODES:
        for k in ("pck", "detected"):
            print(f"{m:>10} {k:>8}: restricted - all {interval(r[m, k], a[m, k])}")
    ground = np.isin(a["clip"], GROUND)
    print(f"inside the all-motion rows: {ground.sum()} of {len(ground)} images from ground / inverted clips")
    for m in MODES:
        for k in ("pck", "detected"):
            print(f"{m:>10} {k:>8}: upright clips {interval(a[m, k][~ground])}, ground {interval(a[m, k][ground])},"
                  f" difference {interval(a[m, k][~ground], a[m, k][ground])}")
    elevation = np.concatenate([r["elevation"], a["elevation"]])
    clip = np.concatenate([r["clip"], a["clip"]])
    for m in MODES:
        pck = np.concatenate([r[m, "pck"], a[m, "pck"]])
        bins = "; ".join(f"{lo}-{hi} deg {interval(pck[(elevation >= lo) & (elevation < hi)])}"
                         for lo, hi in ((0, 15), (15, 30), (30, 46)))
        print(f"{m:>10} PCK by |elevation|: {bins}")
        print(f"{m:>10} PCK per clip (mean/images): "
              + " ".join(f"{c}:{pck[clip == c].mean():.2f}/{(clip == c).sum()}" for c in sorted(set(clip.tolist()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
