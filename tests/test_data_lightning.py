"""VideoDataModule inside a real Lightning Trainer: masks from setup(), skip counts reach the logger,
the datamodule state travels in checkpoints and a mid-epoch resume keeps epoch boundaries."""

from __future__ import annotations

import csv

import pytest
import pytorch_lightning as pl
import torch
from helpers_video import bad_input_samples, index_video, video_sample, write_tar
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from salt.data import VideoDataModule, normalize


def mask_fn(batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Stand-in stage mask function (salt.masks has its own tests): tokens 0-1 context, 2-3 target."""
    return [(torch.tensor([[0, 1]] * batch_size), torch.tensor([[2, 3]] * batch_size))]


class TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 1)
        self.seen_keys: set[str] = set()

    def setup(self, stage: str) -> None:
        self.trainer.datamodule.set_mask_fn(mask_fn)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen_keys |= set(batch)
        video = normalize(batch["video"])  # [B, C, T, H, W] float on the device
        return self.head(video.mean(dim=(2, 3, 4))).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("lightning_shards")
    video = index_video(24, 32, 40)
    samples = [video_sample(f"g{i}", video, i % 3) for i in range(6)] + bad_input_samples()[:4]
    return write_tar(root / "mixed-000000.tar", samples)


def trainer(root, max_steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        logger=CSVLogger(root, name="log", version=0),
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def datamodule(spec: str) -> VideoDataModule:
    return VideoDataModule(
        spec,
        frames_per_clip=4,
        frame_step=2,
        crop_size=16,
        batch_size=2,
        num_workers=0,
        epoch_length=4,
    )


def test_fit_counts_logged_state_checkpointed_and_resumed(spec: str, tmp_path) -> None:
    dm, model = datamodule(spec), TinyModule()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    t = trainer(tmp_path, max_steps=6, callbacks=[ckpt])
    t.fit(model, datamodule=dm)
    assert model.seen_keys == {"video", "label", "masks"}  # data_counts consumed by the datamodule
    assert dm.batches_seen == 6
    stats = dm.data_stats()
    assert stats["data/skipped_undecodable"] >= 4  # the 4 garbage files, at least one pass
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [
        float(r["data/skipped_undecodable"]) for r in rows if r.get("data/skipped_undecodable")
    ]
    assert logged and logged[-1] == stats["data/skipped_undecodable"]

    step3 = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    state = torch.load(step3, weights_only=False)["VideoDataModule"]
    assert (
        state["batches_seen"] == 3 and state["batches_in_epoch"] == 3 and state["resume_count"] == 0
    )

    dm2 = datamodule(spec)
    t2 = trainer(tmp_path / "resume", max_steps=8)
    t2.fit(TinyModule(), datamodule=dm2, ckpt_path=str(step3))
    assert dm2.resume_count == 1
    assert t2.global_step == 8 and dm2.batches_seen == 8
    assert t2.current_epoch == 2  # epoch 0 finished after 1 more batch (4 total), epoch 1 had 4


def test_counts_logged_at_most_once_per_log_interval_and_at_the_end(tmp_path) -> None:
    """Every batch pads short videos (a count each batch); the totals are written at the first
    count, then once per ``log_every_n_steps`` steps, then once at the end: 3 writes for 8 steps,
    not 8 (each write to MLflow is a synchronous database commit)."""
    short = index_video(4, 32, 40)  # the window needs 7 frames (4 × step 2)
    spec_short = write_tar(
        tmp_path / "short-000000.tar", [video_sample(f"s{i}", short) for i in range(6)]
    )
    dm = VideoDataModule(
        spec_short, frames_per_clip=4, frame_step=2, crop_size=16, batch_size=2, num_workers=0,
        short_video="pad", epoch_length=100,
    )  # fmt: skip
    t = trainer(tmp_path, max_steps=8, log_every_n_steps=4)
    t.fit(TinyModule(), datamodule=dm)
    assert dm.data_stats()["data/padded"] == 16  # 8 batches × 2 padded clips
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("data/padded")]
    assert [(int(r["step"]), float(r["data/padded"])) for r in rows] == [(0, 2), (4, 10), (8, 16)]
