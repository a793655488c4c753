"""The training step does not synchronise the host with the device.

``SaltModule.normalize`` used to build mean/std from Python lists at every step, a blocking
host→device copy; the module now keeps one device copy per device. On CPU: the values equal
``salt.data.transforms.normalize`` and repeated steps reuse the same tensors. On CUDA: a full
optimisation step runs under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from gpu import requires_cuda
from train_helpers import module_kwargs

from salt.data.transforms import normalize
from salt.student import StudentModule
from salt.teacher import TeacherModule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_setup  # noqa: E402


def test_normalize_reuses_device_stats():
    module = TeacherModule(**module_kwargs("teacher"))
    video = torch.randint(0, 256, (2, 3, 8, 32, 32), dtype=torch.uint8)
    out = module.normalize(video)
    torch.testing.assert_close(out, normalize(video, module.mean, module.std))
    stats = module._norm_stats[video.device]
    module.normalize(video)
    assert module._norm_stats[video.device] is stats  # made once, not per step
    assert len(module._norm_stats) == 1


def _step_without_sync(stage: str, tmp_path: Path) -> None:
    device = torch.device("cuda")
    kwargs = module_kwargs(stage)
    if stage == "student":
        kwargs["teacher"] = str(
            bench_setup.make_teacher_file(
                tmp_path / "t.safetensors", "vit_test", 32, 8, patch_size=8
            )
        )
        module = StudentModule(**kwargs).to(device)
        module.teacher_on(device)
    else:
        module = TeacherModule(**kwargs).to(device)
    module.mask_collator = module.build_mask_collator()
    batches, _ = bench_setup.synthetic_batches(module, device, 2, 1, 2)
    step = bench_setup.make_train_step(module, batches, device, amp=True, total_steps=10)
    step(0)  # lazy initialisation (cuBLAS handles, allocator) is not the step's
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@requires_cuda
def test_teacher_step_has_no_host_sync(tmp_path):
    _step_without_sync("teacher", tmp_path)


@requires_cuda
def test_student_step_has_no_host_sync(tmp_path):
    _step_without_sync("student", tmp_path)
