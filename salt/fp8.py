"""Precision of the frozen stage-2 teacher: fp32 weights, bf16 weights, or FP8 matmuls.

The teacher only runs forward, without gradients, once per clip on all tokens: about half of a
ViT-L student step's FLOPs are its matmuls. ``teacher_precision`` picks how it runs:

- ``"fp32"`` (default): the teacher keeps fp32 weights; under ``bf16-mixed`` autocast computes in
  bf16 and casts every weight again at every step.
- ``"bf16"``: weights cast to bf16 once (half the memory, no per-step casts); the clip is cast to
  bf16 before the teacher sees it. Same arithmetic as ``"fp32"`` under bf16 autocast.
- ``"fp8"``: ``"bf16"``, and every ``nn.Linear`` inside the transformer blocks (qkv, proj, fc1,
  fc2) runs as an FP8 (e4m3) matmul with row-wise scales: each weight row is quantised once (one
  scale per output channel), each activation row per call (one scale per token), the tensor cores
  accumulate in fp32 and the product is rescaled to bf16. Attention, LayerNorms and the tubelet
  embedding stay bf16. Needs FP8 tensor cores (compute capability ≥ 8.9: L4/L40S, H100/H200,
  B200); refused with a ``UsageError`` anywhere else, CPU included.

FP8 goes through torchao's float8 inference path (``Float8DynamicActivationFloat8WeightConfig``
with ``PerRow`` granularity) when torchao is installed (``pip install salt-video[fp8]``); without
it, ``Fp8Linear`` below does the same with ``torch._scaled_mm`` (a PyTorch op marked private, so
the library path is preferred where it exists). Whether targets stay close enough is measured by
``benchmarks/fp8_gate.py`` (per-token cosine of the layer-normed targets and the student's loss
against a bf16 teacher).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from salt.errors import UsageError

log = logging.getLogger(__name__)

TEACHER_PRECISIONS = ("fp32", "bf16", "fp8")
FP8_BACKENDS = ("auto", "torchao", "scaled_mm")
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
_MIN_SCALE = 1e-12


def fp8_unavailable_reason(device: torch.device) -> str | None:
    """Why FP8 matmuls cannot run on ``device``; None when they can."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"this run's device is {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        name = torch.cuda.get_device_name(device)
        return f"{name} has compute capability {major}.{minor}"
    return None


def check_teacher_precision(precision: str, device: torch.device | None = None) -> None:
    """Raise ``UsageError`` for an unknown precision, or for ``"fp8"`` on a device without FP8."""
    if precision not in TEACHER_PRECISIONS:
        raise UsageError(
            f"teacher_precision must be one of {TEACHER_PRECISIONS}, got {precision!r}"
        )
    if precision == "fp8" and device is not None:
        reason = fp8_unavailable_reason(device)
        if reason is not None:
            raise UsageError(
                f"teacher_precision='fp8' needs a GPU with FP8 tensor cores (compute capability "
                f"≥ 8.9: L4/L40S, H100/H200, B200), but {reason}; use teacher_precision='bf16'"
            )


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [M, K]`` → (e4m3 ``[M, K]``, fp32 scales ``[M, 1]``) with ``x ≈ q · scale`` per row."""
    xf = x.float()
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=_MIN_SCALE) / FP8_MAX  # [M, 1]
    return (xf / scale).to(FP8_DTYPE), scale


class Fp8Linear(nn.Module):
    """Inference-only ``nn.Linear`` as one FP8 ``torch._scaled_mm`` with row-wise scales.

    Weights are quantised once (a scale per output channel, kept as buffers: nothing to train);
    activations per token at each call. Output bf16.

    Args:
        weight: ``[N, K]`` weight of the linear layer being replaced (K, N multiples of 16).
        bias: ``[N]`` bias or None.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        n, k = weight.shape
        if n % 16 or k % 16:
            raise ValueError(f"FP8 matmuls need in/out features divisible by 16, got {k} → {n}")
        self.in_features, self.out_features = k, n
        w8, scale = _quantize_rows(weight.detach())  # [N, K], [N, 1]
        self.register_buffer("weight_fp8", w8.contiguous())
        self.register_buffer("weight_scale", scale.reshape(1, n).contiguous())  # [1, N]
        b = None if bias is None else bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", b)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        return cls(linear.weight, linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x8, scale = _quantize_rows(x.reshape(-1, self.in_features))  # [M, K], [M, 1]
        out = torch._scaled_mm(  # row-major [M, K] @ column-major [K, N]
            x8,
            self.weight_fp8.t(),
            scale_a=scale,
            scale_b=self.weight_scale,
            out_dtype=torch.bfloat16,
        )  # [M, N]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8=e4m3 rowwise"


