"""The stacked grid is the per-head probes: same outputs, gradients, updates and pruning.

`StackedAttentive`/`StackedLinear` hold G heads as `[G, ...]` tensors (batched matmuls, one SDPA
call, LayerNorm affines folded into the next linear); `StackedAdamW` gives each head its own lr and
weight decay. Each check compares against G plain `AttentiveProbe` / `LinearProbe` modules with
the same weights trained by `torch.optim.AdamW` (decay on matrices only).
"""

import pytest
import torch

from salt.probes.grid import HeadSpec, ProbeGrid, make_grid, per_head_ce
from salt.probes.heads import AttentiveProbe, LinearProbe
from salt.probes.optim import StackedAdamW, lr_factor
from salt.probes.stacked import StackedAttentive, StackedLinear


def _probes(n: int, depth: int, seed: int = 0) -> list[AttentiveProbe]:
    torch.manual_seed(seed)
    probes = [AttentiveProbe(32, 5, depth=depth, num_heads=4) for _ in range(n)]
    for p in probes:  # non-trivial norms and biases, so the folded affines are exercised
        for t in p.parameters():
            if t.dim() == 1:
                t.data.normal_(0.5, 0.3)
    return probes


@pytest.mark.parametrize("depth", [1, 4])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_stacked_attentive_equals_per_head_modules(depth, checkpoint):
    torch.set_default_dtype(torch.float64)  # exact comparison of the algebra, not of rounding
    try:
        probes = _probes(3, depth)
        stacked = StackedAttentive.from_probes(probes, checkpoint=checkpoint)
        x = torch.randn(2, 10, 32)
        ref = torch.stack([p(x) for p in probes])  # [G, B, C]
        out = stacked(x)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(stacked(x, slice(1, 3)), ref[1:3], rtol=1e-10, atol=1e-12)
        (ref.square().sum()).backward()
        # chunked forward/backward accumulates into the same stacked gradients
        for sl in (slice(0, 2), slice(2, 3)):
            stacked(x, sl).square().sum().backward()
        for name, t in stacked.named_stacked().items():
            want = torch.stack([dict(p.named_parameters())[name].grad for p in probes])
            torch.testing.assert_close(t.grad, want, rtol=1e-9, atol=1e-12, msg=name)
        torch.testing.assert_close(stacked.to_probe(2)(x), ref[2], rtol=1e-10, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_stacked_linear_equals_per_head_modules():
    torch.manual_seed(0)
    lin = [LinearProbe(32, 5) for _ in range(4)]
    x = torch.randn(3, 7, 32)
    torch.testing.assert_close(StackedLinear.from_probes(lin)(x), torch.stack([m(x) for m in lin]))


def test_decay_only_on_matrices_never_on_biases_norms_or_query():
    decays = StackedAttentive.from_probes(_probes(2, depth=2)).decays()
    assert decays["query"] is False and decays["linear__weight"] is True
    assert decays["blocks__0__attn__qkv__weight"] and not decays["blocks__0__attn__qkv__bias"]
    assert not decays["blocks__0__norm1__weight"] and not decays["cross__norm2__bias"]


def test_stacked_adamw_is_torch_adamw_per_head():
    lrs, wds = [3e-3, 1e-3, 5e-4], [0.01, 0.4, 0.8]
    probes = _probes(3, depth=2)
    stacked = StackedAttentive.from_probes(probes)
    opt = StackedAdamW(dict(stacked.p.items()), stacked.decays(), lrs, wds)
    refs = []
    for p, lr, wd in zip(probes, lrs, wds, strict=True):
        named = list(p.named_parameters())
        decay = [t for n, t in named if t.dim() >= 2 and n != "query"]
        rest = [t for n, t in named if not (t.dim() >= 2 and n != "query")]
        refs.append(torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                       {"params": rest, "weight_decay": 0.0}], lr=lr))  # fmt: skip
    y = torch.tensor([0, 3])
    for step in range(3):
        x = torch.randn(2, 6, 32)
        f = lr_factor(step, 3, 1)
        for p, o in zip(probes, refs, strict=True):
            for g in o.param_groups:
                g["lr"] = g.setdefault("base", g["lr"]) * f
            o.zero_grad()
            torch.nn.functional.cross_entropy(p(x), y).backward()
            o.step()
        opt.zero_grad()
        per_head_ce(stacked(x), y).sum().backward()
        opt.step(f)
    for name, t in stacked.named_stacked().items():
        want = torch.stack([dict(p.named_parameters())[name].detach() for p in probes])
        got = t.detach()
        # The key bias has an exactly-zero gradient (softmax ignores a shift shared by all keys);
        # Adam turns the rounding noise each implementation leaves there into ±lr steps.
        d = 32
        if name.endswith("attn.qkv.bias"):
            got, want = got[:, _not_keys(d)], want[:, _not_keys(d)]
        if name == "cross.kv.bias":
            got, want = got[:, d:], want[:, d:]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def _not_keys(d: int) -> torch.Tensor:
    return torch.cat([torch.arange(0, d), torch.arange(2 * d, 3 * d)])  # q and v of a qkv bias


