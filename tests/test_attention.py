"""Attention: SDPA path against a naive float64 softmax reference, the xformers layout path,
and backend selection (auto falls back to SDPA with one log line; explicit xformers errors)."""

import logging

import pytest
import torch
from gpu import requires_cuda

import salt.models.attention as attention
from salt.models import Attention, create_encoder, select_backend
from salt.models.rope import apply_rope, rope_cos_sin, token_coords


def naive_attention(module: Attention, x: torch.Tensor, rope=None) -> torch.Tensor:
    """Multi-head softmax attention written out with explicit per-head matmuls."""
    B, N, D = x.shape
    H, hd = module.num_heads, module.head_dim
    qkv = x @ module.qkv.weight.T + module.qkv.bias  # [B, N, 3D]
    q, k, v = qkv[..., :D], qkv[..., D : 2 * D], qkv[..., 2 * D :]
    heads = []
    for h in range(H):
        sl = slice(h * hd, (h + 1) * hd)
        qh, kh, vh = q[..., sl], k[..., sl], v[..., sl]  # [B, N, hd]
        if rope is not None:
            qh, kh = apply_rope(qh, *rope), apply_rope(kh, *rope)
        weights = torch.softmax(qh @ kh.transpose(1, 2) / hd**0.5, dim=-1)  # [B, N, N]
        heads.append(weights @ vh)
    return torch.cat(heads, dim=-1) @ module.proj.weight.T + module.proj.bias


@pytest.fixture
def fresh_backend_state(monkeypatch):
    monkeypatch.setattr(attention, "_PROBED", {})
    monkeypatch.setattr(attention, "_FALLBACK_LOGGED", False)


def _module_and_input(seed=0):
    torch.manual_seed(seed)
    module = Attention(32, 4).double()
    for p in module.parameters():  # init is small; larger weights make the softmax non-trivial
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 10, 32, dtype=torch.float64)
    idx = torch.randint(0, 4 * 3 * 5, (2, 10))
    cos, sin = rope_cos_sin(token_coords(idx, (4, 3, 5)), 8)
    return module, x, (cos.double(), sin.double())


@pytest.mark.parametrize("use_rope", [False, True])
def test_sdpa_matches_naive_reference(use_rope):
    module, x, rope = _module_and_input()
    rope = rope if use_rope else None
    got = module(x, rope, backend="sdpa")
    want = naive_attention(module, x, rope)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_xformers_layout_path(monkeypatch):
    """The xformers branch hands [B, N, H, hd] tensors to the kernel and reads [B, N, H, hd]
    back. The kernel is replaced by a reference in that layout (xformers has no CPU kernel);
    the glue around it must give the same result as the SDPA branch."""

    def mea_reference(q, k, v):  # [B, N, H, hd] in and out, scale 1/sqrt(hd)
        w = torch.einsum("bnhd,bmhd->bhnm", q, k) / q.shape[-1] ** 0.5
        return torch.einsum("bhnm,bmhd->bnhd", w.softmax(-1), v)

    monkeypatch.setattr(attention, "_xformers_attention", mea_reference)
    module, x, rope = _module_and_input(seed=1)
    torch.testing.assert_close(
        module(x, rope, backend="xformers"), module(x, rope, backend="sdpa"), rtol=1e-10, atol=1e-10
    )


def test_auto_on_cpu_falls_back_with_one_log_line(fresh_backend_state, caplog):
    model = create_encoder("vit_test", attn_backend="auto")
    x = torch.randn(1, 3, 2, 32, 32)
    with caplog.at_level(logging.WARNING, logger="salt.models.attention"):
        model(x)
        model(x)
    assert model.attn_backend_used == "sdpa"
    lines = [r for r in caplog.records if r.name == "salt.models.attention"]
    assert len(lines) == 1
    assert "SDPA" in lines[0].getMessage()


