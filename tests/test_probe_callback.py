"""LiveProbe inside a real Lightning Trainer: logs probe/live_top1 every N steps beside the
training metrics, and does not change training (same weights with and without it)."""

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from salt.data import VideoDataModule
from salt.data.synthetic import write_synthetic_shards
from salt.probes.callback import LiveProbe
from salt.teacher import TeacherModule


class MemoryLogger(Logger):
    """A Lightning logger that keeps every logged metric in a list (real Logger API)."""

    def __init__(self):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "memory"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    return write_synthetic_shards(
        str(out), num_train=16, num_probe_train=24, num_val=12, num_classes=3, frames=16, size=48
    )


def _train(shards, tmp_path, callbacks, steps=4):
    pl.seed_everything(0)
    module = TeacherModule(
        encoder="vit_test", img_size=48, num_frames=8, decoder_dim=32, decoder_depth=1,
        decoder_heads=4, decoder_mlp_hidden=64, warmup_steps=2, health_every=0,
    )  # fmt: skip
    data = VideoDataModule(
        shards["train"], frames_per_clip=8, frame_step=2, crop_size=48, batch_size=4,
        num_workers=0, epoch_length=steps * 4, shuffle_buffer=4,
    )  # fmt: skip
    logger = MemoryLogger()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=steps, logger=logger, callbacks=callbacks,
        default_root_dir=tmp_path, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return module, logger


def test_live_probe_logs_and_leaves_training_unchanged(shards, tmp_path):
    probe = LiveProbe(
        shards["probe_train"], num_classes=3, val_shards=shards["val"], every_n_steps=2,
        frame_step=2, epochs=3, batch_size=8, at_start=True,
    )  # fmt: skip
    with_probe, logger = _train(shards, tmp_path / "a", [probe])
    steps = [s for s, _ in probe.history]
    assert steps == [0, 2, 4]
    assert all(0.0 <= acc <= 1.0 for _, acc in probe.history)
    logged = [(s, m["probe/live_top1"]) for s, m in logger.rows if "probe/live_top1" in m]
    assert logged == probe.history
    assert any("train/loss" in m for _, m in logger.rows)  # beside the training loss
    assert with_probe.encoder.training  # mode restored after probing
    without, _ = _train(shards, tmp_path / "b", [])
    for (n, a), (_, b) in zip(
        with_probe.state_dict().items(), without.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), f"LiveProbe changed training: {n} differs"


def test_live_probe_rejects_bad_interval():
    with pytest.raises(ValueError, match="every_n_steps"):
        LiveProbe("x.tar", num_classes=2, every_n_steps=0)
