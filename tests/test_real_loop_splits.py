"""The held-out protocols of benchmarks/real_loop.py: disjoint by construction, checked on every id of the
real data's numbering (camera·100000 + frame) with a plain loop."""

import importlib.util
from pathlib import Path

import pytest
import torch

from gpumosaic.sources.select import parse_selection

_spec = importlib.util.spec_from_file_location("real_loop", Path(__file__).parents[1] / "benchmarks" / "real_loop.py")
real_loop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_loop)

POOL_IDS = torch.tensor([c * 100000 + f for c in range(1, 6) for f in range(100)])
MOCAP_IDS = torch.tensor([c * 100000 + f for c in (1, 2, *range(10, 25)) for f in range(100)])


def _kept(text, ids):
    return set(ids[parse_selection(text).mask(ids)].tolist())


@pytest.mark.parametrize("motion", sorted(real_loop.MOTIONS))
def test_test_protocol_is_held_out(motion):
    sel = real_loop.splits(4, 50, "test", motion=motion)
    pool, test, mocap = (_kept(sel[k], POOL_IDS) for k in ("pool", "test", "mocap"))
    mocap = _kept(sel["mocap"], MOCAP_IDS)
    assert test == {4 * 100000 + f for f in range(50, 100)}
    assert all(i // 100000 in (1, 2, 3, 5) and (i // 100000 == 5 or i % 100000 < 50) for i in pool)
    trial = {i % 100000 for i in mocap if i // 100000 == 1}
    assert trial == set(range(50)) and not trial & {i % 100000 for i in test}
    deepmimic = {i // 100000 for i in mocap if i // 100000 >= 10}
    assert deepmimic == {"all": set(range(10, 25)), "upright": {13, 14, 17, 18, 19, 21, 22, 23, 24},
                         "trc": set()}[motion]


def test_validation_protocol_never_touches_test_camera_or_instants():
    sel = real_loop.splits(4, 50, "validation", val_camera=1, val_from=25, motion="upright")
    pool, val, seen = (_kept(sel[k], POOL_IDS) for k in ("pool", "test", "test_seen_cameras"))
    mocap = _kept(sel["mocap"], MOCAP_IDS)
    assert val == {100000 + f for f in range(25, 50)}
    assert seen == {c * 100000 + f for c in (2, 3) for f in range(25, 50)}
    for i in pool | val | seen:
        assert i // 100000 != 4 and (i // 100000 == 5 or i % 100000 < 50)
    assert all(i % 100000 < 25 for i in pool if i // 100000 <= 4)
    assert {i % 100000 for i in mocap if i // 100000 == 1} == set(range(25))
    with pytest.raises(ValueError):
        real_loop.splits(4, 50, "validation", val_camera=4)
