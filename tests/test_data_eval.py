"""Evaluation loader: exactly-once split over ranks x workers, S x V clips, every bad input counted."""

from __future__ import annotations

import pytest
from helpers_video import (
    BAD_INPUT_CASES,
    bad_input_samples,
    frame_numbers,
    index_video,
    video_sample,
    write_tar,
)

from salt.data import eval_loader
from salt.data.decode import HAVE_DECORD
from salt.data.sampling import segment_indices
from salt.data.stats import sum_counts
from salt.errors import UsageError

CLIP = {"frames_per_clip": 8, "frame_step": 2, "crop_size": 16}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("eval_shards")
    video = index_video(24, 32, 40)
    for s in range(3):  # 3 shards x 5 samples, labels = sample number
        write_tar(
            root / f"good-{s:06d}.tar",
            [video_sample(f"s{5 * s + i:02d}", video, 5 * s + i) for i in range(5)],
        )
    write_tar(root / "bad-000000.tar", bad_input_samples(label=7))
    return {"good": str(root / "good-{000000..000002}.tar"), "bad": str(root / "bad-000000.tar")}


def collect(spec: str, **kw) -> tuple[list[str], list[int], dict[str, int], list]:
    keys, labels, counts, shapes = [], [], [], []
    for batch in eval_loader(spec, **{**CLIP, "batch_size": 2, "num_workers": 0, **kw}):
        keys += batch["key"]
        labels += batch["label"].tolist()
        counts.append(batch["data_counts"])
        shapes.append(tuple(batch["video"].shape))
    return keys, labels, sum_counts(counts), shapes


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [2, 4])  # 3 shards: by shard (2x0..) and by sample (4x2)
def test_every_sample_exactly_once_across_ranks_and_workers(
    shards, num_workers: int, world_size: int
) -> None:
    seen: list[str] = []
    for rank in range(world_size):
        keys, labels, counts, _ = collect(
            shards["good"], rank=rank, world_size=world_size, num_workers=num_workers
        )
        assert [int(k[1:]) for k in keys] == labels  # label travels with its own video
        assert counts == {}
        seen += keys
    assert sorted(seen) == [f"s{i:02d}" for i in range(15)]  # no loss, no duplicate


def test_order_is_fixed(shards) -> None:
    assert collect(shards["good"], num_workers=2)[0] == collect(shards["good"], num_workers=2)[0]


def test_segments_and_views_shape(shards) -> None:
    _, _, _, shapes = collect(shards["good"], num_segments=2, num_views=3, batch_size=4)
    assert shapes == [(4, 2, 3, 3, 8, 16, 16)] * 3 + [(3, 2, 3, 3, 8, 16, 16)]


def test_each_bad_input_is_skipped_and_counted_or_padded(shards) -> None:
    keys, labels, counts, _ = collect(shards["bad"])
    expected_ok = {k for k, outcome in BAD_INPUT_CASES.items() if outcome in ("ok", "padded")}
    assert set(keys) == expected_ok and len(keys) == len(expected_ok)
    assert labels == [7] * len(keys)
    want: dict[str, int] = {}
    for outcome in BAD_INPUT_CASES.values():
        if outcome != "ok":
            want[outcome] = want.get(outcome, 0) + 1
    # decord cannot read MPEG-TS from memory, nor (decord 0.6) a 48-px-wide portrait video
    assert counts.pop("decoder_fallback", 0) >= (1 if HAVE_DECORD else 0)
    assert counts == want


def test_short_videos_skipped_when_configured(shards) -> None:
    keys, _, counts, _ = collect(shards["bad"], short_video="skip")
    assert "oneframe" not in keys and "fiveframes" not in keys
    assert counts["skipped_too_short"] == 2 and "padded" not in counts


def test_missing_label_is_skipped_for_evaluation(tmp_path) -> None:
    spec = write_tar(
        tmp_path / "nolabel.tar",
        [video_sample("a", index_video(16), None), video_sample("b", index_video(16), 3)],
    )
    keys, labels, counts, _ = collect(spec)
    assert keys == ["b"] and labels == [3] and counts == {"skipped_missing_label": 1}
    keys, labels, _, _ = collect(spec, require_label=False)
    assert keys == ["a", "b"] and labels == [-1, 3]


def test_missing_shard_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        eval_loader(str(tmp_path / "nope-000000.tar"), **CLIP)
    with pytest.raises(UsageError, match="no shard matches .*nope-\\*"):
        eval_loader(str(tmp_path / "nope-*.tar"), **CLIP)


@pytest.mark.parametrize("decoder", ["pyav"] + (["decord"] if HAVE_DECORD else []))
def test_each_segment_gets_its_own_frames_in_order(tmp_path, decoder: str) -> None:
    # 40 frames, 2 segments x 8 frames at step 4: the windows overlap without a shared frame
    spec = write_tar(tmp_path / "idx.tar", [video_sample("a", index_video(40), 1)])
    batch = next(iter(eval_loader(spec, **{**CLIP, "frame_step": 4}, num_segments=2,
                                  num_workers=0, decoder=decoder)))  # fmt: skip
    segs, _ = segment_indices(40, 8, 4, num_segments=2)
    got = [frame_numbers(batch["video"][0, s, 0]) for s in range(2)]  # [C, T, H, W] each
    assert got == segs


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skips_after_the_last_batch_and_all_bad_workers_are_still_counted(
    tmp_path, num_workers: int
) -> None:
    good, bad = index_video(20), b"not a video"
    # shard 0: 2 good then 2 bad (the skips come after the last full batch of 2);
    # shard 1: only bad samples (with 2 workers, one worker never fills a batch)
    write_tar(
        tmp_path / "p-000000.tar",
        [video_sample(f"a{i}", good if i < 2 else bad, 0) for i in range(4)],
    )
    write_tar(tmp_path / "p-000001.tar", [video_sample(f"b{i}", bad, 0) for i in range(3)])
    keys, _, counts, _ = collect(str(tmp_path / "p-{000000..000001}.tar"), num_workers=num_workers)
    assert sorted(keys) == ["a0", "a1"] and counts == {"skipped_undecodable": 5}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_label_outside_num_classes_names_the_shard_and_sample(tmp_path, num_workers) -> None:
    spec = write_tar(
        tmp_path / "lab-000000.tar",
        [video_sample("ok", index_video(12), 1), video_sample("odd", index_video(12), 9)],
    )
    with pytest.raises(
        UsageError, match=r"lab-000000.tar: sample 'odd': label 9 is outside \[0, 5\)"
    ):
        collect(spec, num_classes=5, num_workers=num_workers)
    assert collect(spec, num_classes=10)[1] == [1, 9]
