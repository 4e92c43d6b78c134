"""How real do mosaics look to an independent pose detector? (issue 13; docs/fidelity.md)

MediaPipe Pose 0.10.21 runs in its own virtual environment (``$GPUMOSAIC_DETECTOR_PYTHON`` or ``--detector``;
set-up in :mod:`gpumosaic.fidelity`) on mosaics whose 2D label is known, and is scored against that label:
detection rate, PCK@0.2 of the torso, median joint error, left/right swaps, with bootstrap intervals.

Commands::

    # score a folder written by `gpumosaic generate` (or any images with an annotations.jsonl / --labels file
    # of {"image": relative path, "pose2d": [[x, y] x 14]} records, LSP14)
    python benchmarks/fidelity.py score OUT_DIR

    # the driver: the three kinds of sets, blended and copy-paste, for one or more engine configurations
    python benchmarks/fidelity.py sets --n 128 --seeds 0 1 --configs paper
    # tables of saved results: per row, seeds pooled, or paired against one config on the same queries
    python benchmarks/fidelity.py report [--compact | --pooled | --versus BASE] FILES
    #   --mocap SELECTOR restricts the mocap set's motion (gpumosaic.sources.select), e.g. upright clips only:
    #   --mocap 'clip=1|clip=2|clip=13+14+17+18+19+21+22+23+24'
    #   ceiling  pool images through the engine with their own pose (every joint matches its own image)
    #   heldout  real poses of two Pose2Sim cameras rebuilt from a pool without those cameras
    #   mocap    generate's queries: mocap poses seen from random views (the paper's camera model)

Results go to ``benchmarks/results/fidelity_*.json``; ``--sheets DIR`` writes contact sheets (PNG).
Run long measurements with ``nice``: the detector takes ~0.1 s per image on one core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gpumosaic import MosaicEngine
from gpumosaic.camera import render_views, sample_views
from gpumosaic.fidelity import (DETECTOR_PYTHON_ENV, DetectorUnavailable, detect_poses, detector_available,
                                fidelity_score, paired_difference)
from gpumosaic.skeleton import LSP14
from gpumosaic.sources.base import Pool2D

RESULTS = Path(__file__).resolve().parent / "results"
SETS = ("ceiling", "heldout", "mocap")
CAMERA_PAIRS = ((1, 2), (3, 4), (1, 3), (2, 4), (1, 4), (2, 3))
"""Held-out Pose2Sim cameras by seed (seed s holds out CAMERA_PAIRS[s % 6])."""


# ---------------------------------------------------------------------------------------------------------
# Pools: the prepared real pool, or the same people cropped at another stored size / margin (cached in /tmp)
# ---------------------------------------------------------------------------------------------------------


class _Frames:
    """``read_image`` for build_pool on ``video#frame`` pseudo paths: each video read forwards once."""

    def __init__(self) -> None:
        self.open: dict[str, tuple] = {}

    def __call__(self, path: Path) -> np.ndarray:
        import cv2

        video, _, index = str(path).rpartition("#")
        index = int(index)
        cap, pos = self.open.get(video, (None, 0))
        if cap is None or index < pos:
            cap, pos = cv2.VideoCapture(video), 0
        while pos < index:
            cap.grab()
            pos += 1
        ok, bgr = cap.read()
        if not ok:
            raise ValueError(f"{video}: cannot decode frame {index}")
        self.open[video] = (cap, pos + 1)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_pool(size: int = 160, margin: float | None = None, cache_dir: Path = Path("/tmp/gpumosaic-fidelity"),
              padding: str = "reflection") -> Pool2D:
    """The real pool at stored side ``size`` with crop margin ``margin`` px (None: 10 % of size).

    The prepared real pool (``load_real_pool``) when it was built with this size, margin and padding
    (``build_pool``'s ``padding_mode`` where a crop leaves its video frame); other variants are cropped from
    the same frames and labels with :func:`gpumosaic.pools.build_pool` and cached under ``cache_dir``.
    """
    from gpumosaic.sources.real import load_real_pool, read_real_meta

    meta = read_real_meta()["pool"]
    built = meta["image_size"][0]
    built_margin = (meta.get("margin_fraction") or 0.1) * built
    if (built == size and abs(built_margin - (0.1 * size if margin is None else margin)) < 1e-6
            and padding == "reflection"):
        return load_real_pool()
    from gpumosaic.pools import build_pool
    from gpumosaic.sources.build import Annotations2D
    from gpumosaic.sources.real import default_cache_dir, load_pose2sim_annotations, load_sports2d_annotations

    tag = f"pool_s{size}_m{'def' if margin is None else f'{margin:g}'}_{padding}.npz"
    path = cache_dir / tag
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            return Pool2D(images=torch.from_numpy(z["images"]), joints=torch.from_numpy(z["joints"]),
                          skeleton=LSP14, ids=torch.from_numpy(z["ids"]), content_box=torch.from_numpy(z["content_box"]))
    import warnings

    files = default_cache_dir() / "files"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = [load_pose2sim_annotations(files, cam) for cam in (1, 2, 3, 4)]
        parts.append(load_sports2d_annotations(files / "sports2d" / "demo.mp4"))
    merged = Annotations2D(joints=torch.cat([a.joints for a in parts]), visible=torch.cat([a.visible for a in parts]),
                           image_paths=tuple(p for a in parts for p in a.image_paths), skeleton=LSP14,
                           ids=torch.cat([a.ids for a in parts]), report=parts[0].report)
    print(f"building pool S={size} margin={margin} from {len(merged)} frames ...", file=sys.stderr)
    pool = build_pool(merged, size, margin, read_image=_Frames(), chunk=32, padding_mode=padding)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=pool.images.numpy(), joints=pool.joints.numpy(), ids=pool.ids.numpy(),
             content_box=pool.content_box.numpy())
    return pool