def _block_linears(encoder: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute name, Linear) of every Linear inside ``encoder.blocks``."""
    out = []
    for block in encoder.blocks:
        for parent in block.modules():
            for name, child in parent.named_children():
                if isinstance(child, nn.Linear):
                    out.append((parent, name, child))
    return out


def resolve_fp8_backend(backend: str = "auto") -> str:
    """``"auto"`` → ``"torchao"`` when torchao is installed, else ``"scaled_mm"``."""
    if backend not in FP8_BACKENDS:
        raise UsageError(f"fp8 backend must be one of {FP8_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "torchao" if importlib.util.find_spec("torchao") is not None else "scaled_mm"
    return backend


def _already_fp8(encoder: nn.Module) -> bool:
    """Whether any block Linear of ``encoder`` is already an FP8 matmul (either backend)."""
    for block in encoder.blocks:
        for sub in block.modules():
            if isinstance(sub, Fp8Linear):
                return True
            w = getattr(sub, "weight", None)
            if isinstance(sub, nn.Linear) and type(w) not in (torch.Tensor, nn.Parameter):
                return True  # a tensor subclass weight: torchao's Float8Tensor
    return False


def quantize_blocks_fp8(encoder: nn.Module, backend: str = "auto") -> str:
    """Make every block Linear of a bf16 ``encoder`` an FP8 matmul, in place; returns the backend
    used (``"torchao"`` or ``"scaled_mm"``). Call on the device the teacher runs on, once:
    an encoder whose block Linears are already FP8 raises ``ValueError`` (quantising FP8 weights
    again would not be FP8 of the original weights; torchao fails on it deep inside)."""
    backend = resolve_fp8_backend(backend)
    if _already_fp8(encoder):
        raise ValueError(
            "quantize_blocks_fp8: the encoder's block linears are already FP8; quantise a teacher "
            "once (prepare_teacher / apply_teacher_precision do that, and are idempotent)"
        )
    if backend == "torchao":
        from torchao.quantization import (
            Float8DynamicActivationFloat8WeightConfig,
            PerRow,
            quantize_,
        )

        # set_inductor_config=False: do not change process-wide Inductor settings behind the
        # student's back (torchao would switch on coordinate-descent tuning: longer compiles).
        config = Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=False
        )
        quantize_(
            encoder,
            config,
            filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn.startswith("blocks."),
        )
        return backend
    for parent, name, linear in _block_linears(encoder):
        setattr(parent, name, Fp8Linear.from_linear(linear))
    return backend


_PREPARED_ATTR = "_salt_teacher_precision"  # (precision, fp8 backend) set on a prepared encoder


def apply_teacher_precision(
    encoder: nn.Module, precision: str, fp8_backend: str = "auto"
) -> str | None:
    """Put ``encoder`` into ``precision`` in place, once; no device check (``prepare_teacher``).

    A second call with the same precision does nothing and returns the same backend (the teacher
    may be looked up on a device written as ``cuda`` and then as ``cuda:0``); a different
    precision raises ``ValueError``. Returns the FP8 backend for ``"fp8"``, else None.
    """
    done = getattr(encoder, _PREPARED_ATTR, None)
    if done is not None:
        if done[0] != precision:
            raise ValueError(
                f"teacher already prepared as {done[0]!r}; cannot make it {precision!r}"
            )
        return done[1]
    backend = None
    if precision != "fp32":
        encoder.to(torch.bfloat16)
    if precision == "fp8":
        backend = quantize_blocks_fp8(encoder, fp8_backend)
        log.info("frozen teacher: block linears in FP8 (%s)", backend)
    setattr(encoder, _PREPARED_ATTR, (precision, backend))
    return backend


def prepare_teacher(
    encoder: nn.Module, precision: str, device: torch.device, fp8_backend: str = "auto"
) -> str | None:
    """Put a frozen teacher ``encoder`` (already on ``device``) into ``precision``, in place
    (idempotent, see ``apply_teacher_precision``).

    Returns the FP8 backend used for ``"fp8"``, else None. Raises ``UsageError`` for ``"fp8"``
    on a device without FP8 tensor cores.
    """
    check_teacher_precision(precision, device)
    return apply_teacher_precision(encoder, precision, fp8_backend)


def teacher_input(video: torch.Tensor, precision: str) -> torch.Tensor:
    """The clip as the teacher of ``precision`` takes it (bf16 for bf16/FP8 weights)."""
    return video if precision == "fp32" else video.to(torch.bfloat16)
