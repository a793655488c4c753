"""Training stream of VideoDataModule: batches, masks, skips never replaced, seeds, resume, mixing."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers_video import (
    BAD_INPUT_CASES,
    bad_input_samples,
    frame_numbers,
    index_video,
    video_sample,
    write_tar,
)

from salt.data import VideoDataModule, expand_shards
from salt.data.stats import sum_counts
from salt.errors import UsageError

SMALL = {"frames_per_clip": 8, "frame_step": 2, "crop_size": 16, "num_workers": 0}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("train_shards")
    video = index_video(40, 32, 40)
    for s in range(2):  # labels = sample number 0..7
        write_tar(
            root / f"good-{s:06d}.tar",
            [video_sample(f"g{4 * s + i}", video, 4 * s + i) for i in range(4)],
        )
    write_tar(root / "zeros-000000.tar", [video_sample(f"z{i}", video, 0) for i in range(4)])
    write_tar(root / "ones-000000.tar", [video_sample(f"o{i}", video, 1) for i in range(4)])
    # good samples labelled 100, 101, ... interleaved with every kind of bad input (label 7)
    mixed = []
    for i, bad in enumerate(bad_input_samples(label=7)):
        mixed += [video_sample(f"m{i:02d}", video, 100 + i), bad]
    write_tar(root / "mixed-000000.tar", mixed)
    return {
        "good": str(root / "good-{000000..000001}.tar"),
        "zeros": str(root / "zeros-000000.tar"),
        "ones": str(root / "ones-000000.tar"),
        "mixed": str(root / "mixed-000000.tar"),
    }


def batches(dm: VideoDataModule, n: int | None = None) -> list[dict]:
    return list(itertools.islice(dm.train_dataloader(), n))


def test_batches_are_uint8_clips_with_labels(shards) -> None:
    dm = VideoDataModule(shards["good"], batch_size=4, epoch_length=3, **SMALL)
    out = batches(dm)
    assert len(out) == 3  # epoch_length batches, then the epoch ends
    for b in out:
        assert b["video"].shape == (4, 3, 8, 16, 16) and b["video"].dtype == torch.uint8
        assert b["label"].dtype == torch.int64 and b["label"].shape == (4,)
        assert set(b["label"].tolist()) <= set(range(8))
        for clip in b["video"]:
            idx = frame_numbers(clip)
            assert [j - i for i, j in zip(idx, idx[1:], strict=False)] == [2] * 7  # step 2
        assert "masks" not in b  # no mask function set


def test_masks_attached_in_the_worker_and_distinct_per_worker(shards) -> None:
    masks = pytest.importorskip("salt.masks")
    dm = VideoDataModule(
        shards["good"], batch_size=2, epoch_length=4, **{**SMALL, "num_workers": 2}
    )
    dm.set_mask_fn(masks.MultiMaskCollator((4, 8, 8), seed=0))
    out = batches(dm)
    assert len(out) == 4
    for b in out:
        assert len(b["masks"]) == 2
        for ctx, tgt in b["masks"]:
            assert ctx.shape[0] == tgt.shape[0] == 2 and ctx.dtype == torch.int64
    # batches 0 and 1 come from workers 0 and 1: reseeded per worker, so their masks differ
    flat = [torch.cat([torch.cat([c.flatten(), t.flatten()]) for c, t in b["masks"]]) for b in out]
    assert not torch.equal(flat[0], flat[1])


def test_same_seed_same_clips_different_seed_different(shards) -> None:
    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        dm = VideoDataModule(
            shards["good"], batch_size=2, epoch_length=3, seed=seed, **{**SMALL, "num_workers": 2}
        )
        out = batches(dm)
        return torch.cat([b["video"] for b in out]), torch.cat([b["label"] for b in out])

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_each_epoch_draws_a_new_stream(shards) -> None:
    dm = VideoDataModule(shards["good"], batch_size=4, epoch_length=2, **SMALL)
    loader = dm.train_dataloader()
    e1 = torch.cat([b["video"] for b in loader])
    e2 = torch.cat([b["video"] for b in loader])
    assert e1.shape == e2.shape and not torch.equal(e1, e2)


def test_bad_samples_are_skipped_counted_and_never_replaced(shards) -> None:
    # one shard, no shuffle: the stream is the shard's samples in order, over and over
    dm = VideoDataModule(shards["mixed"], batch_size=4, epoch_length=6, shuffle_buffer=0, **SMALL)
    out = batches(dm)
    labels = torch.cat([b["label"] for b in out]).tolist()
    # walk the raw shard order: good 100+i, then bad case i (label 7); skips yield nothing
    want_labels, want_counts = [], {}
    for i, case in itertools.cycle(enumerate(BAD_INPUT_CASES)):
        if len(want_labels) == len(labels):
            break
        want_labels.append(100 + i)
        if len(want_labels) == len(labels):
            break
        outcome = BAD_INPUT_CASES[case]
        if outcome.startswith("skipped_"):
            want_counts[outcome] = want_counts.get(outcome, 0) + 1
        else:
            want_labels.append(7)
            if outcome == "padded":
                want_counts["padded"] = want_counts.get("padded", 0) + 1
    assert labels == want_labels  # exact order: nothing inserted, nothing repeated
    counts = sum_counts(b["data_counts"] for b in out)
    counts.pop("decoder_fallback", None)
    assert counts == want_counts


def test_all_bad_dataset_is_a_clear_error(tmp_path) -> None:
    spec = write_tar(tmp_path / "allbad.tar", [video_sample(f"b{i}", b"junk", 0) for i in range(5)])
    dm = VideoDataModule(spec, batch_size=2, epoch_length=1, **SMALL)
    with pytest.raises(RuntimeError, match="bad samples in a row"):
        batches(dm)


def test_weighted_mixing_of_datasets(shards) -> None:
    dm = VideoDataModule(
        [shards["zeros"], shards["ones"]],
        train_weights=[0.8, 0.2],
        batch_size=16,
        epoch_length=8,
        **SMALL,
    )
    labels = torch.cat([b["label"] for b in batches(dm)])
    frac_ones = labels.float().mean().item()
    assert 0.1 < frac_ones < 0.32  # 128 draws at p = 0.2


def test_resume_reseeds_the_stream_deterministically(shards) -> None:
    kw = {"batch_size": 2, "epoch_length": 4, "shuffle_buffer": 4, **SMALL}
    first = VideoDataModule(shards["good"], **kw)
    scratch = torch.cat([b["video"] for b in batches(first)])
    state = first.state_dict()
    assert state["seed"] == 0 and state["resume_count"] == 0

    def resumed() -> VideoDataModule:
        dm = VideoDataModule(shards["good"], **kw)
        dm.load_state_dict({**state, "batches_in_epoch": 1})
        return dm

    a, b = resumed(), resumed()
    assert a.resume_count == 1 and a.state_dict()["resume_count"] == 1
    va, vb = batches(a), batches(b)
    assert len(va) == 3  # the interrupted epoch's remainder (4 - 1)
    assert torch.equal(torch.cat([x["video"] for x in va]), torch.cat([x["video"] for x in vb]))
    assert not torch.equal(torch.cat([x["video"] for x in va]), scratch[: 3 * 2])
    assert len(batches(a)) == 4  # later epochs are full again


def test_resume_keeps_the_checkpoint_seed(shards) -> None:
    dm = VideoDataModule(shards["good"], seed=5, batch_size=2, epoch_length=1, **SMALL)
    with pytest.warns(UserWarning, match="replaced by the checkpoint"):
        dm.load_state_dict(
            {
                "seed": 3,
                "resume_count": 2,
                "batches_seen": 10,
                "batches_in_epoch": 0,
                "counts": {"padded": 4},
            }
        )
    assert dm.seed == 3 and dm.resume_count == 3 and dm.data_stats() == {"data/padded": 4.0}


def test_shard_specs_expand_and_typos_fail(shards, tmp_path) -> None:
    assert len(expand_shards(shards["good"])) == 2
    assert len(expand_shards(shards["zeros"] + "::" + shards["ones"])) == 2
    assert len(expand_shards(shards["good"].replace("{000000..000001}", "*"))) == 2
    with pytest.raises(UsageError, match="missing-000.tar"):
        VideoDataModule(str(tmp_path / "missing-{000..002}.tar"), **SMALL).train_dataloader()
    with pytest.raises(ValueError, match="train_weights"):
        VideoDataModule([shards["zeros"], shards["ones"]], train_weights=[1.0], **SMALL)


def test_ranks_get_different_streams_and_ddp_env_does_not_raise(shards, monkeypatch) -> None:
    # webdataset's default node splitter raises when RANK/WORLD_SIZE say "distributed"; ours has none
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    masks = pytest.importorskip("salt.masks")

    def run(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        dm = VideoDataModule(shards["good"], batch_size=2, epoch_length=2, **SMALL)
        dm.set_mask_fn(masks.MultiMaskCollator((4, 8, 8), seed=0))
        loader = dm.train_dataloader()
        loader.dataset.rank = rank  # what train_dataloader() takes from the trainer under DDP
        out = list(loader)
        return torch.cat([b["video"] for b in out]), torch.cat(
            [b["masks"][0][1].flatten() for b in out]
        )

    (v0, m0), (v1, m1) = run(0), run(1)
    assert not torch.equal(v0, v1) and not torch.equal(m0, m1)
    assert torch.equal(run(1)[0], v1)  # and each rank's stream is reproducible