# ---------------------------------------------------------------------------------------------------------
# Sets
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Config:
    """One engine configuration: the pool variant and MosaicEngine keywords."""

    name: str
    size: int = 160
    margin: float | None = None
    engine: dict = field(default_factory=dict)
    padding: str = "reflection"
    content_box: bool = True


def _configs() -> dict[str, Config]:
    from gpumosaic.engine import PAPER
    from gpumosaic.sources.real import POOL_MARGIN, POOL_SIZE

    return {
        # the paper's blending and the original pool (160-px crops, 10 % margin)
        "paper": Config("paper", 160, None, dict(PAPER)),
        # the settings chosen by this benchmark: α = 1 (FIDELITY, an option: the engine's default α is the
        # paper's 6), the default padding and mask, and the real pool's stored size / margin
        "default": Config("default", POOL_SIZE, POOL_MARGIN * POOL_SIZE, {"alpha": 1.0}),
        # the engine's defaults as they are (α = 6) on the real pool's stored size / margin
        "engine_default": Config("engine_default", POOL_SIZE, POOL_MARGIN * POOL_SIZE, {}),
    }


CONFIGS = _configs()
"""Named configurations (the sweep adds its own with --config NAME:JSON)."""


def parse_config(spec: str) -> Config:
    """A named config (``CONFIGS``) or ``NAME:JSON`` of MosaicEngine keywords plus ``pool_size`` (160),
    ``pool_margin`` (px; None: 10 % of pool_size), ``pool_padding`` (``build_pool``'s padding_mode where a crop
    leaves its frame; ``"reflection"``) and ``pool_box`` (keep the crops' ``content_box``; true)."""
    if spec in CONFIGS:
        return CONFIGS[spec]
    name, _, rest = spec.partition(":")
    opts = json.loads(rest) if rest else {}
    return Config(name, size=int(opts.pop("pool_size", 160)), margin=opts.pop("pool_margin", None),
                  padding=opts.pop("pool_padding", "reflection"), content_box=bool(opts.pop("pool_box", True)),
                  engine=opts)


