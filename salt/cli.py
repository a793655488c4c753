"""The ``salt`` command: a light dispatcher to ``salt fit``, ``salt export``, ``salt demo``.

Each subcommand is one entry of ``COMMANDS``: the ``module:function`` that takes the remaining
arguments (imported only when that subcommand runs, so ``salt --help`` imports neither torch nor
Lightning), the usage line ``salt --help`` shows, and optionally the function whose plain ``--help`` text is
served from ``salt.help_cache`` (``salt fit``: building its LightningCLI parser takes seconds). Adding a
subcommand = one entry here + its module. Every subcommand's ``UsageError`` becomes one line on
stderr and exit status 2 (``salt.errors.cli_entry``).

- ``salt fit -c CONFIG …``: ``salt.fit_cli`` (LightningCLI for both stages; run folder, tracking).
- ``salt export CKPT OUT.safetensors [--which auto|target|online]``: the encoder of a checkpoint
  (``salt.encoder_io``; an EMA-baseline checkpoint gives its EMA target encoder unless ``--which
  online``).
  ``--format hf`` writes a Hugging Face folder instead (config.json, model.safetensors, model card).
- ``salt import SRC OUT.safetensors``: a V-JEPA 2 / VideoMAE encoder as a salt encoder file
  (``salt.interop.cli``).
- ``salt demo …``: ``salt.demo.main(argv)``.

``SaltCLI``, ``fit``, ``default_run_name`` and the other names that used to live here are still
importable from ``salt.cli`` (they load ``salt.fit_cli`` on first access).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from salt.errors import UsageError, cli_entry


@dataclass(frozen=True)
class Command:
    """One ``salt`` subcommand.

    Args:
        target: ``"module:function"`` taking the remaining ``argv`` (returns an exit status or
            None).
        usage: the line ``salt --help`` shows.
        summary: what it does, in a few words.
        help_target: ``"module:function"`` returning the plain ``--help`` text, which is then
            cached (``salt.help_cache``); None = the command prints its own help.
    """

    target: str
    usage: str
    summary: str
    help_target: str | None = None


def _load(target: str) -> Any:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


COMMANDS: dict[str, Command] = {
    "fit": Command(
        "salt.fit_cli:main",
        "salt fit -c CONFIG [--model.teacher PATH] [--data.* ...] [--ckpt_path CKPT]",
        "train stage 1 (teacher) or stage 2 (student)",
        help_target="salt.fit_cli:render_help",
    ),
    "export": Command(
        "salt.cli:export",
        "salt export CKPT OUT.safetensors [--which auto|target|online] [--format hf]",
        "write a checkpoint's encoder + metadata (--format hf: a Hugging Face folder)",
    ),
    "import": Command(
        "salt.interop.cli:main",
        "salt import SRC OUT.safetensors",
        "a V-JEPA 2 / VideoMAE encoder as a salt encoder file",
    ),
    "demo": Command(
        "salt.demo:main",
        "salt demo [--fast] [--out DIR]",
        "tiny end-to-end run on synthetic video (CPU)",
    ),
}


def usage() -> str:
    """``salt --help``."""
    lines = [f"usage: salt {{{','.join(COMMANDS)}}} ...", ""]
    for command in COMMANDS.values():
        lines.append(f"  {command.usage}")
        lines.append(f"        {command.summary}")
    lines += [
        "",
        "`salt <command> --help` shows a command's options; for the options of a model class:",
        "  salt fit --model.help salt.student.StudentModule   (or salt.teacher.TeacherModule)",
    ]
    return "\n".join(lines)


def export(argv: list[str]) -> Path:
    """``salt export CKPT OUT.safetensors [--which …]`` / ``salt export CKPT DIR --format hf``;
    ``CKPT`` is a checkpoint file or a sharded FSDP checkpoint folder."""
    parser = argparse.ArgumentParser(
        prog="salt export", description="write a checkpoint's encoder as safetensors"
    )
    parser.add_argument(
        "ckpt", help="Lightning checkpoint of any stage, or a sharded FSDP checkpoint folder"
    )
    parser.add_argument("out", help="output .safetensors (a folder with --format hf)")
    parser.add_argument(
        "--format", choices=("safetensors", "hf"), default="safetensors",
        help="safetensors: one salt encoder file; hf: a Hugging Face folder "
        "(VideoViT.from_pretrained, push_to_hub)",
    )  # fmt: skip
    parser.add_argument(
        "--which",
        choices=("auto", "target", "online"),
        default="auto",
        help="EMA-baseline checkpoints hold two encoders: 'target' (the EMA one V-JEPA "
        "evaluates; what 'auto' picks) or 'online'; other checkpoints have one (auto/online)",
    )
    args = parser.parse_args(argv)
    from salt.encoder_io import export_checkpoint

    if not Path(args.ckpt).exists():
        raise UsageError(f"checkpoint not found: {args.ckpt}")
    out = export_checkpoint(args.ckpt, args.out, args.format, args.which)
    print(f"wrote {out}")
    return out


@cli_entry("salt")
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``salt`` console script (its return value is the exit status)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    command = COMMANDS.get(name)
    if command is None:
        print(f"salt: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if command.help_target and rest in (["--help"], ["-h"]):
        from salt.help_cache import cached_help

        sys.stdout.write(cached_help(name, lambda: _load(command.help_target)()))
        return 0
    result = _load(command.target)(rest)
    return result if isinstance(result, int) else 0


_MOVED = ("SaltCLI", "fit", "RunConfigSaver", "default_run_name", "resolve_run_dir")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from salt import fit_cli

        return getattr(fit_cli, name)
    raise AttributeError(f"module 'salt.cli' has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
