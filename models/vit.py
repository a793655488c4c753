"""VideoViT: the video Vision Transformer encoder used as SALT teacher and student.

Tubelet patch embedding (Conv3d weights, tubelet 2 × 16 × 16 by default, run as one matmul) →
tokens ``[B, N, D]`` in T×H×W order (``index = t·H'W' + h·W' + w``) → pre-norm blocks with 3D
RoPE (or a fixed sin-cos table added once) → final LayerNorm. No CLS token.

Options that let other projects' weights run unchanged (``salt import``), all off by default:
``rope_pairing="tiled"`` (V-JEPA 2's RoPE tables, ``models.rope``), ``pos_embed="sincos_1d"``
(VideoMAE's 1-D table over the flattened index, ``models.pos_embed``), ``norm_eps`` (every
LayerNorm; VideoMAE's ``transformers`` configs use 1e-12) and ``final_norm=False`` (VideoMAE
with mean pooling has no final LayerNorm: its tokens are the last block's raw output). A q/v
bias without a k bias needs no option: it is the qkv bias with the k third zero. That is exact,
not approximate: the k bias adds ``q·b_k`` to every logit of a query's row, which softmax
removes, so its gradient is zero too and it stays zero (this holds without RoPE, and VideoMAE
has none).

Feature API (timm's names and meanings): ``forward_features`` (final-normed tokens) and
``forward_intermediates(x, indices, norm, output_fmt, intermediates_only, ...)``.
``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` come from ``models.hub``
(``huggingface_hub``, imported only when called).

Context-only encoding: ``forward_features(x, token_indices)`` embeds every tubelet (one matmul
over the clip, cheap next to the blocks), then keeps ``token_indices [B, n]`` with one batched
``torch.gather``. Positions come from the indices, so each kept token keeps its true (t, h, w).
The forward has no host syncs (no ``.item()``, no data-dependent shapes, no sorting); index
*values* are not validated for that reason — out-of-range indices fail inside ``gather``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .attention import BACKENDS, compute_dtype, select_backend
from .block import NORM_EPS, Block, init_vjepa_, run_block
from .hub import HubMixin
from .pos_embed import sincos_embed_1d, sincos_embed_3d
from .rope import ROPE_PAIRINGS, rope_cos_sin, token_coords
from .rope import rope_convention as rope_convention_of

POS_EMBEDS = ("rope", "sincos", "sincos_1d")
OUTPUT_FMTS = ("NCTHW", "NLC")
# Constructor arguments added after the first checkpoints were written: a config without them
# means these values, which is what VideoViT computed before they existed.
ADDED_DEFAULTS: dict[str, Any] = {"rope_pairing": "interleaved", "norm_eps": NORM_EPS,
                                  "final_norm": True}  # fmt: skip
# Arguments that change how the encoder runs, never what its weights mean.
RUNTIME_KEYS = ("attn_backend", "act_checkpoint")


def embed_tubelets(x: torch.Tensor, conv: nn.Conv3d) -> torch.Tensor:
    """``conv(x).flatten(2).transpose(1, 2)`` for a Conv3d whose stride equals its kernel, computed
    as one matmul: ``x [B, C, T, H, W]`` → ``[B, N, D]`` in T×H×W order, same weights.

    Why: for this conv in bf16, cuDNN picked a non-tensor-core kernel (``implicit_convolveNd_sgemm``,
    4.5 ms per ViT-L batch of 24 clips on an H100, ~18 ms per student step with backward) where
    the equivalent matmul is 118 GFLOP (≈ 0.2 ms). Under autocast the clip is cast first, so the
    unfold copy moves half the bytes.
    """
    B, C, T, H, W = x.shape
    t, p, q = conv.kernel_size
    if torch.is_autocast_enabled(x.device.type):
        x = x.to(torch.get_autocast_dtype(x.device.type))
    patches = x.reshape(B, C, T // t, t, H // p, p, W // q, q)
    patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7)  # [B, T', H', W', C, t, p, q]
    patches = patches.reshape(B, (T // t) * (H // p) * (W // q), C * t * p * q)  # [B, N, C·t·p·q]
    weight = conv.weight.reshape(conv.out_channels, -1)  # [D, C·t·p·q], Conv3d's own layout
    return nn.functional.linear(patches, weight, conv.bias)  # [B, N, D]


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``x [B, N, D]``, ``indices [B, n]`` int64 → ``[B, n, D]`` (one batched gather)."""
    if indices.dtype != torch.int64 or indices.dim() != 2 or indices.shape[0] != x.shape[0]:
        raise ValueError(
            f"token indices must be int64 [B={x.shape[0]}, n], got {indices.dtype} "
            f"{tuple(indices.shape)}"
        )
    return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class VideoViT(nn.Module, HubMixin):
    """Video ViT encoder (3D tubelet patches, pre-norm blocks, 3D RoPE by default).

    Args:
        img_size: nominal frame size (int or ``(H, W)``); inputs may be any size divisible by
            ``patch_size``. Kept for the config and for consumers that need a default grid.
        num_frames: nominal frame count; inputs may have any count divisible by ``tubelet_size``.
        patch_size: spatial patch size (16).
        tubelet_size: frames per tubelet (2).
        in_chans: input channels (3).
        embed_dim: token width D.
        depth: number of blocks.
        num_heads: attention heads (head dim = D / heads).
        mlp_hidden_dim: MLP hidden width.
        pos_embed: ``"rope"`` (3D RoPE in every block), ``"sincos"`` (fixed 3D table added once)
            or ``"sincos_1d"`` (VideoMAE's fixed table over the flattened index of the nominal
            ``num_frames × img_size`` grid; clips must have that grid or fewer frames).
        attn_backend: ``"sdpa"``, ``"flex"``, ``"xformers"`` or ``"auto"`` (see ``models.attention``).
        act_checkpoint: recompute block activations in backward to save memory.
        rope_pairing: ``"interleaved"`` (salt) or ``"tiled"`` (V-JEPA 2 weights); see
            ``models.rope``.
        norm_eps: eps of every LayerNorm (1e-6).
        final_norm: end with a LayerNorm (True); False returns the last block's raw output.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        num_frames: int = 16,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_hidden_dim: int = 4096,
        pos_embed: str = "rope",
        attn_backend: str = "sdpa",
        act_checkpoint: bool = False,
        rope_pairing: str = "interleaved",
        norm_eps: float = NORM_EPS,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        if pos_embed not in POS_EMBEDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBEDS}, got {pos_embed!r}")
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend must be one of {BACKENDS}, got {attn_backend!r}")
        if rope_pairing not in ROPE_PAIRINGS:
            raise ValueError(f"rope_pairing must be one of {ROPE_PAIRINGS}, got {rope_pairing!r}")
        img_size = [img_size, img_size] if isinstance(img_size, int) else list(img_size)
        self.config = {
            "img_size": img_size,
            "num_frames": num_frames,
            "patch_size": patch_size,
            "tubelet_size": tubelet_size,
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_hidden_dim": mlp_hidden_dim,
            "pos_embed": pos_embed,
            "attn_backend": attn_backend,
            "act_checkpoint": act_checkpoint,
            "rope_pairing": rope_pairing,
            "norm_eps": float(norm_eps),
            "final_norm": bool(final_norm),
        }
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        self.pos_embed = pos_embed
        self.attn_backend = attn_backend
        self.act_checkpoint = act_checkpoint
        self.rope_pairing = rope_pairing
        self.attn_backend_used = "none"  # set by every forward: "sdpa" or "xformers"

        self.patch_embed = nn.Conv3d(
            in_chans,
            embed_dim,
            kernel_size=(tubelet_size, patch_size, patch_size),
            stride=(tubelet_size, patch_size, patch_size),
        )
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden_dim) for _ in range(depth)
        )
        for block in self.blocks:  # Block builds its norms with NORM_EPS; set the option here
            block.norm1.eps = block.norm2.eps = float(norm_eps)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        init_vjepa_(self, self.blocks)
        t0, h0, w0 = (
            num_frames // tubelet_size,
            img_size[0] // patch_size,
            img_size[1] // patch_size,
        )
        self.nominal_grid = (t0, h0, w0)  # (T', H', W') of the nominal clip
        if pos_embed == "sincos_1d":
            self.grid((num_frames, *img_size))  # the nominal clip must divide into tubelets
            n = t0 * h0 * w0
            # A fixed function of the config, so not part of the state dict.
            self.register_buffer("pos_table", sincos_embed_1d(n, embed_dim), persistent=False)

    @classmethod
    def from_config(
        cls, config: Mapping[str, Any], rope_convention: str | None = None, **runtime: Any
    ) -> VideoViT:
        """Rebuild an (untrained) encoder from a saved ``.config``, strictly.

        Args:
            config: every constructor argument, as ``.config`` records it; arguments listed in
                ``ADDED_DEFAULTS`` may be absent (configs written before they existed).
            rope_convention: the RoPE convention the weights were trained with (checkpoint
                metadata); must be this pairing's name when ``pos_embed="rope"``.
            runtime: overrides of run-time-only options (``attn_backend``, ``act_checkpoint``).

        Raises:
            ValueError: unknown or missing arguments, a RoPE convention other than the
                config's pairing, or overrides of arguments that change what weights mean.
        """
        bad = set(runtime) - set(RUNTIME_KEYS)
        if bad:
            raise ValueError(
                f"only {RUNTIME_KEYS} may be overridden when loading, got {sorted(bad)}"
            )
        config = {**ADDED_DEFAULTS, **config}
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
        unknown, lacking = set(config) - accepted, accepted - set(config)
        if unknown or lacking:
            raise ValueError(
                f"unknown encoder architecture: encoder_config has unknown keys "
                f"{sorted(unknown)} and lacks {sorted(lacking)} (this salt's VideoViT takes "
                f"{sorted(accepted)})"
            )
        if config["pos_embed"] == "rope" and rope_convention is not None:
            expected = rope_convention_of(config["rope_pairing"])
            if rope_convention != expected:
                raise ValueError(
                    f"RoPE convention mismatch: file says {rope_convention!r}, its config's "
                    f"rope_pairing={config['rope_pairing']!r} is {expected!r}; its weights "
                    "would see rotated positions wrongly"
                )
        return cls(**{**config, **runtime})

    @property
    def rope_convention(self) -> str:
        """The metadata name of this encoder's RoPE pairing (``models.rope.ROPE_CONVENTIONS``)."""
        return rope_convention_of(self.rope_pairing)

    def grid(self, x_or_shape: torch.Tensor | Sequence[int]) -> tuple[int, int, int]:
        """Token grid ``(T', H', W')`` of a clip ``[B, C, T, H, W]``, its shape, or ``(T, H, W)``."""
        shape = tuple(x_or_shape.shape if isinstance(x_or_shape, torch.Tensor) else x_or_shape)
        if len(shape) not in (3, 5):
            raise ValueError(f"expected [B, C, T, H, W] or (T, H, W), got shape {shape}")
        t, h, w = shape[-3:]
        if t % self.tubelet_size or h % self.patch_size or w % self.patch_size:
            raise ValueError(
                f"clip T×H×W = {t}×{h}×{w} is not divisible by tubelet {self.tubelet_size} "
                f"× patch {self.patch_size}×{self.patch_size}"
            )
        return t // self.tubelet_size, h // self.patch_size, w // self.patch_size

    def _prepare(
        self, x: torch.Tensor, token_indices: torch.Tensor | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, str]:
        """Embed, add/compute positions and keep the requested tokens.

        Returns tokens ``[B, n, D]``, RoPE ``(cos, sin)`` each ``[B or 1, n, hd]`` (or None),
        and the resolved attention backend.
        """
        if x.dim() != 5:
            raise ValueError(f"expected a clip [B, C, T, H, W], got shape {tuple(x.shape)}")
        grid = self.grid(x)
        tokens = embed_tubelets(x, self.patch_embed)  # [B, N, D], T×H×W order
        if self.pos_embed == "sincos":
            table = sincos_embed_3d(grid, self.embed_dim, device=x.device)  # [N, D]
            tokens = tokens + table.to(tokens.dtype)
        elif self.pos_embed == "sincos_1d":
            t0, h0, w0 = self.nominal_grid
            if grid[1:] != (h0, w0) or grid[0] > t0:
                raise ValueError(
                    f"pos_embed='sincos_1d' numbers tokens of the nominal {t0}×{h0}×{w0} grid "
                    f"(num_frames {self.config['num_frames']}, img_size {self.config['img_size']})"
                    f"; this clip's grid is {grid[0]}×{grid[1]}×{grid[2]}: use frames of that size "
                    "and at most that many frames"
                )
            n = grid[0] * grid[1] * grid[2]
            tokens = tokens + self.pos_table[:n].to(tokens.dtype)  # [B, N, D]: first N rows
        if token_indices is not None:
            tokens = gather_tokens(tokens, token_indices)  # [B, n, D]
        rope = None
        if self.pos_embed == "rope":
            if token_indices is None:
                n = grid[0] * grid[1] * grid[2]
                token_indices = torch.arange(n, device=x.device).unsqueeze(0)  # [1, N]
            coords = token_coords(token_indices, grid)  # [B|1, n, 3]
            cos, sin = rope_cos_sin(coords, self.head_dim, pairing=self.rope_pairing)  # float32
            dtype = compute_dtype(tokens)  # cast once here, not in every block
            rope = (cos.to(dtype), sin.to(dtype))
        backend = select_backend(self.attn_backend, x.device, tokens.dtype, self.head_dim)
        self.attn_backend_used = backend
        return tokens, rope, backend

    def forward_features(
        self, x: torch.Tensor, token_indices: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode a clip.

        Args:
            x: ``[B, C, T, H, W]`` float clip.
            token_indices: ``[B, n]`` int64 indices (T×H×W order) of the tokens to encode, e.g.
                the context of a mask; None encodes all N tokens.

        Returns:
            ``[B, n or N, D]`` final-normed tokens, in the order of ``token_indices``.
        """
        tokens, rope, backend = self._prepare(x, token_indices)
        for block in self.blocks:
            tokens = run_block(block, tokens, rope, backend, self.act_checkpoint)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor, token_indices: torch.Tensor | None = None) -> torch.Tensor:
        """Same as ``forward_features``."""
        return self.forward_features(x, token_indices)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCTHW",
        intermediates_only: bool = False,
        output_dict: bool = False,
        *,
        token_indices: torch.Tensor | None = None,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, Any]:
        """Block outputs, with timm's ``VisionTransformer.forward_intermediates`` signature and
        meaning (positional order included); video maps are ``NCTHW`` where timm's are ``NCHW``.

        Args:
            x: ``[B, C, T, H, W]`` clip.
            indices: None = every block; an int n = the last n blocks; a sequence = those
                blocks (0-based, negative from the end). Returned in block order, as timm does.
            return_prefix_tokens: accepted for timm compatibility; there are no prefix (CLS)
                tokens, so nothing changes (as in timm for a model without them).
            norm: apply the final norm to every intermediate.
            stop_early: stop after the last requested block (the final output is then that
                block's, normed, as in timm).
            output_fmt: ``"NCTHW"`` (``[B, D, T', H', W']`` maps, the default like timm's NCHW)
                or ``"NLC"`` (``[B, N, D]`` tokens in T×H×W order).
            intermediates_only: return only the list of intermediates.
            output_dict: return ``{"image_intermediates": [...], "image_features": final}``
                (timm's keys; no final without ``intermediates_only=False``).
            token_indices: salt's extension: encode only these ``[B, n]`` tokens (as in
                ``forward_features``); needs ``output_fmt="NLC"``.

        Returns:
            ``(final [B, N, D] normed, intermediates)``; or the list of intermediates with
            ``intermediates_only``; or a dict with ``output_dict``.
        """
        if not isinstance(return_prefix_tokens, bool):  # e.g. token indices passed positionally
            raise TypeError(
                "forward_intermediates(x, indices, return_prefix_tokens, norm, ...) follows timm; "
                "pass token subsets as token_indices=..."
            )
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(
                f"output_fmt must be one of {OUTPUT_FMTS} (video maps are NCTHW), got "
                f"{output_fmt!r}"
            )
        if token_indices is not None and output_fmt != "NLC":
            raise ValueError("token_indices give a token subset, not a map: use output_fmt='NLC'")
        take = self._take_indices(indices)
        tokens, rope, backend = self._prepare(x, token_indices)
        last = max(take) + 1 if (stop_early or intermediates_only) else len(self.blocks)
        intermediates = []
        for i, block in enumerate(self.blocks[:last]):
            tokens = run_block(block, tokens, rope, backend, self.act_checkpoint)
            if i in take:
                intermediates.append(self.norm(tokens) if norm else tokens)  # [B, n|N, D]
        if output_fmt == "NCTHW":
            t, h, w = self.grid(x)
            intermediates = [  # [B, N, D] -> [B, D, T', H', W']
                y.reshape(y.shape[0], t, h, w, y.shape[-1]).permute(0, 4, 1, 2, 3).contiguous()
                for y in intermediates
            ]
        if output_dict:
            out: dict[str, Any] = {"image_intermediates": intermediates}
            if not intermediates_only:
                out["image_features"] = self.norm(tokens)
            return out
        if intermediates_only:
            return intermediates
        return self.norm(tokens), intermediates

    def _take_indices(self, indices: int | Sequence[int] | None) -> list[int]:
        """timm's ``feature_take_indices``: absolute block indices, in block order."""
        depth = len(self.blocks)
        if indices is None:
            indices = depth
        if isinstance(indices, int):
            if not 0 < indices <= depth:
                raise ValueError(f"last-n indices={indices} is out of range (1 to {depth})")
            return list(range(depth - indices, depth))
        take = sorted({i + depth if i < 0 else i for i in indices})
        if not take or any(not 0 <= i < depth for i in take):
            raise ValueError(
                f"indices must be non-empty block indices in [-{depth}, {depth}), got {indices}"
            )
        return take
