"""examples/train_classifier.py: a tiny CPU training run, checkpoint save + exact resume, finite metrics.

The run overfits a fixed stream: 4 training poses x 2 views = 8 (pose, view) pairs = one batch of 8 per
epoch, so every step sees the same 8 mosaics (in a new order) with K = 4 pose classes, and the
cross-entropy must fall well below its starting value. The resumed run is compared with the uninterrupted
one (losses of the resumed steps and final weights bit for bit), not with stored numbers. Mosaics are
memoised per pair (the engine is deterministic and tested elsewhere) to keep the module fast.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from gpumosaic.dataset import OnlineMosaicDataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_classifier.py"

TINY = [
    "--device", "cpu", "--steps", "16", "--batch-size", "8", "--size", "64", "--classes", "4",
    "--train-poses", "4", "--views", "2", "--class-views", "2", "--eval-samples", "8", "--eval-views", "2",
    "--log-every", "4", "--lr", "3e-4", "--seed", "0", "--quiet",
    "--pool", "demo", "--mocap", "demo",  # pinned: the default is the real data once it is prepared
]


def _load_example():
    spec = importlib.util.spec_from_file_location("train_classifier_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses / pickling look the module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    return _load_example()


@pytest.fixture(scope="module")
def memoised_synthesis():
    """Memoise ``OnlineMosaicDataset.synthesise`` per (dataset settings, pair) for this module's runs.

    The tiny run draws the same 8 (pose, view) pairs at every step and the engine is deterministic, so
    regenerating them would only cost time (the engine is tested elsewhere). Batches still go through the
    example's DataLoader, epoch permutations, shards and resumable skipping; only identical mosaics are
    reused. The key holds everything a sample depends on: seed, V, S, the mocap poses and the classes.
    """
    original = OnlineMosaicDataset.synthesise
    cache: dict = {}

    def synthesise(self, pair_index):
        setting = (self.seed, self.views_per_pose, self.size, self.mocap.ids.numpy().tobytes(),
                   self.poses.numpy().tobytes(),
                   None if self.classes is None else self.classes.centres.numpy().tobytes())
        pairs = pair_index.tolist()
        missing = sorted({p for p in pairs if (setting, p) not in cache})
        if missing:
            batch = original(self, torch.tensor(missing))
            for i, p in enumerate(missing):
                cache[(setting, p)] = {k: v[i] for k, v in batch.items()}
        rows = [cache[(setting, p)] for p in pairs]
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    patch = pytest.MonkeyPatch()
    patch.setattr(OnlineMosaicDataset, "synthesise", synthesise)
    yield cache
    patch.undo()


@pytest.fixture(scope="module")
def runs(example, memoised_synthesis, tmp_path_factory):
    """One uninterrupted 16-step run (checkpoint at step 12) and a run resumed from that checkpoint."""
    root = tmp_path_factory.mktemp("train")
    ckpt = root / "ckpt_{step}.pt"
    full = example.main(TINY + ["--out", str(root / "full"), "--checkpoint", str(ckpt),
                                "--checkpoint-every", "12"])
    resumed = example.main(TINY + ["--out", str(root / "resumed"), "--resume", str(root / "ckpt_12.pt")])
    return {"full": full, "resumed": resumed, "root": root}


def test_loss_decreases(runs):
    history = runs["full"]["history"]
    steps = [h[0] for h in history]
    loss = torch.tensor([h[2] for h in history])
    assert steps == list(range(1, 17))
    assert torch.isfinite(loss).all()
    first, last = loss[:4].mean(), loss[-4:].mean()
    # Starts near chance (ln K for K = 4 balanced-ish classes) and overfits the fixed 8-sample stream.
    assert first > 0.5 * math.log(4)
    assert last < 0.8 * first, f"loss did not fall: first 4 steps {first:.3f}, last 4 steps {last:.3f}"


def test_checkpoint_contents(runs, example):
    root = runs["root"]
    assert (root / "ckpt_12.pt").exists() and (root / "ckpt_16.pt").exists()
    state = example.load_checkpoint(root / "ckpt_12.pt")  # torch.load(weights_only=True)
    assert state["step"] == 12
    # 8 pairs, batch 8: one batch per epoch, so 12 steps = 12 complete epochs.
    assert (state["epoch"], state["batch_in_epoch"]) == (12, 0)
    assert {"model", "optimizer", "scaler", "rng", "classes", "history", "config"} <= set(state)
    assert len(state["history"]) == 12
    assert state["history"] == runs["full"]["history"][:12]
    final = example.load_checkpoint(root / "ckpt_16.pt")
    assert final["step"] == 16
    for k, v in final["model"].items():
        torch.testing.assert_close(v, runs["full"]["model"].state_dict()[k], rtol=0, atol=0)


def test_resume_continues_identically(runs):
    full, resumed = runs["full"], runs["resumed"]
    assert resumed["step"] == 16
    # Same history up to the checkpoint (restored), same losses after it (recomputed from the restored state).
    torch.testing.assert_close(torch.tensor([h[2] for h in resumed["history"]]),
                               torch.tensor([h[2] for h in full["history"]]), rtol=0, atol=0)
    assert [h[:2] for h in resumed["history"]] == [h[:2] for h in full["history"]]
    a, b = full["model"].state_dict(), resumed["model"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0, msg=lambda m: f"{k}: {m}")
    assert (resumed["epoch"], resumed["batch_in_epoch"]) == (full["epoch"], full["batch_in_epoch"])


def test_metrics_finite(runs):
    metrics = runs["full"]["metrics"]
    assert set(metrics) == {"classifier", "true class", "most frequent class"}
    for row in metrics.values():
        for name, value in row.items():
            assert math.isfinite(value), f"{name} = {value}"
    clf = metrics["classifier"]
    assert 0 <= clf["class rate"] <= 1 and 0 <= clf["top-4 rate"] <= 1
    assert clf["top-4 rate"] == 1.0  # k = K: every class is in the top 4
    # The top-k oracle takes the best of k decoded poses, the decoded top-1 pose is one of them.
    assert clf["top-4 oracle (mm)"] <= clf["MPJPE (mm)"] + 1e-3
    assert metrics["true class"]["class rate"] == 1.0
    # The resumed run evaluates the same held-out samples with the same weights.
    assert runs["resumed"]["metrics"] == metrics


def test_outputs_written(runs):
    out = runs["root"] / "full"
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "step,epoch,loss,elapsed_s" and len(log) == 17
    assert (out / "metrics.json").exists()


def test_resume_refuses_other_settings(runs, example):
    argv = [a if a != "4" else "3" for a in TINY]  # --classes 3, --train-poses 3: a different stream
    with pytest.raises(SystemExit, match="settings differ"):
        example.main(argv + ["--out", str(runs["root"] / "bad"), "--resume", str(runs["root"] / "ckpt_12.pt")])


def test_split_is_by_subject(example):
    from gpumosaic import load_demo_mocap

    mocap = load_demo_mocap()
    train, held = example.split_mocap(mocap, 2)
    subj_train = set((train.ids // example.SUBJECT_STRIDE).tolist())
    subj_held = set((held.ids // example.SUBJECT_STRIDE).tolist())
    assert subj_train.isdisjoint(subj_held) and len(subj_held) == 2
    assert len(train) + len(held) == len(mocap)