def test_sdpa_default_records_backend():
    model = create_encoder("vit_test")
    assert model.attn_backend_used == "none"
    model(torch.randn(1, 3, 2, 32, 32))
    assert model.attn_backend_used == "sdpa"


def test_explicit_xformers_unusable_is_a_clear_error(fresh_backend_state):
    try:
        import xformers.ops  # noqa: F401

        reason = "no kernel for device 'cpu'"
    except Exception:
        reason = "not importable"
    model = create_encoder("vit_test", attn_backend="xformers")
    with pytest.raises(
        RuntimeError, match=f"attn_backend='xformers' cannot run: xformers .*{reason}"
    ):
        model(torch.randn(1, 3, 2, 32, 32))


def test_unknown_backend_rejected():
    with pytest.raises(ValueError, match="attn_backend"):
        create_encoder("vit_test", attn_backend="flash")
    with pytest.raises(ValueError, match="attn_backend"):
        select_backend("flash", torch.device("cpu"), torch.float32, 16)


@requires_cuda
def test_auto_on_cuda_matches_sdpa(fresh_backend_state):
    torch.manual_seed(0)
    model = create_encoder("vit_test", attn_backend="auto").cuda()
    x = torch.randn(2, 3, 4, 32, 48, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
        assert model.attn_backend_used in ("sdpa", "xformers")
        model.attn_backend = "sdpa"
        ref = model(x)
    torch.testing.assert_close(out.float(), ref.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("use_rope", [False, True])
def test_flex_matches_naive_reference(use_rope):
    """FlexAttention (PyTorch's reference path on the CPU; forward only: it has no CPU backward)
    gives the same attention as the explicit softmax in fp32."""
    module, x, rope = _module_and_input(seed=2)
    module, x = module.float(), x.float()
    rope = (rope[0].float(), rope[1].float()) if use_rope else None
    with torch.no_grad():
        got = module(x, rope, backend="flex")
        want = naive_attention(module, x, rope)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_flex_backend_in_encoder_and_predictor_matches_sdpa():
    from salt.models import create_predictor

    torch.manual_seed(0)
    enc = create_encoder("vit_test", attn_backend="sdpa")
    pred = create_predictor(enc.embed_dim, 32, size="predictor_test")
    x = torch.randn(2, 3, 4, 32, 32)
    ctx = torch.tensor([[0, 2, 5], [1, 3, 7]])
    tgt = torch.tensor([[1, 4], [0, 6]])
    grid = enc.grid(x)
    with torch.no_grad():
        ref_z = enc(x, ctx)
        ref_p = pred(ref_z, ctx, tgt, grid)
        enc.attn_backend = pred.attn_backend = "flex"
        z = enc(x, ctx)
        p = pred(z, ctx, tgt, grid)
    assert enc.attn_backend_used == pred.attn_backend_used == "flex"
    torch.testing.assert_close(z, ref_z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(p, ref_p, rtol=1e-5, atol=1e-5)
    assert select_backend("flex", torch.device("cpu"), torch.float32, 16) == "flex"


@requires_cuda
def test_flex_on_cuda_matches_sdpa_with_gradients():
    torch.manual_seed(0)
    module = Attention(64, 4).cuda()
    x = torch.randn(2, 40, 64, device="cuda", requires_grad=True)
    grads = []
    for backend in ("sdpa", "flex"):
        x.grad = None
        out = module(x, None, backend=backend)
        out.square().sum().backward()
        grads.append((out.detach(), x.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


class _OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the aten ops that run (which SDPA kernel PyTorch picked)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _sdpa_ops(attn: Attention, x: torch.Tensor) -> list[str]:
    """The fused SDPA kernels and softmaxes (the math path's trace) one forward runs."""
    with _OpRecorder() as rec:
        attn(x)
    return [op for op in rec.ops if "scaled_dot_product" in op or "softmax" in op]


def test_sdpa_kernel_per_call_site_picks_the_kernel_and_keeps_outputs():
    """Each Attention runs the kernel set on it (math vs the CPU flash kernel here), the
    process-wide flags are untouched afterwards, and outputs agree."""
    from salt.models import set_sdpa_kernel

    torch.manual_seed(0)
    attn = Attention(64, 4).eval()
    x = torch.randn(2, 40, 64)
    flags = torch.nn.attention._cur_sdpa_kernel_backends(with_priority=True)
    with torch.no_grad():
        default_out = attn(x)
        default_ops = _sdpa_ops(attn, x)
        set_sdpa_kernel(attn, "math")
        math_ops = _sdpa_ops(attn, x)
        math_out = attn(x)
        set_sdpa_kernel(attn, "flash")
        flash_ops = _sdpa_ops(attn, x)
    assert any("flash" in op for op in default_ops), default_ops  # PyTorch's CPU choice
    assert not any("softmax" in op for op in default_ops), default_ops
    assert any("softmax" in op for op in math_ops), math_ops  # the unfused math path
    assert not any("flash" in op for op in math_ops), math_ops
    assert any("flash" in op for op in flash_ops), flash_ops
    torch.testing.assert_close(math_out, default_out, atol=1e-5, rtol=1e-5)
    assert torch.nn.attention._cur_sdpa_kernel_backends(with_priority=True) == flags
    with pytest.raises(ValueError, match="SDPA kernel must be one of"):
        set_sdpa_kernel(attn, "fa3")


def test_sdpa_kernel_choice_compiles_without_graph_break():
    """torch.compile traces the per-site kernel context into one graph (fullgraph), with
    gradients; the compiled block matches eager."""
    from salt.models import set_sdpa_kernel
    from salt.models.block import Block

    torch.manual_seed(0)
    block = Block(64, 4, 128)
    set_sdpa_kernel(block, "cudnn")  # on the CPU: falls back to the next kernel in its order
    x = torch.randn(2, 24, 64, requires_grad=True)
    ref = block(x)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_student_sdpa_kernels_option(tmp_path):
    """``sdpa_kernels`` sets each call site's kernel (defaults: teacher cuDNN, student and
    predictor FlashAttention-2), also for the EMA teacher; unknown sites or kernels are a
    ``UsageError`` naming them."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_setup import make_teacher_file

    from salt.errors import UsageError
    from salt.student import StudentModule

    teacher = make_teacher_file(tmp_path / "t.safetensors", "vit_test", 32, 8, patch_size=8)
    kw = {"encoder": "vit_test", "encoder_kwargs": {"patch_size": 8}, "img_size": 32,
          "num_frames": 8, "predictor_dim": 48, "predictor_depth": 1, "predictor_heads": 4,
          "predictor_mlp_hidden": 96}  # fmt: skip

    def kernels(m):
        return {a.sdpa_kernel for a in m.modules() if isinstance(a, Attention)}

    m = StudentModule(
        teacher=str(teacher), sdpa_kernels={"predictor": "cudnn", "encoder": None}, **kw
    )
    assert kernels(m.teacher.encoder) == {"cudnn"}
    assert kernels(m.predictor) == {"cudnn"} and kernels(m.encoder) == {None}
    from salt.ema import EMAModule  # the V-JEPA baseline: the same call sites and defaults

    ema = EMAModule(**kw)
    assert kernels(ema.target_encoder) == {"cudnn"} and kernels(ema.encoder) == {"flash"}
    assert kernels(ema.predictor) == {"flash"}
    with pytest.raises(UsageError, match="unknown call site 'decoder'"):
        StudentModule(teacher=str(teacher), sdpa_kernels={"decoder": "flash"}, **kw)
    with pytest.raises(UsageError, match="sdpa_kernels.teacher: SDPA kernel must be one of"):
        StudentModule(teacher=str(teacher), sdpa_kernels={"teacher": "fa3"}, **kw)
