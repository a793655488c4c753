"""Hugging Face Hub I/O for ``VideoViT``: ``from_pretrained``, ``save_pretrained``, ``push_to_hub``.

The work is done by ``huggingface_hub.ModelHubMixin`` (folder vs repo id, downloads and the local
cache, one-commit uploads through ``create_repo`` + ``upload_folder``, the model card file) through
a small adapter class built on first use, so importing ``salt.models`` never imports
``huggingface_hub``. ``VideoViT`` inherits the three methods from ``HubMixin`` below.

A saved folder (also what ``salt export CKPT DIR --format hf`` writes):

- ``config.json``: ``{"model_type": "salt_video_vit", "format_version": 1, "encoder_config":
  {...every VideoViT argument...}, "rope_convention": ..., **metadata}``, where metadata is the
  salt checkpoint metadata when there is one (stage, mean, std, step, teacher, source, ...);
- ``model.safetensors``: the weights (no prefix) with that metadata as JSON under the
  safetensors metadata key ``"salt"``, so the file is also a ``salt export`` encoder file;
- ``README.md``: the model card (the caller's text, else a short one written here).

Loading is strict: a config of another model type, unknown architecture keys, a RoPE convention
other than the config's pairing, or missing / unexpected / mis-shaped weights are errors that
name the problem.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .vit import VideoViT

HUB_MODEL_TYPE = "salt_video_vit"
HUB_FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
HUB_TAGS = ["video", "self-supervised-learning", "salt", "vision-transformer"]


def load_state_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what differs.

    Raises:
        ValueError: missing, unexpected or mis-shaped weights (first 8 of each, named).
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: encoder weights do not match its architecture: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}"
        )
    module.load_state_dict(state, strict=True)


def hub_config(model: VideoViT, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """The ``config.json`` of ``model``: model type, format version, architecture, metadata."""
    meta = {
        **(metadata or {}),
        "encoder_config": dict(model.config),
        "rope_convention": model.rope_convention,
    }
    return {"model_type": HUB_MODEL_TYPE, "format_version": HUB_FORMAT_VERSION, **meta}


def default_model_card(model: VideoViT, metadata: dict[str, Any] | None) -> str:
    """A short model card: front matter for the Hub, the architecture and how to load it."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    tags = "".join(f"- {t}\n" for t in HUB_TAGS)
    stage = (metadata or {}).get("stage", "unknown")
    return (
        f"---\nlibrary_name: salt\ntags:\n{tags}---\n\n"
        f"# salt VideoViT ({stage})\n\n"
        f"Video ViT encoder: {cfg['depth']} blocks × {cfg['embed_dim']} wide, {cfg['num_heads']} "
        f"heads, MLP {cfg['mlp_hidden_dim']}, tubelet {cfg['tubelet_size']}×{cfg['patch_size']}×"
        f"{cfg['patch_size']}, positions `{cfg['pos_embed']}`, {params / 1e6:.1f}M parameters. "
        "Tokens `[B, N, D]` in T×H×W order.\n\n"
        "```python\nfrom salt.models import VideoViT\n\n"
        'encoder = VideoViT.from_pretrained("<this folder or repo id>").eval()\n'
        "tokens = encoder.forward_features(clip)  # clip [B, C, T, H, W] float\n```\n"
    )


@functools.cache
def _bridge() -> type:
    """The ``ModelHubMixin`` adapter class (built once; imports ``huggingface_hub``)."""
    from huggingface_hub import ModelCard, ModelHubMixin, hf_hub_download

    class SaltHubBridge(ModelHubMixin, library_name="salt", tags=HUB_TAGS):
        """Holds a ``VideoViT`` (+ metadata and card) for ``ModelHubMixin``'s save/load/push."""

        def __init__(
            self, model: Any, metadata: dict | None = None, model_card: str | None = None
        ) -> None:
            self.model, self.metadata, self.model_card = model, metadata, model_card

        def _save_pretrained(self, save_directory: Path) -> None:
            from safetensors.torch import save_file

            config = hub_config(self.model, self.metadata)
            meta = {k: v for k, v in config.items() if k not in ("model_type", "format_version")}
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
            save_file(
                tensors, str(save_directory / WEIGHTS_NAME), metadata={"salt": json.dumps(meta)}
            )
            (save_directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))

        def generate_model_card(self, *args: Any, **kwargs: Any) -> Any:
            return ModelCard(self.model_card or default_model_card(self.model, self.metadata))

        @classmethod
        def _from_pretrained(
            cls,
            *,
            model_id: str,
            revision: str | None,
            cache_dir: str | Path | None,
            force_download: bool,
            local_files_only: bool,
            token: str | bool | None,
            config: dict | None = None,
            model_cls: type | None = None,
            runtime: dict | None = None,
            **unused: Any,
        ) -> SaltHubBridge:
            if os.path.isdir(model_id):
                weights = Path(model_id) / WEIGHTS_NAME
                if not weights.is_file():
                    raise FileNotFoundError(f"{model_id}: no {WEIGHTS_NAME} in this folder")
            else:
                weights = Path(
                    hf_hub_download(
                        repo_id=model_id,
                        filename=WEIGHTS_NAME,
                        revision=revision,
                        cache_dir=cache_dir,
                        force_download=force_download,
                        token=token,
                        local_files_only=local_files_only,
                    )
                )
            model, meta = load_hub_weights(model_cls, weights, config, model_id, runtime or {})
            return cls(model, meta)

    return SaltHubBridge


