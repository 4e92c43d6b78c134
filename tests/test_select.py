"""Source selection (gpumosaic.sources.select) against hand-computed selections and a plain loop."""

from pathlib import Path

import pytest
import torch

from gpumosaic.cli import load_sources
from gpumosaic.sources import load_demo_mocap, load_demo_pool
from gpumosaic.sources.select import (
    Selection,
    _mask_reference,
    parse_selection,
    parse_source_spec,
    select_mocap,
    select_pool,
)

# ids = seq * 100000 + frame: cameras 1 and 2 with frames 0..3, camera 5 with frames 7, 8
IDS = torch.tensor([100000, 100001, 100002, 100003, 200000, 200001, 200002, 200003, 500007, 500008])


def _kept(sel) -> list[int]:
    return IDS[sel.mask(IDS)].tolist()


def test_hand_computed_selections():
    assert _kept(parse_selection("camera=1")) == [100000, 100001, 100002, 100003]
    assert _kept(parse_selection("frame=1-2")) == [100001, 100002, 200001, 200002]
    # all of camera 1 up to frame 1, and camera 5
    assert _kept(parse_selection("camera=1,frame=0-1|camera=5")) == [100000, 100001, 500007, 500008]
    assert _kept(parse_selection("seq=2+5,frame=3-")) == [200003, 500007, 500008]
    assert _kept(parse_selection("id=100003-200001")) == [100003, 200000, 200001]
    assert _kept(parse_selection("row=0+8-")) == [100000, 500007, 500008]
    assert _kept(Selection.where(camera=(1, 2), frame=range(3, 4))) == [100003, 200003]
    assert _kept(Selection.where(clip=[5, 1], frame=(8, None))) == [500008]


def test_mask_matches_plain_loop():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 6, (200,), generator=gen) * 100000 + torch.randint(0, 50, (200,), generator=gen)
    for text in ("camera=1-3,frame=0-20|camera=5", "frame=10-+3", "row=5-9+100-|id=300000-300010", "clip=0"):
        sel = parse_selection(text)
        assert sel.mask(ids).tolist() == _mask_reference(sel, ids)
    seq, frame = torch.arange(200) % 7, torch.arange(200) // 7  # a loader's own numbering
    sel = parse_selection("clip=3,frame=2-5")
    assert sel.mask(ids, seq, frame).tolist() == _mask_reference(sel, ids, seq, frame)
    assert int(sel.mask(ids, seq, frame).sum()) == 4


@pytest.mark.parametrize("bad", ["", "camera", "colour=1", "frame=a", "frame=5-2", "frame=1,", "frame=-3"])
def test_bad_selectors(bad):
    with pytest.raises(ValueError, match="Expected"):
        parse_selection(bad)


def test_parse_source_spec():
    assert parse_source_spec("real") == parse_source_spec("real:")
    spec = parse_source_spec("real")
    assert spec.kind == "real" and spec.path is None and spec.selection is None
    spec = parse_source_spec("REAL::camera=1-3,frame=0-49")
    assert spec.kind == "real" and spec.path is None and spec.selection.text == "camera=1-3,frame=0-49"
    spec = parse_source_spec("lsp:/data/lsp:row=0-999")
    assert spec.path == Path("/data/lsp") and spec.selection.alternatives == ((("row", ((0, 999),)),),)
    spec = parse_source_spec("bvh:walk:1.bvh")  # a colon inside the path is not a selector
    assert spec.path == Path("walk:1.bvh") and spec.selection is None
    with pytest.raises(ValueError, match="path is required"):
        parse_source_spec("lsp")
    with pytest.raises(ValueError, match="KEY=RANGES"):
        parse_source_spec("real::colour=1")


def test_select_sources_and_commands():
    pool, mocap = load_demo_pool(), load_demo_mocap()
    # demo mocap ids: subject * 100000 + k; subjects 0..11 with 250 poses each
    sub = select_mocap(mocap, "subject=1+3,frame=0-9")
    want = [s * 100000 + k for s in (1, 3) for k in range(10)]
    assert sub.ids.tolist() == want
    assert torch.equal(sub.poses, mocap.poses[torch.isin(mocap.ids, torch.tensor(want))])
    part = select_pool(pool, "row=2-4")
    assert torch.equal(part.images, pool.images[2:5]) and torch.equal(part.ids, pool.ids[2:5])
    with pytest.raises(ValueError, match="keeps none"):
        select_pool(pool, "id=99999999")
    p, m = load_sources("demo::row=0-9", "demo::subject=2", torch.device("cpu"))
    assert len(p) == 10 and (m.ids // 100000 == 2).all() and len(m) == int((mocap.ids // 100000 == 2).sum())
    with pytest.raises(SystemExit, match="--mocap"):
        load_sources("demo", "demo::row=99999999", torch.device("cpu"))
