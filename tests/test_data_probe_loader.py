"""Online-probe training loader: equal epochs on every rank, deal per epoch, splits, augmentation."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_video import frame_numbers, index_video, textured_video, video_sample, write_tar

from salt.data import TrainAugment, count_samples, eval_loader, probe_train_loader, resolve_source
from salt.data.sampling import train_segment_indices
from salt.data.stats import sum_counts
from salt.errors import UsageError

PLAIN = TrainAugment(
    crop_size=16, scale=(1.0, 1.0), aspect=(1.0, 1.0), randaugment=False, erase_prob=0.0
)
CLIP = {"frames_per_clip": 4, "frame_step": 2}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """4 shards x 3 samples (keys s00..s11, label = number % 4) and a CSV of 8 files (r0..r7)."""
    root = tmp_path_factory.mktemp("probe_train")
    video = index_video(40, 32, 32)
    for s in range(4):
        write_tar(
            root / f"tr-{s:06d}.tar",
            [video_sample(f"s{3 * s + i:02d}", video, (3 * s + i) % 4) for i in range(3)],
        )
    (root / "files").mkdir()
    for i in range(8):
        (root / "files" / f"r{i}.mp4").write_bytes(video)
    (root / "list.csv").write_text("".join(f"files/r{i}.mp4,{i % 4}\n" for i in range(8)))
    return {"shards": str(root / "tr-{000000..000003}.tar"), "csv": str(root / "list.csv")}


def epoch(spec, *, rank=0, world_size=1, e=0, **kw) -> list[dict]:
    args = {**CLIP, "batch_size": 2, "augment": PLAIN, "num_workers": 0, **kw}
    loader = probe_train_loader(spec, rank=rank, world_size=world_size, **args)
    loader.set_epoch(e)
    return list(loader)


def keys_of(batches: list[dict]) -> list[str]:
    return [k for b in batches for k in b["key"]]


@pytest.mark.parametrize("kind", ["shards", "csv"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_every_rank_yields_the_same_full_batches(data, kind: str, num_workers: int) -> None:
    n = {"shards": 12, "csv": 8}[kind]
    world, b = 3, 2
    steps = -(-n // (world * b))
    for rank in range(world):
        loader = probe_train_loader(
            data[kind], **CLIP, batch_size=b, augment=PLAIN, rank=rank, world_size=world,
            num_workers=num_workers,
        )  # fmt: skip
        assert loader.steps_per_epoch == len(loader) == steps and loader.num_samples == n
        batches = list(loader)
        assert len(batches) == steps
        for batch in batches:
            assert batch["video"].shape == (b, 1, 3, 4, 16, 16)  # [B, S, C, T, H, W]
            assert batch["video"].dtype == torch.uint8 and batch["label"].dtype == torch.int64
            assert batch["data_counts"] == {}


@pytest.mark.parametrize("kind", ["shards", "csv"])
def test_balanced_ranks_cover_the_set_once_per_epoch_and_the_deal_changes(data, kind) -> None:
    world = 2
    per_epoch = []
    for e in range(3):
        parts = [
            set(keys_of(epoch(data[kind], rank=r, world_size=world, e=e))) for r in range(world)
        ]
        assert not parts[0] & parts[1]  # ranks read disjoint parts ...
        per_epoch.append(parts[0])
        assert len(parts[0] | parts[1]) == {"shards": 12, "csv": 8}[kind]  # ... covering the set
    assert len({frozenset(p) for p in per_epoch}) > 1  # dealt afresh per epoch


def test_same_epoch_same_batches_pixels_included(data) -> None:
    aug = TrainAugment(crop_size=16)  # V-JEPA 2's recipe: RandAugment + erasing on
    a = epoch(data["shards"], e=1, augment=aug, num_workers=2)
    b = epoch(data["shards"], e=1, augment=aug, num_workers=2)
    assert keys_of(a) == keys_of(b)
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b, strict=True))
    c = epoch(data["shards"], e=2, augment=aug, num_workers=2)
    assert keys_of(a) != keys_of(c)


def test_global_torch_rng_is_untouched(data) -> None:
    aug = TrainAugment(crop_size=16, erase_prob=1.0)
    stream = probe_train_loader(data["csv"], **CLIP, batch_size=2, augment=aug).dataset
    before = torch.random.get_rng_state()  # (a DataLoader itself draws its base seed from it)
    assert len(list(stream)) == 4
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize("kind", ["shards", "csv"])
def test_fit_and_heldout_split_the_set_by_key_in_both_loaders(data, kind) -> None:
    split = {"heldout_fraction": 0.4, "heldout_seed": 3}
    src = resolve_source(data[kind])
    n_fit, n_held = (count_samples(src, s, 0.4, 3) for s in ("fit", "heldout"))
    assert n_fit + n_held == count_samples(src) and n_fit and n_held
    evals = {}
    for s in ("fit", "heldout"):
        loader = eval_loader(data[kind], **CLIP, crop_size=16, num_workers=0, split=s, **split)
        evals[s] = [k for b in loader for k in b["key"]]
        assert len(evals[s]) == (n_fit if s == "fit" else n_held)
        train = probe_train_loader(
            data[kind], **CLIP, batch_size=1, augment=PLAIN, split=s, num_workers=0, **split
        )
        assert train.num_samples == len(evals[s])
        assert set(keys_of(list(train))) == set(evals[s])  # batch 1, one rank: all once
    assert not set(evals["fit"]) & set(evals["heldout"])


def test_segments_come_from_their_own_part_of_the_video(data) -> None:
    rng = random.Random(0)
    for _ in range(50):
        segs, padded = train_segment_indices(40, 4, 2, 2, rng)
        assert (
            not padded and segs[0][0] >= 0 and segs[0][-1] < 20 <= segs[1][0] and segs[1][-1] < 40
        )
    batches = epoch(data["csv"], num_segments=2)
    video = batches[0]["video"]  # [B, 2, C, T, H, W]
    assert video.shape[1] == 2
    for clip in video:
        first, second = frame_numbers(clip[0]), frame_numbers(clip[1])
        assert max(first) < 20 <= min(second)
        assert np.diff(first).tolist() == [2, 2, 2] == np.diff(second).tolist()


def test_augmentation_is_identical_on_every_frame_of_a_segment(tmp_path) -> None:
    # a still textured video: after augmentation the frames of a segment must stay equal
    still = textured_video(1, 48, 64)
    from salt.data.decode import decode_clip

    frame = decode_clip(still, lambda n, fps: [0]).frames[0]
    from salt.data.encode import encode_video

    data = encode_video(np.stack([frame] * 20), crf=0, preset="ultrafast")
    spec = write_tar(tmp_path / "still.tar", [video_sample(f"k{i}", data, 0) for i in range(4)])
    aug = TrainAugment(crop_size=24, erase_prob=0.0)
    for batch in epoch(spec, augment=aug, num_segments=2, batch_size=4):
        for clip in batch["video"]:  # [S, C, T, H, W]
            for seg in clip:
                assert (seg - seg[:, :1]).abs().max() <= 2  # lossless encode: equal frames
            assert not torch.equal(clip[0], clip[1])  # but each segment has its own draw
    erased = epoch(spec, augment=TrainAugment(crop_size=24, randaugment=False, erase_prob=1.0,
                                              scale=(1.0, 1.0), aspect=(0.75, 0.75)),
                   batch_size=4)[0]["video"][:, 0]  # fmt: skip
    plain = epoch(spec, augment=TrainAugment(crop_size=24, randaugment=False, erase_prob=0.0,
                                             scale=(1.0, 1.0), aspect=(0.75, 0.75)),
                  batch_size=4)[0]["video"][:, 0]  # fmt: skip
    for e, p in zip(erased, plain, strict=True):  # [C, T, H, W]
        changed = (e.int() - p.int()).abs().amax(dim=0) > 2  # [T, H, W]
        assert changed.any()

        def extent(mask: torch.Tensor) -> tuple[int, int, int, int]:  # [H, W] -> bounding box
            rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
            return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())

        box = extent(changed.any(dim=0))  # one rectangle, the same on every frame
        assert all(extent(frame) == box for frame in changed)
        assert (box[1] - box[0] + 1) * (box[3] - box[2] + 1) <= 24 * 24 / 3 + 24


def test_bad_rows_are_counted_and_batches_stay_full(data, tmp_path) -> None:
    root = Path(data["csv"]).parent
    csv = tmp_path / "holes.csv"
    csv.write_text(f"{root}/files/r0.mp4,0\n{root}/files/gone.mp4,1\n{root}/files/r2.mp4,2\n")
    batches = epoch(str(csv), batch_size=3)
    assert len(batches) == 1 and len(batches[0]["key"]) == 3
    assert sum_counts(b["data_counts"] for b in batches)["skipped_missing_file"] >= 1


def test_a_set_smaller_than_ranks_times_workers_still_fills_every_rank(data) -> None:
    spec = data["shards"].replace("{000000..000003}", "000000")  # 1 shard, 3 samples
    for rank in range(4):
        batches = epoch(spec, rank=rank, world_size=4, num_workers=2, batch_size=2)
        assert len(batches) == 1 and len(batches[0]["key"]) == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_label_out_of_range_is_a_usage_error_naming_sample_and_label(data, num_workers) -> None:
    with pytest.raises(
        UsageError, match=r"tr-00000\d\.tar: sample 's\d\d': label 3 is outside \[0, 3\)"
    ):
        epoch(data["shards"], num_classes=3, num_workers=num_workers, batch_size=4)
    with pytest.raises(UsageError, match=r"label 3 is outside \[0, 3\)"):  # CSV: before workers
        probe_train_loader(data["csv"], batch_size=2, num_classes=3)


def test_clean_errors_before_any_worker(data, tmp_path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        probe_train_loader(str(tmp_path / "missing.csv"), batch_size=2)
    with pytest.raises(UsageError, match="no shard matches"):
        probe_train_loader(str(tmp_path / "x-*.tar"), batch_size=2)
    with pytest.raises(UsageError, match="holds no sample"):
        probe_train_loader(data["csv"], batch_size=2, split="heldout", heldout_fraction=1e-9)
    with pytest.raises(UsageError, match="split must be one of"):
        probe_train_loader(data["csv"], batch_size=2, split="val")