def add_query_arguments(ap: argparse.ArgumentParser) -> None:
    """The query-set options shared by the fidelity scripts: ``--n``, ``--seeds``, ``--sets``, ``--mocap``."""
    ap.add_argument("--n", type=int, default=128, help="queries per set and seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sets", nargs="+", default=["heldout", "mocap"], choices=SETS)
    ap.add_argument("--mocap", default=None, metavar="SELECTOR",
                    help="restrict the mocap set's motion (gpumosaic.sources.select), e.g. real.DEFAULT_MOTION")


def make_queries(kind: str, pool: Pool2D, mocap, n: int, seed: int):
    """``(query (B, J, 2), occluded (B, J) or None, engine pool, info)`` for one set."""
    g = torch.Generator().manual_seed(seed)
    if kind == "ceiling":
        rows = torch.randperm(len(pool), generator=g)[:n]
        return pool.joints[rows], None, pool, {"rows": rows.tolist()}
    if kind == "heldout":
        cams = CAMERA_PAIRS[seed % len(CAMERA_PAIRS)]
        code = pool.ids // 100000
        held = (code == cams[0]) | (code == cams[1])
        rows = torch.nonzero(held)[:, 0]
        rows = rows[torch.randperm(len(rows), generator=g)[:n]]
        rest = pool.subset(torch.nonzero(~held)[:, 0])
        return pool.joints[rows], None, rest, {"held_cameras": list(cams), "pool_size": len(rest)}
    if kind == "mocap":  # as `gpumosaic generate`: mocap poses uniformly, one random view each
        pose_idx = torch.randint(len(mocap), (n,), generator=g)
        azimuth, elevation = sample_views(n, 1, generator=g)
        views = render_views(mocap.poses[pose_idx], mocap.skeleton, azimuth, elevation)
        info = {"mocap_ids": mocap.ids[pose_idx].tolist(), "elevation": elevation[:, 0].tolist()}
        return views.pose2d[:, 0], views.occluded[:, 0], pool, info
    raise ValueError(f"Unknown set {kind!r}; expected one of {SETS}")


def _seams(res) -> torch.Tensor:
    """(B,) 4-neighbour pixel pairs filled from different source images (stored row and mirror flag)."""
    src = res.source * 2 + res.mirrored.long()
    img = torch.gather(src, 1, res.index_map.flatten(1)).view_as(res.index_map)
    return ((img[:, 1:] != img[:, :-1]).flatten(1).sum(1) + (img[:, :, 1:] != img[:, :, :-1]).flatten(1).sum(1))


def _index_seams(res) -> torch.Tensor:
    """(B,) 4-neighbour pixel pairs with different index-map joints (each joint has its own warp)."""
    idx = res.index_map
    return (idx[:, 1:] != idx[:, :-1]).flatten(1).sum(1) + (idx[:, :, 1:] != idx[:, :, :-1]).flatten(1).sum(1)


def _sources(res) -> torch.Tensor:
    """(B,) distinct source images (stored row and mirror flag) among the pixels of each mosaic."""
    src = res.source * 2 + res.mirrored.long()
    img = torch.gather(src, 1, res.index_map.flatten(1))
    used = torch.zeros(img.shape[0], int(src.max()) + 1, dtype=torch.bool)
    used.scatter_(1, img.clamp_min(0), True)
    return used.sum(1)


