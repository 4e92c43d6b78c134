"""The ``gpumosaic`` command.

``gpumosaic generate --n N --out DIR``: N mosaics with their annotations; ``gpumosaic preview --out FIG.png``:
the paper's Figure 2 for one query; ``gpumosaic export --n N --out DIR --shard-size S``: N mosaics as resumable
WebDataset-style tar shards (also under ``torchrun``; see :mod:`gpumosaic.export`); ``gpumosaic data prepare``:
fetch and build the real default data (:mod:`gpumosaic.prepare`); ``gpumosaic train --out DIR``: train the
pose classifier or regressor on mosaics and/or real crops (:mod:`gpumosaic.train`); ``gpumosaic evaluate
--test KIND:PATH[:SELECTOR] --checkpoint C``: the paper's protocols on real test images (:mod:`gpumosaic.protocols`);
``gpumosaic predict IMAGE --checkpoint C``: top-k poses of the person in a photo (:mod:`gpumosaic.predict`).

Sources: ``--pool KIND:PATH[:SELECTOR]`` and ``--mocap KIND:PATH[:SELECTOR]`` pick the 2D pool and the 3D
mocap and optionally part of it (:mod:`gpumosaic.sources.select`, e.g. ``real::camera=1-3,frame=0-49``; KIND one of
:data:`~gpumosaic.sources.build.POOL_KINDS` / :data:`~gpumosaic.sources.build.MOCAP_KINDS`, or ``demo`` /
``real``, whose PATH is optional: ``demo`` reads the embedded demo ``.npz`` or PATH, ``real`` the prepared
cache or the cache folder PATH); ``--pool-option`` / ``--mocap-option KEY=VALUE`` pass loader keywords. Without
them the prepared real data is used when its cache is ready, else the embedded synthetic demo data (with a
one-line notice).

Threads: every command that computes takes ``--threads N``; the default is the free cores (those this process
may use less those other processes keep busy, measured at start-up), with ``OMP_WAIT_POLICY=PASSIVE`` set
before torch is imported (see :mod:`gpumosaic.threads`); ``generate``, ``export`` and ``preview`` say the
count they use on their first line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from . import threads as _threads

# Before torch is imported: libgomp reads OMP_WAIT_POLICY once, when torch loads it (gpumosaic.threads).
_threads.prefer_passive_wait()

import torch  # noqa: E402

__all__ = ["main", "build_parser"]


_PAPER_HELP = ("the paper's blending and original implementation choices (alpha 6, beta 0.25, border "
               "replication, no out-of-image mask) instead of the padding and mask chosen by the fidelity "
               "benchmark (docs/fidelity.md)")
_ALPHA_HELP = ("alpha of Eq. 7, the blend window side on the skeleton in px (default: the paper's 6; 1 keeps body "
               "seams sharp, which helped pools stored at <= 256 px: docs/fidelity.md)")
_MULTIBAND_HELP = ("beyond the paper: multi-band blending over the index map with N Laplacian bands instead of "
                   "Eq. 7-9 (e.g. 5; docs/fidelity.md, session 5)")


def _paper(args) -> dict:
    """Engine keywords of ``--paper`` (:data:`gpumosaic.settings.PAPER`), ``--alpha`` and ``--multiband``, or none."""
    from .settings import PAPER

    keywords = dict(PAPER) if getattr(args, "paper", False) else {}
    if getattr(args, "alpha", None) is not None:
        keywords["alpha"] = args.alpha
    if getattr(args, "multiband", None) is not None:
        keywords["multiband_levels"] = args.multiband
    return keywords


def _engine(pool, **keywords):
    """``MosaicEngine(pool, **keywords)`` with a bad setting (``--alpha 0``, ``--multiband 9``) as a one-line error."""
    from .engine import MosaicEngine

    try:
        return MosaicEngine(pool, **keywords)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None


def parse_device(name: str) -> torch.device:
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``mps`` where available); a clear error else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SystemExit(f"error: --device: unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit(f"error: --device {name} requested but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise SystemExit(f"error: --device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise SystemExit(f"error: --device {name} requested but MPS is not available")
    elif device.type != "cpu":
        raise SystemExit(f"error: --device: unsupported device {name!r}; expected auto, cpu, cuda or cuda:N")
    return device


def _out_dir(path: Path, flag: str = "--out") -> Path:
    """Create the output folder ``path`` or exit with a one-line reason (a file, not writable, ...)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SystemExit(f"error: {flag} {path} is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SystemExit(f"error: {flag} {path}: cannot create the folder ({err.strerror or err})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SystemExit(f"error: {flag} {path} is not writable")
    return path


def _threads_note(args) -> str:
    """``"; threads: 1 (2 allowed, 1 busy)"`` once :func:`main` chose the threads, else ``""``."""
    choice = getattr(args, "thread_choice", None)
    return f"; {choice.summary()}" if choice is not None else ""


def _say(text: str, quiet: bool = False) -> None:
    """Immediate feedback on stderr (before slow loading, ahead of the progress bar)."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def _plain(text: str) -> str:
    """reST markup out of a docstring for ``--help``: ``x`` -> x, :func:`~a.b` -> b, :mod:`a.b` -> a.b."""
    text = re.sub(r":\w+:`~[\w.]*?\.?(\w+)`", r"\1", text)
    text = re.sub(r":\w+:`([^`]+)`", r"\1", text)
    return text.replace("``", "")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows every option's default (unless the help already names it, or it is None / a flag / a list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default is None or default is False or default == argparse.SUPPRESS
                or default == [] or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


@contextlib.contextmanager
def _clean_warnings():
    """Warnings as one ``warning: message`` line on stderr (no source file and line) while a command runs."""
    previous = warnings.formatwarning
    warnings.formatwarning = lambda message, category, filename, lineno, line=None: f"warning: {message}\n"
    try:
        yield
    finally:
        warnings.formatwarning = previous


SPECIAL_KINDS = ("demo", "real")
"""Source kinds that are not loaders: the embedded demo data and the prepared real data."""


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    from .sources.build import MOCAP_KINDS, POOL_KINDS

    parser.add_argument("--pool", metavar="KIND:PATH[:SELECTOR]", default=None,
                        help=f"2D pool source, KIND one of {', '.join(sorted(POOL_KINDS) + list(SPECIAL_KINDS))} "
                             f"(default: real data if prepared, else demo); SELECTOR keeps part of it, e.g. "
                             f"real::camera=1-3,frame=0-49 (docs/data.md)")
    parser.add_argument("--mocap", metavar="KIND:PATH[:SELECTOR]", default=None,
                        help=f"3D mocap source, KIND one of {', '.join(sorted(MOCAP_KINDS) + list(SPECIAL_KINDS))} "
                             f"(default: real data if prepared, else demo); SELECTOR e.g. real::clip=10-24")
    parser.add_argument("--pool-option", metavar="KEY=VALUE", action="append", default=[],
                        help="keyword for the pool loader (repeatable; VALUE read as JSON when it parses, "
                             "e.g. image_dir=/data/frames or stride=2)")
    parser.add_argument("--mocap-option", metavar="KEY=VALUE", action="append", default=[],
                        help="keyword for the mocap loader (repeatable), e.g. stride=4 or scale=cm")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="gpumosaic", description=_plain(__doc__.split("\n\nSources:")[0]))
    parser.add_argument("--version", action="version", version=f"gpumosaic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    gen = sub.add_parser("generate", help="write N mosaics and one annotations file")
    # "--num-samples": the spelling torchrun's own parser does not take for an abbreviation of its options.
    gen.add_argument("--n", "--num-samples", dest="n", type=int, required=True,
                     help="number of mosaics (under torchrun write --num-samples)")
    gen.add_argument("--out", type=Path, required=True,
                     help="output folder; one that holds an earlier generate output is refused unless --overwrite")
    gen.add_argument("--overwrite", action="store_true",
                     help="replace an earlier generate output in --out (its images/*.png|jpg and annotations.jsonl)")
    gen.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (same seed, same device: same output)")
    gen.add_argument("--batch-size", type=int, default=16, help="mosaics per engine call")
    gen.add_argument("--no-blend", action="store_true", help="write the copy-paste mosaics (no Eq. 7-9)")
    gen.add_argument("--paper", action="store_true", help=_PAPER_HELP)
    gen.add_argument("--alpha", type=float, default=None, help=_ALPHA_HELP)
    gen.add_argument("--multiband", type=int, default=None, metavar="N", help=_MULTIBAND_HELP)
    gen.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format")
    gen.add_argument("--roll", type=float, nargs=2, metavar=("LO", "HI"), default=(0.0, 0.0),
                     help="camera roll range in degrees about the optical axis (default 0 0: level, the paper's)")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_source_options(gen)

    pre = sub.add_parser("preview", help="draw the paper's Figure 2 for one query")
    pre.add_argument("--out", type=Path, required=True,
                     help="figure path; .png is added when it has no suffix, preview.png inside an existing folder")
    pre.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
    pre.add_argument("--seed", type=int, default=0, help="random seed of the query pose and view")
    pre.add_argument("--paper", action="store_true", help=_PAPER_HELP)
    pre.add_argument("--alpha", type=float, default=None, help=_ALPHA_HELP)
    pre.add_argument("--multiband", type=int, default=None, metavar="N", help=_MULTIBAND_HELP)
    pre.add_argument("--no-fidelity", action="store_true",
                     help="skip the independent detector's score even when $GPUMOSAIC_DETECTOR_PYTHON is set")
    _add_source_options(pre)

    exp = sub.add_parser("export", help="write N mosaics as resumable tar shards (torchrun: one process per GPU)")
    # "--num-samples": torchrun's own parser rejects "--n" as an ambiguous abbreviation of its options.
    exp.add_argument("--n", "--num-samples", dest="n", type=int, required=True,
                     help="number of mosaics in the whole export (under torchrun write --num-samples)")
    exp.add_argument("--out", type=Path, required=True, help="output folder (rerun the same command to resume)")
    exp.add_argument("--shard-size", type=int, default=1000, help="mosaics per tar shard (default 1000)")
    exp.add_argument("--device", default="auto",
                     help="cpu, cuda or auto (default: cuda when available; under torchrun cuda:LOCAL_RANK)")
    exp.add_argument("--seed", type=int, default=0, help="random seed: sample i depends on (seed, i) only")
    exp.add_argument("--batch-size", type=int, default=16, help="mosaics per engine call")
    exp.add_argument("--no-blend", action="store_true", help="write the copy-paste mosaics (no Eq. 7-9)")
    exp.add_argument("--paper", action="store_true", help=_PAPER_HELP)
    exp.add_argument("--alpha", type=float, default=None, help=_ALPHA_HELP)
    exp.add_argument("--multiband", type=int, default=None, metavar="N", help=_MULTIBAND_HELP)
    exp.add_argument("--format", choices=("png", "jpg"), default="png", help="image file format")
    exp.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality 1-100 (--format jpg)")
    exp.add_argument("--views-per-pose", type=int, default=180, help="cameras per mocap pose (paper: 180)")
    exp.add_argument("--roll", type=float, nargs=2, metavar=("LO", "HI"), default=(0.0, 0.0),
                     help="camera roll range in degrees about the optical axis (default 0 0: level, the paper's)")
    exp.add_argument("--size", type=int, default=220,
                     help="image side in px (paper: 220; smaller sizes are for tests and previews only)")
    exp.add_argument("--classes", type=Path, default=None,
                     help="pose classes (.npz of PoseClasses.save): adds each sample's .cls member and class field")
    exp.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_source_options(exp)

    from .cli_train import add_train_parser

    _add_source_options(add_train_parser(sub))

    data = sub.add_parser("data", help="manage the real default data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="fetch the pinned packages, verify them and build the real pool "
                                               "and mocap (idempotent)")
    prep.add_argument("--cache", type=Path, default=None,
                      help="cache folder (default $GPUMOSAIC_CACHE or ~/.cache/gpumosaic/real)")
    prep.add_argument("--force", action="store_true", help="rebuild even when the cache is valid")
    prep.add_argument("--offline-ok", action="store_true",
                      help="when a download fails (e.g. no network), print a notice and exit 0: the commands then "
                           "fall back to the embedded demo data")
    prep.add_argument("--device", default="cpu", help="device for the pool crops (default cpu)")
    prep.add_argument("--quiet", action="store_true", help="no progress bars")

    from .cli_eval import add_eval_parsers

    add_eval_parsers(sub)
    _threads.add_threads_option(sub, exclude=("data",))  # every command that computes, new ones included
    return parser


def parse_options(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"error: {flag} expects KEY=VALUE with KEY a Python identifier, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def split_source(spec: str, flag: str):
    """``KIND[:PATH][:SELECTOR]`` -> :class:`~gpumosaic.sources.select.SourceSpec`; ``demo`` / ``real`` may omit
    the path (``real``, ``real:``, ``real::camera=1-3``)."""
    from .sources.select import parse_source_spec

    try:
        return parse_source_spec(spec, optional_path=SPECIAL_KINDS)
    except ValueError as err:
        raise SystemExit(f"error: {flag}: {err}") from None


def default_source() -> str:
    """``"real"`` when the prepared real data is ready (:func:`gpumosaic.sources.real.cache_ready`), else ``"demo"``."""
    from .sources.real import cache_ready

    return "real" if cache_ready() else "demo"


def _load_source(spec: str, flag: str, kinds, demo, real, loader, select):
    """``KIND[:PATH][:SELECTOR]`` through ``demo`` / ``real`` (then ``select``) or ``loader`` (which selects
    itself: pools before cropping, mocap by the loader's own sequence and frame numbers)."""
    src = split_source(spec, flag)
    if src.kind not in kinds and src.kind not in SPECIAL_KINDS:
        raise SystemExit(f"error: {flag}: unknown kind {src.kind!r}; expected one of "
                         f"{sorted(kinds) + list(SPECIAL_KINDS)}")
    try:
        if src.kind not in SPECIAL_KINDS:
            return loader(src)
        data = demo(src.path) if src.kind == "demo" else real(src.path)
        return data if src.selection is None else select(data, src.selection)
    except (OSError, ValueError, TypeError) as err:
        raise SystemExit(f"error: {flag}: {err}") from None


def load_pool_source(spec: str, device: torch.device, options: dict | None = None, flag: str = "--pool"):
    """One ``KIND[:PATH][:SELECTOR]`` pool spec -> :class:`~gpumosaic.sources.base.Pool2D` on ``device``."""
    from .pools import load_pool
    from .sources.build import POOL_KINDS
    from .sources.demo import load_demo_pool
    from .sources.real import load_real_pool
    from .sources.select import select_pool

    return _load_source(
        spec, flag, POOL_KINDS, lambda path: load_demo_pool(device=device, path=path),
        lambda path: load_real_pool(device=device, cache=path),
        lambda src: load_pool(src.kind, src.path, device=device, selection=src.selection, **(options or {})),
        select_pool)


def load_mocap_source(spec: str, device: torch.device, options: dict | None = None, flag: str = "--mocap"):
    """One ``KIND[:PATH][:SELECTOR]`` mocap spec -> :class:`~gpumosaic.sources.base.Mocap3D` on ``device``."""
    from .sources.build import MOCAP_KINDS, load_mocap
    from .sources.demo import load_demo_mocap
    from .sources.real import load_real_mocap
    from .sources.select import select_mocap

    return _load_source(
        spec, flag, MOCAP_KINDS, lambda path: load_demo_mocap(device=device, path=path),
        lambda path: load_real_mocap(device=device, cache=path),
        lambda src: load_mocap(src.kind, src.path, device=device, selection=src.selection, **(options or {})),
        select_mocap)


def load_sources(pool: str | None, mocap: str | None, device: torch.device, pool_options: dict | None = None,
                 mocap_options: dict | None = None, notice=None):
    """Resolve ``--pool`` / ``--mocap`` specs (``KIND[:PATH][:SELECTOR]``, see
    :func:`gpumosaic.sources.select.parse_source_spec`) into ``(Pool2D, Mocap3D)`` on ``device``.

    A missing spec takes the default source (:func:`default_source`); for the real data a missing ``--mocap``
    is its default motion, the upright selection :data:`gpumosaic.sources.real.DEFAULT_MOTION` (``--mocap real``:
    every pose). Falling back to the demo data prints a one-line notice through ``notice`` (default: stderr).
    """
    notice = notice or (lambda text: print(text, file=sys.stderr))
    if pool is None or mocap is None:
        default = default_source()
        if default == "demo":
            notice("notice: no prepared real data (run `gpumosaic data prepare`); using the embedded synthetic "
                   "demo data")
        pool = pool or default
        # the real data's default motion: the upright selection (sources.real.DEFAULT_MOTION); `real` = all
        from .sources.real import DEFAULT_MOTION

        mocap = mocap or (f"real::{DEFAULT_MOTION}" if default == "real" else default)
    split_source(pool, "--pool"), split_source(mocap, "--mocap")  # both specs checked before any loading
    return load_pool_source(pool, device, pool_options), load_mocap_source(mocap, device, mocap_options)


def sources_from_args(args, device: torch.device):
    """:func:`load_sources` for parsed ``--pool``, ``--mocap``, ``--pool-option`` and ``--mocap-option``."""
    return load_sources(args.pool, args.mocap, device, parse_options(args.pool_option, "--pool-option"),
                        parse_options(args.mocap_option, "--mocap-option"))


def _query_batch(mocap, n: int, generator: torch.Generator, device: torch.device,
                 roll: tuple[float, float] = (0.0, 0.0)):
    """Draw n (pose, view) pairs: mocap poses uniformly, views as in the paper (DESIGN.md step 2), then, only
    when ``roll != (0, 0)``, a camera roll ~ U[lo, hi] degrees each (:mod:`gpumosaic.roll`; drawn last, so the
    level stream is unchanged).

    Returns ``(pose_idx (n,), views)``: a :class:`~gpumosaic.camera.ViewBatch` with (n,) leading dims."""
    from .camera import render_views, sample_views
    from .roll import roll_views

    pose_idx = torch.randint(len(mocap), (n,), generator=generator, device=device)
    azimuth, elevation = sample_views(n, 1, generator=generator, device=device)
    views = render_views(mocap.poses[pose_idx], mocap.skeleton, azimuth, elevation).select_view(0)
    lo, hi = roll
    if (lo, hi) != (0.0, 0.0):
        u = torch.rand(n, generator=generator, device=device, dtype=views.pose2d.dtype)
        views = roll_views(views, lo + u * (hi - lo))
    return pose_idx, views


_GENERATED_IMAGE = re.compile(r"^\d{7}\.(png|jpg)$")


def _replace_earlier_output(out: Path, overwrite: bool) -> None:
    """Refuse (or, with ``--overwrite``, delete) an earlier ``generate`` output in ``out``: its numbered images
    and ``annotations.jsonl``, so that no stale image survives a rerun with a smaller ``--n``."""
    folder = out / "images"
    images = sorted(p for p in folder.iterdir() if _GENERATED_IMAGE.match(p.name)) if folder.is_dir() else []
    annotations = out / "annotations.jsonl"
    if not images and not annotations.exists():
        return
    if not overwrite:
        raise SystemExit(f"error: --out {out} holds an earlier generate output ({len(images)} images"
                         f"{' and annotations.jsonl' if annotations.exists() else ''}); pass --overwrite to replace "
                         f"it, or choose another folder")
    for path in images:
        path.unlink()
    annotations.unlink(missing_ok=True)


def generate(args) -> int:
    import cv2
    from tqdm import tqdm

    from .batch import annotation_records, synthetic_batch
    from .settings import ViewSettings

    if args.n <= 0 or args.batch_size <= 0:
        raise SystemExit(f"error: --n and --batch-size must be positive, got {args.n} and {args.batch_size}")
    try:
        roll = ViewSettings(roll_range=tuple(args.roll)).roll_range
    except ValueError as err:
        raise SystemExit(f"error: --roll: {err}") from None
    device = parse_device(args.device)
    out = _out_dir(args.out)
    _say(f"generate: loading the pool and mocap ({device}{_threads_note(args)})...", args.quiet)
    pool, mocap = sources_from_args(args, device)
    _replace_earlier_output(out, args.overwrite)
    engine = _engine(pool, blend=not args.no_blend, device=device, **_paper(args))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out / "annotations.jsonl", "w") as ann, tqdm(
        total=args.n, unit="mosaic", disable=args.quiet, file=sys.stderr
    ) as bar:
        done = 0
        while done < args.n:
            b = min(args.batch_size, args.n - done)
            pose_idx, views = _query_batch(mocap, b, generator, device, roll)
            res = engine(views.pose2d, views.occluded)
            batch = synthetic_batch(res, views, pose_idx, mocap.ids.to(device)[pose_idx])
            images = (res.images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
            names = [f"images/{done + k:07d}.{args.format}" for k in range(b)]
            for name, image, record in zip(names, images, annotation_records(batch, mocap.skeleton.name, names)):
                cv2.imwrite(str(out / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                ann.write(json.dumps(record) + "\n")
            done += b
            bar.update(b)
    elapsed = time.perf_counter() - start
    print(f"wrote {args.n} mosaics to {out} in {elapsed:.1f} s ({args.n / elapsed:.1f} mosaics/s on {device})")
    return 0


def preview(args) -> int:
    from .viz import pipeline_figure, preview_fidelity

    device = parse_device(args.device)
    path = Path(args.out)
    if path.is_dir():
        path = path / "preview.png"
    elif not path.suffix:
        path = path.with_suffix(".png")  # what matplotlib's savefig would write
    _out_dir(path.parent, "--out's folder")
    _say(f"preview: loading the pool and mocap ({device}{_threads_note(args)})...")
    pool, mocap = sources_from_args(args, device)
    _say("preview: synthesising one mosaic and drawing the figure...")
    engine = _engine(pool, device=device, **_paper(args))
    generator = torch.Generator(device=device).manual_seed(args.seed)
    _, views = _query_batch(mocap, 1, generator, device)
    res = engine(views.pose2d, views.occluded)
    # Optional: the independent detector's score, when $GPUMOSAIC_DETECTOR_PYTHON names its environment.
    fidelity = None if args.no_fidelity else preview_fidelity(res, 0)
    pipeline_figure(res, engine, 0, path, fidelity=fidelity)
    print(f"wrote {path}")
    if fidelity is not None:
        text = {k: f"PCK@0.2 {v['pck']:.2f}" if v["detected"] else "no person"
                for k, v in fidelity.items() if k != "version"}
        print(f"fidelity (MediaPipe {fidelity['version']}): blended {text['blended']}, "
              f"copy-paste {text['copy_paste']}")
    return 0


def export(args) -> int:
    """``gpumosaic export``: one process, or one rank of a ``torchrun`` launch (process group set up here)."""
    import os

    import torch.distributed as dist

    from .export import export_shards
    from .settings import ViewSettings
    from .shardfile import ExportLockedError

    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    device = parse_device(args.device)
    _out_dir(args.out)
    _say(f"export: loading the pool and mocap ({device}{_threads_note(args)})...", args.quiet)
    if launched and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = launched and dist.is_available() and not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        pool, mocap = sources_from_args(args, device)
        try:
            engine = _engine(pool, size=args.size, blend=not args.no_blend, device=device, **_paper(args))
            classes = None
            if args.classes is not None:
                from .classes import PoseClasses

                classes = PoseClasses.load(args.classes, device=device)
            report = export_shards(
                args.out, args.n, args.shard_size, engine, mocap, args.seed, batch_size=args.batch_size,
                image_format=args.format, jpeg_quality=args.jpeg_quality,
                views=ViewSettings(views_per_pose=args.views_per_pose, roll_range=tuple(args.roll)), classes=classes,
                progress=not args.quiet,
                rank=int(os.environ["RANK"]) if launched else None,
                world_size=int(os.environ["WORLD_SIZE"]) if launched else None,
            )
        except (ValueError, ExportLockedError) as err:
            raise SystemExit(f"error: {err}") from None
    finally:
        if created:
            dist.destroy_process_group()
    rate = report.samples_written / max(report.seconds, 1e-9)
    print(
        f"rank {report.rank}/{report.world_size}: wrote {len(report.written)} shards "
        f"({report.samples_written} mosaics, {rate:.1f} mosaics/s on {device}), kept {len(report.skipped)} "
        f"complete shards, removed {len(report.removed)} partial or invalid files; {report.num_shards} shards in {args.out}"
    )
    return 0


def data(args) -> int:
    """``gpumosaic data prepare``: see :func:`gpumosaic.prepare.prepare`."""
    from .prepare import prepare
    from .sources.real import HashMismatchError

    try:
        report = prepare(args.cache, force=args.force, quiet=args.quiet, device=parse_device(args.device))
    except RuntimeError as err:
        if args.offline_ok:
            print(f"notice: could not fetch the real data ({str(err).splitlines()[0]}); gpumosaic will use the "
                  f"embedded synthetic demo data", file=sys.stderr)
            return 0
        raise SystemExit(f"error: {err}\n(use --offline-ok to continue with the embedded demo data)") from None
    except HashMismatchError as err:
        raise SystemExit(f"error: {err}") from None
    print(report.message())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "threads"):  # the commands that compute (not `data`): torch's threads for this process
        try:
            args.thread_choice = _threads.configure_threads(args.threads)
        except ValueError as err:  # e.g. OMP_NUM_THREADS=abc
            raise SystemExit(f"error: {err}") from None
    with _clean_warnings():
        try:
            return _run(args)
        except OSError as err:  # I/O failures as one line, not a traceback
            raise SystemExit(f"error: {err}") from None


def _run(args) -> int:
    if args.command in ("evaluate", "predict"):
        from .cli_eval import run_evaluate, run_predict

        return (run_evaluate if args.command == "evaluate" else run_predict)(args)
    if args.command == "data":
        return data(args)
    if args.command == "generate":
        return generate(args)
    if args.command == "export":
        return export(args)
    if args.command == "train":
        from .cli_train import run_train

        return run_train(args)
    return preview(args)


if __name__ == "__main__":
    raise SystemExit(main())
