"""Teacher precision (salt.fp8): the FP8 option is refused where it cannot run, and its pieces are
numerically right where they can be checked on a CPU.

- ``teacher_precision='fp8'`` raises ``UsageError`` on the CPU: when the teacher is placed, and
  from a real ``Trainer.fit`` (on_fit_start) before any step; EMA teachers refuse bf16/fp8.
- ``Fp8Linear`` (the ``torch._scaled_mm`` fallback; PyTorch has a CPU kernel for it) matches the
  fp32 layer per token (cosine ≥ 0.999), keeps zero rows finite, and replaces exactly the block
  linears of a teacher, whose layer-normed targets stay close (cosine ≥ 0.99).
- quantising is done once: a second ``apply_teacher_precision`` (the teacher looked up again, e.g.
  on ``cuda`` then ``cuda:0``) changes nothing, another precision is refused, and quantising
  already-FP8 block linears again is a clear ``ValueError``.
- ``"bf16"`` casts the teacher once and feeds it a bf16 clip; its targets match fp32's.
The FP8 speed and the quality gate on real sizes are GPU measurements (benchmarks/fp8_gate.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from train_helpers import PREDICTOR, datamodule, trainer

from salt.errors import UsageError
from salt.fp8 import (
    Fp8Linear,
    apply_teacher_precision,
    check_teacher_precision,
    fp8_unavailable_reason,
    quantize_blocks_fp8,
)
from salt.models import create_encoder
from salt.step import latent_targets
from salt.student import StudentModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_setup import make_teacher_file  # noqa: E402


@pytest.fixture
def teacher_file(tmp_path: Path) -> Path:
    return make_teacher_file(tmp_path / "teacher.safetensors", "vit_test", 32, 8, patch_size=8)


def _student(teacher_file: Path, **kw) -> StudentModule:
    torch.manual_seed(0)
    return StudentModule(
        encoder="vit_test",
        encoder_kwargs={"patch_size": 8},
        img_size=32,
        num_frames=8,
        teacher=str(teacher_file),
        health_every=0,
        warmup_steps=1,
        **PREDICTOR,
        **kw,
    )


def test_fp8_refused_on_cpu_with_a_clear_usage_error(teacher_file):
    assert "cpu" in fp8_unavailable_reason(torch.device("cpu"))
    with pytest.raises(UsageError, match="compute capability ≥ 8.9.*device is cpu"):
        check_teacher_precision("fp8", torch.device("cpu"))
    module = _student(teacher_file, teacher_precision="fp8")  # building is fine anywhere
    with pytest.raises(UsageError, match=r"teacher_precision='fp8' needs a GPU with FP8"):
        module.teacher_on(torch.device("cpu"))
    assert module.fp8_backend is None


def test_fp8_fit_on_cpu_stops_before_the_first_step(teacher_file, tmp_path, shards):
    module = _student(teacher_file, teacher_precision="fp8")
    t = trainer(tmp_path, max_steps=2)
    with pytest.raises(UsageError, match="FP8 tensor cores"):
        t.fit(module, datamodule=datamodule(shards))
    assert t.global_step == 0


def test_bad_precisions_are_usage_errors(teacher_file):
    with pytest.raises(UsageError, match="teacher_precision must be one of"):
        _student(teacher_file, teacher_precision="int8")
    # the EMA target follows the student's weights every step, so it has no precision option:
    # asking the student for an EMA teacher names the module that has one
    with pytest.raises(UsageError, match="salt.ema.EMAModule"):
        StudentModule(encoder="vit_test", encoder_kwargs={"patch_size": 8}, img_size=32,
                      num_frames=8, teacher="ema",
                      teacher_precision="bf16", **PREDICTOR)  # fmt: skip


def test_fp8_linear_matches_fp32_per_token():
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 512)
    x = torch.randn(3, 40, 256) * torch.logspace(-2, 1, 40).view(1, 40, 1)  # rows of any scale
    x[0, 0] = 0.0  # an all-zero token must not divide by zero
    fp8 = Fp8Linear.from_linear(lin)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn and fp8.weight_scale.shape == (1, 512)
    out = fp8(x.to(torch.bfloat16))
    ref = lin(x)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 0].float(), lin.bias, rtol=1e-2, atol=1e-2)
    cos = F.cosine_similarity(out.float().flatten(0, 1)[1:], ref.flatten(0, 1)[1:], dim=-1)
    assert cos.min() > 0.999, cos.min()


def test_fp8_linear_rejects_unaligned_shapes():
    with pytest.raises(ValueError, match="divisible by 16"):
        Fp8Linear.from_linear(torch.nn.Linear(24, 64))


def test_scaled_mm_blocks_keep_teacher_targets_close():
    torch.manual_seed(0)
    enc = create_encoder("vit_test", img_size=32, num_frames=8, patch_size=8).eval()
    x = torch.randn(2, 3, 8, 32, 32)
    ref = latent_targets(enc, x)  # [B, N, D] fp32
    enc.to(torch.bfloat16)
    assert quantize_blocks_fp8(enc, "scaled_mm") == "scaled_mm"
    n_fp8 = sum(isinstance(m, Fp8Linear) for m in enc.modules())
    assert n_fp8 == 4 * len(enc.blocks)  # qkv, proj, fc1, fc2 of every block; nothing else
    assert not any(isinstance(m, torch.nn.Linear) for m in enc.blocks.modules())
    got = latent_targets(enc, x.to(torch.bfloat16))
    cos = F.cosine_similarity(got.float(), ref, dim=-1)  # per token
    assert cos.mean() > 0.99, cos.mean()


def test_bf16_teacher_casts_once_and_matches_fp32(teacher_file):
    a = _student(teacher_file)
    b = _student(teacher_file, teacher_precision="bf16")
    cpu = torch.device("cpu")
    ta, tb = a.teacher_on(cpu).encoder, b.teacher_on(cpu).encoder
    assert all(p.dtype == torch.float32 for p in ta.parameters())
    assert all(p.dtype == torch.bfloat16 for p in tb.parameters())
    collator = a.build_mask_collator()
    batch = {
        "video": torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8),
        "masks": collator(2),
    }
    la, _ = a.training_loss(batch)
    lb, _ = b.training_loss(batch)  # fp32 student, bf16 teacher: runs without autocast
    assert torch.isfinite(lb)
    torch.testing.assert_close(lb, la, rtol=2e-2, atol=2e-2)


def test_teacher_precision_applies_once_and_double_quantising_is_refused():
    torch.manual_seed(0)
    enc = create_encoder("vit_test", img_size=32, num_frames=8, patch_size=8).eval()
    assert apply_teacher_precision(enc, "fp8", "scaled_mm") == "scaled_mm"
    first = [m for m in enc.modules() if isinstance(m, Fp8Linear)]
    weights = [m.weight_fp8.clone() for m in first]
    assert len(first) == 4 * len(enc.blocks)
    # the same precision again (what a second device lookup does): nothing changes
    assert apply_teacher_precision(enc, "fp8", "scaled_mm") == "scaled_mm"
    again = [m for m in enc.modules() if isinstance(m, Fp8Linear)]
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert all(torch.equal(w, m.weight_fp8) for w, m in zip(weights, again, strict=True))
    with pytest.raises(ValueError, match="already prepared as 'fp8'"):
        apply_teacher_precision(enc, "bf16")
    # the low-level call refuses FP8 linears instead of quantising them a second time
    with pytest.raises(ValueError, match="already FP8"):
        quantize_blocks_fp8(enc, "scaled_mm")
