"""``pipe:`` shard URLs run shell commands (webdataset's convention): refused unless allowed."""

from __future__ import annotations

import pytest
from helpers_video import index_video, video_sample, write_tar

from salt.data import VideoDataModule, eval_loader, probe_train_loader
from salt.errors import UsageError

CLIP = {"frames_per_clip": 4, "frame_step": 2, "crop_size": 16, "batch_size": 2, "num_workers": 0}


@pytest.fixture
def pipe_url(tmp_path) -> tuple[str, object]:
    tar = write_tar(
        tmp_path / "p-000000.tar", [video_sample(f"k{i}", index_video(12), i) for i in range(2)]
    )
    marker = tmp_path / "ran"
    return f"pipe:touch {marker} && cat {tar}", marker


def test_pipe_urls_are_refused_by_default_and_nothing_runs(pipe_url) -> None:
    url, marker = pipe_url
    with pytest.raises(UsageError, match="runs a shell command.*allow_pipe"):
        eval_loader(url, **CLIP)
    with pytest.raises(UsageError, match="allow_pipe_urls"):
        VideoDataModule(url, **CLIP).train_dataloader()
    with pytest.raises(UsageError, match="runs a shell command"):
        probe_train_loader(url, num_samples=2, batch_size=2, num_workers=0)
    assert not marker.exists()


def test_pipe_urls_work_when_allowed(pipe_url) -> None:
    url, marker = pipe_url
    keys = [k for b in eval_loader(url, **CLIP, allow_pipe=True) for k in b["key"]]
    assert keys == ["k0", "k1"] and marker.exists()
    batch = next(iter(VideoDataModule(url, **CLIP, allow_pipe_urls=True).train_dataloader()))
    assert batch["video"].shape == (2, 3, 4, 16, 16)
