"""The `vqc` command: parse arguments, call the library, print. One module per group of commands,
each with `add_parsers(sub)` and its command functions; every command's parser sets
`run=` to the function that carries it out. No vqc module imports this package; the studio
registers its command with the shared options of vqc.cli.options."""
from __future__ import annotations

import argparse
import logging
import sys

from .. import studio
from ..errors import VqcError
from . import bench, fit, models, records, scoring, serve, station
from .options import Parser

TRAINING_STACK = {"torch", "torchvision", "timm", "FrEIA", "safetensors", "scipy", "sklearn", "onnx", "onnxscript", "matplotlib",
                  "markdown_it"}  # the vqc-inspect[train] extra's packages, as imported


def cli_parser() -> argparse.ArgumentParser:
    """The whole `vqc` parser, every command included (docs/gen_reference.py documents it)."""
    from ..version import __version__
    parser = Parser(prog="vqc", description="Visual quality control from defect-free images.")
    parser.add_argument("--version", action="version", version=f"vqc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    fit.add_parsers(sub)  # fit, threshold
    scoring.add_parsers(sub)  # predict, evaluate, export
    bench.add_parsers(sub)  # demo, backbones, benchmark
    serve.add_parsers(sub)
    records.add_parsers(sub)  # records, keys
    station.add_parsers(sub)
    models.add_parsers(sub)  # models, update
    studio.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = cli_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.run(args) or 0
    except VqcError as exc:
        for line in str(exc).splitlines() or [""]:  # a checked file's mistakes: a line each
            print(f"vqc: error: {line}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in TRAINING_STACK:
            raise
        print(f"vqc: error: vqc {args.command} needs the training stack, which this install lacks (no {exc.name}): "
              f"pip install \"vqc-inspect[train]\" (from a checkout: pip install \".[train]\"); the runtime install "
              f"predicts, serves and watches with a line "
              f"bundle (vqc export MODEL --out DIR)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vqc: interrupted", file=sys.stderr)
        return 130
