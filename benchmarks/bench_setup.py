"""Build what a benchmark step needs, through the same constructors and functions `salt fit` uses.

- ``make_teacher_file``: a randomly initialised encoder exported exactly as ``salt export`` writes
  it (``.safetensors`` + ``salt`` metadata), so ``StudentModule`` loads its frozen teacher through
  the real, strict ``salt.encoder_io.load_encoder`` path.
- ``build_module``: ``StudentModule`` / ``TeacherModule`` from their constructors (the config
  schema), built directly on the device (``with torch.device(...)``: the same code, without
  initialising billions of parameters on the CPU first).
- ``prepare_like_fit``: what ``SaltModule.setup("fit")`` does without a Trainer attached (the mask
  collator, the process-wide SDPA flags, ``compile_modules`` on ``compiled_modules()``) — the
  same functions, called in the same order.
- ``make_train_step``: one step the way Lightning's automatic optimisation runs it with
  ``precision="bf16-mixed"``: zero_grad → autocast(bf16) ``training_loss`` → backward →
  ``salt.optim.prepare_optimizer_step`` (grad norm, clipping, non-finite skip; what
  ``on_before_optimizer_step`` calls) → ``optimizer.step()`` → lr/wd schedule step.
- ``synthetic_batches``: uint8 clips already on the device, masks from the module's own
  ``MultiMaskCollator`` (the DataModule attaches exactly these).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from salt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from salt.models import ROPE_CONVENTION, create_encoder
from salt.module_base import SaltModule, compile_modules
from salt.optim import prepare_optimizer_step
from salt.student import StudentModule
from salt.teacher import TeacherModule

# What the benchmark calls, by identity: tests/test_benchmarks.py asserts these are the objects
# `salt fit` runs (the LightningModules' own methods and salt.optim's optimizer-step function).
STEP_FUNCTIONS = {
    "student": StudentModule.training_loss,
    "teacher": TeacherModule.training_loss,
    "optimizer_step": prepare_optimizer_step,
}


def make_teacher_file(
    path: Path, encoder: str, img_size: int, num_frames: int, **encoder_kwargs: Any
) -> Path:
    """Write a random ``encoder`` as an exported ``.safetensors`` (what ``salt export`` writes)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)  # every rank that writes it writes the same weights
    with torch.device(device):  # trunc-normal init of 300M+ params is slow on the CPU
        enc = create_encoder(encoder, img_size=img_size, num_frames=num_frames, **encoder_kwargs)
    meta = {
        "stage": "teacher",
        "encoder_config": enc.config,
        "encoder_prefix": "encoder.",
        "rope_convention": ROPE_CONVENTION,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "step": 0,
        "train_loss": None,
        "teacher": None,
        "mlflow_run_id": None,
        "note": "random init, written by benchmarks/bench_setup.py",
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in enc.state_dict().items()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks may race: each renames its own file
    save_file(tensors, str(tmp), metadata={"salt": json.dumps(meta)})
    tmp.replace(path)
    return path


def build_module(
    stage: str,
    device: torch.device,
    encoder: str,
    teacher_file: Path | None = None,
    attn: str = "sdpa",
    act_checkpoint: bool = False,
    compile: bool = False,
    img_size: int = 224,
    num_frames: int = 16,
    **kwargs: Any,
) -> SaltModule:
    """``StudentModule`` or ``TeacherModule`` from its constructor, on ``device``, in train mode."""
    common = {
        "encoder": encoder,
        "encoder_kwargs": {"attn_backend": attn},
        "img_size": img_size,
        "num_frames": num_frames,
        "act_checkpoint": act_checkpoint,
        "compile": compile,
        "health_every": 0,
        **kwargs,
    }
    with torch.device(device):
        if stage == "student":
            module = StudentModule(teacher=str(teacher_file), **common)
        elif stage == "teacher":
            module = TeacherModule(**common)
        else:
            raise ValueError(f"stage must be 'student' or 'teacher', got {stage!r}")
    module = module.to(device).train()
    if stage == "student":
        module.teacher_on(device)  # what on_fit_start does
    return module


def teacher_file_for(spec: dict, workdir: Path) -> Path | None:
    """The random exported teacher a student variant loads (written once per size and clip)."""
    if spec.get("stage", "student") != "student":
        return None
    name, img, frames = spec["teacher_model"], spec.get("img_size", 224), spec.get("num_frames", 16)
    return make_teacher_file(
        workdir / f"teacher_{name}_{frames}x{img}.safetensors", name, img, frames
    )


def build_for(spec: dict, device: torch.device, workdir: Path, compile: bool = False, **kw: Any):
    """The variant's LightningModule, from its constructor (``bench_setup.build_module``)."""
    stage = spec.get("stage", "student")
    return build_module(
        stage,
        device,
        spec["model"],
        teacher_file=teacher_file_for(spec, workdir),
        attn=spec.get("attn", "sdpa"),
        act_checkpoint=spec.get("act_ckpt", False),
        compile=compile,
        img_size=spec.get("img_size", 224),
        num_frames=spec.get("num_frames", 16),
        **{**(spec.get("module_kwargs") or {}).get(stage, {}), **spec.get("overrides", {}), **kw},
    )


def prepare_like_fit(module: SaltModule) -> None:
    """``SaltModule.setup("fit")`` minus the Trainer: mask collator, SDPA flags (cuDNN off unless
    ``cudnn_attention``; the per-site kernels are on the modules already), then
    ``compile_modules`` (scope and mode as configured; eager with one warning where compiling
    cannot work)."""
    module.mask_collator = module.build_mask_collator()
    module.apply_sdpa_flags()  # cuDNN SDPA off process-wide, as while fitting
    if module.use_compile:
        module.compiled = compile_modules(
            module.compiled_modules(), module.device, module.compile_scope, module.compile_mode
        )


def synthetic_batches(
    module: SaltModule,
    device: torch.device,
    batch_size: int,
    n_videos: int,
    n_masks: int,
    seed: int = 0,
) -> tuple[list[dict], float]:
    """``n_masks`` batches (rotating over ``n_videos`` uint8 clips) on ``device``.

    Returns the batches and the mean host time of one ``MultiMaskCollator`` call in ms (the
    DataModule runs it in its workers; reported so the data side can be sized).
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    shape = (batch_size, 3, module.num_frames, module.img_size, module.img_size)
    videos = [
        torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).to(device)
        for _ in range(n_videos)
    ]
    collator = module.mask_collator or module.build_mask_collator()
    batches, t0 = [], time.perf_counter()
    masks = [collator(batch_size) for _ in range(n_masks)]
    collate_ms = (time.perf_counter() - t0) * 1e3 / n_masks
    for i, m in enumerate(masks):
        pairs = [(c.to(device), t.to(device)) for c, t in m]
        batches.append({"video": videos[i % n_videos], "masks": pairs})
    return batches, collate_ms


def autocast_for(device: torch.device, amp: bool):
    """bf16 autocast as Lightning's ``precision="bf16-mixed"`` plugin applies it (or nothing)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def sdpa_context(name: str | None):
    """Restrict PyTorch SDPA to one kernel (``flash``, ``efficient``, ``cudnn``, ``math``) for a
    diagnostic variant; None leaves PyTorch's own choice (what `salt fit` runs)."""
    if not name:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = {
        "flash": "FLASH_ATTENTION",
        "efficient": "EFFICIENT_ATTENTION",
        "cudnn": "CUDNN_ATTENTION",
        "math": "MATH",
    }
    return sdpa_kernel([getattr(SDPBackend, names[name])])


def make_train_step(
    module: SaltModule,
    batches: list[dict],
    device: torch.device,
    amp: bool = True,
    max_norm: float | None = None,
    total_steps: int = 100_000,
) -> Callable[[int], torch.Tensor]:
    """One optimisation step per call ``step(i)`` on ``batches[i % len]`` (returns the loss).

    Order and calls follow Lightning's automatic optimisation with this module's hooks:
    ``configure_optimizers`` → per step zero_grad, autocast ``training_loss``, backward,
    ``prepare_optimizer_step`` (``on_before_optimizer_step``), ``optimizer.step()``, scheduler.
    """
    cfg = module.configure_optimizers(total_steps=total_steps)
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]

    def step(i: int) -> torch.Tensor:
        batch = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        with autocast_for(device, amp):
            loss, _ = module.training_loss(batch)
        loss.backward()
        prepare_optimizer_step(opt, max_norm, ~torch.isfinite(loss.detach()))
        opt.step()
        sched.step()
        return loss.detach()

    step.optimizer = opt  # type: ignore[attr-defined]
    return step


def forward_backward(
    module: SaltModule, batch: dict, device: torch.device, amp: bool = True
) -> None:
    """Forward + backward of one batch without an optimizer step (what the FLOP counter sees)."""
    with autocast_for(device, amp):
        loss, _ = module.training_loss(batch)
    loss.backward()
    module.zero_grad(set_to_none=True)


def set_act_checkpoint(module: SaltModule, on: bool) -> list[tuple[Any, bool]]:
    """Switch activation checkpointing of every trainable stack; returns what to restore."""
    saved = []
    for sub in module.modules():
        if hasattr(sub, "act_checkpoint") and hasattr(sub, "blocks"):
            saved.append((sub, sub.act_checkpoint))
            sub.act_checkpoint = on
    return saved


def restore_act_checkpoint(saved: list[tuple[Any, bool]]) -> None:
    for sub, value in saved:
        sub.act_checkpoint = value
