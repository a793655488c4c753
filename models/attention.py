"""Multi-head self-attention with 3D RoPE and a choice of kernel: PyTorch SDPA, FlexAttention
or xformers.

``Attention`` computes qkv (with bias), rotates q and k with the shared RoPE tables, and runs
``torch.nn.functional.scaled_dot_product_attention`` or ``flex_attention`` (layout
``[B, H, N, hd]``) or xformers ``memory_efficient_attention`` (layout ``[B, N, H, hd]``). Which one
runs is decided *once per forward* by the owning model through ``select_backend``, not per layer:

- ``"sdpa"``: always SDPA (PyTorch picks FlashAttention-2, cuDNN or memory-efficient).
- ``"flex"``: ``torch.nn.attention.flex_attention`` without a mask. Inside ``torch.compile`` it
  becomes one generated Triton kernel per shape (any head dim ≥ 16, any length); outside compile
  it runs PyTorch's unfused reference (materialises the scores: correct, slow; PyTorch warns),
  so it is meant for compiled runs. No backward on CPU (a PyTorch limit).
- ``"xformers"``: xformers or a clear ``RuntimeError`` saying why it cannot run.
- ``"auto"``: xformers when usable, else SDPA with one log line. xformers is unusable when it is
  not installed, when its compiled extension does not load (import fails, or the first call
  raises — the 0.0.35 wheel on a torch 2.11 build does that), or when it has no kernel for the
  device (CPU). Usability is probed with one tiny forward+backward call per (device, dtype,
  head dim) and cached, so real errors in real calls (OOM, bad shapes) are never swallowed.

Which SDPA kernel runs can be chosen per call site (``set_sdpa_kernel(module, name)``, stored on
each ``Attention``; not part of the model config or state dict): ``"cudnn"``, ``"flash"``,
``"efficient"`` or ``"math"``, with the kernels PyTorch ranks below it enabled as fallbacks (a
shape or device the named one cannot take still runs), through ``torch.nn.attention.sdpa_kernel``,
which ``torch.compile`` traces into the graph. None leaves the choice to PyTorch's process-wide flags.
Why per site: cuDNN's kernel is the fastest at long fixed lengths but builds an execution plan
for every new sequence length; FlashAttention-2 has no per-length cost and is the faster one at
short lengths (measured per site in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .rope import apply_rope

log = logging.getLogger(__name__)

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import flex_attention as _flex_attention
except ImportError:  # pragma: no cover - older torch
    _flex_attention = None

# kernel name → the SDPA backends enabled for it. PyTorch tries enabled backends in its own
# priority order (cuDNN, FlashAttention-2, memory-efficient, math on sm90 with torch 2.11), so
# each list enables the named kernel and only the fallbacks ranked after it; no ``set_priority``
# (fewer torch versions trace that inside a compiled graph).
_SDPA_ORDER: dict[str, list[SDPBackend]] = {
    "cudnn": [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ],
    "flash": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    "math": [SDPBackend.MATH],
}
SDPA_KERNELS = tuple(_SDPA_ORDER)

BACKENDS = ("sdpa", "xformers", "flex", "auto")
_PROBED: dict[tuple[str, torch.dtype, int], str | None] = {}  # key → None (usable) or reason
_FALLBACK_LOGGED = False


def _xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """xformers kernel on ``[B, N, H, hd]`` tensors (imported lazily: optional dependency)."""
    import xformers.ops as xops

    return xops.memory_efficient_attention(q, k, v)


@torch.compiler.disable
def _xformers_unusable(device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
    """Why xformers cannot run here, or None when it can (probed once per key)."""
    key = (str(device), dtype, head_dim)
    if key in _PROBED:
        return _PROBED[key]
    reason = None
    try:
        import xformers.ops  # noqa: F401
    except Exception as exc:  # ImportError, or an extension that fails to load
        reason = f"xformers is not importable ({type(exc).__name__}: {exc})"
    if reason is None and device.type != "cuda":
        reason = f"xformers has no kernel for device {device.type!r}"
    if reason is None:
        try:  # the compiled extension may import fine and fail on first use
            q = torch.zeros(1, 8, 1, head_dim, device=device, dtype=dtype, requires_grad=True)
            with torch.enable_grad():
                _xformers_attention(q, q, q).sum().backward()
        except Exception as exc:
            reason = f"xformers failed its first call ({type(exc).__name__}: {exc})"
    _PROBED[key] = reason
    return reason


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` will run in: the autocast dtype when autocast is on."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def select_backend(requested: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """Resolve ``"sdpa" | "xformers" | "flex" | "auto"`` to the kernel that will run (``"sdpa"``,
    ``"flex"`` or ``"xformers"``) for inputs of ``dtype`` on ``device``.

    Raises:
        ValueError: unknown backend name.
        RuntimeError: ``"xformers"`` requested explicitly but unusable here, or ``"flex"`` on a
            torch without FlexAttention.
    """
    global _FALLBACK_LOGGED
    if requested == "sdpa":
        return "sdpa"
    if requested == "flex":
        if _flex_attention is None:
            raise RuntimeError("attn_backend='flex' needs torch >= 2.5 (FlexAttention)")
        return "flex"
    if requested not in BACKENDS:
        raise ValueError(f"attn_backend must be one of {BACKENDS}, got {requested!r}")
    if torch.is_autocast_enabled(device.type):
        dtype = torch.get_autocast_dtype(device.type)
    reason = _xformers_unusable(device, dtype, head_dim)
    if reason is None:
        return "xformers"
    if requested == "xformers":
        raise RuntimeError(
            f"attn_backend='xformers' cannot run: {reason}. "
            "Use attn_backend='sdpa', or 'auto' to fall back automatically."
        )
    if not _FALLBACK_LOGGED:
        _FALLBACK_LOGGED = True
        log.warning("attn_backend='auto': using PyTorch SDPA because %s", reason)
    return "sdpa"


def check_sdpa_kernel(kernel: str | None) -> None:
    """Raise ``ValueError`` unless ``kernel`` is None or one of ``SDPA_KERNELS``."""
    if kernel is not None and kernel not in _SDPA_ORDER:
        raise ValueError(f"SDPA kernel must be one of {SDPA_KERNELS} or None, got {kernel!r}")


def set_sdpa_kernel(module: nn.Module, kernel: str | None) -> None:
    """Make every ``Attention`` inside ``module`` run SDPA with ``kernel`` first (None: PyTorch's
    process-wide choice). Applies to the ``"sdpa"`` backend only."""
    check_sdpa_kernel(kernel)
    for sub in module.modules():
        if isinstance(sub, Attention):
            sub.sdpa_kernel = kernel


class Attention(nn.Module):
    """Multi-head self-attention: qkv (bias) → RoPE(q, k) → SDPA | flex | xformers → projection.

    Args:
        dim: token width D.
        num_heads: number of heads H (D must be divisible by H).
        qkv_bias: bias on the qkv projection (True in V-JEPA).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.sdpa_kernel: str | None = None  # see set_sdpa_kernel

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        backend: str = "sdpa",
    ) -> torch.Tensor:
        """Attend over all tokens of each sample.

        Args:
            x: ``[B, N, D]`` tokens.
            rope: ``(cos, sin)``, each ``[B or 1, N, hd]``, or None (no rotation).
            backend: the resolved kernel, ``"sdpa"``, ``"flex"`` or ``"xformers"`` (see
                ``select_backend``).

        Returns:
            ``[B, N, D]``.
        """
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim)  # [B, N, 3, H, hd]
        if backend == "xformers":
            q, k, v = qkv.unbind(2)  # [B, N, H, hd] each
            if rope is not None:
                cos, sin = rope[0].unsqueeze(2), rope[1].unsqueeze(2)  # [B, N, 1, hd]
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            out = _xformers_attention(q, k, v)  # [B, N, H, hd]
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, hd] each
            if rope is not None:
                cos, sin = rope[0].unsqueeze(1), rope[1].unsqueeze(1)  # [B, 1, N, hd]
                q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if backend == "flex":
                out = _flex_attention(q, k, v).transpose(1, 2)  # [B, N, H, hd]
            elif self.sdpa_kernel is None:
                out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)  # [B, N, H, hd]
            else:
                with sdpa_kernel(_SDPA_ORDER[self.sdpa_kernel]):
                    out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, hd]
                out = out.transpose(1, 2)  # [B, N, H, hd]
        return self.proj(out.reshape(B, N, D))
