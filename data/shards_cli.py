"""``salt-shards``: make WebDataset video shards, inspect them, write the synthetic dataset.

    salt-shards make --input videos.csv --output shards/train-%06d.tar --resize 256 --workers 8
    salt-shards inspect 'shards/train-{000000..000009}.tar' --decode --json
    salt-shards synth --output synth/ --num-train 512 --num-val 128

``make`` prints one summary line (written / skipped / shards / bytes) and writes
``<name>-report.json`` beside the shards listing every file it skipped and why. The exit status is
0 when at least one video was written (bad inputs are reported, not fatal), 1 when none was, 2
for a usage error (a missing input CSV or folder, a shard pattern that matches nothing: one line,
no traceback). PyAV, webdataset and torch are imported by the subcommand that needs them, so
``salt-shards --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from salt.errors import MissingInputError, UsageError, cli_entry

_MAX_SIZE_HELP = "bytes per shard (default 1 GiB)"


def _make(args: argparse.Namespace) -> int:
    from .shards import DEFAULT_MAX_SIZE, list_inputs, report_path, write_shards

    if not Path(args.input).exists():
        raise MissingInputError(f"--input {args.input}: no such CSV file or folder")
    try:
        inputs = list_inputs(args.input, label_from_parent=args.label_from_parent)
    except UnicodeDecodeError as e:
        raise UsageError(f"--input {args.input}: not a text CSV ({e.reason})") from None
    except ValueError as e:  # a bad row (label not an integer): the CSV is the user's to fix
        raise UsageError(str(e)) from None
    if args.limit:
        inputs = inputs[: args.limit]
    if not inputs:
        print(f"salt-shards: no video files in {args.input}", file=sys.stderr)
        return 1
    report = write_shards(
        inputs,
        args.output,
        resize=args.resize,
        max_count=args.max_count,
        max_size=args.max_size or DEFAULT_MAX_SIZE,
        workers=args.workers,
        crf=args.crf,
        progress=not args.quiet,
    )
    for failure in report["failures"]:
        print(f"skipped {failure['path']}: {failure['reason']}", file=sys.stderr)
    print(
        f"salt-shards: written {report['written']} / skipped {report['skipped']} / "
        f"shards {len(report['shards'])} / bytes {report['bytes']}  (report: {report_path(args.output)})"
    )
    return 0 if report["written"] else 1


def _inspect(args: argparse.Namespace) -> int:
    from .samples import expand_shards
    from .shards import inspect_shards

    try:
        expand_shards(args.shards)
    except (FileNotFoundError, ValueError) as e:  # the spec names files that are not there
        raise MissingInputError(str(e)) from None
    result = inspect_shards(args.shards, decode=args.decode, decoder=args.decoder)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"shards {result['shards']}  samples {result['samples']}")
        print("labels " + "  ".join(f"{k}:{v}" for k, v in result["labels"].items()))
        for name, n in sorted(result["counts"].items()):
            print(f"{name} {n}")
        for p in result["problems"]:
            print(f"problem {p['shard']} {p['key']}: {p['reason']}")
    return 1 if result["problems"] or result["counts"].get("bad_shard") else 0


def _synth(args: argparse.Namespace) -> int:
    from .synthetic import write_synthetic_shards

    info = write_synthetic_shards(
        args.output,
        num_train=args.num_train,
        num_val=args.num_val,
        num_classes=args.num_classes,
        frames=args.frames,
        size=args.size,
        seed=args.seed,
        num_probe_train=args.num_probe_train,
    )
    print(json.dumps(info, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="salt-shards", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make", help="write videos into WebDataset shards")
    make.add_argument("--input", required=True, help="CSV (path[,label]) or a folder of videos")
    make.add_argument("--output", required=True, help="shard pattern, e.g. out/train-%%06d.tar")
    make.add_argument(
        "--resize", type=int, default=None, help="re-encode to this short side (H.264)"
    )
    make.add_argument("--max-count", type=int, default=1000, help="samples per shard")
    make.add_argument("--max-size", type=int, default=None, help=_MAX_SIZE_HELP)
    make.add_argument("--workers", type=int, default=1, help="processes probing/re-encoding")
    make.add_argument("--crf", type=int, default=23, help="x264 quality when re-encoding")
    make.add_argument(
        "--label-from-parent", action="store_true", help="folder input: label = class folder"
    )
    make.add_argument("--limit", type=int, default=None, help="only the first N inputs")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(fn=_make)

    insp = sub.add_parser("inspect", help="count samples and labels; optionally decode every video")
    insp.add_argument("shards", help="shard spec: braces, globs or a::b")
    insp.add_argument(
        "--decode", action="store_true", help="decode the first and last frame of each video"
    )
    insp.add_argument("--decoder", default="auto", choices=["auto", "decord", "pyav"])
    insp.add_argument("--json", action="store_true", help="machine-readable output")
    insp.set_defaults(fn=_inspect)

    synth = sub.add_parser(
        "synth", help="write the synthetic motion dataset (train/probe_train/val)"
    )
    synth.add_argument("--output", required=True, help="output folder")
    synth.add_argument("--num-train", type=int, default=512)
    synth.add_argument("--num-probe-train", type=int, default=None, help="default: --num-train")
    synth.add_argument("--num-val", type=int, default=128)
    synth.add_argument("--num-classes", type=int, default=4)
    synth.add_argument("--frames", type=int, default=32)
    synth.add_argument("--size", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(fn=_synth)
    return parser


@cli_entry("salt-shards")
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