def run_set(kind: str, config: Config, pool: Pool2D, mocap, n: int, seed: int, python: str | None,
            sheet: Path | None = None) -> dict:
    query, occluded, engine_pool, info = make_queries(kind, pool, mocap, n, seed)
    engine = MosaicEngine(engine_pool, **config.engine)
    t0 = time.perf_counter()
    chunks = [engine(query[i:i + 16], None if occluded is None else occluded[i:i + 16]) for i in range(0, len(query), 16)]
    seconds = time.perf_counter() - t0
    blended = torch.cat([r.images for r in chunks])
    pasted = torch.cat([r.mosaic_unblended for r in chunks])
    labels = torch.cat([r.query for r in chunks]).double().numpy()
    det = detect_poses(torch.cat([blended, pasted]), python)
    m = len(blended)
    out = {"set": kind, "config": config.name, "pool_size_px": config.size, "pool_margin": config.margin,
           "pool_padding": config.padding, "pool_content_box": config.content_box,
           "engine": config.engine, "seed": seed, "n": m, "info": info, "engine_seconds": seconds,
           "detector": det.version}
    for tag, sl in (("blended", slice(0, m)), ("copy_paste", slice(m, 2 * m))):
        out[tag] = fidelity_score(det.joints[sl], det.detected[sl], labels, seed=seed)
        all14 = fidelity_score(det.joints[sl], det.detected[sl], labels, seed=seed, joints=tuple(range(14)))
        out[tag]["pck14"] = all14["pck"]  # neck and head top too (MediaPipe approximates both)
    out["blend_minus_copy_paste_pck"] = paired_difference(out["blended"]["per_image"]["pck"],
                                                          out["copy_paste"]["per_image"]["pck"], seed=seed)
    out["blend_minus_copy_paste_detected"] = paired_difference(out["blended"]["per_image"]["detected"],
                                                               out["copy_paste"]["per_image"]["detected"], seed=seed)
    seams = torch.cat([_seams(r) for r in chunks]).float()
    sources = torch.cat([_sources(r) for r in chunks]).float()
    out["seams"] = {"mean": float(seams.mean()), "std": float(seams.std())}
    index_seams = torch.cat([_index_seams(r) for r in chunks]).float()
    out["index_seams"] = {"mean": float(index_seams.mean()), "std": float(index_seams.std())}
    out["sources_per_mosaic"] = {"mean": float(sources.mean()), "std": float(sources.std())}
    if kind == "ceiling":
        rows = torch.tensor(info["rows"])
        own = torch.cat([r.source for r in chunks]) == rows[:, None]
        out["own_image_share"] = float(own.float().mean())
    if sheet is not None:
        contact_sheet(blended, pasted, labels, det, m, sheet, f"{kind} / {config.name} / seed {seed}")
    return out


def contact_sheet(blended, pasted, labels, det, m: int, path: Path, title: str, count: int = 8) -> None:
    """Two rows of ``count`` mosaics (copy-paste, blended), label in white, detection in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gpumosaic.viz import draw_skeleton

    count = min(count, m)
    fig, axes = plt.subplots(2, count, figsize=(1.9 * count, 4.2))
    axes = np.atleast_2d(axes).reshape(2, count)
    for row, (images, offset, name) in enumerate(((pasted, m, "copy-paste"), (blended, 0, "blended"))):
        for k in range(count):
            ax = axes[row, k]
            ax.imshow(images[k].clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_axis_off()
            lab = labels[k]
            for a, b in LSP14.bones:
                ax.plot([lab[a, 0], lab[b, 0]], [lab[a, 1], lab[b, 1]], color="w", lw=0.6, alpha=0.8)
            hit = bool(det.detected[offset + k])
            if hit:
                draw_skeleton(ax, torch.from_numpy(det.joints[offset + k]), LSP14, lw=1.0)
            ax.set_title(f"{name}" + ("" if hit else " (none)"), fontsize=7)
    fig.suptitle(f"{title}: white = label, colour = MediaPipe (left blue, right red)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------------------


def _fmt(stat: dict, digits: int = 2) -> str:
    lo, hi = stat["ci"]
    return f"{stat['value']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def table(rows: list[dict]) -> str:
    head = ("| config | set | seed | mode | detected | PCK@0.2 | PCK (detected) | median err (torso) | L/R swaps |"
            " sources | seams |\n|---|---|---:|---|---|---|---|---|---|---:|---:|")
    lines = [head]
    for r in rows:
        for mode in ("copy_paste", "blended"):
            s = r[mode]
            lines.append(f"| {r['config']} | {r['set']} | {r['seed']} | {mode.replace('_', '-')} | "
                         f"{_fmt(s['detection_rate'])} | {_fmt(s['pck'])} | {_fmt(s['pck_detected'])} | "
                         f"{_fmt(s['median_error'])} | {_fmt(s['swap_rate'], 3)} | "
                         f"{r['sources_per_mosaic']['mean']:.1f} | {r['seams']['mean']:.0f} |")
    return "\n".join(lines)


def save_results(payload: dict, name: str, path: Path | None = None) -> Path:
    """Write ``payload`` as JSON to ``path`` or ``benchmarks/results/fidelity_{name}_{time}.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = path or RESULTS / f"fidelity_{name}_{time.strftime('%Y%m%d-%H%M%S')}.json"
    slim = json.loads(json.dumps(payload))
    path.write_text(json.dumps(slim, indent=1))
    return path