def _train(grid: ProbeGrid, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for s in range(steps):
        x = torch.randn(6, 8, 32, generator=gen)
        y = torch.randint(0, 5, (6,), generator=gen)
        grid.train_step(x, y, lr_factor(s, steps, 0))


def test_pruned_grid_continues_exactly_as_the_full_grid():
    specs = make_grid(["attentive", "linear"], [3e-3, 1e-3], [0.01, 0.4], [1e-2], [0.0])
    kw = dict(depth=2, num_heads=4, seed=0)
    full, halved = ProbeGrid(specs, 32, 5, **kw), ProbeGrid(specs, 32, 5, head_chunk=3, **kw)
    _train(full, 3)
    _train(halved, 3)
    keep = [halved.names[1], halved.names[3], halved.names[-1]]
    halved.prune(keep)
    assert halved.names == keep
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):  # both continue on the same batches; the survivors must not notice
        x, y = torch.randn(6, 8, 32, generator=gen), torch.randint(0, 5, (6,), generator=gen)
        full.train_step(x, y, 0.5)
        halved.train_step(x, y, 0.5)
    x = torch.randn(4, 8, 32)
    want = full.logits(x)[[full.names.index(n) for n in keep]]
    torch.testing.assert_close(halved.logits(x), want, rtol=1e-5, atol=1e-6)


def test_micro_batches_and_head_chunks_give_the_same_step():
    specs = [HeadSpec("attentive", 1e-3, 0.1), HeadSpec("attentive", 3e-3, 0.01)]
    a = ProbeGrid(specs, 32, 5, depth=2, num_heads=4, seed=0)
    b = ProbeGrid(
        specs, 32, 5, depth=2, num_heads=4, seed=0, micro_batch=2, head_chunk=1, checkpoint=True
    )
    _train(a, 2)
    _train(b, 2)
    x = torch.randn(3, 8, 32)
    torch.testing.assert_close(a.logits(x), b.logits(x), rtol=1e-5, atol=1e-6)
    state = b.grid_state()
    c = ProbeGrid(specs, 32, 5, depth=2, num_heads=4, seed=5)
    c.load_grid_state(state)
    torch.testing.assert_close(c.logits(x), b.logits(x))
    assert c.opts["attentive"].step_count == 2


def test_out_of_memory_is_a_usage_error_naming_the_settings():
    from salt.probes.config import load_config
    from salt.probes.loop import oom_guard

    cfg = load_config(None, {"batch_size": 64, "head_chunk": 5})
    match = r"batch_size=64.*head_chunk=5.*--micro-batch"
    with pytest.raises(ValueError, match=match) as err, oom_guard("training step", cfg):
        torch.empty(2**50, dtype=torch.uint8)  # a real allocation failure (CPU allocator)
    assert type(err.value).__name__ == "UsageError"
    with pytest.raises(RuntimeError, match="other"), oom_guard("training step", cfg):
        raise RuntimeError("other")  # anything else keeps its traceback
