"""One prepared GPU check (driven by ``benchmarks/gpu_check.sh``): tests, throughput, compiled engine, consumers.

On a CUDA machine, within a hard overall deadline (default 470 s, under the 8 minutes the check may take):

1. the CUDA tests (``pytest -k cuda``: every test parametrised on the ``cuda`` device plus the CUDA-only
   tests, including ``test_cuda_hot_path_makes_no_host_sync``), outcomes read from a JUnit XML report;
2. ``throughput.py`` on CUDA at N = 1,000 and 80,000 (mirrored ×2), B = 16, 64 and 256, S = 220, J = 14;
3. the same with ``MosaicEngine(compile=True)`` at N = 80,000, B = 256 (one graph, dense warps);
4. the consumers: AlexNet and ResNet-50 training steps at 220×220, batch 256, AMP (bfloat16 autocast).

Each step runs as a subprocess with its own time limit (shrunk to what is left of the deadline); a step that
runs out is recorded as ``timeout`` and the others still run. Everything goes into one JSON,
``benchmarks/results/gpu_check_<device>_<date>.json``.

``--cpu-smoke`` runs the same steps on the CPU with tiny sizes (no deadline): it checks that the script,
its commands and its JSON are correct where no GPU is at hand; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], limit: float, log) -> dict:
    """Run ``cmd`` in the repository with a time limit; its return code, duration and output tail."""
    log(f"$ {' '.join(cmd)}   (limit {limit:.0f} s)")
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(limit, 1))
        out, rc, status = p.stdout + p.stderr, p.returncode, ("ok" if p.returncode == 0 else "failed")
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        rc, status = None, "timeout"
    took = time.perf_counter() - t0
    log(f"  -> {status} in {took:.0f} s")
    tail = "\n".join(out.splitlines()[-25:])
    if status != "ok":
        log(tail)
    return {"cmd": cmd, "status": status, "returncode": rc, "seconds": took, "output_tail": tail}


def _junit(path: Path) -> dict:
    """Per-test outcomes from pytest's own JUnit XML report (written by this run)."""
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    out = {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        out[name] = ("failed" if {"failure", "error"} & kinds else "skipped" if "skipped" in kinds else "passed")
    return out


def _json_results(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="the same steps on the CPU, tiny sizes, no deadline")
    ap.add_argument("--deadline", type=float, default=470.0, help="seconds for the whole check (CUDA)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t_start = time.perf_counter()
    py = sys.executable

    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        ap.error("no CUDA device: run on a GPU machine, or --cpu-smoke to check the script on the CPU")
    dev = "cpu" if smoke else "cuda"
    deadline = float("inf") if smoke else args.deadline

    def left(share: float) -> float:
        remaining = deadline - (time.perf_counter() - t_start) - 10.0  # 10 s kept for writing the JSON
        return min(share, remaining) if deadline != float("inf") else share

    tp = [py, str(REPO / "benchmarks" / "throughput.py"), "--devices", dev, "--joints", "14"]
    if smoke:
        sizes = ["--pool-sizes", "500", "--sizes", "64", "--repeats", "1", "--warmup", "0", "--threads", "1"]
        eager = sizes + ["--batch-sizes", "2"]
        compiled = sizes + ["--batch-sizes", "2", "--compile", "retrieval"]  # 'engine' is CUDA only
        consumers = ["--pool-sizes", "200", "--sizes", "32", "--batch-sizes", "1", "--repeats", "1", "--warmup",
                     "0", "--threads", "1", "--consumers", "--amp", "--consumer-batch", "2"]
        test_sel = ["tests/test_compile.py", "tests/test_engine.py", "-k", "cuda or one_graph"]
        limits = dict(tests=900, eager=900, compiled=1800, consumers=900)
    else:
        common = ["--sizes", "220", "--repeats", "5", "--warmup", "2", "--reference-images", "0"]
        eager = common + ["--pool-sizes", "1000", "80000", "--batch-sizes", "16", "64", "256"]
        compiled = common + ["--pool-sizes", "80000", "--batch-sizes", "256", "--compile", "engine"]
        consumers = ["--pool-sizes", "1000", "--sizes", "220", "--batch-sizes", "16", "--repeats", "5", "--warmup",
                     "2", "--reference-images", "0", "--consumers", "--amp", "--consumer-batch", "256"]
        test_sel = ["tests", "-k", "cuda"]
        limits = dict(tests=110, eager=150, compiled=130, consumers=60)
    if smoke:
        eager += ["--reference-images", "0"]
        compiled += ["--reference-images", "0"]
        consumers += ["--reference-images", "0"]

    steps = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        xml_path = tmp / "junit.xml"
        steps["tests"] = _run([py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml_path}",
                               *test_sel], left(limits["tests"]), log)
        outcomes = _junit(xml_path)
        steps["tests"]["outcomes"] = outcomes
        steps["tests"]["no_host_sync_test"] = next(
            (v for k, v in outcomes.items() if k.endswith("test_cuda_hot_path_makes_no_host_sync")), "not run")
        m = re.search(r"(\d+) passed", steps["tests"]["output_tail"])
        steps["tests"]["passed"] = int(m.group(1)) if m else 0
        for name, extra in (("eager", eager), ("compiled", compiled), ("consumers", consumers)):
            folder = tmp / name
            steps[name] = _run(tp + extra + ["--out", str(folder)], left(limits[name]), log)
            steps[name]["results"] = _json_results(folder) if folder.exists() else []

    now = _dt.datetime.now(_dt.timezone.utc).astimezone()
    name = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu-smoke"
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {
        "benchmark": "gpu_check",
        "mode": "cpu-smoke (figures meaningless)" if smoke else "cuda",
        "device_name": name,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "git_commit": commit or None,
        "date": now.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t_start,
        "deadline_s": None if smoke else deadline,
        "steps": steps,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40]
    path = args.out / f"gpu_check_{slug}_{now.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    log(f"wrote {path} in {report['wall_s']:.0f} s: " + ", ".join(f"{k} {v['status']}" for k, v in steps.items()))
    return path


if __name__ == "__main__":
    main()