def load_hub_weights(
    model_cls: type,
    weights: Path,
    config: dict | None,
    source: str,
    runtime: dict[str, Any],
) -> tuple[VideoViT, dict[str, Any]]:
    """Build ``model_cls`` from a hub ``config.json`` dict and load ``weights`` strictly."""
    from safetensors.torch import load_file

    if config is None:
        raise ValueError(f"{source}: no {CONFIG_NAME} (not a salt VideoViT folder or repo)")
    if config.get("model_type") != HUB_MODEL_TYPE or "encoder_config" not in config:
        raise ValueError(
            f"{source}: {CONFIG_NAME} has model_type {config.get('model_type')!r}, not "
            f"{HUB_MODEL_TYPE!r} (not a salt VideoViT export)"
        )
    if config.get("format_version", HUB_FORMAT_VERSION) > HUB_FORMAT_VERSION:
        raise ValueError(
            f"{source}: format_version {config['format_version']} is newer than this salt "
            f"reads ({HUB_FORMAT_VERSION}); upgrade salt"
        )
    try:
        model = model_cls.from_config(
            config["encoder_config"], config.get("rope_convention"), **runtime
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e
    load_state_strict(model, load_file(str(weights)), str(weights))
    meta = {k: v for k, v in config.items() if k not in ("model_type", "format_version")}
    model.hub_metadata = meta
    return model.eval(), meta


class HubMixin:
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for ``VideoViT`` (see module
    docstring); ``huggingface_hub`` is imported on the first call."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **runtime: Any,
    ) -> VideoViT:
        """Load a saved folder or a Hub repo id (downloads through the Hugging Face cache).

        Args:
            pretrained_model_name_or_path: a folder written by ``save_pretrained`` /
                ``salt export --format hf``, or a repo id ``"user/name"``.
            revision, cache_dir, force_download, token, local_files_only: as in
                ``huggingface_hub``.
            runtime: ``attn_backend`` / ``act_checkpoint`` overrides (weights are unaffected).

        Returns:
            the encoder in eval mode on the CPU; its ``hub_metadata`` holds the folder's
            metadata (stage, mean, std, source, ...).
        """
        loaded = _bridge().from_pretrained(
            pretrained_model_name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            model_cls=cls,
            runtime=runtime,
        )
        return loaded.model

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        *,
        metadata: dict[str, Any] | None = None,
        model_card: str | None = None,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write ``config.json``, ``model.safetensors`` and ``README.md`` into a folder.

        Args:
            save_directory: the folder (created if needed; files of these names are replaced,
                except an existing ``README.md``, which ``ModelHubMixin`` keeps).
            metadata: salt metadata to record (stage, mean, std, step, teacher, ...).
            model_card: README text; None writes a short card with the architecture.
            push_to_hub, repo_id, push_to_hub_kwargs: also upload (``ModelHubMixin``).
        """
        bridge = _bridge()(self, metadata, model_card)
        return bridge.save_pretrained(
            save_directory, push_to_hub=push_to_hub, repo_id=repo_id, **push_to_hub_kwargs
        )

    def push_to_hub(
        self,
        repo_id: str,
        *,
        metadata: dict[str, Any] | None = None,
        model_card: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Save into a temporary folder and upload it as one commit to ``repo_id`` (network and a
        Hub token needed); ``kwargs`` go to ``ModelHubMixin.push_to_hub`` (private, branch, ...).
        Returns the commit URL."""
        return _bridge()(self, metadata, model_card).push_to_hub(repo_id, **kwargs)
