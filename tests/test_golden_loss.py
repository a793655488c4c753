"""Golden loss trace: the tiny model's first 30 optimizer steps of each stage, against a stored trace.

A refactor that silently changes the numbers (a default, the loss reduction, the mask draw, the
schedule, the EMA update, the parameter groups) fails here. The three stages train under a real
Lightning Trainer on the CPU, one intra-op thread, fixed seeds: the teacher (stage 1), a student of
that teacher (stage 2) and the V-JEPA EMA baseline. Batches are synthetic uint8 clips made in the
test (no decoding, so the trace does not depend on the video codec), with the module's own masks.

The tolerance (rtol 1e-4, atol 1e-5) is loose enough for float32 reductions that a different CPU
vector width or a different PyTorch build orders differently (differences of ~1e-6 relative that
30 steps of AdamW can grow), and tight enough that any real change of the computation (which moves
the loss by 1e-3 or more within a few steps) fails.

Regenerate after an intended numerical change with ``SALT_UPDATE_GOLDEN=1 pytest
tests/test_golden_loss.py`` and commit ``tests/assets/golden_loss.json`` with the reason.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from train_helpers import CLIP, Recorder, module_kwargs, trainer

pytestmark = pytest.mark.usefixtures("one_thread")

GOLDEN = Path(__file__).parent / "assets" / "golden_loss.json"
STEPS = 30
BATCH = 2
RTOL, ATOL = 1e-4, 1e-5


class SyntheticClips(pl.LightningDataModule):
    """``STEPS`` batches of seeded uint8 clips; the module's mask function attaches the masks."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.mask_fn: Callable[[int], list] | None = None

    def set_mask_fn(self, fn: Callable[[int], list] | None) -> None:
        self.mask_fn = fn

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        t, s = CLIP["frames_per_clip"], CLIP["crop_size"]
        batches = []
        for _ in range(STEPS):
            video = torch.randint(0, 256, (BATCH, 3, t, s, s), generator=g, dtype=torch.uint8)
            batches.append({"video": video, "masks": self.mask_fn(BATCH)})
        return DataLoader(batches, batch_size=None, collate_fn=_as_is)


def _as_is(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def _fit(model: pl.LightningModule, root: Path, seed: int) -> tuple[pl.Trainer, list[float]]:
    rec = Recorder()
    t = trainer(root, STEPS, callbacks=[rec], gradient_clip_val=1.0)
    t.fit(model, datamodule=SyntheticClips(seed))
    assert len(rec.losses) == STEPS
    return t, rec.losses


def _traces(root: Path) -> dict[str, list[float]]:
    from salt.ema import EMAModule
    from salt.student import StudentModule
    from salt.teacher import TeacherModule

    out = {}
    pl.seed_everything(0, verbose=False)
    teacher = TeacherModule(**module_kwargs("teacher"))
    t, out["teacher"] = _fit(teacher, root / "teacher", seed=1)
    ckpt = root / "teacher.ckpt"
    t.save_checkpoint(ckpt)

    pl.seed_everything(0, verbose=False)
    student = StudentModule(**module_kwargs("student", teacher=str(ckpt)))
    _, out["student"] = _fit(student, root / "student", seed=2)

    pl.seed_everything(0, verbose=False)
    ema_kwargs = module_kwargs("student", ema_momentum=0.99, final_weight_decay=0.1)
    _, out["ema"] = _fit(EMAModule(**ema_kwargs), root / "ema", seed=3)
    return out


def test_first_steps_match_the_golden_trace(tmp_path: Path) -> None:
    traces = _traces(tmp_path)
    for stage, losses in traces.items():
        assert all(math.isfinite(x) for x in losses), (stage, losses)
    if os.environ.get("SALT_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        body = {"steps": STEPS, "batch_size": BATCH, "losses": traces}
        GOLDEN.write_text(json.dumps(body, indent=1) + "\n")
        pytest.skip(f"wrote {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())["losses"]
    assert sorted(golden) == sorted(traces)
    for stage, losses in traces.items():
        want = golden[stage]
        bad = [
            (i, got, exp)
            for i, (got, exp) in enumerate(zip(losses, want, strict=True))
            if not math.isclose(got, exp, rel_tol=RTOL, abs_tol=ATOL)
        ]
        assert not bad, f"{stage}: steps differ from {GOLDEN.name} (step, got, want): {bad[:5]}"
