"""Distributed strategies for `salt fit`: DDP by default, FSDP2 for ViT-g/G.

Kept out of `models/` (which never imports torch.distributed) and out of the LightningModules:
the method code is the same on one CPU and on 64 GPUs; this file decides how it is spread.

The frozen stage-2 teacher (and the EMA target encoder) needs nothing from either strategy: the
module holds it outside its module tree (`salt.latent`), so it is absent from what DDP wraps and
what FSDP shards, and every rank moves its own full copy to its device. Each rank loads the same
teacher file, so nothing needs syncing.

- `SaltDDPStrategy` (configs/strategy/ddp.yaml): Lightning's DDP with salt's defaults
  (`gradient_as_bucket_view`, no unused-parameter search).
- `SaltFSDPStrategy` (configs/strategy/fsdp.yaml): PyTorch's FSDP2 (`fully_shard`, DTensor
  parameters) through Lightning's `ModelParallelStrategy`, with the sharding applied here rather
  than in a `configure_model` hook: one FSDP unit per transformer `Block` (encoder, predictor,
  pixel decoder), then one per trainable top-level child (its embeddings and norms). Activation
  checkpointing uses the models' own per-block switch (`act_checkpoint`). Checkpoints are sharded
  folders (torch.distributed.checkpoint); `salt export` reads them, and
  `salt.checkpointing.consolidate_checkpoint` turns one into a single Lightning file.
  FSDP2 rather than FSDP1: it runs on CPU with gloo (so it is tested here) and is PyTorch's
  supported path; FSDP1 needs an accelerator.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.collectives.torch_collective import default_pg_timeout
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy
from torch import nn

# re-exported: sharded checkpoints are written here, consolidated and exported there
from salt.checkpointing import consolidate_checkpoint, replace_dir
from salt.encoder_io import export_sharded_encoder

log = logging.getLogger(__name__)

DEFAULT_WRAP_CLASSES = ("salt.models.block.Block",)
# Encoder/predictor entry points other than forward(): FSDP2 hooks must run around them too.
FORWARD_METHODS = ("forward_features", "forward_intermediates")
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# --------------------------------------------------------------------------- DDP


class SaltDDPStrategy(DDPStrategy):
    """Lightning's DDP with salt's defaults (the teacher is outside the module: see above).

    Args:
        find_unused_parameters: DDP's search for parameters without gradients (slow; off).
        gradient_as_bucket_view: gradients alias DDP's buckets (saves one copy of the grads).
        static_graph: DDP's static-graph optimisation (same used parameters every step).
        process_group_backend: "nccl" / "gloo"; None picks from the device.
        timeout: collective timeout.
    """

    def __init__(
        self,
        find_unused_parameters: bool = False,
        gradient_as_bucket_view: bool = True,
        static_graph: bool = False,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            process_group_backend=process_group_backend,
            timeout=timeout,
            find_unused_parameters=find_unused_parameters,
            gradient_as_bucket_view=gradient_as_bucket_view,
            static_graph=static_graph,
        )


# --------------------------------------------------------------------------- FSDP2


def _import_class(path: str) -> type:
    module_name, _, cls_name = path.rpartition(".")
    module = __import__(module_name, fromlist=[cls_name])
    return getattr(module, cls_name)


def shard_module(
    module: nn.Module,
    mesh: Any,
    wrap_classes: Iterable[type] | None = None,
    reshard_after_forward: bool = True,
    mp_policy: Any | None = None,
    activation_checkpointing: bool = True,
) -> dict[str, list[str]]:
    """Apply FSDP2 to `module` in place: each wrap-class block, then each trainable top-level child.

    Children without trainable parameters are left whole. Trainable parameters owned directly by
    `module` (outside any child) would never be reduced, so they are an error.

    Returns:
        {"blocks": [...], "roots": [...]}: names of the sharded units.
    """
    from torch.distributed.fsdp import (
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    if getattr(module, "stage", None) == "ema":
        # the EMA update lerps a full target encoder toward the encoder: with sharded (DTensor)
        # weights that needs an all-gather per step; not supported, use DDP for the baseline
        raise ValueError(
            "FSDP does not support the V-JEPA EMA baseline (salt.ema.EMAModule): use DDP"
        )
    if wrap_classes is None:
        wrap_classes = tuple(_import_class(p) for p in DEFAULT_WRAP_CLASSES)
    wrap_classes = tuple(wrap_classes)
    mp_policy = mp_policy or MixedPrecisionPolicy()
    direct = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
    if direct:
        raise ValueError(
            f"FSDP: trainable parameters owned directly by {type(module).__name__} ({direct}) "
            "would not be sharded or reduced; move them into a submodule"
        )
    kw = {"mesh": mesh, "reshard_after_forward": reshard_after_forward, "mp_policy": mp_policy}
    report: dict[str, list[str]] = {"blocks": [], "roots": []}
    # bottom-up: blocks first, so each parent unit only holds what its blocks do not
    for name, child in module.named_modules():
        if not name:
            continue
        if isinstance(child, wrap_classes):
            fully_shard(child, **kw)
            report["blocks"].append(name)
        if activation_checkpointing and hasattr(child, "act_checkpoint"):
            child.act_checkpoint = True  # models/ recompute their blocks in backward
    for name, child in module.named_children():
        if not any(p.requires_grad for p in child.parameters()):
            continue
        if isinstance(child, wrap_classes):
            continue  # already a unit
        # last unit (the root of this child): its forward is the one that waits for reductions
        fully_shard(child, **{**kw, "reshard_after_forward": False})
        for method in FORWARD_METHODS:
            if callable(getattr(child, method, None)):
                register_fsdp_forward_method(child, method)
        report["roots"].append(name)
    return report


class SaltFSDPStrategy(ModelParallelStrategy):
    """FSDP2 data parallel over every rank (or hybrid: shard in a node, replicate across nodes).

    Args:
        activation_checkpointing: recompute each trainable block in backward (ViT-g/G need it).
        param_dtype: dtype of the all-gathered parameters for compute ("bfloat16" on GPU), or
            None to keep fp32 (the CPU tests).
        reduce_dtype: dtype of the gradient reduce-scatter.
        reshard_after_forward: free gathered block weights after forward (ZeRO-3) or keep them
            until backward (ZeRO-2, more memory, less communication).
        hybrid: shard within a node, replicate across nodes (HSDP); only with >1 node.
        save_distributed_checkpoint: sharded checkpoint folders (True) or one full file gathered
            on rank 0 (False; slow and memory-hungry for ViT-g/G).
        wrap_classes: import paths of the classes that form one FSDP unit each.
        process_group_backend: "nccl" / "gloo"; None picks from the device.
        timeout: collective timeout.
    """

    def __init__(
        self,
        activation_checkpointing: bool = True,
        param_dtype: str | None = "bfloat16",
        reduce_dtype: str | None = "float32",
        reshard_after_forward: bool = True,
        hybrid: bool = False,
        save_distributed_checkpoint: bool = True,
        wrap_classes: list[str] | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
    ) -> None:
        super().__init__(
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        for name, dt in (("param_dtype", param_dtype), ("reduce_dtype", reduce_dtype)):
            if dt is not None and dt not in _DTYPES:
                raise ValueError(f"{name} must be one of {sorted(_DTYPES)} or None, got {dt!r}")
        self.activation_checkpointing = activation_checkpointing
        self.param_dtype = param_dtype
        self.reduce_dtype = reduce_dtype
        self.reshard_after_forward = reshard_after_forward
        self.hybrid = hybrid
        self.wrap_classes = list(wrap_classes or DEFAULT_WRAP_CLASSES)
        self.shard_report: dict[str, list[str]] = {}

    def setup_environment(self) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        self._setup_distributed()  # process group, ranks
        device_type = self.root_device.type
        if self.hybrid and self.num_nodes > 1:
            mesh = init_device_mesh(
                device_type,
                (self.num_nodes, self.num_processes),
                mesh_dim_names=("replicate", "shard"),
            )
        else:
            mesh = init_device_mesh(device_type, (self.world_size,), mesh_dim_names=("shard",))
        self._device_mesh = mesh
        self.lightning_module._device_mesh = mesh

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Sharded saves go to a hidden temp folder that rank 0 renames into place once every
        rank has written: a kill mid-save (or mid-overwrite of `last.ckpt`) never leaves a
        folder that looks complete but mixes two steps. Full-file saves are left to the
        CheckpointIO plugin (`salt.checkpointing.AtomicCheckpointIO`)."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        import shutil

        path = Path(self.broadcast(str(filepath)))
        tmp = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.barrier("salt.fsdp.save.start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("salt.fsdp.save.written")
        if self.global_rank == 0:
            replace_dir(tmp, path)
        self.barrier("salt.fsdp.save.done")
        return None

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict:
        """Lightning's sharded load, with ``weights_only=True`` for ``meta.pt`` / full files unless
        the caller explicitly asks otherwise (``salt.checkpointing.SAFE_GLOBALS`` allowed)."""
        from salt.checkpointing import SAFE_GLOBALS

        if weights_only is False:
            return super().load_checkpoint(checkpoint_path, weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return super().load_checkpoint(checkpoint_path, weights_only=True)

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        # every rank sees different data, whatever the mesh shape
        return {"num_replicas": self.world_size, "rank": self.global_rank}

    def setup(self, trainer: pl.Trainer) -> None:
        from lightning_fabric.utilities.optimizer import _optimizers_to_device
        from pytorch_lightning.trainer.states import TrainerFn
        from torch.distributed.fsdp import MixedPrecisionPolicy

        assert self.model is not None and self.accelerator is not None
        self.accelerator.setup(trainer)
        mp = MixedPrecisionPolicy(
            param_dtype=_DTYPES.get(self.param_dtype or ""),
            reduce_dtype=_DTYPES.get(self.reduce_dtype or ""),
        )
        self.model.to(self.root_device)
        self.shard_report = shard_module(
            self.model,
            self.device_mesh,
            wrap_classes=[_import_class(p) for p in self.wrap_classes],
            reshard_after_forward=self.reshard_after_forward,
            mp_policy=mp,
            activation_checkpointing=self.activation_checkpointing,
        )
        if self.global_rank == 0:
            r = self.shard_report
            print(
                f"[salt.strategies] FSDP2: {len(r['blocks'])} block units, roots {r['roots']}",
                flush=True,
            )
        self.model = self.precision_plugin.convert_module(self.model)
        self.barrier()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if trainer.state.fn == TrainerFn.FITTING:
            _optimizers_to_device(self.optimizers, self.root_device)


def build_strategy(name: str = "ddp", **kwargs: Any) -> str | pl.strategies.Strategy:
    """`"ddp"` → SaltDDPStrategy, `"fsdp"` → SaltFSDPStrategy, `"auto"` → Lightning's choice."""
    if name == "ddp":
        return SaltDDPStrategy(**kwargs)
    if name == "fsdp":
        return SaltFSDPStrategy(**kwargs)
    if name == "auto":
        return "auto"
    raise ValueError(f"unknown strategy {name!r}; expected 'ddp', 'fsdp' or 'auto'")


def main(argv: list[str] | None = None) -> None:
    """`python -m salt.strategies export SHARDED_DIR OUT.safetensors` (or `consolidate DIR OUT.ckpt`).

    Kept for scripts that call it; `salt export SHARDED_DIR OUT` does the same export."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m salt.strategies")
    parser.add_argument("command", choices=["export", "consolidate"])
    parser.add_argument("sharded_dir", help="a sharded FSDP checkpoint folder (step=N.ckpt/)")
    parser.add_argument("out", help="OUT.safetensors (export) or OUT.ckpt (consolidate)")
    args = parser.parse_args(argv)
    fn = export_sharded_encoder if args.command == "export" else consolidate_checkpoint
    print(f"wrote {fn(args.sharded_dir, args.out)}")


if __name__ == "__main__":
    main()