# ---------------------------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------------------------


def cmd_score(args) -> int:
    import cv2

    folder = Path(args.folder)
    labels_file = Path(args.labels) if args.labels else folder / "annotations.jsonl"
    text = labels_file.read_text()
    records = json.loads(text) if text.lstrip().startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    if args.limit:
        records = records[: args.limit]
    images, labels = [], []
    for rec in records:
        bgr = cv2.imread(str(folder / rec["image"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise SystemExit(f"error: cannot read {folder / rec['image']}")
        images.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        labels.append(np.asarray(rec["pose2d"], np.float64))
    if len({im.shape for im in images}) != 1:
        raise SystemExit("error: images of different sizes; score them in groups of one size")
    det = detect_poses(np.stack(images), args.detector)
    score = fidelity_score(det.joints, det.detected, np.stack(labels), seed=args.seed)
    payload = {"folder": str(folder), "labels": str(labels_file), "detector": det.version, "score": score}
    path = save_results(payload, "score")
    print(f"{folder}: n={score['n']} detected {_fmt(score['detection_rate'])}, PCK@0.2 {_fmt(score['pck'])}, "
          f"PCK(detected) {_fmt(score['pck_detected'])}, median error {_fmt(score['median_error'])} torso "
          f"({_fmt(score['median_error_px'], 1)} px), L/R swaps {_fmt(score['swap_rate'], 3)}\n-> {path}")
    return 0


def cmd_sets(args) -> int:
    from gpumosaic.sources.real import load_real_mocap

    mocap = load_real_mocap()
    if args.mocap:
        from gpumosaic.sources.select import select_mocap

        try:
            mocap = select_mocap(mocap, args.mocap)
        except ValueError as err:  # bad grammar, or a selector that keeps nothing
            raise SystemExit(f"error: --mocap: {err}") from None
    configs = [parse_config(c) for c in args.configs]
    rows = []
    path = None
    for config in configs:
        pool = load_pool(config.size, config.margin, padding=config.padding)
        if not config.content_box:
            pool = replace(pool, content_box=None)
        for kind in args.sets:
            for seed in args.seeds:
                sheet = (Path(args.sheets) / f"fidelity_{config.name}_{kind}_s{seed}.png"
                         if args.sheets and seed == args.seeds[0] else None)
                row = run_set(kind, config, pool, mocap, args.n, seed, args.detector, sheet)
                row["mocap_selector"] = args.mocap  # None: all of load_real_mocap()
                row["mocap_poses"] = len(mocap)
                rows.append(row)
                path = save_results({"argv": sys.argv[1:], "mocap_selector": args.mocap, "mocap_poses": len(mocap),
                              "rows": rows}, args.tag, path)  # after every row
                b, c = row["blended"], row["copy_paste"]
                print(f"{config.name:>14} {kind:>8} s{seed}: PCK blended {_fmt(b['pck'])} copy-paste {_fmt(c['pck'])}"
                      f" | detected {_fmt(b['detection_rate'])} / {_fmt(c['detection_rate'])}"
                      f" | diff {_fmt(row['blend_minus_copy_paste_pck'])}", flush=True)
    print(table(rows))
    print(f"-> {path}")
    return 0


def cmd_report(args) -> int:
    """Markdown tables of saved ``sets`` results (no detector needed)."""
    rows = [r for f in args.files for r in json.loads(Path(f).read_text())["rows"]]
    if args.versus:
        print(compare_table(rows, args.versus))
    elif args.pooled:
        print(pooled_table(rows))
    elif args.compact:
        print(compact_table(rows))
    else:
        print(table(rows))
    return 0


def pooled_table(rows: list[dict]) -> str:
    """Seeds pooled: per (config, set), the per-image PCK and detection of every seed's images together, with
    bootstrap intervals over those images and the paired blended − copy-paste differences (PCK, detection)."""
    from gpumosaic.fidelity import bootstrap_interval

    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], _set_label(r)), []).append(r)
    lines = ["| config | set | seeds | n | PCK@0.2 blended | PCK@0.2 copy-paste | blended − copy-paste | detected blended |"
             " detected copy-paste | detected: blended − copy-paste | sources / mosaic | source seams |",
             "|---|---|---|---:|---|---|---|---|---|---|---:|---:|"]

    def mean_ci(values: np.ndarray) -> str:
        lo, hi = bootstrap_interval(lambda idx: values[idx].mean(1), len(values))
        return f"{values.mean():.2f} [{lo:.2f}, {hi:.2f}]"

    for (config, kind), rs in groups.items():
        get = lambda mode, key: np.concatenate([np.asarray(r[mode]["per_image"][key], np.float64) for r in rs])
        pb, pc = get("blended", "pck"), get("copy_paste", "pck")
        db, dc = get("blended", "detected"), get("copy_paste", "detected")
        n = len(pb)
        src = sum(r["sources_per_mosaic"]["mean"] * r["n"] for r in rs) / n
        seams = sum(r["seams"]["mean"] * r["n"] for r in rs) / n
        seeds = ",".join(str(s) for s in sorted(r["seed"] for r in rs))
        lines.append(f"| {config} | {kind} | {seeds} | {n} | {mean_ci(pb)} | {mean_ci(pc)} | {mean_ci(pb - pc)} | "
                     f"{mean_ci(db)} | {mean_ci(dc)} | {mean_ci(db - dc)} | {src:.1f} | {seams:.0f} |")
    return "\n".join(lines)


def compare_table(rows: list[dict], base: str) -> str:
    """Every other config against ``base`` on the same queries, seeds pooled: paired per-image differences
    (config − base) of PCK and detection, blended and copy-paste, with bootstrap intervals over the images.

    Rows are matched by (set, seed); a pair must have the same ``n`` and agree on every ``info`` key both carry
    (held-out cameras and pool size, mocap ids and elevations), else ``ValueError``: not the same queries.
    Pairs whose base row is missing are left out (the ``seeds`` column says which were used).
    """
    from gpumosaic.fidelity import bootstrap_interval

    keyed: dict[tuple[str, str, int], dict] = {}
    for r in rows:
        key = (r["config"], _set_label(r), r["seed"])
        if key in keyed:
            raise ValueError(f"two rows for config {key[0]!r}, set {key[1]!r}, seed {key[2]}")
        keyed[key] = r
    if not any(k[0] == base for k in keyed):
        raise ValueError(f"no rows of the base config {base!r}; configs: {sorted({k[0] for k in keyed})}")
    groups: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for (config, kind, seed), r in keyed.items():
        ref = keyed.get((base, kind, seed))
        if config == base or ref is None:
            continue
        shared = set(r["info"]) & set(ref["info"])
        if r["n"] != ref["n"] or any(r["info"][k] != ref["info"][k] for k in shared):
            raise ValueError(f"{config} vs {base}, set {kind}, seed {seed}: not the same queries")
        groups.setdefault((config, kind), []).append((r, ref))
    lines = [f"| config | vs | set | seeds | n | Δ PCK blended | Δ PCK copy-paste | Δ detected blended |"
             f" Δ detected copy-paste |", "|---|---|---|---|---:|---|---|---|---|"]

    def diff_ci(key: str, mode: str, pairs: list[tuple[dict, dict]]) -> str:
        d = np.concatenate([np.asarray(r[mode]["per_image"][key], np.float64)
                            - np.asarray(ref[mode]["per_image"][key], np.float64) for r, ref in pairs])
        lo, hi = bootstrap_interval(lambda idx: d[idx].mean(1), len(d))
        return f"{d.mean():+.2f} [{lo:+.2f}, {hi:+.2f}]"

    for (config, kind), pairs in groups.items():
        seeds = ",".join(str(s) for s in sorted(r["seed"] for r, _ in pairs))
        n = sum(r["n"] for r, _ in pairs)
        cells = [diff_ci(k, m, pairs) for k, m in (("pck", "blended"), ("pck", "copy_paste"),
                                                   ("detected", "blended"), ("detected", "copy_paste"))]
        lines.append(f"| {config} | {base} | {kind} | {seeds} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _set_label(row: dict) -> str:
    """The set's name, with the mocap selector when ``--mocap`` restricted the motion."""
    sel = row.get("mocap_selector")
    return f"{row['set']} ({sel.replace('|', chr(92) + '|')})" if sel and row["set"] == "mocap" else row["set"]


def compact_table(rows: list[dict]) -> str:
    """One line per (config, set, seed): PCK and detection of both modes and their paired difference."""
    lines = ["| config | set | seed | PCK blended | PCK copy-paste | blended − copy-paste | detected blended |"
             " detected copy-paste | sources | source seams |", "|---|---|---:|---|---|---|---|---|---:|---:|"]
    for r in rows:
        b, c = r["blended"], r["copy_paste"]
        lines.append(f"| {r['config']} | {_set_label(r)} | {r['seed']} | {_fmt(b['pck'])} | {_fmt(c['pck'])} | "
                     f"{_fmt(r['blend_minus_copy_paste_pck'])} | {_fmt(b['detection_rate'])} | "
                     f"{_fmt(c['detection_rate'])} | {r['sources_per_mosaic']['mean']:.1f} | {r['seams']['mean']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default=None,
                    help=f"the detector's Python (default ${DETECTOR_PYTHON_ENV}); see gpumosaic.fidelity")
    sub = ap.add_subparsers(dest="command", required=True)
    sc = sub.add_parser("score", help="score a folder of images with 2D labels (e.g. written by generate)")
    sc.add_argument("folder")
    sc.add_argument("--labels", default=None, help="labels file (default FOLDER/annotations.jsonl)")
    sc.add_argument("--limit", type=int, default=0)
    sc.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    st = sub.add_parser("sets", help="build and score the ceiling / heldout / mocap sets")
    st.add_argument("--n", type=int, default=128)
    st.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    st.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    st.add_argument("--configs", nargs="+", default=["paper"],
                    help="NAME from CONFIGS or NAME:JSON of MosaicEngine keywords plus pool_size / pool_margin")
    st.add_argument("--mocap", default=None, metavar="SELECTOR",
                    help="keep only these real mocap poses for the mocap set (gpumosaic.sources.select grammar, "
                         "e.g. 'clip=1|clip=2|clip=13+14+17+18+19+21+22+23+24'); default: all of load_real_mocap()")
    st.add_argument("--sheets", default=None, help="folder for contact sheets (first seed)")
    st.add_argument("--tag", default="sets", help="results file name tag")
    rp = sub.add_parser("report", help="markdown tables of saved `sets` results")
    rp.add_argument("files", nargs="+")
    rp.add_argument("--compact", action="store_true")
    rp.add_argument("--pooled", action="store_true", help="seeds pooled per (config, set)")
    rp.add_argument("--versus", default=None, metavar="BASE",
                    help="paired differences of every other config against config BASE (same queries, seeds pooled)")
    args = ap.parse_args(argv)
    if args.command == "report":
        return cmd_report(args)
    if not detector_available(args.detector):
        try:
            detect_poses(np.zeros((1, 8, 8, 3), np.uint8), args.detector)
        except DetectorUnavailable as err:
            raise SystemExit(f"error: the detector is missing: {err}") from None
    torch.set_num_threads(1)
    return cmd_score(args) if args.command == "score" else cmd_sets(args)


if __name__ == "__main__":
    raise SystemExit(main())
